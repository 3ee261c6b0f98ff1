//! WebSockets that end when their token does.
//!
//! The gateway holds both sides of an upgraded connection itself: it forwards every frame as
//! it came, takes out the client's renewal messages, and when the token expires, the
//! connection is evicted or the gateway shuts down, it writes a Close frame to both sides
//! (to the backend masked, as a client would) and waits briefly for the closing handshake.
//!
//! Close codes the client receives:
//!
//! | code | reason              | when                                                  |
//! |------|---------------------|-------------------------------------------------------|
//! | 4001 | `token expired`     | the token's `exp` (plus the issuer's clock skew) passed |
//! | 4002 | `renewal rejected`  | a renewal token was invalid, not allowed on the route, or of another subject or tenant |
//! | 4003 | `evicted`           | an operator ended the subject's connections            |
//! | 4004 | `token revoked`     | the provider no longer holds the token active (introspection) |
//! | 1001 | `gateway shutting down` | the gateway stops or hands over to a new process   |

pub(crate) mod frame;
pub(crate) mod handshake;
pub(crate) mod inband;
pub mod registry;

use std::cell::RefCell;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Buf, Bytes, BytesMut};
use pingora_core::protocols::Stream;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};

use crate::metrics;
pub use handshake::Settings;
use inband::{ClientStream, Event};
use registry::{Order, Ticket};

/// How a connection ended, as the metrics count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Expired,
    RenewalRejected,
    Evicted,
    /// The provider answered that the token is no longer active.
    Revoked,
    Shutdown,
    /// The client closed it (a Close frame, or the connection).
    Client,
    /// The backend closed it.
    Backend,
}

impl Ending {
    pub fn label(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::RenewalRejected => "renewal_rejected",
            Self::Evicted => "evicted",
            Self::Revoked => "revoked",
            Self::Shutdown => "shutdown",
            Self::Client => "client",
            Self::Backend => "backend",
        }
    }

    /// The Close frame the gateway sends when it ends the connection itself.
    fn close(self) -> Option<(u16, &'static str)> {
        match self {
            Self::Expired => Some((4001, "token expired")),
            Self::RenewalRejected => Some((4002, "renewal rejected")),
            Self::Evicted => Some((4003, "evicted")),
            Self::Revoked => Some((4004, "token revoked")),
            Self::Shutdown => Some((1001, "gateway shutting down")),
            Self::Client | Self::Backend => None,
        }
    }
}

/// Validates a renewal token for the connection it arrives on.
#[async_trait]
pub trait Renew: Send + Sync {
    /// The new deadline (`None`: the token does not expire), or why the renewal is refused.
    async fn renew(&self, token: &str) -> Result<Option<Instant>, &'static str>;

    /// Asked when the deadline passes: a later one, if the credential the connection lives
    /// by was renewed without the client (a browser session's token, which the gateway
    /// refreshes itself).
    async fn refreshed(&self) -> Option<Instant> {
        None
    }
}

/// Asks, every `every`, whether the connection's token still stands; the receiver turns true
/// once `still_active` says no. The watcher stops when the receiver is dropped.
pub fn watch_revocation<F, Fut>(
    every: Duration,
    mut still_active: F,
) -> tokio::sync::watch::Receiver<bool>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let (revoked, receiver) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = revoked.closed() => return,
                _ = tick.tick() => {
                    if !still_active().await {
                        let _ = revoked.send(true);
                        return;
                    }
                }
            }
        }
    });
    receiver
}

/// What the relay needs besides the two connections.
pub struct Relay<'a> {
    settings: &'a Settings,
    /// permessage-deflate was negotiated (the client without context takeover).
    deflate: bool,
    /// Behind a lock only so that the wait for it can move it on.
    deadline: std::sync::Mutex<Option<Instant>>,
    /// The deadline is now because a renewal was refused.
    rejected: bool,
    ticket: Ticket,
    /// `None`: the connection takes no renewals (a public route).
    renew: Option<&'a dyn Renew>,
    /// Turns true when the token is found revoked (see [`watch_revocation`]).
    revoked: Option<tokio::sync::watch::Receiver<bool>>,
}

/// Which side still takes frames from the gateway once the relay stops.
struct Sides {
    client_clean: bool,
    backend_clean: bool,
}

impl<'a> Relay<'a> {
    pub fn new(
        settings: &'a Settings,
        deflate: bool,
        deadline: Option<Instant>,
        ticket: Ticket,
        renew: Option<&'a dyn Renew>,
        revoked: Option<tokio::sync::watch::Receiver<bool>>,
    ) -> Self {
        Self {
            settings,
            deflate,
            deadline: std::sync::Mutex::new(deadline),
            rejected: false,
            ticket,
            renew,
            revoked,
        }
    }

    /// Relays an upgraded connection until one side ends it or the gateway does. `unread`
    /// is what the client sent along with its upgrade request, `first` what the backend sent
    /// right after its 101. Returns how it ended and the bytes written to the client.
    pub async fn run(
        mut self,
        client: Stream,
        unread: Bytes,
        upstream: Stream,
        first: Bytes,
    ) -> (Ending, u64) {
        let (mut client_read, mut client_write) = tokio::io::split(client);
        let (mut up_read, mut up_write) = tokio::io::split(upstream);
        let settings = self.settings;
        let shape = self.renew.is_some().then_some(&settings.renewal);
        let mut client = ClientStream::new(shape, self.deflate);
        let mut backend = frame::Position::default();
        let mut to_backend = BytesMut::new();
        let mut events = Vec::new();
        // Who sent the first Close frame, when one side starts the closing handshake.
        let mut closing: Option<Ending> = None;
        let mut backend_closes = false;
        // The backend's frames are followed as they are written to the client, so `backend`
        // tells where the client's stream stands.
        let mut to_client = first;
        let mut client_unflushed = false;
        let mut backend_unflushed = false;
        let mut sent = 0u64;
        self.on_client_data(
            &unread,
            &mut client,
            &mut to_backend,
            &mut events,
            &mut closing,
        )
        .await;

        let ending = loop {
            if backend_closes {
                closing.get_or_insert(Ending::Backend);
                backend_closes = false;
            }
            if to_backend.is_empty() && to_backend.capacity() > 0 {
                // Held by every open connection otherwise.
                to_backend = BytesMut::new();
            }
            tokio::select! {
                biased;
                ending = self.ordered() => break ending,
                // Each side's write and flush share a branch: they need its write half at once.
                written = write_or_flush(&mut client_write, &to_client),
                    if client_unflushed || !to_client.is_empty() => match written {
                    Ok(0) if to_client.is_empty() => client_unflushed = false,
                    Ok(n) if n > 0 => {
                        backend.feed(&to_client[..n], |p| backend_closes |= is_close(&p));
                        to_client.advance(n);
                        sent += n as u64;
                        client_unflushed = true;
                    }
                    _ => break closing.unwrap_or(Ending::Client),
                },
                read = read_arrived(&mut client_read), if to_backend.is_empty() => match read {
                    Ok(data) if !data.is_empty() => {
                        self.on_client_data(&data, &mut client, &mut to_backend, &mut events, &mut closing)
                            .await;
                    }
                    _ => break closing.unwrap_or(Ending::Client),
                },
                written = write_or_flush(&mut up_write, &to_backend),
                    if backend_unflushed || !to_backend.is_empty() => match written {
                    Ok(0) if to_backend.is_empty() => backend_unflushed = false,
                    Ok(n) if n > 0 => {
                        to_backend.advance(n);
                        backend_unflushed = true;
                    }
                    _ => break closing.unwrap_or(Ending::Backend),
                },
                read = read_arrived(&mut up_read), if to_client.is_empty() => match read {
                    Ok(data) if !data.is_empty() => to_client = data,
                    _ => break closing.unwrap_or(Ending::Backend),
                },
            }
        };
        let sides = Sides {
            client_clean: backend.at_boundary(),
            backend_clean: client.forwarded_boundary()
                && to_backend.is_empty()
                && !backend_unflushed,
        };
        metrics::websocket_closed(ending.label());
        // For an expiry, how late the client hears of it.
        let expired_at = self.deadline().filter(|_| ending == Ending::Expired);
        if let Some((code, reason)) = ending.close() {
            sent += self
                .close(
                    (&mut client_read, &mut client_write),
                    &mut up_write,
                    sides,
                    (code, reason),
                    expired_at,
                )
                .await;
        }
        let limit = settings.close_timeout;
        let _ = tokio::time::timeout(limit, client_write.shutdown()).await;
        (ending, sent)
    }

    /// Takes what the client sent: renewals are acted on, the rest goes to `to_backend`.
    async fn on_client_data(
        &mut self,
        data: &[u8],
        client: &mut ClientStream<'_>,
        to_backend: &mut BytesMut,
        events: &mut Vec<Event>,
        closing: &mut Option<Ending>,
    ) {
        client.push(data, to_backend, events);
        for event in events.drain(..) {
            match event {
                Event::Close(_) => {
                    closing.get_or_insert(Ending::Client);
                }
                Event::Renewal(token) => {
                    // Only a connection that takes renewals holds them back.
                    let Some(renew) = self.renew else { continue };
                    match renew.renew(&token).await {
                        Ok(deadline) => {
                            metrics::websocket_renewal("ok");
                            self.set_deadline(deadline);
                        }
                        Err(reason) => {
                            metrics::websocket_renewal(reason);
                            log::info!("websocket renewal refused: {reason}");
                            self.set_deadline(Some(Instant::now()));
                            self.rejected = true;
                        }
                    }
                }
            }
        }
    }

    fn deadline(&self) -> Option<Instant> {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_deadline(&self, deadline: Option<Instant>) {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner()) = deadline;
    }

    /// Resolves when the gateway must end the connection, and says why.
    async fn ordered(&self) -> Ending {
        let expiry = async {
            loop {
                match self.deadline() {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
                // The credential may have been renewed behind the connection.
                let later = match (self.renew, self.rejected) {
                    (Some(renew), false) => renew.refreshed().await,
                    _ => None,
                };
                match later {
                    Some(at) if at > Instant::now() => {
                        metrics::websocket_renewal("refreshed");
                        self.set_deadline(Some(at));
                    }
                    _ => return,
                }
            }
        };
        let revoked = async {
            let Some(mut revoked) = self.revoked.clone() else {
                return std::future::pending::<()>().await;
            };
            // A watcher that stopped without finding the token revoked never ends it.
            let stopped = revoked.wait_for(|r| *r).await.is_err();
            if stopped {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            order = self.ticket.ordered() => match order {
                Order::Evict => Ending::Evicted,
                Order::Shutdown => Ending::Shutdown,
            },
            () = expiry => if self.rejected { Ending::RenewalRejected } else { Ending::Expired },
            () = revoked => Ending::Revoked,
        }
    }

    /// The gateway's side of the closing handshake: a Close frame to each side that is at a
    /// frame boundary, then a bounded wait for the client's answer and the backend's close.
    /// `expired_at`: the token's expiry, when that is why. Returns the bytes written to the
    /// client.
    async fn close(
        &self,
        (client_read, client_write): (&mut ReadHalf<Stream>, &mut WriteHalf<Stream>),
        up_write: &mut WriteHalf<Stream>,
        sides: Sides,
        (code, reason): (u16, &str),
        expired_at: Option<Instant>,
    ) -> u64 {
        let limit = self.settings.close_timeout;
        // The client is told first, then this task steps aside: when many tokens expire in
        // the same second, every client hears of it before any connection's slower work with
        // the backend is done.
        let frame = frame::close(code, reason, None);
        let told = sides.client_clean && {
            let written = tokio::time::timeout(limit, async {
                client_write.write_all(&frame).await?;
                client_write.flush().await
            });
            matches!(written.await, Ok(Ok(())))
        };
        if let (true, Some(at)) = (told, expired_at) {
            metrics::websocket_expiry_close_delay(at.elapsed());
        }
        tokio::task::yield_now().await;
        let to_client = async {
            if !told {
                return;
            }
            // Until the client's Close frame (or its hang-up); data still in flight is dropped.
            let mut answer = ClientStream::new(None, false);
            let (mut sink, mut events) = (BytesMut::new(), Vec::new());
            while let Ok(data) = read_arrived(client_read).await {
                if data.is_empty() {
                    return;
                }
                answer.push(&data, &mut sink, &mut events);
                sink.clear();
                if events.iter().any(|e| matches!(e, Event::Close(_))) {
                    return;
                }
            }
        };
        let to_backend = async {
            if sides.backend_clean {
                let mask = uuid::Uuid::new_v4().into_bytes();
                let frame = frame::close(code, reason, Some([mask[0], mask[1], mask[2], mask[3]]));
                if up_write.write_all(&frame).await.is_ok() {
                    let _ = up_write.flush().await;
                }
            }
            let _ = up_write.shutdown().await;
        };
        let _ = tokio::time::timeout(limit, async { tokio::join!(to_client, to_backend) }).await;
        if told {
            frame.len() as u64
        } else {
            0
        }
    }
}

/// One step of sending `pending` on `w`: a write of some of it, or, once it is all written,
/// a flush (`Ok(0)`).
async fn write_or_flush(w: &mut WriteHalf<Stream>, pending: &[u8]) -> std::io::Result<usize> {
    if pending.is_empty() {
        w.flush().await.map(|()| 0)
    } else {
        w.write(pending).await
    }
}

/// The largest read; an idle connection holds no read buffer at all (see [`read_arrived`]).
const READ_SIZE: usize = 64 * 1024;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_SIZE].into_boxed_slice());
}

/// Reads what has arrived on `r` (empty at its end), holding no buffer while nothing has:
/// the read waits with this thread's scratch buffer, and only the bytes that came are copied
/// out. Most open WebSockets are idle most of the time, each with a read pending on both
/// sides, so the buffers they would hold are most of their memory.
async fn read_arrived(r: &mut ReadHalf<Stream>) -> std::io::Result<Bytes> {
    std::future::poll_fn(|cx| {
        SCRATCH.with_borrow_mut(|scratch| {
            let mut buf = ReadBuf::new(scratch);
            match Pin::new(&mut *r).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) => Poll::Ready(Ok(Bytes::copy_from_slice(buf.filled()))),
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        })
    })
    .await
}

fn is_close(piece: &frame::Piece<'_>) -> bool {
    matches!(piece, frame::Piece::Header(h, _) if h.opcode == frame::OP_CLOSE)
}

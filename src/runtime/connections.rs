//! The cap on client connections per listener (`[server] max_connections`).
//!
//! Pingora accepts without a limit, so the cap wraps the proxy application: a connection is
//! counted from the moment the application receives it until it closes, keep-alive requests
//! included, and one that arrives while its listener is full is closed at once. TLS
//! connections are counted after their handshake, which Pingora performs before handing
//! them over.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use prometheus::{IntCounter, IntGauge};

use crate::metrics;
use crate::proxy::kept;
use crate::snapshot::SharedSnapshot;

/// How often, at most, a refusal is logged: a full listener under attack would flood the log.
const LOG_EVERY_SECS: u64 = 10;

/// One listener's count.
struct Listener {
    addr: SocketAddr,
    open: AtomicUsize,
    gauge: IntGauge,
    refused: IntCounter,
    last_logged: AtomicU64,
}

impl Listener {
    fn new(addr: SocketAddr) -> Self {
        let label = addr.to_string();
        Listener {
            addr,
            open: AtomicUsize::new(0),
            gauge: metrics::client_connections(&label),
            refused: metrics::client_connections_refused(&label),
            last_logged: AtomicU64::new(0),
        }
    }

    /// Whether an accepted socket whose local address is `local` came through this listener.
    /// A listener on an unspecified address (`0.0.0.0`) accepts on every local address.
    fn serves(&self, local: &SocketAddr) -> bool {
        self.addr.port() == local.port()
            && (self.addr.ip() == local.ip() || self.addr.ip().is_unspecified())
    }

    /// Takes a place, unless `max` are taken.
    fn enter(self: &Arc<Self>, max: usize) -> Option<Place> {
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < max).then_some(open + 1)
            });
        match taken {
            Ok(_) => {
                self.gauge.inc();
                Some(Place(self.clone()))
            }
            Err(_) => {
                self.refused.inc();
                let now = crate::clock::unix_secs();
                let last = self.last_logged.load(Ordering::Relaxed);
                if now >= last + LOG_EVERY_SECS
                    && self
                        .last_logged
                        .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    log::warn!(
                        "{}: {max} client connections open (server.max_connections); closing new ones",
                        self.addr
                    );
                }
                None
            }
        }
    }
}

/// A counted connection; dropping it frees the place, however the connection ended.
struct Place(Arc<Listener>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.gauge.dec();
    }
}

/// A Pingora application that serves `A` within the snapshot's `max_connections` per listener.
pub struct Capped<A> {
    inner: Arc<A>,
    listeners: Vec<Arc<Listener>>,
    config: SharedSnapshot,
}

impl<A> Capped<A> {
    pub fn new(inner: A, listeners: &[SocketAddr], config: SharedSnapshot) -> Self {
        Capped {
            inner: Arc::new(inner),
            listeners: listeners
                .iter()
                .map(|a| Arc::new(Listener::new(*a)))
                .collect(),
            config,
        }
    }

    fn listener(&self, stream: &Stream) -> Option<&Arc<Listener>> {
        let digest = stream.get_socket_digest()?;
        let local = digest.local_addr()?.as_inet()?;
        self.listeners.iter().find(|l| l.serves(local))
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Capped<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // A socket of no known listener (none today) is served uncounted rather than refused.
        let place = match self.listener(&stream) {
            Some(listener) => {
                let max = self.config.load().server.max_connections;
                Some(Box::new(listener.enter(max)?) as kept::Kept)
            }
            None => None,
        };
        // The place is held across keep-alive requests, so the whole connection is served
        // here rather than handed back to Pingora between requests; a WebSocket that goes on
        // in a task of its own takes it along.
        kept::keeping(place, async {
            let mut stream = stream;
            while let Some(next) = self.inner.process_new(stream, shutdown).await {
                stream = next;
            }
        })
        .await;
        None
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_bounded_and_freed() {
        let l = Arc::new(Listener::new("127.0.0.1:1".parse().unwrap()));
        let a = l.enter(2).unwrap();
        let _b = l.enter(2).unwrap();
        assert!(l.enter(2).is_none());
        drop(a);
        assert!(l.enter(2).is_some());
        assert_eq!(l.open.load(Ordering::Acquire), 1);
    }

    #[test]
    fn an_unspecified_listener_serves_every_local_address() {
        let any = Listener::new("0.0.0.0:8080".parse().unwrap());
        let one = Listener::new("127.0.0.1:8080".parse().unwrap());
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let other: SocketAddr = "10.0.0.1:8080".parse().unwrap();
        assert!(any.serves(&local) && any.serves(&other));
        assert!(one.serves(&local) && !one.serves(&other));
        assert!(!one.serves(&"127.0.0.1:8081".parse().unwrap()));
    }
}

//! Start, drain and stop: readiness for systemd and load balancers, and a shutdown that loses
//! no request.
//!
//! On SIGTERM the gateway first *drains*: `/readyz` fails while requests are still served, for
//! `drain_delay`, so load balancers stop sending new connections. Then Pingora closes the
//! listeners and in-flight requests get up to `grace_period` to finish; the process exits as
//! soon as none is left rather than sleeping out the whole grace period as Pingora would.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::server::{ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora_core::services::background::BackgroundService;
use sd_notify::NotifyState;
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::metrics;
use crate::snapshot::SharedSnapshot;
use crate::websocket::registry::Registry;

/// What the process is doing, as probes see it.
#[derive(Debug, Default)]
pub struct Lifecycle {
    draining: AtomicBool,
}

impl Lifecycle {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    fn start_draining(&self, why: &str) {
        if !self.draining.swap(true, Ordering::Relaxed) {
            log::info!("{why}: draining; /readyz now fails");
            notify(&[NotifyState::Stopping]);
        }
    }
}

/// Tells systemd (`Type=notify`) about a state change; without `NOTIFY_SOCKET`, nothing.
pub fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        log::warn!("sd_notify: {e}");
    }
}

/// Pingora's signal handling, with a drain before a graceful stop.
pub struct Signals {
    pub lifecycle: Arc<Lifecycle>,
    pub drain_delay: Duration,
}

async fn next(s: &mut Option<Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let listen = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(s) => Some(s),
            Err(e) => {
                log::error!("cannot listen for {name}: {e}");
                None
            }
        };
        let mut term = listen(SignalKind::terminate(), "SIGTERM");
        let mut quit = listen(SignalKind::quit(), "SIGQUIT");
        let mut int = listen(SignalKind::interrupt(), "SIGINT");
        tokio::select! {
            _ = next(&mut term) => {
                self.lifecycle.start_draining("SIGTERM");
                tokio::time::sleep(self.drain_delay).await;
                ShutdownSignal::GracefulTerminate
            }
            // The new process takes over the same sockets, /readyz included: the instance as
            // the load balancer sees it stays ready, so there is nothing to drain first.
            _ = next(&mut quit) => ShutdownSignal::GracefulUpgrade,
            _ = next(&mut int) => ShutdownSignal::FastShutdown,
        }
    }
}

/// After the listeners close, exits as soon as no request is in flight, logs flushed. Open
/// WebSockets are told to reconnect elsewhere (Close 1001) rather than cut at the end of the
/// grace period.
pub struct Exit {
    config: SharedSnapshot,
    websockets: Arc<Registry>,
}

impl Exit {
    pub fn new(config: SharedSnapshot, websockets: Arc<Registry>) -> Self {
        Self { config, websockets }
    }
}

#[async_trait]
impl BackgroundService for Exit {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if shutdown.changed().await.is_err() {
            return;
        }
        let started = Instant::now();
        let closing = self.websockets.close_all();
        if closing > 0 {
            log::info!("closing {closing} websockets");
        }
        // A request read just as the listeners closed has a moment to register.
        tokio::time::sleep(Duration::from_millis(100)).await;
        while metrics::in_flight().get() > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        log::info!(
            "no request in flight {} ms after the listeners closed: exiting",
            started.elapsed().as_millis()
        );
        self.config.load().logs.flush();
        std::process::exit(0);
    }
}

/// Tells systemd the gateway is ready once every listener accepts connections.
pub struct Ready {
    listeners: Vec<SocketAddr>,
}

impl Ready {
    pub fn new(listeners: Vec<SocketAddr>) -> Self {
        Self { listeners }
    }
}

/// Where to connect to reach a listener bound to `addr` (a wildcard means loopback).
fn reachable(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

#[async_trait]
impl BackgroundService for Ready {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for addr in self.listeners.iter().copied().map(reachable) {
            while tokio::net::TcpStream::connect(addr).await.is_err() {
                if Instant::now() > deadline {
                    log::error!("listener {addr} does not accept connections");
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        log::info!("ready: every listener accepts connections");
        notify(&[NotifyState::Ready]);
    }
}

//! Upstreams: where a forwarded request goes.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use pingora_core::upstreams::peer::HttpPeer;

use crate::config::UpstreamConf;

/// Index of an upstream in a snapshot.
pub type UpstreamId = usize;

#[derive(Debug)]
pub struct Upstream {
    pub name: Box<str>,
    targets: Vec<SocketAddr>,
    next: AtomicUsize,
    connect_timeout: Duration,
    read_timeout: Duration,
}

impl Upstream {
    /// Resolves the targets now, so a typo fails the config check instead of requests.
    /// Every error is about `targets`.
    pub fn compile(name: &str, conf: &UpstreamConf) -> Result<Self, String> {
        if conf.targets.is_empty() {
            return Err("at least one host:port is needed".into());
        }
        let mut targets = Vec::with_capacity(conf.targets.len());
        for target in &conf.targets {
            let addr = target
                .to_socket_addrs()
                .map_err(|e| format!("cannot resolve {target:?}: {e}"))?
                .next()
                .ok_or_else(|| format!("{target:?} resolves to no address"))?;
            targets.push(addr);
        }
        Ok(Self {
            name: name.into(),
            targets,
            next: AtomicUsize::new(0),
            connect_timeout: conf.connect_timeout,
            read_timeout: conf.read_timeout,
        })
    }

    /// The peer for the next request, round robin over the targets.
    pub fn peer(&self) -> HttpPeer {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.targets.len();
        let mut peer = HttpPeer::new(self.targets[i], false, String::new());
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.read_timeout = Some(self.read_timeout);
        peer
    }
}

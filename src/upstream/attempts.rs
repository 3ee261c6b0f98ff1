//! One request's connection attempts to an upstream: which target to try next, and when to
//! give up. Proxied requests (through Pingora's `upstream_peer` / `fail_to_connect`) and the
//! WebSocket upgrades the gateway connects itself both go through it.

use std::time::Instant;

use pingora_core::upstreams::peer::HttpPeer;

use super::Upstream;

/// Why there is no peer for another attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoPeer {
    /// Every target is down or ejected.
    Unavailable,
    /// The upstream's `timeout` passed before a connection was made.
    TimedOut,
}

/// The attempts of one request.
#[derive(Debug)]
pub struct Attempts {
    /// Attempts left after the current one.
    retries_left: usize,
    /// The target of the current attempt.
    target: Option<usize>,
    /// When the exchange must be over (the upstream's `timeout`), once the first attempt
    /// starts; `None` without a timeout or when untimed.
    deadline: Option<Instant>,
    timed: bool,
}

impl Attempts {
    /// Attempts for a proxied exchange, bounded by the upstream's `timeout` from the first.
    pub fn timed(upstream: &Upstream) -> Self {
        Self {
            retries_left: upstream.retries,
            target: None,
            deadline: None,
            timed: true,
        }
    }

    /// Attempts whose connections are bounded only by the connect timeout (a WebSocket's
    /// connection lives as long as its token).
    pub fn untimed(upstream: &Upstream) -> Self {
        Self {
            timed: false,
            ..Self::timed(upstream)
        }
    }

    /// The peer for the next attempt: the next available target (by `key` on a consistent
    /// hash ring). No wait may outlast what is left of the exchange's deadline.
    pub fn next_peer(
        &mut self,
        upstream: &Upstream,
        key: Option<&[u8]>,
    ) -> Result<HttpPeer, NoPeer> {
        let now = Instant::now();
        if self.timed && self.deadline.is_none() {
            self.deadline = upstream.timeout.map(|t| now + t);
        }
        let time_left = self.deadline.map(|d| d.saturating_duration_since(now));
        if time_left.is_some_and(|t| t.is_zero()) {
            return Err(NoPeer::TimedOut);
        }
        // Every target down or ejected: answer now rather than wait on a dead one.
        let target = upstream.pick(key).ok_or(NoPeer::Unavailable)?;
        self.target = Some(target);
        Ok(upstream.peer(target, time_left))
    }

    /// The current attempt could not connect: its target is ejected. Whether another attempt
    /// may be made: nothing reached the backend, so any method may go to another target.
    pub fn failed(&mut self, upstream: &Upstream) -> bool {
        if let Some(target) = self.target {
            upstream.eject(target);
        }
        if self.retries_left == 0 {
            return false;
        }
        self.retries_left -= 1;
        true
    }

    /// The target of the current (or last) attempt.
    pub fn target(&self) -> Option<usize> {
        self.target
    }

    /// When the exchange must be over.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
}

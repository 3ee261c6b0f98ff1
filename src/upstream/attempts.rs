//! One request's connection attempts to an upstream: which target to try next, and when to
//! give up. Proxied requests (through Pingora's `upstream_peer` / `fail_to_connect`) and the
//! WebSocket upgrades the gateway connects itself both go through it.

use std::time::{Duration, Instant};

use pingora_core::upstreams::peer::HttpPeer;

use super::{RetryReason, Upstream};
use crate::{clock, metrics};

/// Why there is no peer for another attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoPeer {
    /// Every target was down or ejected before this request tried any.
    Unavailable,
    /// This request's own attempts failed, and no target is left to try: the failure (a
    /// refused connection, a TLS error) is what the client is told about, not the ejection
    /// it caused.
    Failed,
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
    /// Whether the current attempt is a half-open circuit's probe.
    probe: bool,
    /// Whether the current attempt's outcome was given to the target's circuit.
    settled: bool,
    /// When the exchange must be over (the upstream's `timeout`), once the first attempt
    /// starts; `None` without a timeout or when untimed.
    deadline: Option<Instant>,
    timed: bool,
    /// Whether an attempt of this request failed to connect.
    failed: bool,
    /// Retries of this request after the upstream had received it.
    resent: u32,
    /// The next attempt waits its backoff first.
    backoff_due: bool,
}

impl Attempts {
    /// Attempts for a proxied exchange, bounded by the upstream's `timeout` from the first.
    pub fn timed(upstream: &Upstream) -> Self {
        upstream.retry.count_request(clock::process_millis());
        Self {
            retries_left: upstream.retries,
            target: None,
            probe: false,
            settled: true,
            deadline: None,
            timed: true,
            failed: false,
            resent: 0,
            backoff_due: false,
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
        let time_left = self.time_left(now);
        if time_left.is_some_and(|t| t.is_zero()) {
            return Err(NoPeer::TimedOut);
        }
        // Every target down, ejected or open: answer now rather than wait on a dead one.
        let pick = upstream.pick(key).ok_or(if self.failed {
            NoPeer::Failed
        } else {
            NoPeer::Unavailable
        })?;
        self.target = Some(pick.target);
        self.probe = pick.probe;
        self.settled = false;
        Ok(upstream.peer(pick.target, time_left))
    }

    fn time_left(&self, now: Instant) -> Option<Duration> {
        self.deadline.map(|d| d.saturating_duration_since(now))
    }

    /// The current attempt could not connect: its target is ejected. Whether another attempt
    /// may be made: nothing reached the backend, so any method may go to another target.
    pub fn failed(&mut self, upstream: &Upstream) -> bool {
        self.settle(upstream, false);
        if let Some(target) = self.target {
            upstream.eject(target);
        }
        self.failed = true;
        if self.retries_left == 0 {
            return false;
        }
        self.retries_left -= 1;
        metrics::upstream_retry(&upstream.name, RetryReason::Connect.as_str());
        true
    }

    /// Gives the current attempt's outcome to its target's circuit, once.
    pub fn settle(&mut self, upstream: &Upstream, ok: bool) {
        if let (Some(target), false) = (self.target, self.settled) {
            upstream.record_outcome(target, self.probe, ok);
            self.settled = true;
        }
    }

    /// Whether a request the upstream received may be sent again, for `reason`: an attempt
    /// is left, time is left, and the upstream's retry budget has one. The caller has checked
    /// that the request is safe to resend.
    pub fn retry(&mut self, upstream: &Upstream, reason: RetryReason) -> bool {
        if self.retries_left == 0 || self.time_left(Instant::now()).is_some_and(|t| t.is_zero()) {
            return false;
        }
        if !upstream.retry.take_budget(clock::process_millis()) {
            metrics::retry_budget_exhausted(&upstream.name);
            return false;
        }
        self.retries_left -= 1;
        self.resent += 1;
        self.backoff_due = true;
        metrics::upstream_retry(&upstream.name, reason.as_str());
        true
    }

    /// The wait before the next attempt, when it resends a request the upstream received:
    /// jittered, and never past the deadline.
    pub fn take_backoff(&mut self, upstream: &Upstream) -> Option<Duration> {
        if !std::mem::take(&mut self.backoff_due) {
            return None;
        }
        let wait = upstream.retry.backoff(self.resent);
        Some(match self.time_left(Instant::now()) {
            Some(left) => wait.min(left),
            None => wait,
        })
    }

    /// The request is over: a probe that got no outcome gives its place back.
    pub fn finish(&mut self, upstream: &Upstream) {
        if let (Some(target), false, true) = (self.target, self.settled, self.probe) {
            upstream.release_probe(target);
            self.settled = true;
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{KeyPath, UpstreamConf};

    fn upstream(targets: &str, retries: usize) -> Upstream {
        let conf: UpstreamConf =
            toml::from_str(&format!("targets = {targets}\nretries = {retries}")).expect("conf");
        Upstream::compile(
            "u",
            &conf,
            &KeyPath::root(),
            |p| p.to_path_buf(),
            &Default::default(),
        )
        .expect("compile")
    }

    #[test]
    fn a_lone_target_that_fails_is_a_failure_not_an_outage() {
        let u = upstream("[\"127.0.0.1:9\"]", 1);
        let mut attempts = Attempts::timed(&u);
        assert!(attempts.next_peer(&u, None).is_ok());
        assert!(attempts.failed(&u), "one retry is left");
        assert_eq!(attempts.next_peer(&u, None).err(), Some(NoPeer::Failed));
        // The next request finds the target ejected before trying anything.
        let mut next = Attempts::timed(&u);
        assert_eq!(next.next_peer(&u, None).err(), Some(NoPeer::Unavailable));
    }

    #[test]
    fn retries_move_on_to_the_next_target_until_none_are_left() {
        let u = upstream("[\"127.0.0.1:9\", \"127.0.0.1:10\"]", 1);
        let mut attempts = Attempts::timed(&u);
        let first = attempts.next_peer(&u, None).map(|_| attempts.target());
        assert!(attempts.failed(&u));
        let second = attempts.next_peer(&u, None).map(|_| attempts.target());
        assert_ne!(first, second);
        assert!(!attempts.failed(&u), "no retry is left");
    }
}

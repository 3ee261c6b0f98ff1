//! Circuit breaking per target: closed (traffic flows), open (none, for `open_for`), half-open
//! (a few probe requests decide). And the cap on an upstream's requests in flight.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::window::Window;
use crate::config::{CircuitBreakerConf, Invalid, KeyPath};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CircuitState {
    Closed = 0,
    HalfOpen = 1,
    Open = 2,
}

impl CircuitState {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => CircuitState::HalfOpen,
            2 => CircuitState::Open,
            _ => CircuitState::Closed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::HalfOpen => "half_open",
            CircuitState::Open => "open",
        }
    }
}

/// The thresholds, compiled.
#[derive(Debug, Clone)]
pub struct BreakerPolicy {
    consecutive: u32,
    ratio: f64,
    min_requests: f64,
    window: Duration,
    open_millis: u64,
    probes: u32,
}

impl BreakerPolicy {
    pub fn compile(conf: &CircuitBreakerConf, at: &KeyPath) -> Result<Self, Invalid> {
        if !(0.0..=1.0).contains(&conf.failure_ratio) || conf.failure_ratio == 0.0 {
            return Err(Invalid::new(
                at.key("failure_ratio"),
                "must be above 0 and at most 1",
            ));
        }
        if conf.consecutive_failures == 0 || conf.half_open_probes == 0 {
            return Err(Invalid::new(
                at.clone(),
                "consecutive_failures and half_open_probes must be at least 1",
            ));
        }
        if conf.window.is_zero() || conf.open_for.is_zero() {
            return Err(Invalid::new(
                at.clone(),
                "window and open_for must be above zero",
            ));
        }
        Ok(Self {
            consecutive: conf.consecutive_failures,
            ratio: conf.failure_ratio,
            min_requests: f64::from(conf.min_requests.max(1)),
            window: conf.window,
            open_millis: u64::try_from(conf.open_for.as_millis()).unwrap_or(u64::MAX),
            probes: conf.half_open_probes,
        })
    }
}

/// One target's circuit.
#[derive(Debug)]
pub struct Breaker {
    state: AtomicU8,
    consecutive: AtomicU32,
    /// Outcomes (total) and failures (marked) over the window.
    outcomes: Window,
    /// Process-clock milliseconds when the circuit opened.
    opened_at: AtomicU64,
    /// Probe requests in flight while half-open.
    probing: AtomicU32,
}

/// What a finished attempt tells the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Opened,
    Closed,
}

impl Breaker {
    pub fn new(policy: &BreakerPolicy) -> Self {
        Self {
            state: AtomicU8::new(CircuitState::Closed as u8),
            consecutive: AtomicU32::new(0),
            outcomes: Window::new(policy.window),
            opened_at: AtomicU64::new(0),
            probing: AtomicU32::new(0),
        }
    }

    pub fn state(&self) -> CircuitState {
        CircuitState::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// Whether a request may go to this target now. While half-open this takes a probe slot
    /// (a `true` answer is a probe): its outcome must be [`Breaker::record`]ed or, when there
    /// is none, [`Breaker::release`]d.
    pub fn admit(&self, policy: &BreakerPolicy, now: u64) -> Admitted {
        match self.state() {
            CircuitState::Closed => Admitted::Yes,
            CircuitState::Open => {
                let since = self.opened_at.load(Ordering::Relaxed);
                if now.saturating_sub(since) < policy.open_millis {
                    return Admitted::No;
                }
                // Open long enough: one caller turns it half-open, and probes.
                let _ = self.state.compare_exchange(
                    CircuitState::Open as u8,
                    CircuitState::HalfOpen as u8,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                self.probe(policy)
            }
            CircuitState::HalfOpen => self.probe(policy),
        }
    }

    fn probe(&self, policy: &BreakerPolicy) -> Admitted {
        let taken = self
            .probing
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < policy.probes).then_some(n + 1)
            });
        if taken.is_ok() {
            Admitted::Probe
        } else {
            Admitted::No
        }
    }

    /// Gives back a probe slot whose request ended without an outcome (the client left).
    pub fn release(&self) {
        let _ = self
            .probing
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Records an attempt's outcome; says when it opened or closed the circuit.
    pub fn record(
        &self,
        policy: &BreakerPolicy,
        probe: bool,
        ok: bool,
        now: u64,
    ) -> Option<Transition> {
        if probe {
            self.release();
        }
        if self.state() == CircuitState::HalfOpen {
            return if ok { self.close() } else { self.open(now) };
        }
        self.outcomes.add(now, !ok);
        if ok {
            self.consecutive.store(0, Ordering::Relaxed);
            return None;
        }
        let streak = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        let counts = self.outcomes.counts(now);
        let over_ratio =
            counts.total >= policy.min_requests && counts.marked >= counts.total * policy.ratio;
        if streak >= policy.consecutive || over_ratio {
            return self.open(now);
        }
        None
    }

    fn open(&self, now: u64) -> Option<Transition> {
        self.opened_at.store(now, Ordering::Relaxed);
        let before = self.state.swap(CircuitState::Open as u8, Ordering::Relaxed);
        (before != CircuitState::Open as u8).then_some(Transition::Opened)
    }

    fn close(&self) -> Option<Transition> {
        self.consecutive.store(0, Ordering::Relaxed);
        self.outcomes.clear();
        let before = self
            .state
            .swap(CircuitState::Closed as u8, Ordering::Relaxed);
        (before != CircuitState::Closed as u8).then_some(Transition::Closed)
    }

    /// Takes over what `other` (the same target before a reload) knew.
    pub fn copy_from(&self, other: &Breaker) {
        self.state
            .store(other.state.load(Ordering::Relaxed), Ordering::Relaxed);
        self.opened_at
            .store(other.opened_at.load(Ordering::Relaxed), Ordering::Relaxed);
        self.consecutive
            .store(other.consecutive.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// The breaker's answer for one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    Yes,
    /// Yes, as one of the half-open circuit's probes.
    Probe,
    No,
}

/// Requests in flight to an upstream, shared across reloads.
#[derive(Debug, Default, Clone)]
pub struct InFlight(Arc<AtomicUsize>);

/// One request's place in an [`InFlight`] count, given back when dropped.
#[derive(Debug)]
pub struct InFlightGuard(Arc<AtomicUsize>);

impl InFlight {
    /// A place, if fewer than `max` are taken.
    pub fn enter(&self, max: usize) -> Option<InFlightGuard> {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| InFlightGuard(self.0.clone()))
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(toml: &str) -> BreakerPolicy {
        let conf: CircuitBreakerConf = toml::from_str(toml).expect("conf");
        BreakerPolicy::compile(&conf, &KeyPath::root()).expect("compile")
    }

    #[test]
    fn consecutive_failures_open_then_a_probe_closes() {
        let p = policy("consecutive_failures = 3\nopen_for = \"1s\"");
        let b = Breaker::new(&p);
        assert_eq!(b.record(&p, false, false, 0), None);
        assert_eq!(b.record(&p, false, false, 0), None);
        assert_eq!(b.record(&p, false, false, 0), Some(Transition::Opened));
        assert_eq!(b.admit(&p, 500), Admitted::No);
        // After open_for, one probe at a time.
        assert_eq!(b.admit(&p, 1_000), Admitted::Probe);
        assert_eq!(b.state(), CircuitState::HalfOpen);
        assert_eq!(b.admit(&p, 1_000), Admitted::No);
        // The probe fails: open again, for another open_for.
        assert_eq!(b.record(&p, true, false, 1_100), Some(Transition::Opened));
        assert_eq!(b.admit(&p, 2_000), Admitted::No);
        assert_eq!(b.admit(&p, 2_100), Admitted::Probe);
        assert_eq!(b.record(&p, true, true, 2_150), Some(Transition::Closed));
        assert_eq!(b.admit(&p, 2_150), Admitted::Yes);
    }

    #[test]
    fn a_failure_ratio_opens_once_there_are_enough_requests() {
        let p = policy("consecutive_failures = 100\nfailure_ratio = 0.5\nmin_requests = 10");
        let b = Breaker::new(&p);
        for i in 0..9 {
            assert_eq!(b.record(&p, false, i % 2 == 0, 0), None, "{i}");
        }
        // The tenth outcome, a failure: 5 of 10.
        assert_eq!(b.record(&p, false, false, 0), Some(Transition::Opened));
    }

    #[test]
    fn in_flight_places_are_given_back() {
        let f = InFlight::default();
        let a = f.enter(2).expect("first");
        let _b = f.enter(2).expect("second");
        assert!(f.enter(2).is_none());
        drop(a);
        assert!(f.enter(2).is_some());
    }
}

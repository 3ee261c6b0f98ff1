//! Retries of requests the upstream received: which answers call for one, whether the budget
//! allows it, and how long to wait first.

use std::time::Duration;

use http::Method;

use super::window::Window;
use crate::config::{Invalid, KeyPath, RetryBudgetConf, UpstreamConf};

/// Why an attempt is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    /// The connection failed: nothing reached the backend.
    Connect,
    /// The upstream answered with a status in `retry_on_status`.
    Status,
    /// The upstream did not answer within `read_timeout`.
    Timeout,
}

impl RetryReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RetryReason::Connect => "connect",
            RetryReason::Status => "status",
            RetryReason::Timeout => "timeout",
        }
    }
}

/// An upstream's retry policy, compiled.
#[derive(Debug)]
pub struct RetryPolicy {
    statuses: Vec<u16>,
    pub on_timeout: bool,
    backoff: Duration,
    budget: Budget,
}

/// Retries over requests in a sliding window.
#[derive(Debug)]
struct Budget {
    ratio: f64,
    min: f64,
    /// Requests (total) and retries (marked).
    window: Window,
}

impl RetryPolicy {
    pub fn compile(conf: &UpstreamConf, at: &KeyPath) -> Result<Self, Invalid> {
        if let Some(s) = conf
            .retry_on_status
            .iter()
            .find(|s| !(500..=599).contains(*s))
        {
            return Err(Invalid::new(
                at.key("retry_on_status"),
                format!("{s}: only 5xx answers are retried"),
            ));
        }
        let RetryBudgetConf {
            ratio,
            min_retries,
            window,
        } = conf.retry_budget.clone();
        if !(0.0..=1.0).contains(&ratio) || window.is_zero() {
            return Err(Invalid::new(
                at.key("retry_budget"),
                "ratio must be between 0 and 1, and window above zero",
            ));
        }
        Ok(Self {
            statuses: conf.retry_on_status.clone(),
            on_timeout: conf.retry_on_timeout,
            backoff: conf.retry_backoff,
            budget: Budget {
                ratio,
                min: f64::from(min_retries),
                window: Window::new(window),
            },
        })
    }

    /// Whether this answer calls for a retry.
    pub fn retries_status(&self, status: u16) -> bool {
        self.statuses.contains(&status)
    }

    /// Counts a request to the upstream, for the budget.
    pub fn count_request(&self, now: u64) {
        self.budget.window.add(now, false);
    }

    /// Takes one retry from the budget, if it has one left.
    pub fn take_budget(&self, now: u64) -> bool {
        let counts = self.budget.window.counts(now);
        let allowed = (counts.total * self.budget.ratio).max(self.budget.min);
        if counts.marked >= allowed {
            return false;
        }
        self.budget.window.mark(now);
        true
    }

    /// The wait before retry number `n` (1 for the first): full jitter over an exponential
    /// bound, at most ten times the base.
    pub fn backoff(&self, n: u32) -> Duration {
        let cap = self.backoff.saturating_mul(10);
        let bound = self
            .backoff
            .saturating_mul(1u32 << n.saturating_sub(1).min(16))
            .min(cap);
        bound.mul_f64(fastrand::f64())
    }
}

/// Whether a request may be sent again once the upstream has seen it: an idempotent method
/// (RFC 9110 §9.2.2), or a client's `Idempotency-Key`.
pub fn idempotent(method: &Method, headers: &http::HeaderMap) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    ) || headers.contains_key("idempotency-key")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(extra: &str) -> RetryPolicy {
        let conf: UpstreamConf =
            toml::from_str(&format!("targets = [\"127.0.0.1:1\"]\n{extra}")).expect("conf");
        RetryPolicy::compile(&conf, &KeyPath::root()).expect("compile")
    }

    #[test]
    fn the_budget_allows_a_share_of_the_requests() {
        let p = policy("retry_budget = { ratio = 0.2, min_retries = 2 }");
        let now = 1_000;
        // With few requests, the minimum holds.
        assert!(p.take_budget(now));
        assert!(p.take_budget(now));
        assert!(!p.take_budget(now));
        // 100 requests allow 20 retries in all.
        for _ in 0..100 {
            p.count_request(now);
        }
        let granted = (0..50).filter(|_| p.take_budget(now)).count();
        assert_eq!(granted, 18);
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let p = policy("retry_backoff = \"100ms\"");
        for _ in 0..50 {
            assert!(p.backoff(1) <= Duration::from_millis(100));
            assert!(p.backoff(3) <= Duration::from_millis(400));
            assert!(p.backoff(30) <= Duration::from_secs(1));
        }
    }

    #[test]
    fn only_safe_requests_are_retried() {
        let none = http::HeaderMap::new();
        assert!(idempotent(&Method::GET, &none));
        assert!(idempotent(&Method::PUT, &none));
        assert!(!idempotent(&Method::POST, &none));
        let mut keyed = http::HeaderMap::new();
        keyed.insert("idempotency-key", http::HeaderValue::from_static("k1"));
        assert!(idempotent(&Method::POST, &keyed));
        let conf = toml::from_str("targets = [\"a:1\"]\nretry_on_status = [404]").expect("conf");
        assert!(RetryPolicy::compile(&conf, &KeyPath::root()).is_err());
    }
}

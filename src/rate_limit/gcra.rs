//! The limit arithmetic, shared by the local and the Redis backend.
//!
//! A limit of N per period T is a Generic Cell Rate Algorithm (the virtual-scheduling form of a
//! leaky bucket): each request advances a consumer's theoretical arrival time (TAT) by T/N, and
//! a request is admitted when the advanced TAT stays within T of now. A fresh consumer can send
//! N at once; after that, one more every T/N. There are no windows, so nothing resets at a
//! boundary: a consumer can never get 2N through in a moment. State is one number per consumer
//! and limit; a TAT in the past is the same as no state at all.

use std::time::Duration;

/// `N per period`, as written in the config: `"500/hour"`, `"20/second"`, `"100/10s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub count: u64,
    /// Microseconds.
    pub period: u64,
}

/// Longest period accepted: beyond a year, a limit is a quota system's job.
const MAX_PERIOD_US: u64 = 366 * 24 * 3600 * 1_000_000;

impl Limit {
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?}: expected COUNT/PERIOD, e.g. \"500/hour\" or \"100/10s\"");
        let (count, period) = s.split_once('/').ok_or_else(bad)?;
        let count: u64 = count.trim().parse().map_err(|_| bad())?;
        let period = match period.trim() {
            "second" | "sec" | "s" => Duration::from_secs(1),
            "minute" | "min" | "m" => Duration::from_secs(60),
            "hour" | "h" => Duration::from_secs(3600),
            "day" | "d" => Duration::from_secs(86_400),
            other => humantime::parse_duration(other).map_err(|_| bad())?,
        };
        let period = u64::try_from(period.as_micros()).unwrap_or(u64::MAX);
        if count == 0 {
            return Err(format!("{s:?}: the count must be at least 1"));
        }
        if period > MAX_PERIOD_US {
            return Err(format!("{s:?}: the period must be at most a year"));
        }
        if period / count == 0 {
            return Err(format!("{s:?}: more than one request per microsecond"));
        }
        Ok(Self { count, period })
    }

    /// Time between two requests at the sustained rate.
    pub fn interval(&self) -> u64 {
        self.period / self.count
    }

    /// The period in whole seconds, as headers state it (at least 1).
    pub fn window_secs(&self) -> u64 {
        self.period.div_ceil(1_000_000).max(1)
    }
}

/// One limit's answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Check {
    pub allowed: bool,
    /// The TAT to store if the request goes ahead.
    pub new_tat: u64,
    /// Requests that could still be sent right now.
    pub remaining: u64,
    /// Until the full quota is back.
    pub reset: u64,
    /// Until this request would be admitted; 0 when it is.
    pub retry_after: u64,
}

/// Decides one request against one limit, given the stored TAT (0 if none) and now, both in
/// microseconds on the same clock.
pub fn check(limit: &Limit, tat: u64, now: u64) -> Check {
    let interval = limit.interval();
    let tat = tat.max(now);
    let new_tat = tat.saturating_add(interval);
    let debt = new_tat - now;
    if debt > limit.period {
        Check {
            allowed: false,
            new_tat: tat,
            remaining: 0,
            reset: tat - now,
            retry_after: debt - limit.period,
        }
    } else {
        Check {
            allowed: true,
            new_tat,
            remaining: (limit.period - debt) / interval,
            reset: debt,
            retry_after: 0,
        }
    }
}

/// Several limits decided together: a request counts against all of them or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Combined {
    pub allowed: bool,
    /// The limit that headers report: the one that refused, or the one nearest to refusing.
    pub binding: usize,
    pub check: Check,
}

pub fn combine(checks: &[Check]) -> Option<Combined> {
    let allowed = checks.iter().all(|c| c.allowed);
    let (binding, check) = checks.iter().copied().enumerate().min_by_key(|(_, c)| {
        if allowed {
            // Fewest remaining; on a tie, the one that takes longest to refill.
            (c.remaining, u64::MAX - c.reset)
        } else {
            // Refused: the longest wait is the true one.
            (u64::from(c.allowed), u64::MAX - c.retry_after)
        }
    })?;
    Some(Combined {
        allowed,
        binding,
        check,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    #[test]
    fn parses_what_people_write() {
        assert_eq!(
            Limit::parse("500/hour").unwrap(),
            Limit {
                count: 500,
                period: 3600 * S
            }
        );
        assert_eq!(Limit::parse("20/second").unwrap().period, S);
        assert_eq!(Limit::parse("100/10s").unwrap().period, 10 * S);
        assert_eq!(Limit::parse("5 / 2 minutes").unwrap().period, 120 * S);
        for bad in [
            "",
            "500",
            "0/hour",
            "x/hour",
            "5/fortnightly",
            "2000000/1s",
            "1/2y",
        ] {
            assert!(Limit::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn admits_n_then_one_per_interval() {
        let l = Limit::parse("5/10s").unwrap();
        let now = 1_000 * S;
        let mut tat = 0;
        for i in 0..5 {
            let c = check(&l, tat, now);
            assert!(c.allowed);
            assert_eq!(c.remaining, 4 - i);
            tat = c.new_tat;
        }
        let refused = check(&l, tat, now);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, 2 * S);
        assert_eq!(refused.reset, 10 * S);
        assert_eq!(refused.new_tat, tat);
        assert!(!check(&l, tat, now + 2 * S - 1).allowed);
        assert!(check(&l, tat, now + 2 * S).allowed);
        // A full period later the whole quota is back.
        assert_eq!(check(&l, tat, now + 10 * S).remaining, 4);
    }

    #[test]
    fn combined_limits_report_the_binding_one() {
        let burst = Limit::parse("2/second").unwrap();
        let long = Limit::parse("100/hour").unwrap();
        let now = 50 * S;
        let c = combine(&[check(&burst, 0, now), check(&long, 0, now)]).unwrap();
        assert!(c.allowed);
        assert_eq!((c.binding, c.check.remaining), (0, 1));
        let exhausted = now + 2 * S; // burst bucket holds 2 requests of 0.5 s
        let c = combine(&[check(&burst, exhausted - S / 2, now), check(&long, 0, now)]).unwrap();
        assert!(!c.allowed);
        assert_eq!(c.binding, 0);
        assert!(combine(&[]).is_none());
    }
}

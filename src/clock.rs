//! The gateway's one clock. Wall time for what is compared with token claims and written to
//! logs; a monotonic process clock for what is scheduled or counted (limits, ejections,
//! health-check rounds), which a wall-clock step must not disturb.

use std::sync::LazyLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

/// Seconds since the Unix epoch, as token claims count time.
pub fn unix_secs() -> u64 {
    since_epoch().as_secs()
}

/// Milliseconds since the Unix epoch.
pub fn unix_millis() -> u64 {
    u64::try_from(since_epoch().as_millis()).unwrap_or(u64::MAX)
}

/// Seconds since the Unix epoch with a fraction, as Prometheus timestamps are written.
pub fn unix_secs_f64() -> f64 {
    since_epoch().as_secs_f64()
}

/// Nanoseconds since the Unix epoch: unique enough for a token id.
pub fn unix_nanos() -> u128 {
    since_epoch().as_nanos()
}

/// Now, as the logs write it: RFC 3339, UTC, milliseconds.
pub fn rfc3339_millis() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

static START: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Time since the process clock started (its first use).
fn process_elapsed() -> Duration {
    START.elapsed()
}

/// Milliseconds on the process clock.
pub fn process_millis() -> u64 {
    u64::try_from(process_elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Microseconds on the process clock.
pub fn process_micros() -> u64 {
    u64::try_from(process_elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// The instant at which a token valid until `until` (seconds since the epoch) stops being
/// accepted; `None` for a token that does not expire.
pub fn instant_of_unix(until: Option<u64>) -> Option<Instant> {
    let left = Duration::from_secs(until?).saturating_sub(since_epoch());
    Some(Instant::now() + left)
}

/// How long until `until` (seconds since the epoch); unbounded without one.
pub fn until_unix(until: Option<u64>) -> Duration {
    match until {
        None => Duration::MAX,
        Some(t) => Duration::from_secs(t.saturating_sub(unix_secs())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_deadlines_are_now_and_none_never_ends() {
        assert_eq!(until_unix(None), Duration::MAX);
        assert_eq!(until_unix(Some(1)), Duration::ZERO);
        assert!(until_unix(Some(unix_secs() + 30)) <= Duration::from_secs(30));
        let past = instant_of_unix(Some(1)).unwrap_or_else(Instant::now);
        assert!(past <= Instant::now());
        assert!(instant_of_unix(None).is_none());
    }

    #[test]
    fn the_process_clock_moves_forward() {
        let a = process_micros();
        std::thread::sleep(Duration::from_millis(2));
        assert!(process_micros() > a);
    }
}

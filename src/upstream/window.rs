//! Two counts over a sliding window, lock-free: the current fixed interval, plus the previous
//! one weighted by how much of it the sliding window still covers. Racing writers at an
//! interval's turn may lose a few counts; for budgets and ratios that is noise.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// One interval's counts, tagged with the interval they belong to.
#[derive(Debug, Default)]
struct Bucket {
    interval: AtomicU64,
    total: AtomicU64,
    marked: AtomicU64,
}

/// Counts events, some of them marked (retries among requests, failures among outcomes).
#[derive(Debug)]
pub struct Window {
    millis: u64,
    buckets: [Bucket; 2],
}

/// What the window holds now, interpolated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Counts {
    pub total: f64,
    pub marked: f64,
}

impl Window {
    pub fn new(length: Duration) -> Self {
        Self {
            millis: u64::try_from(length.as_millis()).unwrap_or(u64::MAX).max(1),
            buckets: Default::default(),
        }
    }

    /// The bucket for `now` (process-clock milliseconds), emptied if it held an old interval.
    fn bucket(&self, now: u64) -> &Bucket {
        let interval = now / self.millis;
        let b = &self.buckets[(interval % 2) as usize];
        let seen = b.interval.load(Ordering::Relaxed);
        if seen != interval
            && b.interval
                .compare_exchange(seen, interval, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            b.total.store(0, Ordering::Relaxed);
            b.marked.store(0, Ordering::Relaxed);
        }
        b
    }

    /// Counts one event at `now`, marked or not.
    pub fn add(&self, now: u64, marked: bool) {
        let b = self.bucket(now);
        b.total.fetch_add(1, Ordering::Relaxed);
        if marked {
            b.marked.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one marked event without counting it in the total (a retry is not a request).
    pub fn mark(&self, now: u64) {
        self.bucket(now).marked.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts over the window ending at `now`.
    pub fn counts(&self, now: u64) -> Counts {
        let interval = now / self.millis;
        let current = self.bucket(now);
        let previous = &self.buckets[((interval + 1) % 2) as usize];
        let mut counts = Counts {
            total: current.total.load(Ordering::Relaxed) as f64,
            marked: current.marked.load(Ordering::Relaxed) as f64,
        };
        if interval > 0 && previous.interval.load(Ordering::Relaxed) == interval - 1 {
            let covered = 1.0 - (now % self.millis) as f64 / self.millis as f64;
            counts.total += previous.total.load(Ordering::Relaxed) as f64 * covered;
            counts.marked += previous.marked.load(Ordering::Relaxed) as f64 * covered;
        }
        counts
    }

    /// Forgets everything (a circuit that closes starts over).
    pub fn clear(&self) {
        for b in &self.buckets {
            b.total.store(0, Ordering::Relaxed);
            b.marked.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_previous_interval_fades_out_as_the_window_slides() {
        let w = Window::new(Duration::from_secs(10));
        for _ in 0..10 {
            w.add(5_000, false);
        }
        w.add(9_000, true);
        assert_eq!(w.counts(9_999).total, 11.0);
        // Halfway into the next interval, half of the previous one counts.
        w.add(15_000, false);
        let c = w.counts(15_000);
        assert_eq!(c.total, 1.0 + 5.5);
        assert_eq!(c.marked, 0.5);
        // Two intervals on, nothing of it is left.
        assert_eq!(w.counts(30_000).total, 0.0);
    }
}

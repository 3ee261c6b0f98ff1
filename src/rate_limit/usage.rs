//! Who uses the gateway most: per tier, the consumers with the most requests and with the
//! most refusals, in bounded memory. Counts are estimated by a count-min sketch (never under
//! the true count; over it by a little when many consumers share a slot); a short list keeps
//! the `n` highest. Kept per tier name for the life of the process, so reloads keep them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::{Arc, Mutex};

use once_cell::sync::Lazy;
use pingora_limits::estimator::Estimator;

/// Rows and columns of each sketch: 4 × 2048 counters, 64 KiB.
const HASHES: usize = 4;
const SLOTS: usize = 2048;

/// The `n` consumers with the highest counts.
pub struct TopN {
    sketch: Estimator,
    n: usize,
    /// Consumer and estimated count, at most `n`.
    ranked: Mutex<Vec<(Box<str>, isize)>>,
    /// The lowest count ranked once the list is full: below it, nothing to do.
    floor: AtomicIsize,
}

impl std::fmt::Debug for TopN {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopN")
            .field("n", &self.n)
            .finish_non_exhaustive()
    }
}

impl TopN {
    pub fn new(n: usize) -> Self {
        Self {
            sketch: Estimator::new(HASHES, SLOTS),
            n,
            ranked: Mutex::new(Vec::with_capacity(n)),
            floor: AtomicIsize::new(0),
        }
    }

    /// Counts one event of `consumer`.
    pub fn observe(&self, consumer: &str) {
        let estimate = self.sketch.incr(consumer, 1);
        // A newcomer below the floor, or a ranked consumer between refreshes (every 16th
        // event): no lock on the request path.
        if estimate < self.floor.load(Ordering::Relaxed) || (estimate > 1 && estimate % 16 != 0) {
            return;
        }
        // Never wait: a skipped update is made up by the consumer's next one.
        let Ok(mut ranked) = self.ranked.try_lock() else {
            return;
        };
        if let Some(entry) = ranked.iter_mut().find(|(c, _)| **c == *consumer) {
            entry.1 = estimate;
        } else if ranked.len() < self.n {
            ranked.push((consumer.into(), estimate));
        } else {
            // The ranked counts lag by up to 15 events: read them afresh before evicting one.
            for entry in ranked.iter_mut() {
                entry.1 = self.sketch.get(&*entry.0);
            }
            if let Some(lowest) = ranked.iter_mut().min_by_key(|(_, n)| *n) {
                if estimate > lowest.1 {
                    *lowest = (consumer.into(), estimate);
                }
            }
        }
        if ranked.len() == self.n {
            let floor = ranked.iter().map(|(_, n)| *n).min().unwrap_or(0);
            self.floor.store(floor, Ordering::Relaxed);
        }
    }

    /// The ranked consumers with their current estimates, highest first.
    pub fn ranking(&self) -> Vec<(String, i64)> {
        let ranked = match self.ranked.lock() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let mut out: Vec<(String, i64)> = ranked
            .iter()
            .map(|(c, _)| (c.to_string(), self.sketch.get(&**c) as i64))
            .collect();
        out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        out
    }
}

/// One tier's rankings.
#[derive(Debug)]
pub struct Usage {
    pub requests: TopN,
    pub limited: TopN,
}

static TIERS: Lazy<Mutex<HashMap<String, Arc<Usage>>>> = Lazy::new(Default::default);

/// The rankings of tier `name`, kept across reloads; `None` when `n` is 0.
pub fn for_tier(name: &str, n: usize) -> Option<Arc<Usage>> {
    if n == 0 {
        return None;
    }
    let mut tiers = TIERS.lock().unwrap_or_else(|p| p.into_inner());
    let usage = tiers.entry(name.to_string()).or_insert_with(|| {
        Arc::new(Usage {
            requests: TopN::new(n),
            limited: TopN::new(n),
        })
    });
    Some(usage.clone())
}

/// Every tier's rankings, for the metrics.
pub fn all() -> Vec<(String, Arc<Usage>)> {
    let tiers = TIERS.lock().unwrap_or_else(|p| p.into_inner());
    tiers.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heaviest_consumers_are_ranked_among_many_light_ones() {
        let top = TopN::new(3);
        for i in 0..5_000 {
            top.observe(&format!("light-{i}"));
        }
        for (name, count) in [("a", 900), ("b", 600), ("c", 300)] {
            for _ in 0..count {
                top.observe(name);
            }
        }
        for i in 5_000..10_000 {
            top.observe(&format!("light-{i}"));
        }
        let ranking = top.ranking();
        let names: Vec<&str> = ranking.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"], "{ranking:?}");
        // Estimates are never below the truth, and close to it here.
        assert!((900..=960).contains(&ranking[0].1), "{ranking:?}");
    }
}

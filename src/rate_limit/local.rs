//! The in-process backend: limits of one gateway instance.

use std::hash::RandomState;

use super::gcra::{self, Check, Combined, Limit};
use super::table::BoundedTable;
use crate::metrics;

/// Counters of one process. Survives reloads, so a reload does not hand out fresh quotas.
pub struct LocalStore {
    table: BoundedTable<u64>,
    max_keys: usize,
    /// Keys are hashes with a per-process seed: a client cannot aim its ids at one shard.
    hasher: RandomState,
}

impl LocalStore {
    pub fn new(max_keys: usize) -> Self {
        Self {
            table: BoundedTable::new(max_keys, metrics::rate_limit_evictions("counters")),
            max_keys,
            hasher: RandomState::new(),
        }
    }

    pub fn hasher(&self) -> &RandomState {
        &self.hasher
    }

    pub fn max_keys(&self) -> usize {
        self.max_keys
    }

    /// Decides one request. Every key of one consumer lives in the shard of `shard_key`, so
    /// checking and committing all its limits happens under one lock.
    pub fn decide(
        &self,
        shard_key: u64,
        keys: &[u64],
        limits: &[Limit],
        now: u64,
    ) -> Option<Combined> {
        let mut shard = self.table.shard(shard_key);
        let checks: Vec<Check> = keys
            .iter()
            .zip(limits)
            .map(|(&k, l)| gcra::check(l, shard.get(k).unwrap_or(0), now))
            .collect();
        let combined = gcra::combine(&checks)?;
        if combined.allowed {
            for (&k, c) in keys.iter().zip(&checks) {
                shard.insert(k, c.new_tat, now);
            }
        }
        Some(combined)
    }

    /// Counters held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.table.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_committed_together_or_not_at_all() {
        let store = LocalStore::new(1_000);
        let burst = Limit::parse("2/second").unwrap();
        let long = Limit::parse("3/hour").unwrap();
        let limits = [burst, long];
        let keys = [11, 12];
        let mut now = 10_000_000;
        let mut admitted = 0;
        for _ in 0..20 {
            let c = store.decide(7, &keys, &limits, now).unwrap();
            admitted += u32::from(c.allowed);
            now += 100_000; // 10 per second: the burst limit refuses some
        }
        // Only the long limit's 3 got through, and refused requests consumed nothing.
        assert_eq!(admitted, 3);
        assert_eq!(store.len(), 2);
    }
}

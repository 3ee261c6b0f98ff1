//! A bounded, sharded map of rate-limit state, keyed by 64-bit hashes.
//!
//! Memory stays bounded however many consumers appear: when a shard is full, entries whose
//! state has run out are dropped first (they mean the same as no entry), then the quarter
//! nearest to running out. A flood of one-off callers therefore evicts itself, while a
//! consumer that is actually being held back keeps its state longest.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Mutex, MutexGuard, PoisonError};

use prometheus::IntCounter;

/// State that stops mattering at some instant.
pub trait Expiring: Copy {
    /// Microseconds on the limiter's clock after which the entry carries no information.
    fn expires_at(&self) -> u64;
}

impl Expiring for u64 {
    fn expires_at(&self) -> u64 {
        *self
    }
}

const SHARDS: usize = 64;

pub struct BoundedTable<V> {
    shards: Box<[Mutex<Shard<V>>]>,
}

pub struct Shard<V> {
    map: HashMap<u64, V, BuildHasherDefault<PrehashedKey>>,
    cap: usize,
    evictions: IntCounter,
}

impl<V: Expiring> BoundedTable<V> {
    pub fn new(max_keys: usize, evictions: IntCounter) -> Self {
        let cap = max_keys.div_ceil(SHARDS).max(1);
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    map: HashMap::default(),
                    cap,
                    evictions: evictions.clone(),
                })
            })
            .collect();
        Self { shards }
    }

    /// The shard that holds every key derived from `shard_key`, locked.
    pub fn shard(&self, shard_key: u64) -> MutexGuard<'_, Shard<V>> {
        // High bits pick the shard; the map inside hashes on the low bits.
        let i = (shard_key >> 58) as usize % SHARDS;
        // A panic while holding the lock cannot leave a map of plain numbers inconsistent.
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).map.len())
            .sum()
    }
}

impl<V: Expiring> Shard<V> {
    pub fn get(&self, key: u64) -> Option<V> {
        self.map.get(&key).copied()
    }

    pub fn insert(&mut self, key: u64, value: V, now: u64) {
        if self.map.len() >= self.cap && !self.map.contains_key(&key) {
            self.make_room(now);
        }
        self.map.insert(key, value);
    }

    fn make_room(&mut self, now: u64) {
        let before = self.map.len();
        self.map.retain(|_, v| v.expires_at() > now);
        if self.map.len() >= self.cap - self.cap / 8 {
            // Sampled lower quartile of expiry: cheap, and frees a quarter, so the O(n) sweep
            // runs once per cap/4 inserts at most.
            let step = (self.map.len() / 64).max(1);
            let mut sample: Vec<u64> = self
                .map
                .values()
                .step_by(step)
                .map(Expiring::expires_at)
                .collect();
            sample.sort_unstable();
            let threshold = sample.get(sample.len() / 4).copied().unwrap_or(u64::MAX);
            self.map.retain(|_, v| v.expires_at() > threshold);
            if self.map.len() >= self.cap {
                // Every sampled expiry was equal: nothing to prefer, make room anyway.
                self.map.clear();
            }
        }
        self.evictions.inc_by((before - self.map.len()) as u64);
    }
}

/// Keys are already uniform hashes; hashing them again would only cost time.
#[derive(Default)]
pub struct PrehashedKey(u64);

impl Hasher for PrehashedKey {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(max: usize) -> BoundedTable<u64> {
        BoundedTable::new(max, IntCounter::new("t", "t").unwrap())
    }

    fn spread(i: u64) -> u64 {
        // Any well-mixed function of i will do.
        i.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    #[test]
    fn a_flood_of_keys_stays_within_bounds() {
        let t = table(6_400);
        let now = 1_000;
        for i in 0..1_000_000u64 {
            let k = spread(i);
            // Every entry is live: the worst case.
            t.shard(k).insert(k, now + 1 + i % 500, now);
        }
        assert!(t.len() <= 6_400, "{}", t.len());
        assert!(t.len() >= 3_000, "evicted far too much: {}", t.len());
    }

    #[test]
    fn entries_holding_back_a_consumer_survive_a_flood() {
        let t = table(640);
        let now = 1_000_000;
        let heavy = spread(u64::MAX);
        t.shard(heavy).insert(heavy, now + 3_600_000_000, now);
        for i in 0..100_000u64 {
            let k = spread(i);
            t.shard(k).insert(k, now + 36_000, now);
        }
        assert_eq!(t.shard(heavy).get(heavy), Some(now + 3_600_000_000));
    }

    #[test]
    fn expired_entries_go_first() {
        let t = table(64);
        let k = spread(1);
        let mut shard = t.shard(k);
        shard.insert(k, 10, 0);
        shard.insert(spread(2), 5, 20); // cap of 1 per shard: the expired one is dropped
        assert_eq!(shard.get(k), None);
        assert_eq!(shard.get(spread(2)), Some(5));
    }
}

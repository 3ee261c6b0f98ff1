//! Tokens already verified: a token's signature and claims are checked once, not on every
//! request that carries it.
//!
//! Entries are keyed by a keyed 128-bit hash of the token, so the token itself is never kept.
//! What depends on the connection or on the time is checked again on every hit (see
//! [`Verified`]); what depends only on the token's bytes is not.

use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::{Arc, LazyLock};

use quick_cache::sync::Cache;
use siphasher::sip128::{Hasher128, SipHasher13};

use super::{IssuerId, Principal};

/// A token's key in the caches: its SipHash-1-3 with a 128-bit output, under a key drawn at
/// random when the process starts.
///
/// Two tokens with one key would share an entry, so a key must not be forgeable. SipHash is a
/// pseudorandom function made for inputs chosen by an attacker: without the key, which never
/// leaves the process and whose outputs are never shown, a token made to collide with a
/// remembered one succeeds with a chance of about one in 2^128 per remembered token. Knowing
/// the key would not help either, since aiming at an entry takes its token. SHA-256, which
/// keyed the caches before, cost 2.5 times as much per request for no more safety here.
pub type Digest = u128;

static KEYS: LazyLock<SipHasher13> = LazyLock::new(|| {
    // The standard library keys its hash maps from the operating system's random source:
    // two of its hashes are two secret, unpredictable words.
    let seed = RandomState::new();
    SipHasher13::new_with_keys(seed.hash_one(0u8), seed.hash_one(1u8))
});

pub fn digest(token: &str) -> Digest {
    let mut hasher = *KEYS;
    hasher.write(token.as_bytes());
    hasher.finish128().as_u128()
}

/// A token that passed every check, and what must hold again each time it is used.
pub struct Verified {
    pub principal: Arc<Principal>,
    pub issuer: IssuerId,
    /// The generation of the issuer's keys it was verified with: a key change voids it.
    pub key_generation: u64,
    /// The SHA-256 of the client certificate the token is bound to (`cnf.x5t#S256`).
    pub bound_to: Option<Vec<u8>>,
}

/// A token refused for a reason that holds as long as the keys do (a bad signature, an
/// expired or wrongly addressed token): a client retrying it is answered without another
/// signature check.
#[derive(Clone, Copy)]
pub struct Refused {
    pub error: super::AuthError,
    /// The sum of every issuer's key generation at the time: any key change voids it.
    pub key_epoch: u64,
}

/// A bounded map from token digests to what is known of them; entries that are least used go
/// first when it is full. Expired entries are refused on lookup and pushed out by newer ones.
pub struct TokenCache<V> {
    entries: Option<Cache<Digest, V>>,
}

pub type VerifiedTokens = TokenCache<Arc<Verified>>;
pub type RefusedTokens = TokenCache<Refused>;

impl<V: Clone> TokenCache<V> {
    /// A cache of at most `max_entries` tokens; none at all for 0.
    pub fn new(max_entries: usize) -> Self {
        Self {
            entries: (max_entries > 0).then(|| Cache::new(max_entries)),
        }
    }

    pub fn enabled(&self) -> bool {
        self.entries.is_some()
    }

    pub fn get(&self, key: &Digest) -> Option<V> {
        self.entries.as_ref()?.get(key)
    }

    pub fn insert(&self, key: Digest, value: V) {
        if let Some(entries) = &self.entries {
            entries.insert(key, value);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.as_ref().map_or(0, Cache::len)
    }
}

impl<V: Clone> Default for TokenCache<V> {
    fn default() -> Self {
        Self::new(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authenticate::PrincipalKind;

    fn verified(subject: &str) -> Arc<Verified> {
        Arc::new(Verified {
            principal: Arc::new(Principal {
                issuer: "dev".into(),
                kind: PrincipalKind::User,
                subject: subject.into(),
                client_id: None,
                tenant: None,
                roles: vec![],
                scopes: vec![],
                valid_until: None,
                extra: vec![],
                derived: Default::default(),
            }),
            issuer: IssuerId(0),
            key_generation: 1,
            bound_to: None,
        })
    }

    #[test]
    fn stays_within_its_bound() {
        let cache = VerifiedTokens::new(100);
        for i in 0..10_000 {
            let token = format!("token-{i}");
            cache.insert(digest(&token), verified(&token));
        }
        assert!(cache.len() <= 100, "{} entries", cache.len());
        let last = cache
            .get(&digest("token-9999"))
            .map(|v| v.principal.subject.clone());
        assert_eq!(last.as_deref(), Some("token-9999"));
    }

    #[test]
    fn off_when_empty() {
        let cache = VerifiedTokens::new(0);
        cache.insert(digest("a"), verified("a"));
        assert!(!cache.enabled());
        assert!(cache.get(&digest("a")).is_none());
    }

    #[test]
    fn distinct_tokens_have_distinct_keys() {
        assert_ne!(digest("a.b.c"), digest("a.b.d"));
        assert_eq!(digest("a.b.c"), digest("a.b.c"));
    }
}

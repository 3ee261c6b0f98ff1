//! Tokens already verified: a token's signature and claims are checked once, not on every
//! request that carries it.
//!
//! Entries are keyed by the SHA-256 of the token, so two tokens cannot share one and the token
//! itself is never kept. What depends on the connection or on the time is checked again on
//! every hit (see [`Verified`]); what depends only on the token's bytes is not.

use std::sync::Arc;

use quick_cache::sync::Cache;

use super::{IssuerId, Principal};

pub type Digest = [u8; 32];

pub fn digest(token: &str) -> Digest {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
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

//! Revoked sessions (by `sub`) and tokens (by `jti`) of the token service: a deny list checked
//! on every request that carries one of its tokens, cached tokens included.
//!
//! An entry is kept until the last token it can concern has expired (the token lifetime after
//! the revocation), so the list is bounded by the revocations of one lifetime, and by
//! `max_revoked`. Other instances learn of a revocation through Redis (see the runtime's
//! revocation service); this is the in-process list each of them checks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

use crate::clock;

/// What is revoked: `{"jti": "…"}` one token, `{"sub": "…"}` a whole session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Revocation {
    Jti(String),
    Sub(String),
}

impl Revocation {
    pub fn value(&self) -> &str {
        match self {
            Revocation::Jti(v) | Revocation::Sub(v) => v,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Revocation::Jti(_) => "jti",
            Revocation::Sub(_) => "sub",
        }
    }
}

#[derive(Default)]
struct Lists {
    /// Value → Unix second until which it is refused.
    jti: HashMap<Box<str>, u64>,
    sub: HashMap<Box<str>, u64>,
}

impl Lists {
    fn len(&self) -> usize {
        self.jti.len() + self.sub.len()
    }
}

/// The deny list.
pub struct Revoked {
    lists: RwLock<Lists>,
    capacity: AtomicUsize,
    /// Entries, read without the lock: most requests find the list empty.
    len: AtomicUsize,
}

/// The list holds `max_revoked` revocations still in force: no room for another.
#[derive(Debug, thiserror::Error)]
#[error("the revocation list is full ({0} entries in force)")]
pub struct Full(pub usize);

impl Revoked {
    pub fn new(capacity: usize) -> Self {
        Self {
            lists: RwLock::new(Lists::default()),
            capacity: AtomicUsize::new(capacity),
            len: AtomicUsize::new(0),
        }
    }

    pub fn set_capacity(&self, capacity: usize) {
        self.capacity.store(capacity, Ordering::Relaxed);
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Refuses `what` until `until` (Unix seconds).
    pub fn insert(&self, what: &Revocation, until: u64) -> Result<(), Full> {
        let now = clock::unix_secs();
        if until <= now {
            return Ok(());
        }
        let mut lists = self.lists.write().unwrap_or_else(|e| e.into_inner());
        let capacity = self.capacity.load(Ordering::Relaxed);
        if lists.len() >= capacity {
            lists.jti.retain(|_, u| *u > now);
            lists.sub.retain(|_, u| *u > now);
        }
        let full = lists.len() >= capacity;
        let list = match what {
            Revocation::Jti(_) => &mut lists.jti,
            Revocation::Sub(_) => &mut lists.sub,
        };
        match list.get_mut(what.value()) {
            Some(u) => *u = (*u).max(until),
            None if full => return Err(Full(capacity)),
            None => {
                list.insert(what.value().into(), until);
            }
        }
        self.len.store(lists.len(), Ordering::Relaxed);
        Ok(())
    }

    /// Whether a token with this `jti` (if it has one) of session `sub` is refused.
    pub fn contains(&self, jti: Option<&str>, sub: &str) -> bool {
        if self.is_empty() {
            return false;
        }
        let now = clock::unix_secs();
        let lists = self.lists.read().unwrap_or_else(|e| e.into_inner());
        let refused = |until: Option<&u64>| until.is_some_and(|u| *u > now);
        refused(lists.sub.get(sub)) || jti.is_some_and(|j| refused(lists.jti.get(j)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoked_sessions_and_tokens_are_refused_until_they_would_have_expired() {
        let revoked = Revoked::new(2);
        let later = clock::unix_secs() + 60;
        assert!(!revoked.contains(Some("t1"), "s1"));
        revoked
            .insert(&Revocation::Jti("t1".into()), later)
            .expect("room");
        revoked
            .insert(&Revocation::Sub("s2".into()), later)
            .expect("room");
        assert!(revoked.contains(Some("t1"), "s1"));
        assert!(!revoked.contains(Some("t2"), "s1"));
        assert!(revoked.contains(None, "s2"));
        assert!(revoked.contains(Some("t9"), "s2"));
        // Full of revocations in force: a third is refused, a repeat is not.
        assert!(revoked
            .insert(&Revocation::Sub("s3".into()), later)
            .is_err());
        assert!(revoked
            .insert(&Revocation::Sub("s2".into()), later + 5)
            .is_ok());
        // One already over takes no room.
        assert!(revoked
            .insert(&Revocation::Sub("s4".into()), clock::unix_secs())
            .is_ok());
        assert_eq!(revoked.len(), 2);
    }

    #[test]
    fn revocations_read_as_the_admin_api_writes_them() {
        let r: Revocation = serde_json::from_str(r#"{"jti":"abc"}"#).expect("jti");
        assert_eq!(r, Revocation::Jti("abc".into()));
        let r: Revocation = serde_json::from_str(r#"{"sub":"s"}"#).expect("sub");
        assert_eq!((r.kind(), r.value()), ("sub", "s"));
        assert!(serde_json::from_str::<Revocation>(r#"{"aud":"x"}"#).is_err());
    }
}

//! Where sessions live: this process's memory, or Redis (sealed, shared by every instance).
//!
//! A session is found by its handle, the SHA-256 of the cookie's id: neither a memory dump
//! nor Redis holds anything a browser could present. Each use pushes the idle deadline on,
//! never past the absolute one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use super::seal::Sealer;
use crate::clock;

mod ended;

/// Longest wait for Redis in one session operation.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
/// A refresh lock is given up after this long, should its holder die.
const REFRESH_LOCK: Duration = Duration::from_secs(10);

/// A session's key in the store: hex SHA-256 of the cookie's id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Handle(String);

impl Handle {
    pub fn of(id: &str) -> Handle {
        Handle(hex(&sha2::Sha256::digest(id.as_bytes())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn from_stored(s: String) -> Handle {
        Handle(s)
    }
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// What the gateway keeps of a login. Its `Debug` shows no token.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    pub subject: String,
    /// The provider's session (`sid` of the ID token), for back-channel logout.
    pub provider_sid: Option<String>,
    pub access_token: String,
    /// Unix seconds.
    pub access_issued: u64,
    pub access_expires: u64,
    pub refresh_token: Option<String>,
    /// For the end-session request's `id_token_hint`.
    pub id_token: String,
    /// Unix second the session ends, however it is used.
    pub ends: u64,
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("subject", &self.subject)
            .field("access_expires", &self.access_expires)
            .field("ends", &self.ends)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("session store unavailable: {0}")]
    Unavailable(String),
    #[error("the session store is full ({0} sessions)")]
    Full(usize),
}

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

pub enum Store {
    Memory(Memory),
    Redis(Shared),
}

impl Store {
    /// The session, if it is there and not over; its idle deadline moves on.
    pub async fn get(
        &self,
        handle: &Handle,
        idle: Duration,
    ) -> Result<Option<Arc<Record>>, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.get(handle, idle)),
            Store::Redis(r) => r.get(handle, idle).await,
        }
    }

    pub async fn put(
        &self,
        handle: &Handle,
        record: &Record,
        idle: Duration,
    ) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => m.put(handle, record, idle),
            Store::Redis(r) => r.put(handle, record, idle).await,
        }
    }

    /// Removes sessions; returns the records that were there.
    pub async fn remove(&self, handles: &[Handle]) -> Result<Vec<(Handle, Record)>, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.remove(handles)),
            Store::Redis(r) => r.remove(handles).await,
        }
    }

    /// The sessions of a subject, or of a provider session.
    pub async fn find(&self, by: &By<'_>) -> Result<Vec<Handle>, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.find(by)),
            Store::Redis(r) => r.find(by).await,
        }
    }

    /// Takes the right to refresh a session, across instances; `false` while another has it.
    pub async fn lock_refresh(&self, handle: &Handle) -> Result<bool, StoreError> {
        match self {
            Store::Memory(_) => Ok(true),
            Store::Redis(r) => r.lock_refresh(handle).await,
        }
    }

    pub async fn unlock_refresh(&self, handle: &Handle) {
        if let Store::Redis(r) = self {
            r.unlock_refresh(handle).await;
        }
    }

    /// Records a logout token's `jti` until `ttl` passes; `false` if it was seen before.
    pub async fn first_use(&self, jti: &str, ttl: Duration) -> Result<bool, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.first_use(jti, ttl)),
            Store::Redis(r) => r.first_use(jti, ttl).await,
        }
    }

    pub fn len(&self) -> Option<usize> {
        match self {
            Store::Memory(m) => Some(m.lock().sessions.len()),
            Store::Redis(_) => None,
        }
    }
}

/// Which sessions to find.
pub enum By<'a> {
    Subject(&'a str),
    ProviderSession(&'a str),
}

impl By<'_> {
    fn matches(&self, record: &Record) -> bool {
        match self {
            By::Subject(s) => record.subject == *s,
            By::ProviderSession(sid) => record.provider_sid.as_deref() == Some(*sid),
        }
    }
}

struct Entry {
    /// Shared with the requests reading it: no copy of the tokens per request.
    record: Arc<Record>,
    /// Process milliseconds.
    idle_until: u64,
}

#[derive(Default)]
struct Maps {
    sessions: HashMap<Handle, Entry>,
    /// Logout tokens' `jti`, until process millisecond.
    seen: HashMap<String, u64>,
}

/// One instance's sessions.
pub struct Memory {
    maps: Mutex<Maps>,
    capacity: usize,
}

impl Memory {
    pub fn new(capacity: usize) -> Memory {
        Memory {
            maps: Mutex::new(Maps::default()),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Maps> {
        self.maps.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self, handle: &Handle, idle: Duration) -> Option<Arc<Record>> {
        let now = clock::process_millis();
        let mut maps = self.lock();
        let entry = maps.sessions.get_mut(handle)?;
        if entry.idle_until <= now || entry.record.ends <= clock::unix_secs() {
            maps.sessions.remove(handle);
            return None;
        }
        entry.idle_until = now + idle.as_millis() as u64;
        Some(Arc::clone(&entry.record))
    }

    fn put(&self, handle: &Handle, record: &Record, idle: Duration) -> Result<(), StoreError> {
        let now = clock::process_millis();
        let mut maps = self.lock();
        if maps.sessions.len() >= self.capacity && !maps.sessions.contains_key(handle) {
            let secs = clock::unix_secs();
            maps.sessions
                .retain(|_, e| e.idle_until > now && e.record.ends > secs);
            if maps.sessions.len() >= self.capacity {
                return Err(StoreError::Full(self.capacity));
            }
        }
        maps.sessions.insert(
            handle.clone(),
            Entry {
                record: Arc::new(record.clone()),
                idle_until: now + idle.as_millis() as u64,
            },
        );
        Ok(())
    }

    fn remove(&self, handles: &[Handle]) -> Vec<(Handle, Record)> {
        let mut maps = self.lock();
        handles
            .iter()
            .filter_map(|h| {
                let entry = maps.sessions.remove(h)?;
                Some((h.clone(), Arc::unwrap_or_clone(entry.record)))
            })
            .collect()
    }

    fn find(&self, by: &By<'_>) -> Vec<Handle> {
        self.lock()
            .sessions
            .iter()
            .filter(|(_, e)| by.matches(&e.record))
            .map(|(h, _)| h.clone())
            .collect()
    }

    fn first_use(&self, jti: &str, ttl: Duration) -> bool {
        let now = clock::process_millis();
        let mut maps = self.lock();
        if maps.seen.len() >= self.capacity {
            maps.seen.retain(|_, until| *until > now);
        }
        match maps.seen.get(jti) {
            Some(until) if *until > now => false,
            _ if maps.seen.len() >= self.capacity => false,
            _ => {
                maps.seen
                    .insert(jti.to_owned(), now + ttl.as_millis() as u64);
                true
            }
        }
    }
}

/// Sessions in Redis, sealed with the session keys and bound to their handle.
pub struct Shared {
    client: redis::Client,
    prefix: String,
    sealer: Arc<Sealer>,
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
}

impl Shared {
    pub fn new(url: &str, prefix: &str, sealer: Arc<Sealer>) -> Result<Shared, String> {
        Ok(Shared {
            client: redis::Client::open(url).map_err(|e| e.to_string())?,
            prefix: format!("{prefix}session:"),
            sealer,
            conn: tokio::sync::Mutex::new(None),
        })
    }

    async fn conn(&self) -> Result<MultiplexedConnection, StoreError> {
        let mut held = self.conn.lock().await;
        if let Some(conn) = &*held {
            return Ok(conn.clone());
        }
        let conn = tokio::time::timeout(
            REDIS_TIMEOUT,
            self.client.get_multiplexed_async_connection(),
        )
        .await
        .map_err(|_| StoreError::Unavailable("Redis timed out".into()))??;
        *held = Some(conn.clone());
        Ok(conn)
    }

    /// Runs `cmd`, dropping the connection when it fails so the next one reconnects.
    async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Pipeline) -> Result<T, StoreError> {
        let mut conn = self.conn().await?;
        match tokio::time::timeout(REDIS_TIMEOUT, cmd.query_async::<T>(&mut conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                *self.conn.lock().await = None;
                Err(e.into())
            }
            Err(_) => {
                *self.conn.lock().await = None;
                Err(StoreError::Unavailable("Redis timed out".into()))
            }
        }
    }

    fn key(&self, handle: &Handle) -> String {
        format!("{}{}", self.prefix, handle.as_str())
    }

    fn index(&self, by: &By<'_>) -> String {
        let (kind, value) = match by {
            By::Subject(s) => ("sub", s),
            By::ProviderSession(s) => ("sid", s),
        };
        format!(
            "{}{kind}:{}",
            self.prefix,
            hex(&sha2::Sha256::digest(value.as_bytes()))
        )
    }

    async fn get(
        &self,
        handle: &Handle,
        idle: Duration,
    ) -> Result<Option<Arc<Record>>, StoreError> {
        let key = self.key(handle);
        // GETEX: one round trip reads the session and moves its idle deadline on.
        let mut pipe = redis::pipe();
        pipe.cmd("GETEX")
            .arg(&key)
            .arg("EX")
            .arg(idle.as_secs().max(1));
        let (sealed,): (Option<Vec<u8>>,) = self.run(&pipe).await?;
        let Some(sealed) = sealed else {
            return Ok(None);
        };
        let record = self
            .sealer
            .open(key.as_bytes(), &sealed)
            .and_then(|plain| serde_json::from_slice::<Record>(&plain).ok());
        match record {
            Some(r) if r.ends > clock::unix_secs() => Ok(Some(Arc::new(r))),
            // Over, or sealed with a key no longer configured: as good as gone.
            _ => Ok(None),
        }
    }

    async fn put(
        &self,
        handle: &Handle,
        record: &Record,
        idle: Duration,
    ) -> Result<(), StoreError> {
        let key = self.key(handle);
        let plain =
            serde_json::to_vec(record).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let sealed = self
            .sealer
            .seal(key.as_bytes(), &plain)
            .map_err(|e| StoreError::Unavailable(e.into()))?;
        let left = record.ends.saturating_sub(clock::unix_secs()).max(1);
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(&key)
            .arg(sealed)
            .arg("EX")
            .arg(idle.as_secs().clamp(1, left))
            .ignore();
        let subject = By::Subject(&record.subject);
        let sid = record.provider_sid.as_deref().map(By::ProviderSession);
        for by in std::iter::once(&subject).chain(sid.as_ref()) {
            let index = self.index(by);
            pipe.cmd("SADD").arg(&index).arg(handle.as_str()).ignore();
            pipe.cmd("EXPIRE").arg(&index).arg(left).arg("GT").ignore();
            pipe.cmd("EXPIRE").arg(&index).arg(left).arg("NX").ignore();
        }
        self.run::<()>(&pipe).await
    }

    async fn remove(&self, handles: &[Handle]) -> Result<Vec<(Handle, Record)>, StoreError> {
        let mut removed = Vec::new();
        for handle in handles {
            let key = self.key(handle);
            let mut pipe = redis::pipe();
            pipe.cmd("GETDEL").arg(&key);
            let (sealed,): (Option<Vec<u8>>,) = self.run(&pipe).await?;
            let record = sealed
                .and_then(|s| self.sealer.open(key.as_bytes(), &s))
                .and_then(|p| serde_json::from_slice::<Record>(&p).ok());
            if let Some(record) = record {
                let mut pipe = redis::pipe();
                pipe.cmd("SREM")
                    .arg(self.index(&By::Subject(&record.subject)))
                    .arg(handle.as_str())
                    .ignore();
                if let Some(sid) = &record.provider_sid {
                    pipe.cmd("SREM")
                        .arg(self.index(&By::ProviderSession(sid)))
                        .arg(handle.as_str())
                        .ignore();
                }
                self.run::<()>(&pipe).await?;
                removed.push((handle.clone(), record));
            }
        }
        Ok(removed)
    }

    async fn find(&self, by: &By<'_>) -> Result<Vec<Handle>, StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("SMEMBERS").arg(self.index(by));
        let (members,): (Vec<String>,) = self.run(&pipe).await?;
        Ok(members.into_iter().map(Handle::from_stored).collect())
    }

    async fn lock_refresh(&self, handle: &Handle) -> Result<bool, StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(format!("{}refreshing:{}", self.prefix, handle.as_str()))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(REFRESH_LOCK.as_millis() as u64);
        let (taken,): (Option<String>,) = self.run(&pipe).await?;
        Ok(taken.is_some())
    }

    async fn unlock_refresh(&self, handle: &Handle) {
        let mut pipe = redis::pipe();
        pipe.cmd("DEL")
            .arg(format!("{}refreshing:{}", self.prefix, handle.as_str()))
            .ignore();
        if let Err(e) = self.run::<()>(&pipe).await {
            log::warn!("session refresh lock not released: {e}");
        }
    }

    async fn first_use(&self, jti: &str, ttl: Duration) -> Result<bool, StoreError> {
        let key = format!(
            "{}logout-jti:{}",
            self.prefix,
            hex(&sha2::Sha256::digest(jti.as_bytes()))
        );
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(key)
            .arg(1)
            .arg("NX")
            .arg("EX")
            .arg(ttl.as_secs().max(1));
        let (set,): (Option<String>,) = self.run(&pipe).await?;
        Ok(set.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(subject: &str, sid: &str) -> Record {
        Record {
            subject: subject.into(),
            provider_sid: Some(sid.into()),
            access_token: "at".into(),
            access_issued: clock::unix_secs(),
            access_expires: clock::unix_secs() + 60,
            refresh_token: None,
            id_token: "id".into(),
            ends: clock::unix_secs() + 3600,
        }
    }

    #[tokio::test]
    async fn memory_sessions_are_found_by_handle_subject_and_provider_session() {
        let store = Store::Memory(Memory::new(2));
        let idle = Duration::from_secs(60);
        let (a, b) = (Handle::of("a"), Handle::of("b"));
        store
            .put(&a, &record("alice", "s1"), idle)
            .await
            .expect("put");
        store
            .put(&b, &record("alice", "s2"), idle)
            .await
            .expect("put");
        assert!(matches!(
            store
                .put(&Handle::of("c"), &record("bob", "s3"), idle)
                .await,
            Err(StoreError::Full(2))
        ));
        assert_eq!(
            store.get(&a, idle).await.expect("get").as_deref(),
            Some(&record("alice", "s1"))
        );
        assert_eq!(
            store.find(&By::Subject("alice")).await.expect("find").len(),
            2
        );
        assert_eq!(
            store.find(&By::ProviderSession("s2")).await.expect("find"),
            vec![b.clone()]
        );
        let removed = store
            .remove(std::slice::from_ref(&b))
            .await
            .expect("remove");
        assert_eq!(removed.len(), 1);
        assert!(store.get(&b, idle).await.expect("get").is_none());
        // Idle too long: gone.
        store
            .put(&b, &record("bob", "s3"), Duration::ZERO)
            .await
            .expect("put");
        assert!(store.get(&b, idle).await.expect("get").is_none());
    }

    #[test]
    fn a_logout_token_is_taken_once() {
        let memory = Memory::new(10);
        assert!(memory.first_use("j1", Duration::from_secs(60)));
        assert!(!memory.first_use("j1", Duration::from_secs(60)));
        assert!(memory.first_use("j2", Duration::from_secs(60)));
    }
}

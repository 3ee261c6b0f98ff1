//! Revoked anonymous sessions (`[token_service]`), shared by every instance through Redis.
//!
//! The admin endpoint adds a revocation to this instance's list, stores it in Redis until the
//! last token it concerns has expired (`SET … EX`), and publishes it. Every instance follows
//! the channel, and reads the stored revocations each time it (re)subscribes, so an instance
//! that starts or reconnects later misses none. Revoking a session also ends its WebSockets.

use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use serde::{Deserialize, Serialize};

use super::eviction::Eviction;
use super::Channel;
use crate::clock;
use crate::metrics;
use crate::snapshot::SharedSnapshot;
use crate::token_service::Revocation;

/// Longest `jti` or `sub` taken: the service's own are 32 characters.
const MAX_VALUE: usize = 256;
/// Beyond the token lifetime, for other instances' clocks.
const LEEWAY_SECS: u64 = 10;

#[derive(Serialize, Deserialize)]
struct Message {
    revoke: Revocation,
    /// Unix second until which it holds.
    until: u64,
    /// The instance that published it.
    origin: String,
}

/// Why a revocation was not taken.
#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    #[error("no [token_service] is configured")]
    NoService,
    #[error("the value is empty or longer than {MAX_VALUE} characters")]
    BadValue,
    #[error(transparent)]
    Full(#[from] crate::token_service::revocation::Full),
}

/// What a revocation did.
#[derive(Debug, Serialize)]
pub struct Revoked {
    /// WebSockets of the session closed here (a `sub` revocation).
    pub websockets_closed: usize,
    /// Whether the other instances were told: `None` without Redis.
    pub published: Option<bool>,
}

#[derive(Clone)]
pub struct Revocations {
    config: SharedSnapshot,
    eviction: Eviction,
    origin: Arc<str>,
}

impl Revocations {
    pub fn new(config: SharedSnapshot, eviction: Eviction) -> Self {
        Self {
            config,
            eviction,
            origin: uuid::Uuid::new_v4().to_string().into(),
        }
    }

    /// Refuses a token or a session from now on, here and, with Redis, on every instance.
    pub async fn revoke(&self, what: Revocation) -> Result<Revoked, RevokeError> {
        let value = what.value();
        if value.is_empty() || value.len() > MAX_VALUE {
            return Err(RevokeError::BadValue);
        }
        let snap = self.config.load_full();
        let service = snap.token_service.as_ref().ok_or(RevokeError::NoService)?;
        let until = clock::unix_secs() + service.ttl().as_secs() + LEEWAY_SECS;
        service.revoked.insert(&what, until)?;
        metrics::session_revocation("admin");
        let websockets_closed = match &what {
            Revocation::Sub(sub) => self.eviction.evict(sub).await.closed,
            Revocation::Jti(_) => 0,
        };
        let published = match &service.redis {
            None => None,
            Some((url, prefix)) => Some(self.publish(url, prefix, what, until).await),
        };
        Ok(Revoked {
            websockets_closed,
            published,
        })
    }

    async fn publish(&self, url: &str, prefix: &str, what: Revocation, until: u64) -> bool {
        let key = format!("{prefix}revoked:{}:{}", what.kind(), what.value());
        let message = Message {
            revoke: what,
            until,
            origin: self.origin.to_string(),
        };
        let Ok(message) = serde_json::to_string(&message) else {
            return false;
        };
        let ttl = until.saturating_sub(clock::unix_secs()).max(1);
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(&key)
            .arg(&message)
            .arg("EX")
            .arg(ttl)
            .ignore()
            .cmd("PUBLISH")
            .arg(channel(prefix))
            .arg(&message)
            .ignore();
        super::publish(url, &pipe, "session revocation").await
    }

    /// Takes in a revocation another instance made.
    fn take(&self, payload: &[u8]) {
        let message = match serde_json::from_slice::<Message>(payload) {
            Ok(m) => m,
            Err(e) => {
                log::warn!("session revocations: unreadable message: {e}");
                return;
            }
        };
        if *message.origin == *self.origin {
            return;
        }
        let snap = self.config.load();
        let Some(service) = &snap.token_service else {
            return;
        };
        match service.revoked.insert(&message.revoke, message.until) {
            Ok(()) => metrics::session_revocation("redis"),
            Err(e) => log::error!("session revocation from another instance dropped: {e}"),
        }
        // Sessions' WebSockets on this instance are ended by the eviction order the revoking
        // instance published.
    }

    /// Takes in the revocations stored in Redis: those made before this instance subscribed.
    async fn catch_up(&self, client: redis::Client, prefix: &str) -> redis::RedisResult<()> {
        let mut conn = client.get_multiplexed_async_connection().await?;
        let pattern = format!("{prefix}revoked:*");
        let snap = self.config.load_full();
        let Some(service) = &snap.token_service else {
            return Ok(());
        };
        let mut cursor: u64 = 0;
        let mut taken = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            if !keys.is_empty() {
                let values: Vec<Option<Vec<u8>>> =
                    redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
                for value in values.into_iter().flatten() {
                    if let Ok(m) = serde_json::from_slice::<Message>(&value) {
                        if service.revoked.insert(&m.revoke, m.until).is_ok() {
                            taken += 1;
                        }
                    }
                }
            }
            cursor = next;
            if cursor == 0 {
                log::info!("session revocations: {taken} in force, read from Redis");
                return Ok(());
            }
        }
    }
}

fn channel(prefix: &str) -> String {
    format!("{prefix}revocations")
}

#[async_trait]
impl BackgroundService for Revocations {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let channel = || {
            let snap = self.config.load();
            let (url, prefix) = snap.token_service.as_ref()?.redis.clone()?;
            Some(Channel {
                url,
                name: channel(&prefix),
            })
        };
        // The key prefix the running config names, for the stored revocations.
        let catch_up = |client| async move {
            let prefix = self
                .config
                .load()
                .token_service
                .as_ref()
                .and_then(|s| s.redis.clone());
            match prefix {
                Some((_, prefix)) => self.catch_up(client, &prefix).await,
                None => Ok(()),
            }
        };
        let take = |payload: &[u8]| self.take(payload);
        super::follow_redis(
            "session revocations",
            &mut shutdown,
            channel,
            catch_up,
            take,
        )
        .await;
    }
}

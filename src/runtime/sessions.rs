//! Browser sessions ended on another instance (`[sessions]` with `store = "redis"`): their
//! access tokens are refused here too, and their WebSockets here are closed.
//!
//! The session itself is already gone from Redis, so no instance finds it again; what each
//! instance holds of it alone (a cached access token, an open WebSocket) is what the message
//! reaches. The ended sessions' access tokens are also stored in Redis until they expire, and
//! read each time this instance (re)subscribes: one that starts or reconnects later refuses
//! them too.

use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use super::Channel;
use crate::snapshot::SharedSnapshot;
use crate::websocket::registry::Registry;

pub struct EndedSessions {
    config: SharedSnapshot,
    registry: Arc<Registry>,
}

impl EndedSessions {
    pub fn new(config: SharedSnapshot, registry: Arc<Registry>) -> Self {
        Self { config, registry }
    }

    fn take(&self, payload: &[u8]) {
        let snap = self.config.load();
        let Some(sessions) = &snap.sessions else {
            return;
        };
        let mut closed = 0;
        for key in sessions.take_ended(payload) {
            closed += self.registry.evict(&key);
        }
        if closed > 0 {
            log::info!("ended sessions from another instance: {closed} WebSockets closed here");
        }
    }
}

#[async_trait]
impl BackgroundService for EndedSessions {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let channel = || {
            let (url, name) = self.config.load().sessions.as_ref()?.channel()?;
            Some(Channel { url, name })
        };
        let catch_up = |_| async {
            let snap = self.config.load_full();
            let Some(sessions) = &snap.sessions else {
                return Ok(());
            };
            match sessions.catch_up_ended().await {
                Ok(taken) => {
                    log::info!("ended sessions: {taken} access tokens refused, read from Redis");
                    Ok(())
                }
                // Given up and tried again on the next subscription.
                Err(e) => Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "ended sessions' tokens not read",
                    e.to_string(),
                ))),
            }
        };
        let take = |payload: &[u8]| self.take(payload);
        super::follow_redis("ended sessions", &mut shutdown, channel, catch_up, take).await;
    }
}

//! Ending a subject's WebSockets on demand (logout), here and on every other gateway instance.
//!
//! The admin endpoint evicts locally and publishes the order on a Redis channel; every
//! instance subscribes to it and evicts its own connections of that subject. An instance
//! ignores the orders it published itself.

use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use serde::{Deserialize, Serialize};

use super::Channel;
use crate::metrics;
use crate::snapshot::SharedSnapshot;
use crate::websocket::registry::Registry;

#[derive(Serialize, Deserialize)]
struct OrderMessage<'a> {
    subject: &'a str,
    /// The instance that published it.
    origin: &'a str,
}

#[derive(Clone)]
pub struct Eviction {
    registry: Arc<Registry>,
    config: SharedSnapshot,
    /// This instance, as its published orders name it.
    origin: Arc<str>,
}

/// What an eviction did.
#[derive(Debug, Serialize)]
pub struct Evicted {
    /// Connections of the subject this instance closed.
    pub closed: usize,
    /// Whether other instances were told: `None` without Redis.
    pub published: Option<bool>,
    /// Browser sessions of the subject ended (`[sessions]`), on every instance.
    pub sessions_ended: usize,
}

impl Eviction {
    pub fn new(registry: Arc<Registry>, config: SharedSnapshot) -> Self {
        Self {
            registry,
            config,
            origin: uuid::Uuid::new_v4().to_string().into(),
        }
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Ends `subject`'s connections and browser sessions here and, with Redis, on the other
    /// instances.
    pub async fn evict(&self, subject: &str) -> Evicted {
        metrics::websocket_eviction_order("admin");
        let closed = self.registry.evict(subject);
        let snap = self.config.load_full();
        let sessions_ended = match &snap.sessions {
            Some(sessions) => match sessions.end_subject(subject).await {
                Ok(ended) => ended.websockets.len(),
                Err(e) => {
                    log::error!("sessions of {subject:?} not ended: {e}");
                    0
                }
            },
            None => 0,
        };
        let settings = snap.websocket.clone();
        let Some(url) = settings.redis_url else {
            return Evicted {
                closed,
                published: None,
                sessions_ended,
            };
        };
        let message = serde_json::json!(OrderMessage {
            subject,
            origin: &self.origin,
        })
        .to_string();
        let mut pipe = redis::pipe();
        pipe.cmd("PUBLISH")
            .arg(&settings.eviction_channel)
            .arg(message)
            .ignore();
        let what = format!("websocket eviction of {subject:?}");
        let published = super::publish(&url, &pipe, &what).await;
        Evicted {
            closed,
            published: Some(published),
            sessions_ended,
        }
    }

    /// Carries out an order another instance published.
    fn take(&self, payload: &[u8]) {
        match serde_json::from_slice::<OrderMessage>(payload) {
            Ok(order) if *order.origin == *self.origin => {}
            Ok(order) => {
                metrics::websocket_eviction_order("redis");
                let closed = self.registry.evict(order.subject);
                log::info!(
                    "websocket eviction of {:?} from instance {}: {closed} closed here",
                    order.subject,
                    order.origin
                );
            }
            Err(e) => log::warn!("websocket evictions: unreadable order: {e}"),
        }
    }
}

#[async_trait]
impl BackgroundService for Eviction {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let channel = || {
            let settings = self.config.load().websocket.clone();
            Some(Channel {
                url: settings.redis_url?,
                name: settings.eviction_channel,
            })
        };
        // Orders are not stored: one published while this instance was away is not replayed.
        let catch_up = |_| async { Ok(()) };
        let take = |payload: &[u8]| self.take(payload);
        super::follow_redis(
            "websocket evictions",
            &mut shutdown,
            channel,
            catch_up,
            take,
        )
        .await;
    }
}

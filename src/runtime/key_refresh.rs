//! Background refresh of every remote issuer's keys.

use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use super::every;
use crate::snapshot::SharedSnapshot;

/// How often stores are asked whether they are due; each keeps its own schedule.
const TICK: Duration = Duration::from_millis(500);

pub struct KeyRefresher {
    config: SharedSnapshot,
}

impl KeyRefresher {
    pub fn new(config: SharedSnapshot) -> Self {
        Self { config }
    }
}

#[async_trait]
impl BackgroundService for KeyRefresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        every(TICK, &mut shutdown, || {
            // The current snapshot each time: issuers added by a reload are picked up.
            let snapshot = self.config.load_full();
            for issuer in snapshot.authenticator.issuers() {
                let keys = issuer.keys.clone();
                // One task per store, so a slow provider does not delay the others.
                tokio::spawn(async move { keys.refresh_if_due().await });
            }
        })
        .await;
    }
}

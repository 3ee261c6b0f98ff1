//! Active health checks of upstream targets, run in the background for the current config.

use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use super::every;
use crate::snapshot::SharedSnapshot;
use crate::upstream::health::probe;

/// How often upstreams are asked whether a probe is due.
const TICK: Duration = Duration::from_millis(100);

pub struct HealthChecker {
    config: SharedSnapshot,
}

impl HealthChecker {
    pub fn new(config: SharedSnapshot) -> Self {
        Self { config }
    }
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        every(TICK, &mut shutdown, || {
            let snapshot = self.config.load_full();
            for (id, upstream) in snapshot.upstreams.iter() {
                let Some(conf) = upstream.health_check_due() else {
                    continue;
                };
                for (target, addr) in upstream.targets().iter().enumerate() {
                    let (snapshot, addr) = (snapshot.clone(), *addr);
                    let conf = conf.clone();
                    // One task per probe: a hanging target does not hold up the others.
                    tokio::spawn(async move {
                        let upstream = &snapshot.upstreams[id];
                        let result = tokio::time::timeout(conf.timeout, probe(addr, &conf))
                            .await
                            .unwrap_or_else(|_| Err("timed out".into()));
                        let health = upstream.health(target);
                        match (health.record(result.is_ok(), &conf), result) {
                            (Some(false), Err(why)) => log::warn!(
                                "upstream {}: target {addr} is down ({why})",
                                upstream.name
                            ),
                            (Some(true), _) => {
                                log::info!("upstream {}: target {addr} is up", upstream.name)
                            }
                            _ => {}
                        }
                    });
                }
            }
        })
        .await;
    }
}

//! Upstream host names resolved again in the background. When an answer changes, the running
//! config is compiled again with it and swapped in, as a reload would be; in-flight requests
//! finish on the snapshot they started with. A failed lookup keeps the last answer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use super::config_metrics;
use crate::metrics;
use crate::snapshot::SharedSnapshot;

/// How often names are checked for being due.
const TICK: Duration = Duration::from_millis(250);

pub struct DnsRefresher {
    config: SharedSnapshot,
}

impl DnsRefresher {
    pub fn new(config: SharedSnapshot) -> Self {
        Self { config }
    }

    /// Asks again for every name that is due; returns when each is due next.
    async fn refresh(&self, due: &mut HashMap<String, Instant>) {
        let snapshot = self.config.load_full();
        let (resolver, answers) = snapshot.dns();
        if answers.is_empty() {
            return;
        }
        let now = Instant::now();
        let names: Vec<&String> = answers
            .keys()
            .filter(|n| due.get(*n).is_none_or(|at| *at <= now))
            .collect();
        if names.is_empty() {
            return;
        }
        let lookups = names
            .iter()
            .map(|name| async move { (*name, resolver.lookup(name).await) });
        let mut changed = answers.clone();
        let mut any = false;
        for (name, result) in futures_util::future::join_all(lookups).await {
            match result {
                Ok(answer) => {
                    metrics::dns_lookup("ok");
                    due.insert(name.clone(), now + answer.fresh_for);
                    if answers.get(name) != Some(&answer.addrs) {
                        log::info!("dns: {name} now resolves to {:?}", answer.addrs);
                        changed.insert(name.clone(), answer.addrs);
                        any = true;
                    }
                }
                Err(e) => {
                    metrics::dns_lookup("failed");
                    log::warn!("dns: {name}: {e}; keeping {:?}", answers.get(name));
                    due.insert(name.clone(), now + resolver.retry_after_failure());
                }
            }
        }
        if !any {
            return;
        }
        let next = match snapshot.with_answers(changed) {
            Some(Ok(next)) => Arc::new(next),
            Some(Err(e)) => {
                log::error!("dns: keeping the running targets: {e}");
                return;
            }
            None => return,
        };
        // A reload that came in meanwhile wins; its own lookups are newer.
        let before = self.config.compare_and_swap(&snapshot, next);
        if Arc::ptr_eq(&before, &snapshot) {
            let generation = config_metrics::next_generation();
            log::info!("dns: upstream targets changed; applied as generation {generation}");
        }
    }
}

#[async_trait]
impl BackgroundService for DnsRefresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut due = HashMap::new();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => self.refresh(&mut due).await,
            }
        }
    }
}

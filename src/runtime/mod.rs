//! The runtime: what drives the compiled config over time. Reload on SIGHUP, key refresh,
//! health checks, DNS re-resolution, trace export, WebSocket eviction orders, session
//! revocations, the client connection cap, the admin listener, config metrics, and the process
//! lifecycle. It sits above the snapshot; nothing below imports it.

pub mod admin;
pub mod config_metrics;
pub mod connections;
pub mod dns_refresh;
pub mod eviction;
pub mod health_check;
pub mod key_refresh;
pub mod lifecycle;
pub mod reload;
pub mod revocations;
pub mod trace_export;

use std::time::Duration;

use pingora_core::server::ShutdownWatch;

/// Calls `work` every `period` until shutdown; a late tick is not made up for.
async fn every(period: Duration, shutdown: &mut ShutdownWatch, mut work: impl FnMut()) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => work(),
        }
    }
}

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

use std::future::Future;
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

/// Pause before subscribing again after Redis went away.
const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(1);

/// Follows a Redis channel for as long as the process runs: `store` tells which Redis the
/// running config names (if any), `follow` subscribes to it and returns when the
/// subscription ends (Redis went away, or the config names another store). Then, after a
/// pause, it starts again with what the config names by then.
async fn follow_redis<S, F, Fut>(
    what: &str,
    shutdown: &mut ShutdownWatch,
    store: impl Fn() -> Option<S>,
    follow: F,
) where
    F: Fn(S) -> Fut,
    Fut: Future<Output = redis::RedisResult<()>>,
{
    loop {
        let followed = async {
            match store() {
                Some(s) => follow(s).await,
                None => Ok(()),
            }
        };
        tokio::select! {
            _ = shutdown.changed() => return,
            followed = followed => {
                if let Err(e) = followed {
                    log::warn!("{what}: Redis subscription lost: {e}");
                }
            }
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            () = tokio::time::sleep(RESUBSCRIBE_AFTER) => {}
        }
    }
}

//! The runtime: what drives the compiled config over time. Reload on SIGHUP, key refresh,
//! health checks, DNS re-resolution, trace export, WebSocket eviction orders, session
//! revocations, browser sessions ended elsewhere, the client connection cap, the admin listener, config metrics, and the process
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
pub mod sessions;
pub mod trace_export;

use std::future::Future;
use std::time::Duration;

use futures_util::StreamExt;
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
/// The longest wait for Redis when an admin order is stored and published.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs `pipe` (an admin order's store and publish) on a connection of its own to `url`,
/// within [`PUBLISH_TIMEOUT`]: these are rare, and their caller must not wait on Redis for
/// long. Whether it was done; if not, why is logged as `what` not published.
async fn publish(url: &str, pipe: &redis::Pipeline, what: &str) -> bool {
    let run = async {
        let client = redis::Client::open(url)?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        pipe.query_async::<()>(&mut conn).await
    };
    match tokio::time::timeout(PUBLISH_TIMEOUT, run).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            log::error!("{what} not published: {e}");
            false
        }
        Err(_) => {
            log::error!("{what} not published: Redis timed out");
            false
        }
    }
}

/// A Redis pub/sub channel the running config names.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Channel {
    url: String,
    name: String,
}

/// Follows a Redis channel for as long as the process runs. `channel` tells which one the
/// running config names, if any; once subscribed, `catch_up` reads what was stored before
/// (nothing published meanwhile is missed, the subscription being open), then each message
/// goes to `take`. When Redis goes away or the config names another channel, it starts
/// again after a pause.
async fn follow_redis<C, Fut>(
    what: &str,
    shutdown: &mut ShutdownWatch,
    channel: impl Fn() -> Option<Channel>,
    catch_up: C,
    take: impl Fn(&[u8]),
) where
    C: Fn(redis::Client) -> Fut,
    Fut: Future<Output = redis::RedisResult<()>>,
{
    loop {
        let current = channel();
        let followed = async {
            let Some(current) = &current else {
                return Ok::<(), redis::RedisError>(());
            };
            let client = redis::Client::open(current.url.as_str())?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&current.name).await?;
            catch_up(client).await?;
            log::info!("{what}: subscribed to {:?}", current.name);
            let mut messages = pubsub.on_message();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    message = messages.next() => match message {
                        Some(message) => take(message.get_payload_bytes()),
                        None => return Ok(()),
                    },
                    _ = tick.tick() => {
                        if channel().as_ref() != Some(current) {
                            return Ok(());
                        }
                    }
                }
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

//! The shared backend: several gateway instances, one Redis, one limit per consumer.
//!
//! Each decision is one `EVALSHA` of a script that reads every limit of the request, decides
//! with Redis's own clock (so instance clocks do not matter) and commits all of them or none.
//! Concurrent requests share one multiplexed connection, which pipelines them. A refusal is
//! remembered locally until its `Retry-After`: until then the answer cannot change (other
//! instances can only use up more quota), so no round trip is spent on it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Script};

use super::gcra::{self, Check, Combined, Limit};
use super::table::{BoundedTable, Expiring};
use crate::config::RedisConf;
use crate::metrics;

/// GCRA over all KEYS at once. ARGV holds (interval, period) in microseconds per key.
/// Returns {admitted, now, stored TAT per key}; the caller recomputes the details from these
/// with the same arithmetic.
const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tats = {}
local ok = 1
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i - 1])
  local period = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i])) or 0
  tats[i] = tat
  if math.max(tat, now) + interval - now > period then ok = 0 end
end
if ok == 1 then
  for i = 1, #KEYS do
    local new_tat = math.max(tats[i], now) + tonumber(ARGV[2 * i - 1])
    local ttl_ms = math.floor((new_tat - now) / 1000) + 1
    redis.call('SET', KEYS[i], string.format('%d', new_tat), 'PX', ttl_ms)
  end
end
local out = {ok, now}
for i = 1, #KEYS do out[#out + 1] = tats[i] end
return out
";

/// Redis could not decide in time; the tier's `on_redis_error` applies.
#[derive(Debug, Clone, Copy)]
pub struct Unreachable;

/// A refusal Redis gave, kept until it expires.
#[derive(Debug, Clone, Copy)]
struct Denial {
    /// Local clock, microseconds.
    until: u64,
    reset_at: u64,
    binding: usize,
}

impl Expiring for Denial {
    fn expires_at(&self) -> u64 {
        self.until
    }
}

pub struct RedisStore {
    conf: RedisConf,
    client: Client,
    script: Script,
    conn: ArcSwapOption<MultiplexedConnection>,
    connecting: tokio::sync::Mutex<()>,
    /// While the local clock is below this, Redis is not asked (after a failure).
    retry_at: AtomicU64,
    down: AtomicBool,
    denials: BoundedTable<Denial>,
}

impl RedisStore {
    pub fn new(conf: &RedisConf, max_keys: usize) -> Result<Self, String> {
        let client = Client::open(conf.url.as_str()).map_err(|e| e.to_string())?;
        Ok(Self {
            conf: conf.clone(),
            client,
            script: Script::new(SCRIPT),
            conn: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
            retry_at: AtomicU64::new(0),
            down: AtomicBool::new(false),
            denials: BoundedTable::new(max_keys, metrics::rate_limit_evictions("denials")),
        })
    }

    pub fn conf(&self) -> &RedisConf {
        &self.conf
    }

    /// Decides one request. `denial_key` names the request's set of limits for the local
    /// memory of refusals; `keys` and `limits` go together.
    pub async fn decide(
        &self,
        denial_key: u64,
        keys: &[String],
        limits: &[Limit],
        now: u64,
    ) -> Result<Combined, Unreachable> {
        if let Some(d) = self.denials.shard(denial_key).get(denial_key) {
            if d.until > now {
                return Ok(remembered(d, now));
            }
        }
        if now < self.retry_at.load(Ordering::Acquire) {
            return Err(Unreachable);
        }
        let asked = tokio::time::timeout(self.conf.timeout, self.ask(keys, limits, now)).await;
        let reply = match asked {
            Ok(Ok(reply)) => reply,
            Ok(Err(why)) => return Err(self.failed(&why, now)),
            Err(_) => return Err(self.failed("no answer within the timeout", now)),
        };
        if self.down.swap(false, Ordering::AcqRel) {
            log::info!("redis {}: reachable again", redacted(&self.conf.url));
        }
        let (admitted, redis_now, tats) = match reply.as_slice() {
            [admitted, redis_now, tats @ ..] if tats.len() == limits.len() => {
                (*admitted == 1, *redis_now, tats)
            }
            _ => return Err(self.failed("unexpected script reply", now)),
        };
        let checks: Vec<Check> = limits
            .iter()
            .zip(tats)
            .map(|(l, &tat)| gcra::check(l, tat, redis_now))
            .collect();
        let mut combined = gcra::combine(&checks).ok_or(Unreachable)?;
        // Redis committed or not; its word is final even if clocks made the numbers disagree.
        combined.allowed = admitted;
        if !admitted {
            let denial = Denial {
                until: now + combined.check.retry_after,
                reset_at: now + combined.check.reset,
                binding: combined.binding,
            };
            self.denials
                .shard(denial_key)
                .insert(denial_key, denial, now);
        }
        Ok(combined)
    }

    async fn ask(&self, keys: &[String], limits: &[Limit], now: u64) -> Result<Vec<u64>, String> {
        let mut conn = self.connection(now).await?;
        let mut call = self.script.prepare_invoke();
        for (key, limit) in keys.iter().zip(limits) {
            call.key(key).arg(limit.interval()).arg(limit.period);
        }
        let reply = call.invoke_async(&mut conn).await;
        reply.map_err(|e| e.to_string())
    }

    async fn connection(&self, now: u64) -> Result<MultiplexedConnection, String> {
        if let Some(conn) = self.conn.load().as_deref() {
            return Ok(conn.clone());
        }
        // One connection attempt at a time; the others wait for it (within their timeout)
        // rather than each opening their own.
        let _attempt = self.connecting.lock().await;
        if let Some(conn) = self.conn.load().as_deref() {
            return Ok(conn.clone());
        }
        if now < self.retry_at.load(Ordering::Acquire) {
            return Err("connection failed".into());
        }
        let config = AsyncConnectionConfig::new().set_connection_timeout(Some(self.conf.timeout));
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| e.to_string())?;
        self.conn.store(Some(Arc::new(conn.clone())));
        Ok(conn)
    }

    /// Drops the connection and leaves Redis alone for `retry_interval`.
    fn failed(&self, why: &str, now: u64) -> Unreachable {
        self.conn.store(None);
        let retry = u64::try_from(self.conf.retry_interval.as_micros()).unwrap_or(u64::MAX);
        self.retry_at
            .store(now.saturating_add(retry), Ordering::Release);
        metrics::redis_errors().inc();
        if !self.down.swap(true, Ordering::AcqRel) {
            log::warn!(
                "redis {}: {why}; rate limits of redis tiers follow their on_redis_error \
                 until it answers again (retried every {})",
                redacted(&self.conf.url),
                humantime::format_duration(self.conf.retry_interval)
            );
        }
        Unreachable
    }
}

fn remembered(d: Denial, now: u64) -> Combined {
    Combined {
        allowed: false,
        binding: d.binding,
        check: Check {
            allowed: false,
            new_tat: 0,
            remaining: 0,
            reset: d.reset_at.saturating_sub(now),
            retry_after: d.until - now,
        },
    }
}

/// The URL without its password, for logs.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(
            redacted("redis://user:secret@10.0.0.1:6379/0"),
            "redis://***@10.0.0.1:6379/0"
        );
        assert_eq!(redacted("redis://10.0.0.1"), "redis://10.0.0.1");
    }
}

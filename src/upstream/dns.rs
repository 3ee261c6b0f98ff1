//! Host names of upstream targets: resolved to every address they have, by the configured
//! name servers (whose TTLs say when to ask again) or by the system resolver.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::TokioResolver;

use crate::config::{DnsConf, Invalid, KeyPath};

/// What names resolved to, by target (`host:port`); addresses sorted.
pub type Answers = BTreeMap<String, Vec<SocketAddr>>;

/// One name's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub addrs: Vec<SocketAddr>,
    /// When to ask again.
    pub fresh_for: Duration,
}

/// `[dns]`, compiled.
#[derive(Debug, Clone)]
pub struct Resolver {
    servers: Vec<SocketAddr>,
    refresh: Duration,
    min_ttl: Duration,
    max_ttl: Duration,
    timeout: Duration,
}

/// The target's address when it is an IP literal, which needs no lookup.
pub fn literal(target: &str) -> Option<SocketAddr> {
    target.parse().ok()
}

/// What a host name stands for when it is not looked up: the documentation address
/// 192.0.2.1 (RFC 5737, never routed) with the target's port.
pub fn unresolved(target: &str) -> SocketAddr {
    let port = target
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(0);
    SocketAddr::from(([192, 0, 2, 1], port))
}

impl Resolver {
    pub fn compile(conf: &DnsConf, at: &KeyPath) -> Result<Self, Invalid> {
        let servers = conf
            .servers
            .iter()
            .map(|s| {
                s.parse::<SocketAddr>().map_err(|_| {
                    Invalid::new(
                        at.key("servers"),
                        format!("{s:?} is not an ip:port address"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if conf.min_ttl > conf.max_ttl || conf.max_ttl.is_zero() || conf.refresh.is_zero() {
            return Err(Invalid::new(
                at.key("min_ttl"),
                "min_ttl must not exceed max_ttl; max_ttl and refresh must be above zero",
            ));
        }
        if conf.timeout.is_zero() {
            return Err(Invalid::new(at.key("timeout"), "must be above zero"));
        }
        Ok(Self {
            servers,
            refresh: conf.refresh,
            min_ttl: conf.min_ttl,
            max_ttl: conf.max_ttl,
            timeout: conf.timeout,
        })
    }

    /// How long to wait before asking again after a failed lookup.
    pub fn retry_after_failure(&self) -> Duration {
        self.min_ttl.max(Duration::from_secs(1))
    }

    /// Resolves `target` (`host:port`) to all its addresses.
    pub async fn lookup(&self, target: &str) -> Result<Answer, String> {
        let (host, port) = target
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
            .ok_or_else(|| format!("{target:?} is not host:port"))?;
        let (mut addrs, fresh_for) = if self.servers.is_empty() {
            let found = tokio::time::timeout(self.timeout, tokio::net::lookup_host(target))
                .await
                .map_err(|_| "timed out".to_string())?
                .map_err(|e| e.to_string())?;
            (found.collect::<Vec<_>>(), self.refresh)
        } else {
            let mut config = ResolverConfig::new();
            for server in &self.servers {
                config.add_name_server(NameServerConfig::new(*server, Protocol::Udp));
            }
            let mut opts = ResolverOpts::default();
            // The gateway decides when to ask again; hickory's cache would answer instead.
            opts.cache_size = 0;
            opts.timeout = self.timeout;
            opts.attempts = 1;
            opts.ndots = 0;
            let resolver =
                TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
                    .with_options(opts)
                    .build();
            // Fully qualified: no search domains appended.
            let fqdn = if host.ends_with('.') {
                host.to_string()
            } else {
                format!("{host}.")
            };
            let found = resolver.lookup_ip(fqdn).await.map_err(|e| e.to_string())?;
            let ttl = found
                .valid_until()
                .saturating_duration_since(Instant::now());
            let addrs = found.iter().map(|ip| SocketAddr::new(ip, port)).collect();
            (addrs, ttl.clamp(self.min_ttl, self.max_ttl))
        };
        if addrs.is_empty() {
            return Err("no address".into());
        }
        addrs.sort();
        addrs.dedup();
        Ok(Answer { addrs, fresh_for })
    }

    /// Resolves every target at once, from a synchronous caller (loading the config): on a
    /// thread of its own, with a runtime of its own, so that it works inside a runtime too.
    pub fn lookup_all_blocking(&self, targets: &[String]) -> Vec<(String, Result<Answer, String>)> {
        if targets.is_empty() {
            return Vec::new();
        }
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| e.to_string())?;
                    Ok::<_, String>(runtime.block_on(async {
                        let lookups = targets
                            .iter()
                            .map(|t| async move { (t.clone(), self.lookup(t).await) });
                        futures_util::future::join_all(lookups).await
                    }))
                })
                .join()
                .unwrap_or_else(|_| Err("the resolver thread failed".into()))
                .unwrap_or_else(|e| {
                    targets
                        .iter()
                        .map(|t| (t.clone(), Err(e.clone())))
                        .collect()
                })
        })
    }
}

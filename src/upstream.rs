//! Upstreams: where a forwarded request goes, and how the gateway talks to it.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use once_cell::sync::Lazy;

use pingora_core::protocols::tls::CaType;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::utils::tls::CertKey;

use crate::config::{HealthCheckConf, HealthCheckKind, UpstreamConf};
use crate::health::TargetHealth;
use crate::tls;

/// Index of an upstream in a snapshot.
pub type UpstreamId = usize;

/// TLS to an upstream, compiled.
#[derive(Debug)]
struct UpstreamTls {
    sni: String,
    ca: Option<Arc<CaType>>,
    client_cert: Option<Arc<CertKey>>,
    verify_hostname: bool,
}

#[derive(Debug)]
pub struct Upstream {
    pub name: Box<str>,
    targets: Vec<SocketAddr>,
    next: AtomicUsize,
    connect_timeout: Duration,
    read_timeout: Duration,
    write_timeout: Duration,
    /// Connection attempts after the first that may go to another target.
    pub retries: usize,
    tls: Option<UpstreamTls>,
    /// Per target: milliseconds on the process clock until which it gets no traffic.
    ejected_until: Vec<AtomicU64>,
    ejection: Duration,
    health_check: Option<HealthCheckConf>,
    health: Vec<TargetHealth>,
    /// Process-clock milliseconds of the next health check round.
    next_check: AtomicU64,
}

/// Milliseconds since the process started; ejections are timed on it.
fn now_ms() -> u64 {
    static START: Lazy<Instant> = Lazy::new(Instant::now);
    u64::try_from(START.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// A problem with one field of `[upstreams.NAME]`.
pub struct UpstreamError {
    pub field: &'static str,
    pub message: String,
}

fn error(field: &'static str, message: impl Into<String>) -> UpstreamError {
    UpstreamError {
        field,
        message: message.into(),
    }
}

impl Upstream {
    /// Resolves the targets and reads TLS material now, so a typo fails the config check
    /// instead of requests. `relative` resolves paths against the config file's directory.
    pub fn compile(
        name: &str,
        conf: &UpstreamConf,
        relative: impl Fn(&Path) -> std::path::PathBuf,
    ) -> Result<Self, UpstreamError> {
        if conf.targets.is_empty() {
            return Err(error("targets", "at least one host:port is needed"));
        }
        let mut targets = Vec::with_capacity(conf.targets.len());
        for target in &conf.targets {
            let addr = target
                .to_socket_addrs()
                .map_err(|e| error("targets", format!("cannot resolve {target:?}: {e}")))?
                .next()
                .ok_or_else(|| error("targets", format!("{target:?} resolves to no address")))?;
            targets.push(addr);
        }
        let tls = match &conf.tls {
            None => None,
            Some(t) => {
                if t.sni.is_empty() {
                    // Pingora skips certificate verification altogether for an empty SNI.
                    return Err(error(
                        "tls",
                        "sni must name the backend: an empty one would leave its certificate unverified",
                    ));
                }
                let ca = t
                    .ca_file
                    .as_deref()
                    .map(|p| tls::upstream_ca(&relative(p)))
                    .transpose()
                    .map_err(|e| error("tls", format!("ca_file: {e}")))?;
                let client_cert = match (&t.client_cert_file, &t.client_key_file) {
                    (None, None) => None,
                    (Some(cert), Some(key)) => Some(
                        tls::upstream_client_cert(&relative(cert), &relative(key))
                            .map_err(|e| error("tls", format!("client_cert_file: {e}")))?,
                    ),
                    _ => {
                        return Err(error(
                            "tls",
                            "client_cert_file and client_key_file go together",
                        ))
                    }
                };
                if conf
                    .health_check
                    .as_ref()
                    .is_some_and(|h| h.kind == HealthCheckKind::Http)
                {
                    return Err(error(
                        "health_check",
                        "http checks need a plain-HTTP upstream; use kind = \"tcp\" with TLS",
                    ));
                }
                Some(UpstreamTls {
                    sni: t.sni.clone(),
                    ca,
                    client_cert,
                    verify_hostname: t.verify_hostname,
                })
            }
        };
        if let Some(h) = &conf.health_check {
            if h.interval.is_zero() || h.timeout.is_zero() {
                return Err(error(
                    "health_check",
                    "interval and timeout must be above zero",
                ));
            }
            if !h.path.starts_with('/') || h.path.contains(char::is_whitespace) {
                return Err(error(
                    "health_check",
                    "path must start with / and have no spaces",
                ));
            }
        }
        Ok(Self {
            name: name.into(),
            targets,
            next: AtomicUsize::new(0),
            connect_timeout: conf.connect_timeout,
            read_timeout: conf.read_timeout,
            write_timeout: conf.write_timeout,
            retries: conf.retries,
            tls,
            ejected_until: conf.targets.iter().map(|_| AtomicU64::new(0)).collect(),
            ejection: conf.passive_ejection,
            health_check: conf.health_check.clone(),
            health: conf
                .targets
                .iter()
                .map(|_| TargetHealth::default())
                .collect(),
            next_check: AtomicU64::new(0),
        })
    }

    /// Keeps what `previous` (the same upstream before a reload) knew about targets that are
    /// still there, so a reload does not send traffic to a target known to be down.
    pub fn inherit_health(&self, previous: &Upstream) {
        for (i, addr) in self.targets.iter().enumerate() {
            if let Some(j) = previous.targets.iter().position(|a| a == addr) {
                self.health[i].copy_from(&previous.health[j]);
            }
        }
    }

    pub fn targets(&self) -> &[SocketAddr] {
        &self.targets
    }

    pub fn health(&self, target: usize) -> &TargetHealth {
        &self.health[target]
    }

    /// The health check settings when a round of probes is due (and schedules the next).
    pub fn health_check_due(&self) -> Option<&HealthCheckConf> {
        let conf = self.health_check.as_ref()?;
        let now = now_ms();
        let due = self.next_check.load(Ordering::Relaxed);
        if now < due {
            return None;
        }
        let interval = u64::try_from(conf.interval.as_millis()).unwrap_or(u64::MAX);
        self.next_check
            .compare_exchange(
                due,
                now.saturating_add(interval),
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .ok()
            .map(|_| conf)
    }

    /// The next target in turn that is not ejected, or `None` when every one is.
    pub fn pick(&self) -> Option<usize> {
        let n = self.targets.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = now_ms();
        (0..n).map(|k| (start + k) % n).find(|&i| {
            self.health[i].is_up() && self.ejected_until[i].load(Ordering::Relaxed) <= now
        })
    }

    /// Takes a target out of rotation after a failed connection.
    pub fn eject(&self, target: usize) {
        if self.ejection.is_zero() {
            return;
        }
        if let Some(slot) = self.ejected_until.get(target) {
            let ms = u64::try_from(self.ejection.as_millis()).unwrap_or(u64::MAX);
            slot.store(now_ms().saturating_add(ms), Ordering::Relaxed);
            log::warn!(
                "upstream {}: target {} ejected for {}",
                self.name,
                self.targets[target],
                humantime::format_duration(self.ejection)
            );
        }
    }

    /// The peer for one connection attempt to `target` (from [`Upstream::pick`]).
    pub fn peer(&self, target: usize) -> HttpPeer {
        let addr = self.targets[target % self.targets.len()];
        let mut peer = match &self.tls {
            None => HttpPeer::new(addr, false, String::new()),
            Some(t) => {
                let mut peer = HttpPeer::new(addr, true, t.sni.clone());
                peer.options.verify_cert = true;
                peer.options.verify_hostname = t.verify_hostname;
                peer.options.ca = t.ca.clone();
                peer.client_cert_key = t.client_cert.clone();
                peer
            }
        };
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.read_timeout = Some(self.read_timeout);
        peer.options.write_timeout = Some(self.write_timeout);
        peer
    }
}

//! Upstreams: where a forwarded request goes, and how the gateway talks to it.

mod attempts;
pub mod breaker;
pub mod credentials;
pub mod dns;
pub mod health;
pub mod retry;
mod window;

pub use attempts::{Attempts, NoPeer};
pub use breaker::{CircuitState, InFlightGuard};
pub use credentials::{CredentialError, Credentials};
pub use retry::RetryReason;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pingora_core::protocols::tls::CaType;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::utils::tls::CertKey;

use crate::clock;
use crate::config::{
    Balance, HealthCheckConf, HealthCheckKind, TargetConf, UpstreamConf, UpstreamProtocol,
};
use crate::config::{Invalid, KeyPath};
use crate::tls;
use health::TargetHealth;

/// An upstream of one snapshot: its position in [`Upstreams`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamId(usize);

/// Every upstream of a config, by name and by id.
#[derive(Default)]
pub struct Upstreams {
    list: Vec<Upstream>,
}

impl Upstreams {
    /// Adds an upstream; its id is valid in this collection only.
    pub fn add(&mut self, upstream: Upstream) -> UpstreamId {
        self.list.push(upstream);
        UpstreamId(self.list.len() - 1)
    }

    pub fn find(&self, name: &str) -> Option<UpstreamId> {
        self.list
            .iter()
            .position(|u| *u.name == *name)
            .map(UpstreamId)
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.list.iter().map(|u| &*u.name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (UpstreamId, &Upstream)> {
        self.list
            .iter()
            .enumerate()
            .map(|(i, u)| (UpstreamId(i), u))
    }
}

impl std::ops::Index<UpstreamId> for Upstreams {
    type Output = Upstream;

    /// Ids come from the same collection, so they are always in range.
    fn index(&self, id: UpstreamId) -> &Upstream {
        &self.list[id.0]
    }
}

/// A target chosen for an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    pub target: usize,
    /// The attempt is a half-open circuit's probe: its outcome decides the circuit.
    pub probe: bool,
}

/// TLS to an upstream, compiled.
#[derive(Debug)]
struct UpstreamTls {
    sni: String,
    ca: Option<Arc<CaType>>,
    client_cert: Option<Arc<CertKey>>,
    verify_hostname: bool,
}

pub struct Upstream {
    pub name: Box<str>,
    targets: Vec<SocketAddr>,
    /// Smooth weighted round robin: target indexes in the order they take turns.
    schedule: Vec<usize>,
    /// For `consistent_hash`: the ring over the targets, by weight.
    ring: Option<pingora_ketama::Continuum>,
    next: AtomicUsize,
    connect_timeout: Duration,
    read_timeout: Duration,
    write_timeout: Duration,
    /// The whole exchange, retries included.
    pub timeout: Option<Duration>,
    /// Connection attempts after the first that may go to another target.
    pub retries: usize,
    tls: Option<UpstreamTls>,
    /// HTTP/2 (with its concurrent streams per connection), or HTTP/1.1.
    http2: Option<usize>,
    /// Per target: milliseconds on the process clock until which it gets no traffic.
    ejected_until: Vec<AtomicU64>,
    ejection: Duration,
    health_check: Option<HealthCheckConf>,
    health: Vec<TargetHealth>,
    /// Process-clock milliseconds of the next health check round.
    next_check: AtomicU64,
    pub retry: retry::RetryPolicy,
    breaker: Option<breaker::BreakerPolicy>,
    /// Per target, when `breaker` is set.
    breakers: Vec<breaker::Breaker>,
    in_flight: breaker::InFlight,
    max_requests: Option<usize>,
    /// The upstream's own token, in place of the caller's.
    pub credentials: Option<Arc<Credentials>>,
}

impl Upstream {
    /// Compiles `[upstreams.NAME]` (at `at`), its host names by `answers` (see
    /// [`host_names`]). Reads TLS material now, so a typo fails the config check instead of
    /// requests. `relative` resolves paths against the config file's directory.
    pub fn compile(
        name: &str,
        conf: &UpstreamConf,
        at: &KeyPath,
        relative: impl Fn(&Path) -> std::path::PathBuf,
        answers: &dns::Answers,
    ) -> Result<Self, Invalid> {
        let error = |field: &str, message: String| Invalid::new(at.key(field), message);
        if conf.targets.is_empty() {
            return Err(error("targets", "at least one host:port is needed".into()));
        }
        let mut targets = Vec::with_capacity(conf.targets.len());
        let mut weights = Vec::with_capacity(conf.targets.len());
        for target in &conf.targets {
            let (address, weight) = match target {
                TargetConf::Address(a) => (a, 1),
                TargetConf::Weighted { address, weight } => (address, *weight),
            };
            if !(1..=100).contains(&weight) {
                return Err(error(
                    "targets",
                    format!("{address:?}: weight must be 1 to 100"),
                ));
            }
            // A name stands for every address it has, each with the name's weight.
            let addrs = match dns::literal(address) {
                Some(addr) => vec![addr],
                None => answers
                    .get(address)
                    .cloned()
                    .ok_or_else(|| error("targets", format!("{address:?} did not resolve")))?,
            };
            for addr in addrs {
                if !targets.contains(&addr) {
                    targets.push(addr);
                    weights.push(weight);
                }
            }
        }
        let ring = (conf.balance == Balance::ConsistentHash).then(|| {
            let buckets: Vec<pingora_ketama::Bucket> = targets
                .iter()
                .zip(&weights)
                .map(|(a, w)| pingora_ketama::Bucket::new(*a, *w))
                .collect();
            pingora_ketama::Continuum::new(&buckets)
        });
        let tls = match &conf.tls {
            None => None,
            Some(t) => {
                if t.sni.is_empty() {
                    // Pingora skips certificate verification altogether for an empty SNI.
                    return Err(error("tls", "sni must name the backend: an empty one would leave its certificate unverified".into()));
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
                            "client_cert_file and client_key_file go together".into(),
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
                        "http checks need a plain-HTTP upstream; use kind = \"tcp\" with TLS"
                            .into(),
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
                    "interval and timeout must be above zero".into(),
                ));
            }
            if !h.path.starts_with('/') || h.path.contains(char::is_whitespace) {
                return Err(error(
                    "health_check",
                    "path must start with / and have no spaces".into(),
                ));
            }
        }
        let retry = retry::RetryPolicy::compile(conf, at)?;
        let breaker = conf
            .circuit_breaker
            .as_ref()
            .map(|c| breaker::BreakerPolicy::compile(c, &at.key("circuit_breaker")))
            .transpose()?;
        let breakers = match &breaker {
            Some(p) => targets.iter().map(|_| breaker::Breaker::new(p)).collect(),
            None => Vec::new(),
        };
        if conf.max_requests == Some(0) {
            return Err(error("max_requests", "must be at least 1".into()));
        }
        let credentials = conf
            .credentials
            .as_ref()
            .map(|c| Credentials::compile(name, c, &at.key("credentials"), &relative))
            .transpose()?
            .map(Arc::new);
        Ok(Self {
            name: name.into(),
            schedule: smooth_weighted_schedule(&weights),
            ring,
            targets,
            next: AtomicUsize::new(0),
            connect_timeout: conf.connect_timeout,
            read_timeout: conf.read_timeout,
            write_timeout: conf.write_timeout,
            timeout: conf.timeout,
            retries: conf.retries,
            tls,
            ejected_until: weights.iter().map(|_| AtomicU64::new(0)).collect(),
            ejection: conf.passive_ejection,
            health_check: conf.health_check.clone(),
            health: weights.iter().map(|_| TargetHealth::default()).collect(),
            next_check: AtomicU64::new(0),
            http2: (conf.protocol == UpstreamProtocol::Http2).then_some(conf.max_streams.max(1)),
            retry,
            breaker,
            breakers,
            in_flight: breaker::InFlight::default(),
            max_requests: conf.max_requests,
            credentials,
        })
    }

    /// Keeps what `previous` (the same upstream before a reload) knew about targets that are
    /// still there, so a reload does not send traffic to a target known to be down.
    /// Requests in flight are counted across reloads, so a reload does not reset the cap.
    pub fn inherit_health(&mut self, previous: &Upstream) {
        for (i, addr) in self.targets.iter().enumerate() {
            if let Some(j) = previous.targets.iter().position(|a| a == addr) {
                self.health[i].copy_from(&previous.health[j]);
                if let (Some(b), Some(before)) = (self.breakers.get(i), previous.breakers.get(j)) {
                    b.copy_from(before);
                }
            }
        }
        self.in_flight = previous.in_flight.clone();
        if let (Some(now), Some(before)) = (&self.credentials, &previous.credentials) {
            if now.same_as(before) {
                self.credentials = Some(Arc::clone(before));
            }
        }
    }

    /// A place among the upstream's requests in flight; `None` when `max_requests` are.
    pub fn enter(&self) -> Option<Option<InFlightGuard>> {
        match self.max_requests {
            None => Some(None),
            Some(max) => self.in_flight.enter(max).map(Some),
        }
    }

    /// Target `i`'s circuit, when the upstream has a breaker.
    pub fn circuit(&self, i: usize) -> Option<CircuitState> {
        self.breakers.get(i).map(breaker::Breaker::state)
    }

    /// Records how an attempt on `target` ended, for its circuit.
    pub fn record_outcome(&self, target: usize, probe: bool, ok: bool) {
        let (Some(policy), Some(b)) = (&self.breaker, self.breakers.get(target)) else {
            return;
        };
        match b.record(policy, probe, ok, clock::process_millis()) {
            Some(breaker::Transition::Opened) => log::warn!(
                "upstream {}: circuit of target {} opened",
                self.name,
                self.targets[target]
            ),
            Some(breaker::Transition::Closed) => log::info!(
                "upstream {}: circuit of target {} closed",
                self.name,
                self.targets[target]
            ),
            None => {}
        }
    }

    /// Gives back a half-open probe whose request ended without an outcome.
    pub fn release_probe(&self, target: usize) {
        if let Some(b) = self.breakers.get(target) {
            b.release();
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
        let now = clock::process_millis();
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

    pub fn speaks_http2(&self) -> bool {
        self.http2.is_some()
    }

    /// Whether targets are chosen by a consumer key ([`Upstream::pick`] wants one).
    pub fn hashes(&self) -> bool {
        self.ring.is_some()
    }

    fn available_at(&self, i: usize, now: u64) -> bool {
        self.health[i].is_up() && self.ejected_until[i].load(Ordering::Relaxed) <= now
    }

    /// Whether target `i` takes traffic now (up, not ejected, its circuit not open).
    pub fn available(&self, i: usize) -> bool {
        self.available_at(i, clock::process_millis()) && self.circuit(i) != Some(CircuitState::Open)
    }

    /// For readiness: false only when health checks are on and every target fails them.
    pub fn has_healthy_target(&self) -> bool {
        self.health_check.is_none() || self.health.iter().any(TargetHealth::is_up)
    }

    /// For readiness: true when the upstream has a breaker and every target's circuit is open.
    pub fn all_circuits_open(&self) -> bool {
        !self.breakers.is_empty()
            && self
                .breakers
                .iter()
                .all(|b| b.state() == CircuitState::Open)
    }

    /// The target for the next attempt: by `key` on the ring with `consistent_hash` (the next
    /// one on the ring when it is out), else the next in turn. `None` when every target is
    /// down or ejected.
    pub fn pick(&self, key: Option<&[u8]>) -> Option<Pick> {
        let now = clock::process_millis();
        if let (Some(ring), Some(key)) = (&self.ring, key) {
            // The ring repeats targets; a bounded walk finds the next available one.
            return ring
                .node_iter(key)
                .take(self.targets.len() * 8)
                .filter_map(|addr| self.targets.iter().position(|a| a == addr))
                .find_map(|i| self.admit(i, now));
        }
        let n = self.schedule.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| self.schedule[(start + k) % n])
            .find_map(|i| self.admit(i, now))
    }

    /// Target `i`, if it takes this attempt: up, not ejected, and its circuit lets it through.
    fn admit(&self, i: usize, now: u64) -> Option<Pick> {
        if !self.available_at(i, now) {
            return None;
        }
        let probe = match (&self.breaker, self.breakers.get(i)) {
            (Some(policy), Some(b)) => match b.admit(policy, now) {
                breaker::Admitted::Yes => false,
                breaker::Admitted::Probe => true,
                breaker::Admitted::No => return None,
            },
            _ => false,
        };
        Some(Pick { target: i, probe })
    }

    /// Takes a target out of rotation after a failed connection.
    pub fn eject(&self, target: usize) {
        if self.ejection.is_zero() {
            return;
        }
        if let Some(slot) = self.ejected_until.get(target) {
            let ms = u64::try_from(self.ejection.as_millis()).unwrap_or(u64::MAX);
            slot.store(
                clock::process_millis().saturating_add(ms),
                Ordering::Relaxed,
            );
            log::warn!(
                "upstream {}: target {} ejected for {}",
                self.name,
                self.targets[target],
                humantime::format_duration(self.ejection)
            );
        }
    }

    /// The peer for one connection attempt to `target` (from [`Upstream::pick`]); no wait may
    /// outlast `time_left` of the exchange's deadline.
    pub fn peer(&self, target: usize, time_left: Option<Duration>) -> HttpPeer {
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
        if let Some(streams) = self.http2 {
            // Prior knowledge without TLS (h2c); with TLS, ALPN offers only h2.
            peer.options.alpn = pingora_core::protocols::ALPN::H2;
            peer.options.max_h2_streams = streams;
        }
        let cap = |t: Duration| time_left.map_or(t, |left| t.min(left));
        peer.options.connection_timeout = Some(cap(self.connect_timeout));
        peer.options.total_connection_timeout = time_left;
        peer.options.read_timeout = Some(cap(self.read_timeout));
        peer.options.write_timeout = Some(cap(self.write_timeout));
        peer
    }
}

/// The targets of `conf` given by host name, to resolve before it compiles.
pub fn host_names(conf: &UpstreamConf) -> impl Iterator<Item = &str> {
    conf.targets
        .iter()
        .map(|t| match t {
            TargetConf::Address(a) => a.as_str(),
            TargetConf::Weighted { address, .. } => address.as_str(),
        })
        .filter(|a| dns::literal(a).is_none())
}

/// Nginx's smooth weighted round robin, unrolled once: weights 5, 1, 1 give
/// a a b a c a a rather than a a a a a b c.
fn smooth_weighted_schedule(weights: &[u32]) -> Vec<usize> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        for (c, &w) in current.iter_mut().zip(weights) {
            *c += i64::from(w);
        }
        let Some((best, _)) = current
            .iter()
            .enumerate()
            .max_by_key(|(i, c)| (**c, -(*i as i64)))
        else {
            break;
        };
        current[best] -= total;
        schedule.push(best);
    }
    schedule
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_interleaved() {
        assert_eq!(smooth_weighted_schedule(&[5, 1, 1]), [0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_weighted_schedule(&[1, 1]), [0, 1]);
        assert_eq!(smooth_weighted_schedule(&[2, 1]).len(), 3);
    }
}

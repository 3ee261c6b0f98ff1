//! Metrics read from the running config when they are scraped: the config generation, keys
//! per issuer, cached tokens, target health; and Pingora's count of TLS handshakes that did
//! not complete.

use std::sync::atomic::{AtomicU64, Ordering};

use pingora_core::services::listening::{
    HANDSHAKES_ABANDONED, HANDSHAKES_FAILED, HANDSHAKES_TIMED_OUT,
};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{GaugeVec, IntCounterVec, IntGauge, IntGaugeVec, Opts};

use crate::clock;
use crate::metrics;
use crate::rate_limit;
use crate::snapshot::SharedSnapshot;

/// Config generation: 1 at start, one more per applied reload.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Counts a config put in use (the first at start); returns its generation.
pub fn next_generation() -> u64 {
    GENERATION.fetch_add(1, Ordering::Relaxed) + 1
}

fn generation() -> u64 {
    GENERATION.load(Ordering::Relaxed)
}

/// Metrics read from the running config at scrape time.
struct SnapshotCollector {
    config: SharedSnapshot,
    generation: IntGauge,
    key_fetches: IntCounterVec,
    key_age: GaugeVec,
    keys: IntGaugeVec,
    cached_tokens: IntGauge,
    introspection_entries: IntGaugeVec,
    target_up: IntGaugeVec,
    circuit: IntGaugeVec,
    top_requests: IntGaugeVec,
    top_limited: IntGaugeVec,
    tls_handshake_failures: IntCounterVec,
    descs: Vec<Desc>,
}

impl SnapshotCollector {
    fn new(config: SharedSnapshot) -> prometheus::Result<Self> {
        let generation = IntGauge::new(
            "config_generation",
            "The running config: 1 at start, one more per applied reload.",
        )?;
        let key_fetches = IntCounterVec::new(
            Opts::new(
                "jwks_fetches_total",
                "Key set (JWKS) fetches by issuer and outcome (ok, failed).",
            ),
            &["issuer", "outcome"],
        )?;
        let key_age = GaugeVec::new(
            Opts::new(
                "jwks_key_age_seconds",
                "Seconds since the issuer's keys were last loaded (absent until they are).",
            ),
            &["issuer"],
        )?;
        let keys = IntGaugeVec::new(
            Opts::new("jwks_keys", "Keys held for the issuer."),
            &["issuer"],
        )?;
        let cached_tokens = IntGauge::new(
            "token_cache_entries",
            "Verified tokens remembered by the running config.",
        )?;
        let introspection_entries = IntGaugeVec::new(
            Opts::new(
                "introspection_cache_entries",
                "Introspection answers remembered, by issuer.",
            ),
            &["issuer"],
        )?;
        let target_up = IntGaugeVec::new(
            Opts::new(
                "upstream_target_up",
                "1 if the target takes traffic (health checks and ejection), else 0.",
            ),
            &["upstream", "target"],
        )?;
        let circuit = IntGaugeVec::new(
            Opts::new(
                "upstream_circuit_state",
                "Per target of an upstream with a circuit breaker: 0 closed, 1 half-open, 2 open.",
            ),
            &["upstream", "target"],
        )?;
        let top_requests = IntGaugeVec::new(
            Opts::new(
                "top_consumer_requests",
                "Estimated requests since start of each tier's heaviest consumers ([rate_limit] top_consumers).",
            ),
            &["tier", "consumer"],
        )?;
        let top_limited = IntGaugeVec::new(
            Opts::new(
                "top_consumer_limited",
                "Estimated refusals (429) since start of each tier's most refused consumers.",
            ),
            &["tier", "consumer"],
        )?;
        let tls_handshake_failures = IntCounterVec::new(
            Opts::new(
                "tls_handshake_failures_total",
                "Client TLS handshakes not completed, by reason: abandoned (the peer closed \
                 first: TCP health checks, scans), failed, timeout.",
            ),
            &["reason"],
        )?;
        let descs = [
            tls_handshake_failures.desc(),
            top_requests.desc(),
            top_limited.desc(),
            circuit.desc(),
            generation.desc(),
            key_fetches.desc(),
            key_age.desc(),
            keys.desc(),
            cached_tokens.desc(),
            introspection_entries.desc(),
            target_up.desc(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        Ok(Self {
            config,
            generation,
            key_fetches,
            key_age,
            keys,
            cached_tokens,
            introspection_entries,
            target_up,
            circuit,
            top_requests,
            top_limited,
            tls_handshake_failures,
            descs,
        })
    }
}

impl Collector for SnapshotCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let snap = self.config.load();
        self.generation
            .set(i64::try_from(generation()).unwrap_or(i64::MAX));
        self.key_fetches.reset();
        self.key_age.reset();
        self.keys.reset();
        self.target_up.reset();
        let now = clock::unix_millis();
        for issuer in snap.authenticator.issuers() {
            let name = &*issuer.name;
            let stats = &issuer.keys.stats;
            let fetches = stats.fetches.load(Ordering::Relaxed);
            let failed = stats.fetch_failures.load(Ordering::Relaxed);
            self.key_fetches
                .with_label_values(&[name, "ok"])
                .inc_by(fetches.saturating_sub(failed));
            self.key_fetches
                .with_label_values(&[name, "failed"])
                .inc_by(failed);
            let loaded = stats.loaded_at_unix_ms.load(Ordering::Relaxed);
            if loaded > 0 {
                self.key_age
                    .with_label_values(&[name])
                    .set(now.saturating_sub(loaded) as f64 / 1000.0);
            }
            let held = issuer.keys.current().map_or(0, |k| k.len());
            self.keys
                .with_label_values(&[name])
                .set(i64::try_from(held).unwrap_or(i64::MAX));
        }
        self.cached_tokens
            .set(i64::try_from(snap.authenticator.cached_tokens()).unwrap_or(i64::MAX));
        self.introspection_entries.reset();
        for issuer in snap.authenticator.issuers() {
            if let Some(introspector) = &issuer.introspection {
                self.introspection_entries
                    .with_label_values(&[&*issuer.name])
                    .set(i64::try_from(introspector.cached()).unwrap_or(i64::MAX));
            }
        }
        self.top_requests.reset();
        self.top_limited.reset();
        for (tier, usage) in rate_limit::usage::all() {
            for (gauge, ranking) in [
                (&self.top_requests, usage.requests.ranking()),
                (&self.top_limited, usage.limited.ranking()),
            ] {
                for (consumer, count) in ranking {
                    gauge.with_label_values(&[&*tier, &*consumer]).set(count);
                }
            }
        }
        self.circuit.reset();
        for (_, upstream) in snap.upstreams.iter() {
            for (i, target) in upstream.targets().iter().enumerate() {
                let labels = [&*upstream.name, &target.to_string()];
                self.target_up
                    .with_label_values(&labels)
                    .set(i64::from(upstream.available(i)));
                if let Some(state) = upstream.circuit(i) {
                    self.circuit.with_label_values(&labels).set(state as i64);
                }
            }
        }
        self.tls_handshake_failures.reset();
        for (reason, count) in [
            ("abandoned", &HANDSHAKES_ABANDONED),
            ("failed", &HANDSHAKES_FAILED),
            ("timeout", &HANDSHAKES_TIMED_OUT),
        ] {
            self.tls_handshake_failures
                .with_label_values(&[reason])
                .inc_by(count.load(Ordering::Relaxed));
        }
        [
            self.tls_handshake_failures.collect(),
            self.generation.collect(),
            self.key_fetches.collect(),
            self.key_age.collect(),
            self.keys.collect(),
            self.cached_tokens.collect(),
            self.introspection_entries.collect(),
            self.target_up.collect(),
            self.circuit.collect(),
            self.top_requests.collect(),
            self.top_limited.collect(),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

/// Adds the metrics read from the running config. Called once, at start.
pub fn watch(config: SharedSnapshot) {
    match SnapshotCollector::new(config) {
        Ok(c) => {
            if let Err(e) = metrics::register_collector(Box::new(c)) {
                log::error!("config metrics are off: {e}");
            }
        }
        Err(e) => log::error!("config metrics are off: {e}"),
    }
}

//! Prometheus metrics, served on the admin listener.

use once_cell::sync::Lazy;
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

static REGISTRY: Lazy<Registry> =
    Lazy::new(|| Registry::new_custom(Some("portcullis".into()), None).unwrap_or_default());

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let vec = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"));
    // Registration fails only for duplicate names, which the statics below rule out.
    let _ = REGISTRY.register(Box::new(vec.clone()));
    vec
}

static RATE_LIMIT_DECISIONS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "rate_limit_decisions_total",
        "Rate-limit decisions by tier and outcome (allowed, limited, unavailable).",
        &["tier", "outcome"],
    )
});

static RATE_LIMIT_FALLBACKS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "rate_limit_redis_fallbacks_total",
        "Requests decided without Redis because it was unavailable, by the tier's on_redis_error.",
        &["mode"],
    )
});

static REDIS_ERRORS: Lazy<IntCounter> = Lazy::new(|| {
    let c = IntCounter::new(
        "rate_limit_redis_errors_total",
        "Failed Redis round trips (timeouts, lost connections, errors).",
    )
    .unwrap_or_else(|e| panic!("metric is malformed: {e}"));
    let _ = REGISTRY.register(Box::new(c.clone()));
    c
});

static RATE_LIMIT_EVICTIONS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "rate_limit_evictions_total",
        "In-memory rate-limit entries dropped to stay within local_max_keys.",
        &["table"],
    )
});

pub fn rate_limit_decisions(tier: &str, outcome: &str) -> IntCounter {
    RATE_LIMIT_DECISIONS.with_label_values(&[tier, outcome])
}

pub fn rate_limit_fallbacks(mode: &str) -> IntCounter {
    RATE_LIMIT_FALLBACKS.with_label_values(&[mode])
}

pub fn redis_errors() -> &'static IntCounter {
    &REDIS_ERRORS
}

pub fn rate_limit_evictions(table: &str) -> IntCounter {
    RATE_LIMIT_EVICTIONS.with_label_values(&[table])
}

/// Everything, in the Prometheus text format.
pub fn render() -> String {
    let encoder = prometheus::TextEncoder::new();
    encoder
        .encode_to_string(&REGISTRY.gather())
        .unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
}

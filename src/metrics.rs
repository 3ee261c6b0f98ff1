//! Prometheus metrics, served on the admin listener.
//!
//! Request-path metrics are counted as they happen. What describes the running config (keys
//! per issuer, target health, the config generation) is added by the runtime as a collector
//! read at scrape time, so nothing on the request path maintains it.

use std::time::Duration;

use once_cell::sync::Lazy;
use prometheus::core::Collector;
use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

static REGISTRY: Lazy<Registry> =
    Lazy::new(|| Registry::new_custom(Some("portcullis".into()), None).unwrap_or_default());

fn register<C: Collector + Clone + 'static>(metric: C) -> C {
    // Registration fails only for duplicate names, which the statics below rule out.
    let _ = REGISTRY.register(Box::new(metric.clone()));
    metric
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        IntCounterVec::new(Opts::new(name, help), labels)
            .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}")),
    )
}

fn histogram_vec(name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    register(
        HistogramVec::new(
            HistogramOpts::new(name, help).buckets(buckets.to_vec()),
            labels,
        )
        .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}")),
    )
}

fn counter(name: &str, help: &str) -> IntCounter {
    register(
        IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name} is malformed: {e}")),
    )
}

fn int_gauge(name: &str, help: &str) -> IntGauge {
    register(
        IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name} is malformed: {e}")),
    )
}

fn int_gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(
        IntGaugeVec::new(Opts::new(name, help), labels)
            .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}")),
    )
}

fn histogram(name: &str, help: &str, buckets: &[f64]) -> Histogram {
    register(
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
            .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}")),
    )
}

/// Request latency buckets, 250 µs to 10 s.
const LATENCY: &[f64] = &[
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// The gateway's own share of a request: 10 µs to 50 ms.
const OVERHEAD: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05,
];

static REQUESTS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "requests_total",
        "Requests by route, method and status (route \"\" when no route matched).",
        &["route", "method", "status"],
    )
});

static REQUEST_DURATION: Lazy<HistogramVec> = Lazy::new(|| {
    histogram_vec(
        "request_duration_seconds",
        "From the request's headers being read to the last byte of the response, by route.",
        &["route"],
        LATENCY,
    )
});

static GATEWAY_OVERHEAD: Lazy<Histogram> = Lazy::new(|| {
    histogram(
        "gateway_overhead_seconds",
        "The gateway's own work on a request: routing, authentication, authorization \
         and rate limiting, up to the choice of upstream or the gateway's own answer.",
        OVERHEAD,
    )
});

static AUTHENTICATIONS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "authentications_total",
        "Token checks on authenticated routes: ok, or why the token was refused.",
        &["outcome"],
    )
});

static AUTHORIZATION_DENIALS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "authorization_denials_total",
        "Authenticated requests refused by a route's policy (403), by route and reason.",
        &["route", "reason"],
    )
});

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
    counter(
        "rate_limit_redis_errors_total",
        "Failed Redis round trips (timeouts, lost connections, errors).",
    )
});

static RATE_LIMIT_EVICTIONS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "rate_limit_evictions_total",
        "In-memory rate-limit entries dropped to stay within local_max_keys.",
        &["table"],
    )
});

static WEBSOCKETS_OPEN: Lazy<IntGauge> = Lazy::new(|| {
    int_gauge(
        "websockets_open",
        "Upgraded (WebSocket) connections open now.",
    )
});

static WEBSOCKET_EXPIRY_CLOSE_DELAY: Lazy<Histogram> = Lazy::new(|| {
    histogram(
        "websocket_expiry_close_delay_seconds",
        "From a WebSocket's token expiry to the gateway's Close frame (4001) written to the client.",
        &[0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5, 1.0],
    )
});

static WEBSOCKETS_CLOSED: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "websockets_closed_total",
        "WebSocket connections ended, by reason: expired, renewal_rejected, evicted, shutdown, \
         client, backend.",
        &["reason"],
    )
});

static WEBSOCKET_RENEWALS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "websocket_renewals_total",
        "In-band token renewals, by outcome: ok, or why the renewal was refused.",
        &["outcome"],
    )
});

static WEBSOCKET_EVICTIONS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "websocket_eviction_orders_total",
        "Eviction orders received, by origin: admin (this instance) or redis (another one).",
        &["origin"],
    )
});

static IN_FLIGHT: Lazy<IntGauge> = Lazy::new(|| {
    int_gauge(
        "requests_in_flight",
        "Requests being served now, open WebSockets included.",
    )
});

static CLIENT_CONNECTIONS: Lazy<IntGaugeVec> = Lazy::new(|| {
    int_gauge_vec(
        "client_connections",
        "Client connections open now, by listener address.",
        &["listener"],
    )
});

static CLIENT_CONNECTIONS_REFUSED: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "client_connections_refused_total",
        "Client connections closed on arrival because their listener had max_connections open.",
        &["listener"],
    )
});

static EXT_AUTHZ_LOOKUPS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "ext_authz_lookups_total",
        "External decisions by route and how they were found: hit, shared (joined a call in \
         flight), miss (asked), uncached (the route keeps none).",
        &["route", "result"],
    )
});

static EXT_AUTHZ_CALLS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "ext_authz_calls_total",
        "Calls to external decision points by route and outcome: allow, deny, error.",
        &["route", "outcome"],
    )
});

static EXT_AUTHZ_DURATION: Lazy<HistogramVec> = Lazy::new(|| {
    histogram_vec(
        "ext_authz_duration_seconds",
        "How long calls to external decision points took, by route.",
        &["route"],
        LATENCY,
    )
});

static SHADOW_REFUSALS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "shadow_refusals_total",
        "Refusals not carried out because their route has enforce = false, by route and reason.",
        &["route", "reason"],
    )
});

static UPSTREAM_RETRIES: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "upstream_retries_total",
        "Retries by upstream and reason: connect, status (retry_on_status), timeout.",
        &["upstream", "reason"],
    )
});

static RETRY_BUDGET_EXHAUSTED: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "upstream_retry_budget_exhausted_total",
        "Retries not made because the upstream's retry budget was spent.",
        &["upstream"],
    )
});

static UPSTREAM_OVERFLOW: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "upstream_overflow_total",
        "Requests answered 503 because the upstream had max_requests in flight.",
        &["upstream"],
    )
});

static TRACE_SPANS_EXPORTED: Lazy<IntCounter> = Lazy::new(|| {
    counter(
        "trace_spans_exported_total",
        "Spans sent to the OTLP collector and accepted by it.",
    )
});

static TRACE_SPANS_DROPPED: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "trace_spans_dropped_total",
        "Spans not exported, by reason: queue_full (max_queue spans were waiting), \
         export_failed (the collector refused or did not answer in time).",
        &["reason"],
    )
});

static DNS_LOOKUPS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "dns_lookups_total",
        "Background lookups of upstream host names, by result: ok, failed.",
        &["result"],
    )
});

static RELOADS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "config_reloads_total",
        "Reloads by outcome: applied, or rejected (the running config was kept).",
        &["outcome"],
    )
});

static RELOAD_DURATION: Lazy<Histogram> = Lazy::new(|| {
    histogram(
        "config_reload_duration_seconds",
        "From SIGHUP to the new config being in use (or refused).",
        &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0],
    )
});

static LAST_RELOAD: Lazy<Gauge> = Lazy::new(|| {
    register(
        Gauge::new(
            "config_last_reload_success_timestamp_seconds",
            "When the running config was loaded (Unix time).",
        )
        .unwrap_or_else(|e| panic!("metric is malformed: {e}")),
    )
});

static LOG_DROPS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "log_lines_dropped_total",
        "Access or audit lines dropped because the log writer fell behind.",
        &["log"],
    )
});

/// Labels that keep cardinality bounded: the method is one of the standard ones or "OTHER".
fn method_label(method: &http::Method) -> &str {
    match *method {
        http::Method::GET
        | http::Method::HEAD
        | http::Method::POST
        | http::Method::PUT
        | http::Method::PATCH
        | http::Method::DELETE
        | http::Method::OPTIONS
        | http::Method::CONNECT
        | http::Method::TRACE => method.as_str(),
        _ => "OTHER",
    }
}

/// A finished request.
pub fn request(route: &str, method: &http::Method, status: u16, total: Duration) {
    let mut code = itoa::Buffer::new();
    REQUESTS
        .with_label_values(&[route, method_label(method), code.format(status)])
        .inc();
    REQUEST_DURATION
        .with_label_values(&[route])
        .observe(total.as_secs_f64());
}

pub fn gateway_overhead(d: Duration) {
    GATEWAY_OVERHEAD.observe(d.as_secs_f64());
}

pub fn authentication(outcome: &str) {
    AUTHENTICATIONS.with_label_values(&[outcome]).inc();
}

static TOKEN_CACHE: Lazy<[IntCounter; 3]> = Lazy::new(|| {
    let lookups = counter_vec(
        "token_cache_lookups_total",
        "Token cache lookups of authenticated requests: hit (a token verified before), refused \
         (a token refused before, for a reason that still holds) or miss (the token was checked).",
        &["result"],
    );
    [
        lookups.with_label_values(&["hit"]),
        lookups.with_label_values(&["refused"]),
        lookups.with_label_values(&["miss"]),
    ]
});

#[derive(Debug, Clone, Copy)]
pub enum TokenCacheResult {
    Hit,
    Refused,
    Miss,
}

pub fn token_cache(result: TokenCacheResult) {
    TOKEN_CACHE[result as usize].inc();
}

static INTROSPECTION_LOOKUPS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "introspection_cache_lookups_total",
        "Introspected tokens by issuer: hit (an answer remembered), shared (the answer of a \
         call made for another request at the same time) or miss (a call was made).",
        &["issuer", "result"],
    )
});

static UPSTREAM_CREDENTIAL_CALLS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "upstream_credential_calls_total",
        "Calls to token endpoints for upstream credentials, by upstream, grant and result.",
        &["upstream", "grant", "result"],
    )
});

static UPSTREAM_CREDENTIAL_DURATION: Lazy<HistogramVec> = Lazy::new(|| {
    histogram_vec(
        "upstream_credential_call_duration_seconds",
        "Time of calls to token endpoints for upstream credentials, by upstream.",
        &["upstream"],
        LATENCY,
    )
});

static TOKENS_ISSUED: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "token_service_requests_total",
        "Requests for anonymous session tokens, by outcome: issued, or why not.",
        &["outcome"],
    )
});

static CAPTCHA_VERIFICATIONS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "captcha_verifications_total",
        "Captcha verifications by the token service, by result.",
        &["result"],
    )
});

static SESSION_REVOCATIONS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "session_revocations_total",
        "Revocations of anonymous sessions or tokens taken in, by origin (admin, redis).",
        &["origin"],
    )
});

static BROWSER_SESSIONS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "browser_sessions_total",
        "Browser session events: login (ok, refused, denied, error), refresh (ok, refused, error), \
         end (logout, backchannel, admin, refresh_refused, expired).",
        &["event", "result"],
    )
});

static INTROSPECTION_CALLS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "introspection_calls_total",
        "Calls to introspection endpoints by issuer and result: active, inactive, timeout, \
         error (unreachable, bad status or body) or busy (max_concurrent calls in flight).",
        &["issuer", "result"],
    )
});

static INTROSPECTION_DURATION: Lazy<HistogramVec> = Lazy::new(|| {
    histogram_vec(
        "introspection_duration_seconds",
        "Time of calls to introspection endpoints, by issuer.",
        &["issuer"],
        LATENCY,
    )
});

#[derive(Debug, Clone, Copy)]
pub enum IntrospectionLookup {
    Hit,
    Shared,
    Miss,
}

pub fn introspection_lookup(issuer: &str, result: IntrospectionLookup) {
    let result = match result {
        IntrospectionLookup::Hit => "hit",
        IntrospectionLookup::Shared => "shared",
        IntrospectionLookup::Miss => "miss",
    };
    INTROSPECTION_LOOKUPS
        .with_label_values(&[issuer, result])
        .inc();
}

pub fn introspection_call(issuer: &str, result: &str) {
    INTROSPECTION_CALLS
        .with_label_values(&[issuer, result])
        .inc();
}

/// One call to a token endpoint for an upstream's credentials: `ok`, `refused` (an exchange
/// the provider would not make) or `error`.
pub fn upstream_credentials(upstream: &str, grant: &str, result: &str, took: Duration) {
    UPSTREAM_CREDENTIAL_CALLS
        .with_label_values(&[upstream, grant, result])
        .inc();
    UPSTREAM_CREDENTIAL_DURATION
        .with_label_values(&[upstream])
        .observe(took.as_secs_f64());
}

/// One request to the token service's endpoint: `issued`, or why not.
pub fn token_issued(outcome: &str) {
    TOKENS_ISSUED.with_label_values(&[outcome]).inc();
}

/// One captcha verification: `human`, `not_human` or `error`.
pub fn captcha_verification(result: &str) {
    CAPTCHA_VERIFICATIONS.with_label_values(&[result]).inc();
}

/// One revocation taken in, from the admin API (`admin`) or another instance (`redis`).
pub fn session_revocation(origin: &str) {
    SESSION_REVOCATIONS.with_label_values(&[origin]).inc();
}

/// A browser session event (`[sessions]`).
pub fn session_event(event: &str, result: &str) {
    BROWSER_SESSIONS.with_label_values(&[event, result]).inc();
}

pub fn introspection_duration(issuer: &str, took: Duration) {
    INTROSPECTION_DURATION
        .with_label_values(&[issuer])
        .observe(took.as_secs_f64());
}

pub fn authorization_denied(route: &str, reason: &str) {
    AUTHORIZATION_DENIALS
        .with_label_values(&[route, reason])
        .inc();
}

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

pub fn websockets_open() -> &'static IntGauge {
    &WEBSOCKETS_OPEN
}

/// A WebSocket closed at its token's expiry: how long after it the client was told.
pub fn websocket_expiry_close_delay(took: Duration) {
    WEBSOCKET_EXPIRY_CLOSE_DELAY.observe(took.as_secs_f64());
}

pub fn websocket_closed(reason: &str) {
    WEBSOCKETS_CLOSED.with_label_values(&[reason]).inc();
}

pub fn websocket_renewal(outcome: &str) {
    WEBSOCKET_RENEWALS.with_label_values(&[outcome]).inc();
}

pub fn websocket_eviction_order(origin: &str) {
    WEBSOCKET_EVICTIONS.with_label_values(&[origin]).inc();
}

pub fn in_flight() -> &'static IntGauge {
    &IN_FLIGHT
}

pub fn client_connections(listener: &str) -> IntGauge {
    CLIENT_CONNECTIONS.with_label_values(&[listener])
}

pub fn client_connections_refused(listener: &str) -> IntCounter {
    CLIENT_CONNECTIONS_REFUSED.with_label_values(&[listener])
}

pub fn ext_authz_lookup(route: &str, result: &str) {
    EXT_AUTHZ_LOOKUPS.with_label_values(&[route, result]).inc();
}

pub fn ext_authz_call(route: &str, outcome: &str, took: Duration) {
    EXT_AUTHZ_CALLS.with_label_values(&[route, outcome]).inc();
    EXT_AUTHZ_DURATION
        .with_label_values(&[route])
        .observe(took.as_secs_f64());
}

pub fn upstream_retry(upstream: &str, reason: &str) {
    UPSTREAM_RETRIES
        .with_label_values(&[upstream, reason])
        .inc();
}

pub fn retry_budget_exhausted(upstream: &str) {
    RETRY_BUDGET_EXHAUSTED.with_label_values(&[upstream]).inc();
}

pub fn upstream_overflow(upstream: &str) {
    UPSTREAM_OVERFLOW.with_label_values(&[upstream]).inc();
}

pub fn dns_lookup(result: &str) {
    DNS_LOOKUPS.with_label_values(&[result]).inc();
}

pub fn trace_spans_exported(count: usize) {
    TRACE_SPANS_EXPORTED.inc_by(count as u64);
}

pub fn trace_spans_dropped(reason: &str, count: usize) {
    TRACE_SPANS_DROPPED
        .with_label_values(&[reason])
        .inc_by(count as u64);
}

pub fn shadow_refusal(route: &str, reason: &str) {
    SHADOW_REFUSALS.with_label_values(&[route, reason]).inc();
}

pub fn reload(applied: bool, took: Duration) {
    let outcome = if applied { "applied" } else { "rejected" };
    RELOADS.with_label_values(&[outcome]).inc();
    RELOAD_DURATION.observe(took.as_secs_f64());
    if applied {
        LAST_RELOAD.set(crate::clock::unix_secs_f64());
    }
}

/// The first config counts as loaded at start.
pub fn config_loaded() {
    LAST_RELOAD.set(crate::clock::unix_secs_f64());
}

pub fn log_line_dropped(log: &str) {
    LOG_DROPS.with_label_values(&[log]).inc();
}

/// Adds a collector read at scrape time (what describes the running config).
pub fn register_collector(collector: Box<dyn Collector>) -> prometheus::Result<()> {
    REGISTRY.register(collector)
}

/// Everything, in the Prometheus text format.
pub fn render() -> String {
    let encoder = prometheus::TextEncoder::new();
    encoder
        .encode_to_string(&REGISTRY.gather())
        .unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
}

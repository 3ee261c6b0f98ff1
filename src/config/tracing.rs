//! `[tracing]`: OpenTelemetry spans exported over OTLP.

use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

/// `[tracing]`: a span tree per sampled request (the request, authentication, key fetches
/// and introspection, the policy decision, rate limiting, each upstream attempt), exported to
/// an OpenTelemetry collector over OTLP/HTTP (protobuf) in batches, off the request path.
/// W3C trace context (`traceparent`, `tracestate`) is continued from the client and passed to
/// the upstream. Absent: no spans, and the trace headers pass through untouched.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TracingConf {
    /// The collector's OTLP/HTTP traces URL, e.g. `http://otel-collector:4318/v1/traces`.
    pub endpoint: String,
    /// Share of new traces recorded, from 0 to 1. A request whose `traceparent` says whether
    /// its trace is sampled follows the client's choice (parent-based sampling). Default: 1.
    #[serde(default = "default_sampling_ratio")]
    pub sampling_ratio: f64,
    /// `service.name` of the spans. Default: `portcullis`.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Spans waiting for export at most; more are dropped and counted in
    /// `portcullis_trace_spans_dropped_total`. Default: 4096.
    #[serde(default = "default_max_queue")]
    pub max_queue: usize,
    /// Spans sent in one export at most. Default: 512.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// How long a span waits for a batch to fill before it is sent anyway. Default: 2s.
    #[serde(default = "default_interval", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub interval: Duration,
    /// How long one export may take; a batch that fails is dropped, not retried. Default: 5s.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
}

fn default_sampling_ratio() -> f64 {
    1.0
}

fn default_service_name() -> String {
    "portcullis".into()
}

fn default_max_queue() -> usize {
    4096
}

fn default_max_batch() -> usize {
    512
}

fn default_interval() -> Duration {
    Duration::from_secs(2)
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

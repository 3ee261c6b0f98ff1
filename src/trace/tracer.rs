//! `[tracing]` compiled: which requests are sampled, and the bounded queue of finished spans
//! the runtime takes its OTLP batches from.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::HeaderMap;
use prost::Message;
use tokio::sync::Notify;

use super::{
    now_ns, otlp, random_trace_id, Kind, Recorder, Recording, SpanData, TraceParent, Value,
};
use crate::config::{Invalid, KeyPath, TracingConf};
use crate::metrics;

/// `[tracing]`, compiled: who is sampled, and the queue of finished spans.
pub struct Tracer {
    endpoint: String,
    /// A new trace is sampled when its id's low 63 bits fall below this.
    ratio_bound: u64,
    max_queue: usize,
    max_batch: usize,
    interval: Duration,
    timeout: Duration,
    resource: otlp::Resource,
    queue: Arc<Queue>,
}

/// Finished spans waiting for export, shared across reloads.
#[derive(Default)]
struct Queue {
    spans: Mutex<VecDeque<(Arc<Mutex<Recording>>, usize)>>,
    /// Woken when a full batch is waiting.
    full: Notify,
}

impl Tracer {
    /// `previous`: the running tracer, whose waiting spans this one takes over.
    pub fn compile(
        conf: &TracingConf,
        at: &KeyPath,
        previous: Option<&Tracer>,
    ) -> Result<Self, Invalid> {
        let uri: http::Uri = conf
            .endpoint
            .parse()
            .map_err(|e| Invalid::new(at.key("endpoint"), format!("not a URL: {e}")))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(Invalid::new(
                at.key("endpoint"),
                "must be an http:// or https:// URL (OTLP/HTTP), e.g. http://collector:4318/v1/traces",
            ));
        }
        if !(0.0..=1.0).contains(&conf.sampling_ratio) {
            return Err(Invalid::new(
                at.key("sampling_ratio"),
                "must be between 0 and 1",
            ));
        }
        if conf.max_batch == 0 || conf.max_batch > conf.max_queue {
            return Err(Invalid::new(
                at.key("max_batch"),
                "must be at least 1 and at most max_queue",
            ));
        }
        for (key, d) in [("interval", conf.interval), ("timeout", conf.timeout)] {
            if d.is_zero() {
                return Err(Invalid::new(at.key(key), "must be above zero"));
            }
        }
        let attribute = |key: &str, value: String| otlp::KeyValue {
            key: key.into(),
            value: Some(otlp::AnyValue {
                value: Some(otlp::Value::Str(value)),
            }),
        };
        Ok(Self {
            endpoint: conf.endpoint.clone(),
            ratio_bound: (conf.sampling_ratio * (1u64 << 63) as f64) as u64,
            max_queue: conf.max_queue,
            max_batch: conf.max_batch,
            interval: conf.interval,
            timeout: conf.timeout,
            resource: otlp::Resource {
                attributes: vec![
                    attribute("service.name", conf.service_name.clone()),
                    attribute("service.version", env!("CARGO_PKG_VERSION").into()),
                    attribute("service.instance.id", instance_id().into()),
                ],
            },
            queue: previous.map(|p| p.queue.clone()).unwrap_or_default(),
        })
    }

    /// A recorder for a request with these headers, or `None` when it is not sampled. A valid
    /// `traceparent` is continued and decides; otherwise a new trace is sampled by ratio.
    pub fn start(&self, headers: &HeaderMap, name: &str) -> Option<Recorder> {
        let parent = TraceParent::of(headers);
        let trace_id = match &parent {
            Some(p) if !p.sampled => return None,
            Some(p) => p.trace_id,
            None => {
                let id = random_trace_id();
                let mut low = [0; 8];
                low.copy_from_slice(&id[8..]);
                if u64::from_be_bytes(low) >> 1 >= self.ratio_bound {
                    return None;
                }
                id
            }
        };
        Some(Recorder::new(
            Cow::Owned(name.to_owned()),
            trace_id,
            parent.as_ref(),
        ))
    }

    /// Queues a request's spans for export, closing any still open.
    pub fn finish(&self, recorder: Recorder) {
        let count = {
            let mut r = recorder.lock();
            let end = now_ns();
            for s in r.spans.iter_mut().filter(|s| s.end_ns == 0) {
                s.end_ns = end.max(s.start_ns);
            }
            r.open.clear();
            r.spans.len()
        };
        let mut queue = self.queue.spans.lock().unwrap_or_else(|e| e.into_inner());
        let room = self.max_queue.saturating_sub(queue.len());
        if room < count {
            metrics::trace_spans_dropped("queue_full", count - room);
        }
        for i in 0..count.min(room) {
            queue.push_back((recorder.0.clone(), i));
        }
        if queue.len() >= self.max_batch {
            self.queue.full.notify_one();
        }
    }

    /// Where batches go, and how long one may take.
    pub fn endpoint(&self) -> (&str, Duration) {
        (&self.endpoint, self.timeout)
    }

    /// Waits until a full batch is waiting or `interval` has passed.
    pub async fn wait(&self) {
        let _ = tokio::time::timeout(self.interval, self.queue.full.notified()).await;
    }

    /// Takes up to `max_batch` waiting spans, as an OTLP `ExportTraceServiceRequest`, with
    /// their count; `None` when none wait.
    pub fn batch(&self) -> Option<(Vec<u8>, usize)> {
        let taken: Vec<_> = {
            let mut queue = self.queue.spans.lock().unwrap_or_else(|e| e.into_inner());
            let n = queue.len().min(self.max_batch);
            queue.drain(..n).collect()
        };
        if taken.is_empty() {
            return None;
        }
        let spans: Vec<otlp::Span> = taken
            .iter()
            .filter_map(|(recording, i)| {
                let r = recording.lock().unwrap_or_else(|e| e.into_inner());
                r.spans.get(*i).map(|s| encode(&r, s))
            })
            .collect();
        let count = spans.len();
        let request = otlp::ExportTraceServiceRequest {
            resource_spans: vec![otlp::ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![otlp::ScopeSpans {
                    scope: Some(otlp::InstrumentationScope {
                        name: "portcullis".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                    }),
                    spans,
                }],
            }],
        };
        Some((request.encode_to_vec(), count))
    }
}

fn encode(r: &Recording, s: &SpanData) -> otlp::Span {
    let attributes = s
        .attributes
        .iter()
        .map(|(key, value)| otlp::KeyValue {
            key: (*key).into(),
            value: Some(otlp::AnyValue {
                value: Some(match value {
                    Value::Str(v) => otlp::Value::Str(v.to_string()),
                    Value::Int(v) => otlp::Value::Int(*v),
                    Value::Bool(v) => otlp::Value::Bool(*v),
                }),
            }),
        })
        .collect();
    let remote = s.kind == Kind::Server && r.remote_parent;
    otlp::Span {
        trace_id: r.trace_id.to_vec(),
        span_id: s.id.to_vec(),
        trace_state: r.trace_state.clone(),
        parent_span_id: s.parent.map(|p| p.to_vec()).unwrap_or_default(),
        name: s.name.to_string(),
        kind: match s.kind {
            Kind::Server => otlp::KIND_SERVER,
            Kind::Client => otlp::KIND_CLIENT,
            Kind::Internal => otlp::KIND_INTERNAL,
        },
        start_time_unix_nano: s.start_ns,
        end_time_unix_nano: s.end_ns,
        attributes,
        status: s.error.as_ref().map(|why| otlp::Status {
            message: why.to_string(),
            code: otlp::STATUS_ERROR,
        }),
        flags: 0x01 | otlp::FLAGS_HAS_IS_REMOTE | if remote { otlp::FLAGS_IS_REMOTE } else { 0 },
    }
}

/// This process's `service.instance.id`.
fn instance_id() -> &'static str {
    static ID: once_cell::sync::Lazy<String> =
        once_cell::sync::Lazy::new(|| uuid::Uuid::new_v4().to_string());
    &ID
}

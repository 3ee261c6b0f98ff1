//! Request tracing: W3C trace context in, OpenTelemetry spans out.
//!
//! A sampled request gets a [`Recorder`], which collects its span tree: the server span, and
//! children opened where the work happens. Admission runs [`within`] the recorder, so code
//! below it (a key fetch, an introspection call) opens a [`child`] of whatever span is open
//! without being handed anything; outside a sampled request those calls do nothing. A finished
//! request's spans go to a bounded queue that the runtime exports in batches ([`Tracer::batch`]).
//!
//! Spans carry names, routes, outcomes and timings: never a token, a cookie or a query string.

mod context;
pub(crate) mod otlp;
mod tracer;

use std::borrow::Cow;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::future::Either;
use http::HeaderValue;

pub use context::TraceParent;
pub use tracer::Tracer;

/// A span's 8-byte id.
pub type SpanId = [u8; 8];

/// What a span is to the trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Server,
    Client,
    Internal,
}

/// A span attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(Cow<'static, str>),
    Int(i64),
    Bool(bool),
}

impl From<&'static str> for Value {
    fn from(s: &'static str) -> Self {
        Value::Str(Cow::Borrowed(s))
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(Cow::Owned(s))
    }
}

impl From<Cow<'static, str>> for Value {
    fn from(s: Cow<'static, str>) -> Self {
        Value::Str(s)
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

#[derive(Debug)]
struct SpanData {
    id: SpanId,
    parent: Option<SpanId>,
    name: Cow<'static, str>,
    kind: Kind,
    start_ns: u64,
    /// Zero while open.
    end_ns: u64,
    attributes: Vec<(&'static str, Value)>,
    error: Option<Cow<'static, str>>,
}

/// One request's trace: its id, its spans, and which are open.
#[derive(Debug)]
struct Recording {
    trace_id: [u8; 16],
    trace_state: String,
    /// The client's span, when the trace was continued from its `traceparent`.
    remote_parent: bool,
    spans: Vec<SpanData>,
    /// Indices into `spans`, innermost last; the server span (index 0) stays at the bottom.
    open: Vec<usize>,
}

/// A span of a [`Recorder`], by its place in the request's trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanRef(usize);

/// The span tree of one sampled request. Cloning shares it.
#[derive(Debug, Clone)]
pub struct Recorder(Arc<Mutex<Recording>>);

impl Recorder {
    fn new(name: Cow<'static, str>, trace_id: [u8; 16], parent: Option<&TraceParent>) -> Self {
        let (parent_id, trace_state) = match parent {
            Some(p) => (Some(p.span_id), p.trace_state.clone()),
            None => (None, String::new()),
        };
        let server = SpanData {
            id: random_span_id(),
            parent: parent_id,
            name,
            kind: Kind::Server,
            start_ns: now_ns(),
            end_ns: 0,
            attributes: Vec::new(),
            error: None,
        };
        Recorder(Arc::new(Mutex::new(Recording {
            trace_id,
            trace_state,
            remote_parent: parent.is_some(),
            spans: vec![server],
            open: vec![0],
        })))
    }

    fn lock(&self) -> MutexGuard<'_, Recording> {
        // Spans are plain data: one a panicking holder left half-written is still safe to read.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The request's own span.
    pub const SERVER: SpanRef = SpanRef(0);

    /// Opens a span under the innermost open one.
    pub fn open(&self, name: &'static str, kind: Kind) -> SpanRef {
        let mut r = self.lock();
        let parent = r.open.last().map(|&i| r.spans[i].id);
        let i = r.spans.len();
        r.spans.push(SpanData {
            id: random_span_id(),
            parent,
            name: Cow::Borrowed(name),
            kind,
            start_ns: now_ns(),
            end_ns: 0,
            attributes: Vec::new(),
            error: None,
        });
        r.open.push(i);
        SpanRef(i)
    }

    /// Ends a span (once; later calls keep the first end).
    pub fn close(&self, span: SpanRef) {
        let mut r = self.lock();
        r.open.retain(|&i| i != span.0);
        if let Some(s) = r.spans.get_mut(span.0).filter(|s| s.end_ns == 0) {
            s.end_ns = now_ns().max(s.start_ns);
        }
    }

    pub fn set(&self, span: SpanRef, key: &'static str, value: impl Into<Value>) {
        if let Some(s) = self.lock().spans.get_mut(span.0) {
            s.attributes.retain(|(k, _)| *k != key);
            s.attributes.push((key, value.into()));
        }
    }

    /// Marks a span as failed.
    pub fn fail(&self, span: SpanRef, why: impl Into<Cow<'static, str>>) {
        if let Some(s) = self.lock().spans.get_mut(span.0) {
            s.error = Some(why.into());
        }
    }

    /// Renames a span, for the server span once its route is known.
    pub fn rename(&self, span: SpanRef, name: String) {
        if let Some(s) = self.lock().spans.get_mut(span.0) {
            s.name = Cow::Owned(name);
        }
    }

    /// The innermost open span.
    fn innermost(&self) -> SpanRef {
        SpanRef(self.lock().open.last().copied().unwrap_or(0))
    }

    /// `traceparent` and `tracestate` naming `span` as the parent of what the upstream does.
    pub fn propagate(&self, span: SpanRef) -> (HeaderValue, Option<HeaderValue>) {
        let r = self.lock();
        let id = r.spans.get(span.0).map_or([0; 8], |s| s.id);
        let parent = context::format(&r.trace_id, &id, true);
        let state = (!r.trace_state.is_empty())
            .then(|| HeaderValue::from_str(&r.trace_state).ok())
            .flatten();
        (parent, state)
    }

    /// The trace's id, in hex, for the logs.
    pub fn trace_id(&self) -> String {
        context::hex(&self.lock().trace_id)
    }
}

tokio::task_local! {
    static CURRENT: Recorder;
}

/// Runs `work` with `recorder` as the trace that [`child`] and [`annotate`] add to.
pub fn within<F: Future>(recorder: Option<&Recorder>, work: F) -> impl Future<Output = F::Output> {
    // Not an `async fn`: that would hold `work` twice over, and move it once more.
    match recorder {
        Some(r) => Either::Left(CURRENT.scope(r.clone(), work)),
        None => Either::Right(work),
    }
}

/// A span of the current request's trace, ended when dropped; a no-op outside a sampled
/// request.
#[must_use = "the span ends when this is dropped"]
pub struct Child(Option<(Recorder, SpanRef)>);

impl Child {
    /// Whether the span is recorded: a value that costs something to make is made only then.
    pub fn recording(&self) -> bool {
        self.0.is_some()
    }

    pub fn set(&self, key: &'static str, value: impl Into<Value>) {
        if let Some((r, s)) = &self.0 {
            r.set(*s, key, value);
        }
    }

    pub fn fail(&self, why: impl Into<Cow<'static, str>>) {
        if let Some((r, s)) = &self.0 {
            r.fail(*s, why);
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Some((r, s)) = &self.0 {
            r.close(*s);
        }
    }
}

/// Opens an internal span under the current request's innermost open span.
pub fn child(name: &'static str) -> Child {
    Child(
        CURRENT
            .try_with(|r| (r.clone(), r.open(name, Kind::Internal)))
            .ok(),
    )
}

/// Sets an attribute on the current request's innermost open span.
pub fn annotate(key: &'static str, value: impl Into<Value>) {
    let _ = CURRENT.try_with(|r| r.set(r.innermost(), key, value));
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn random_trace_id() -> [u8; 16] {
    // Never all zero: that id is invalid (W3C trace context §3.2.2.3).
    (fastrand::u128(1..)).to_be_bytes()
}

fn random_span_id() -> SpanId {
    fastrand::u64(1..).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::HeaderMap;
    use prost::Message;

    use super::*;
    use crate::config::{KeyPath, TracingConf};

    fn tracer(ratio: f64) -> Tracer {
        let conf = TracingConf {
            endpoint: "http://127.0.0.1:4318/v1/traces".into(),
            sampling_ratio: ratio,
            service_name: "gw".into(),
            max_queue: 8,
            max_batch: 4,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
        };
        Tracer::compile(&conf, &KeyPath::root().key("tracing"), None).expect("valid")
    }

    fn decode(bytes: &[u8]) -> Vec<otlp::Span> {
        let request = otlp::ExportTraceServiceRequest::decode(bytes).expect("protobuf");
        request.resource_spans[0].scope_spans[0].spans.clone()
    }

    #[tokio::test]
    async fn children_nest_under_the_innermost_open_span_and_propagate_its_id() {
        let t = tracer(1.0);
        let r = t.start(&HeaderMap::new(), "GET").expect("sampled");
        within(Some(&r), async {
            let auth = child("authenticate");
            {
                let fetch = child("jwks fetch");
                fetch.fail("timeout");
            }
            annotate("portcullis.token_cache", "miss");
            drop(auth);
            let _limit = child("rate_limit");
        })
        .await;
        let upstream = r.open("upstream", Kind::Client);
        let (parent, state) = r.propagate(upstream);
        assert!(state.is_none());
        t.finish(r);
        let (bytes, n) = t.batch().expect("a batch");
        assert_eq!(n, 4, "max_batch");
        let spans = decode(&bytes);
        let by_name = |n: &str| spans.iter().find(|s| s.name == n).expect(n);
        let server = by_name("GET");
        assert!(server.parent_span_id.is_empty());
        assert_eq!(by_name("authenticate").parent_span_id, server.span_id);
        let fetch = by_name("jwks fetch");
        assert_eq!(fetch.parent_span_id, by_name("authenticate").span_id);
        assert_eq!(fetch.status.as_ref().map(|s| s.code), Some(2));
        assert_eq!(
            by_name("authenticate").attributes[0].key,
            "portcullis.token_cache"
        );
        assert_eq!(by_name("rate_limit").parent_span_id, server.span_id);
        let rest = decode(&t.batch().expect("the rest").0);
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].kind, otlp::KIND_CLIENT);
        assert_eq!(
            parent.to_str().ok(),
            Some(
                format!(
                    "00-{}-{}-01",
                    context::hex(&rest[0].trace_id),
                    context::hex(&rest[0].span_id)
                )
                .as_str()
            )
        );
        assert!(t.batch().is_none());
    }

    #[test]
    fn a_client_trace_is_continued_and_its_sampling_choice_kept() {
        let t = tracer(0.0);
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        headers.insert("tracestate", HeaderValue::from_static("vendor=x"));
        let r = t.start(&headers, "GET").expect("the client sampled it");
        assert_eq!(r.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let (_, state) = r.propagate(Recorder::SERVER);
        assert_eq!(
            state.as_ref().and_then(|s| s.to_str().ok()),
            Some("vendor=x")
        );
        headers.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
        );
        assert!(tracer(1.0).start(&headers, "GET").is_none());
        assert!(t.start(&HeaderMap::new(), "GET").is_none(), "ratio 0");
    }

    #[test]
    fn a_full_queue_drops_whole_requests_beyond_it() {
        let t = tracer(1.0);
        for _ in 0..3 {
            let r = t.start(&HeaderMap::new(), "GET").expect("sampled");
            r.open("a", Kind::Internal);
            r.open("b", Kind::Internal);
            t.finish(r);
        }
        let mut total = 0;
        while let Some((_, n)) = t.batch() {
            total += n;
        }
        assert_eq!(total, 8, "max_queue");
    }

    #[test]
    fn the_ratio_samples_about_its_share() {
        let t = tracer(0.25);
        let n = (0..4000)
            .filter(|_| t.start(&HeaderMap::new(), "GET").is_some())
            .count();
        assert!((800..1200).contains(&n), "{n} of 4000");
    }

    #[test]
    fn bad_settings_name_their_key() {
        let at = KeyPath::root().key("tracing");
        let mut conf = TracingConf {
            endpoint: "collector:4318".into(),
            sampling_ratio: 1.0,
            service_name: "gw".into(),
            max_queue: 8,
            max_batch: 4,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
        };
        let e = Tracer::compile(&conf, &at, None).err().expect("no scheme");
        assert!(e.to_string().contains("endpoint"), "{e}");
        conf.endpoint = "http://c:4318/v1/traces".into();
        conf.sampling_ratio = 1.5;
        let e = Tracer::compile(&conf, &at, None).err().expect("ratio");
        assert!(e.to_string().contains("sampling_ratio"), "{e}");
        conf.sampling_ratio = 0.5;
        conf.max_batch = 9;
        let e = Tracer::compile(&conf, &at, None).err().expect("batch");
        assert!(e.to_string().contains("max_batch"), "{e}");
    }
}

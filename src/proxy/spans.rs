//! The request's trace, as the proxy phases see it: the server span, one client span per
//! upstream attempt, and the trace context the upstream is given.

use pingora_core::upstreams::peer::{HttpPeer, Peer};
use pingora_core::{Error, Result};
use pingora_http::RequestHeader;

use crate::snapshot::Snapshot;
use crate::trace::{Kind, Recorder, SpanRef};

/// A sampled request's recorder and its upstream attempt in progress; empty otherwise.
#[derive(Default)]
pub struct Spans {
    recorder: Option<Recorder>,
    attempt: Option<SpanRef>,
}

impl Spans {
    /// Starts the request's trace when `[tracing]` samples it.
    pub fn start(snap: &Snapshot, req: &RequestHeader) -> Self {
        let recorder = snap
            .tracer
            .as_ref()
            .and_then(|t| t.start(&req.headers, req.method.as_str()));
        if let Some(r) = &recorder {
            r.set(
                Recorder::SERVER,
                "http.request.method",
                req.method.to_string(),
            );
            // The path only: a query may carry a token (WebSocket `access_token`).
            r.set(Recorder::SERVER, "url.path", req.uri.path().to_string());
        }
        Self {
            recorder,
            attempt: None,
        }
    }

    pub fn recorder(&self) -> Option<&Recorder> {
        self.recorder.as_ref()
    }

    /// A connection attempt to `peer` of `upstream` begins.
    pub fn attempt(&mut self, upstream: &str, peer: &HttpPeer) {
        self.settle(None, None);
        let Some(r) = &self.recorder else { return };
        let span = r.open("upstream", Kind::Client);
        r.set(span, "portcullis.upstream", upstream.to_string());
        if let Some(addr) = peer.address().as_inet() {
            r.set(span, "server.address", addr.ip().to_string());
            r.set(span, "server.port", i64::from(addr.port()));
        }
        self.attempt = Some(span);
    }

    /// Tells the upstream its request is a child of the attempt's span.
    pub fn propagate(&self, req: &mut RequestHeader) -> Result<()> {
        let (Some(r), Some(span)) = (&self.recorder, self.attempt) else {
            return Ok(());
        };
        let (parent, state) = r.propagate(span);
        req.insert_header("traceparent", parent)?;
        match state {
            Some(state) => req.insert_header("tracestate", state)?,
            None => {
                req.remove_header("tracestate");
            }
        }
        Ok(())
    }

    /// Ends the attempt in progress with the upstream's status, or its error.
    pub fn settle(&mut self, status: Option<u16>, error: Option<&Error>) {
        let (Some(r), Some(span)) = (&self.recorder, self.attempt.take()) else {
            return;
        };
        if let Some(status) = status {
            r.set(span, "http.response.status_code", i64::from(status));
            if status >= 500 {
                r.fail(span, status.to_string());
            }
        }
        if let Some(e) = error {
            r.fail(span, e.etype().as_str());
        }
        r.close(span);
    }

    /// The request is over: its spans go to the export queue.
    pub fn finish(&mut self, snap: &Snapshot, method: &str, route: Option<&str>, status: u16) {
        self.settle(None, None);
        let (Some(r), Some(tracer)) = (self.recorder.take(), snap.tracer.as_ref()) else {
            return;
        };
        let server = Recorder::SERVER;
        if let Some(route) = route {
            // `{method} {http.route}`, as the HTTP semantic conventions name server spans.
            r.rename(server, format!("{method} {route}"));
            r.set(server, "http.route", route.to_string());
        }
        r.set(server, "http.response.status_code", i64::from(status));
        if status >= 500 {
            r.fail(server, status.to_string());
        }
        tracer.finish(r);
    }
}

//! What one request carries from phase to phase.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderName, HeaderValue};
use pingora_proxy::Session;
use prometheus::IntGauge;

use super::admission::{Facts, Pass};
use super::spans::Spans;
use crate::metrics;
use crate::request_id;
use crate::snapshot::{Route, Snapshot};
use crate::tls::{self, ClientCert};
use crate::upstream::{Attempts, InFlightGuard, Upstream};

/// What the gateway knows about the client's connection.
#[derive(Debug, Clone, Default)]
pub struct Downstream {
    pub ip: Option<IpAddr>,
    /// The client certificate verified on this TLS connection.
    pub cert: Option<ClientCert>,
}

impl Downstream {
    pub fn of(session: &Session) -> Self {
        let ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let cert = session
            .digest()
            .and_then(|d| d.ssl_digest.as_ref())
            .filter(|d| !d.cert_digest.is_empty())
            .map(|d| ClientCert {
                sha256: d.cert_digest.clone(),
                subject: tls::recorded_subject(d),
            });
        Self { ip, cert }
    }
}

/// An admitted request on its way to the upstream: the pass admission gave it, and its
/// connection attempts.
pub struct Forwarding {
    pub pass: Pass,
    pub attempts: Attempts,
    /// Request body bytes sent on so far, against the route's limit.
    pub body_read: u64,
    /// The request's place under the upstream's `max_requests`.
    pub in_flight: Option<InFlightGuard>,
    /// The last attempt's answer was turned into an error to retry it.
    pub retrying: bool,
}

impl Forwarding {
    pub fn upstream<'s>(&self, snapshot: &'s Snapshot) -> &'s Upstream {
        &snapshot.upstreams[self.pass.upstream()]
    }

    pub fn route<'s>(&self, snapshot: &'s Snapshot) -> &'s Route {
        &snapshot.router[self.pass.route()]
    }
}

/// Per-request state.
pub struct RequestCtx {
    /// The config this request runs under from start to end, even across a reload.
    pub snapshot: Arc<Snapshot>,
    /// When the request's headers had been read.
    pub started: Instant,
    pub request_id: HeaderValue,
    pub client_ip: IpAddr,
    pub downstream: Downstream,
    /// What admission found out, for the answer's headers and the logs.
    pub facts: Facts,
    /// Set once admission lets the request through to an upstream.
    pub forwarding: Option<Forwarding>,
    pub _in_flight: Held,
    /// Set while the connection is an open WebSocket.
    pub websocket: Option<Held>,
    /// The request's trace, when `[tracing]` sampled it.
    pub spans: Spans,
    /// The request went on in a task of its own (see [`RequestCtx::detach`]); this context
    /// is a stand-in with nothing to account for.
    pub detached: bool,
}

impl RequestCtx {
    pub fn new(snapshot: Arc<Snapshot>) -> Self {
        Self {
            snapshot,
            started: Instant::now(),
            request_id: HeaderValue::from_static("-"),
            client_ip: crate::client_ip::UNKNOWN,
            downstream: Downstream::default(),
            facts: Facts::default(),
            forwarding: None,
            _in_flight: Held::new(metrics::in_flight()),
            websocket: None,
            spans: Spans::default(),
            detached: false,
        }
    }

    /// Hands this request's state to a task that serves it beyond Pingora's, leaving a
    /// stand-in that logs nothing.
    pub fn detach(&mut self) -> RequestCtx {
        let stand_in = RequestCtx {
            detached: true,
            ..RequestCtx::new(self.snapshot.clone())
        };
        std::mem::replace(self, stand_in)
    }

    /// Reads who is calling, before admission.
    pub fn identify(&mut self, session: &Session) {
        self.downstream = Downstream::of(session);
        self.request_id = request_id::of(session.req_header());
        self.client_ip = self
            .snapshot
            .client_ip
            .resolve(self.downstream.ip, session.req_header());
        self.spans = Spans::start(&self.snapshot, session.req_header());
    }

    pub fn route_name(&self) -> Option<&str> {
        self.facts.route.map(|id| &*self.snapshot.router[id].name)
    }

    /// Headers every answer carries, the gateway's own and the upstream's alike: the
    /// rate-limit quota, and the request id.
    pub fn answer_headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        let mut headers = match &self.facts.quota {
            Some(v) => self.snapshot.rate_limiter.headers(v),
            None => Vec::new(),
        };
        headers.push((request_id::HEADER, self.request_id.clone()));
        headers.extend(self.facts.cors.iter().cloned());
        headers
    }
}

/// One unit of a gauge, given back when dropped: counts stay right however a request ends.
pub struct Held(&'static IntGauge);

impl Held {
    pub fn new(gauge: &'static IntGauge) -> Self {
        gauge.inc();
        Held(gauge)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.dec();
    }
}

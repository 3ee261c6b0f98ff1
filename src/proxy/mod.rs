//! The request path, phase by phase: admission (route → authenticate → authorize →
//! rate-limit), then the upstream. Each phase is one call into a module named for what it
//! decides.

mod admission;
mod audit;
mod body;
mod context;
mod failure;
pub mod kept;
mod resend;
mod session_endpoint;
mod spans;
mod token_endpoint;
mod upgrade;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::connectors::TransportConnector;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::authenticate::source;
use crate::metrics;
use crate::request_id;
use crate::respond::{self, Reply};
use crate::snapshot::{SharedSnapshot, Snapshot};
use crate::tls::ClientCert;
use crate::trace;
use crate::upstream::Attempts;
use crate::websocket::{handshake, registry::Registry};
use admission::{Client, Decision};
use context::Forwarding;
pub use context::RequestCtx;
use failure::UpstreamFailure;

pub struct Gateway {
    config: SharedSnapshot,
    /// Open WebSockets, for eviction and shutdown.
    websockets: Arc<Registry>,
    /// Connects to upstreams for the WebSockets the gateway relays itself.
    connector: TransportConnector,
}

impl Gateway {
    pub fn new(config: SharedSnapshot, websockets: Arc<Registry>) -> Self {
        Self {
            config,
            websockets,
            connector: TransportConnector::new(None),
        }
    }
}

/// Writes one of the gateway's own answers; the connection stays reusable.
async fn respond(session: &mut Session, ctx: &RequestCtx, mut reply: Reply) -> Result<bool> {
    reply.headers.extend(ctx.answer_headers());
    // A refusal to a gRPC call must be one its client can read.
    if reply.status >= 400 && respond::is_grpc(session.req_header()) {
        reply = reply.for_grpc();
    }
    reply.send(session).await?;
    Ok(true)
}

/// What the backend is told besides the client's request: the verified identity, the
/// request id, and the path as it was routed.
fn prepare_upstream_request(
    req: &mut RequestHeader,
    snap: &Snapshot,
    forwarding: &mut Forwarding,
    cert: Option<&ClientCert>,
    request_id: &http::HeaderValue,
) -> Result<()> {
    // The route's edits and the decision point's headers go before the identity headers,
    // which they never override.
    let (remove, set) = forwarding.route(snap).request_headers.edits();
    for name in remove {
        req.remove_header(name);
    }
    for (name, value) in set.iter().chain(forwarding.pass.decided_headers()) {
        req.insert_header(name.clone(), value.clone())?;
    }
    snap.identity.apply(req, forwarding.pass.identity(), cert)?;
    // The gateway's session cookies are for the gateway alone.
    if let Some(sessions) = &snap.sessions {
        let cookie = req.headers.get(http::header::COOKIE);
        if let Some(kept) = cookie.and_then(|c| sessions.upstream_cookie(c)) {
            if kept.is_empty() {
                req.remove_header(&http::header::COOKIE);
            } else {
                req.insert_header(http::header::COOKIE, kept)?;
            }
        }
    }
    if let Some(authorization) = forwarding.pass.authorization() {
        req.insert_header(http::header::AUTHORIZATION, authorization.clone())?;
    }
    req.insert_header(request_id::HEADER, request_id.clone())?;
    // A token read from the query is not passed on.
    let route = forwarding.route(snap);
    let names = source::query_names(&route.token_from, &snap.websocket.query_parameter);
    let query = req.uri.query();
    let stripped = query
        .filter(|_| !names.is_empty())
        .and_then(|q| source::without_params(q, &names));
    // Read, not taken: a retry builds the upstream request again.
    let path = forwarding.pass.upstream_path();
    if path.is_some() || stripped.is_some() {
        let path = path.unwrap_or(req.uri.path());
        let uri = match stripped.as_deref().or(query) {
            Some("") | None => path.to_string(),
            Some(q) => format!("{path}?{q}"),
        };
        let uri = http::Uri::try_from(uri).map_err(|e| {
            Error::because(ErrorType::InternalError, "normalized path is not a URI", e)
        })?;
        req.set_uri(uri);
    }
    Ok(())
}

/// Pingora calls the upstream phases only after `request_filter` let a request through, which
/// it does only with a pass: without one, this is a bug, answered 500.
fn unadmitted() -> Box<Error> {
    Error::explain(ErrorType::InternalError, "upstream phase without admission")
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(self.config.load_full())
    }

    /// Admission. `Ok(false)` forwards the request; `Ok(true)` means it was answered here.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let snap = ctx.snapshot.clone();
        // Pingora would wait forever for an HTTP/1.1 connection's next request; the wait is
        // bounded from this request on (`Connection: close` still closes).
        session.set_keepalive(Some(snap.server.keepalive_timeout_secs));
        ctx.identify(session);
        let client = Client {
            ip: ctx.client_ip,
            cert: ctx.downstream.cert.as_ref(),
            audit: snap.logs.audit.is_some(),
        };
        let admission = admission::admit(session.req_header(), &snap, &client);
        let admission = trace::within(ctx.spans.recorder(), admission).await;
        metrics::gateway_overhead(ctx.started.elapsed());
        ctx.facts = admission.facts;
        audit::decision(session.req_header(), ctx, admission.decision.as_ref().err());
        // The gateway's own endpoints and the WebSocket hand-over are boxed: they are large, and
        // the requests that only pass through should not carry them in their futures.
        match admission.decision {
            Ok(Decision::Forward(pass)) if pass.is_websocket() => {
                Box::pin(upgrade::serve(
                    session,
                    ctx,
                    pass,
                    &self.connector,
                    &self.config,
                    &self.websockets,
                ))
                .await?;
                Ok(true)
            }
            Ok(Decision::Forward(pass)) => {
                let policy = pass.body();
                if let Err(refused) = body::admit(session, policy, snap.server.body_timeout).await {
                    // The rest of the body is unread: the connection takes no further request.
                    session.set_keepalive(None);
                    return respond(session, ctx, refused.reply()).await;
                }
                let upstream = &snap.upstreams[pass.upstream()];
                let Some(in_flight) = upstream.enter() else {
                    metrics::upstream_overflow(&upstream.name);
                    return respond(session, ctx, snap.responses.upstream_overloaded()).await;
                };
                ctx.forwarding = Some(Forwarding {
                    attempts: Attempts::timed(upstream),
                    pass,
                    body_read: 0,
                    in_flight,
                    retrying: false,
                });
                Ok(false)
            }
            Ok(Decision::Respond(reply)) => respond(session, ctx, reply.clone()).await,
            Ok(Decision::Preflight(headers)) => {
                let reply = Reply {
                    status: 204,
                    headers,
                    body: Bytes::new(),
                    trailers: Vec::new(),
                };
                respond(session, ctx, reply).await
            }
            Ok(Decision::Session(endpoint)) => {
                let reply = Box::pin(session_endpoint::answer(
                    session,
                    ctx,
                    endpoint,
                    &self.websockets,
                ))
                .await;
                respond(session, ctx, reply).await
            }
            Ok(Decision::Login(return_to)) => {
                let reply = Box::pin(session_endpoint::login(ctx, &return_to)).await;
                respond(session, ctx, reply).await
            }
            Ok(Decision::TokenService(endpoint)) => {
                let reply = Box::pin(token_endpoint::answer(session, ctx, endpoint)).await;
                respond(session, ctx, reply).await
            }
            Err(rejection) => respond(session, ctx, snap.responses.reply(rejection)).await,
        }
    }

    /// The target of the next connection attempt.
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let forwarding = ctx.forwarding.as_mut().ok_or_else(unadmitted)?;
        let upstream = &ctx.snapshot.upstreams[forwarding.pass.upstream()];
        if let Some(wait) = forwarding.attempts.take_backoff(upstream) {
            tokio::time::sleep(wait).await;
        }
        let peer = forwarding
            .attempts
            .next_peer(upstream, forwarding.pass.affinity())
            .map_err(failure::no_peer)?;
        ctx.spans.attempt(&upstream.name, &peer);
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Upgrades other than the WebSockets relayed above: the backend answers plain HTTP.
        if handshake::has_upgrade(upstream_request) {
            handshake::strip_upgrade(upstream_request);
        }
        let forwarding = ctx.forwarding.as_mut().ok_or_else(unadmitted)?;
        let cert = ctx.downstream.cert.as_ref();
        prepare_upstream_request(
            upstream_request,
            &ctx.snapshot,
            forwarding,
            cert,
            &ctx.request_id,
        )?;
        ctx.spans.propagate(upstream_request)
    }

    /// A streamed request body may not outgrow the route's limit.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let (Some(forwarding), Some(chunk)) = (ctx.forwarding.as_mut(), body.as_ref()) {
            let policy = forwarding.pass.body();
            body::count(&mut forwarding.body_read, chunk.len(), policy).map_err(|_| {
                Error::explain(
                    ErrorType::HTTPStatus(413),
                    "request body over max_body_size",
                )
            })?;
        }
        Ok(())
    }

    /// The upstream's answer has arrived, and nothing of it was sent on yet.
    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let status = upstream_response.status.as_u16();
        ctx.spans.settle(Some(status), None);
        resend::after_answer(session, ctx, status)
    }

    /// An attempt failed after its connection was made.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        ctx.spans.settle(None, Some(&e));
        resend::after_error(
            session,
            ctx,
            e.more_context(format!("Peer: {peer}")),
            client_reused,
        )
    }

    /// A connection attempt failed: another target may take the request.
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        ctx.spans.settle(None, Some(&e));
        if let Some(forwarding) = ctx.forwarding.as_mut() {
            let upstream = forwarding.upstream(&ctx.snapshot);
            if forwarding.attempts.failed(upstream) {
                log::warn!("upstream {peer}: {e}; trying another target");
                e.set_retry(true);
            }
        }
        e
    }

    /// The upstream could not serve the request: a JSON 502/503/504 when nothing was answered
    /// yet.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy
    where
        RequestCtx: Send + Sync,
    {
        let failure = UpstreamFailure::classify(e);
        let upstream = ctx
            .forwarding
            .as_ref()
            .map_or("-", |f| &*f.upstream(&ctx.snapshot).name);
        match failure {
            UpstreamFailure::ClientGone => {
                log::debug!("client went away: {e}");
            }
            f => log::warn!(
                "upstream {upstream}: {} ({e}) for {} {}",
                f.status(),
                session.req_header().method,
                session.req_header().uri.path()
            ),
        }
        let status = failure.status();
        // Once the upstream's own response has started, it cannot be replaced.
        if status > 0 && session.response_written().is_none() {
            if let Err(e) = failure::answer(session, ctx, status).await {
                log::debug!("could not send the error response: {e}");
            }
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(route) = ctx.facts.route.map(|id| &ctx.snapshot.router[id]) {
            let (remove, set) = route.response_headers.edits();
            for name in remove {
                upstream_response.remove_header(name);
            }
            for (name, value) in set {
                upstream_response.insert_header(name.clone(), value.clone())?;
            }
        }
        for (name, value) in ctx.answer_headers() {
            // The upstream's own Vary still holds; the gateway's adds to it.
            if name == http::header::VARY {
                upstream_response.append_header(name, value)?;
            } else {
                upstream_response.insert_header(name, value)?;
            }
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        // Each read is bounded by the time left when the attempt started; this catches a
        // response that keeps trickling in past the deadline.
        let deadline = ctx.forwarding.as_ref().and_then(|f| f.attempts.deadline());
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            return Err(Error::explain(
                ErrorType::ReadTimedout,
                "the upstream timeout passed during the response",
            ));
        }
        Ok(None)
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        // A WebSocket relayed in a task of its own is accounted for when it ends.
        if ctx.detached {
            return;
        }
        // Nobody was answered: the client left first (nginx's 499).
        let status = session
            .response_written()
            .map_or(499, |r| r.status.as_u16());
        finished(session.req_header(), status, session.body_bytes_sent(), ctx);
    }
}

/// Accounts for a finished request: its upstream attempt, metrics, trace and access line.
fn finished(req: &RequestHeader, status: u16, bytes_sent: usize, ctx: &mut RequestCtx) {
    let took = ctx.started.elapsed();
    if let Some(forwarding) = ctx.forwarding.as_mut() {
        let upstream = &ctx.snapshot.upstreams[forwarding.pass.upstream()];
        forwarding.attempts.finish(upstream);
    }
    let route = ctx.facts.route.map(|id| &*ctx.snapshot.router[id].name);
    metrics::request(route.unwrap_or(""), &req.method, status, took);
    ctx.spans
        .finish(&ctx.snapshot, req.method.as_str(), route, status);
    audit::access(req, bytes_sent, ctx, status, took);
}

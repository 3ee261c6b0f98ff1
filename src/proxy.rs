//! The request path: route → authenticate → authorize → rate-limit → upstream, in that order,
//! in one place.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http::header::HOST;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::authenticate::{bearer_token, AuthError, Principal};
use crate::config::Access;
use crate::identity::IdentityValues;
use crate::rate_limit::{Caller, Verdict};
use crate::request_id;
use crate::respond::{Rejection, Reply};
use crate::route;
use crate::snapshot::{Action, SharedSnapshot, Snapshot};
use crate::tls::{self, ClientCert};
use crate::upstream::UpstreamId;

pub struct Gateway {
    config: SharedSnapshot,
}

impl Gateway {
    pub fn new(config: SharedSnapshot) -> Self {
        Self { config }
    }
}

/// What the gateway knows about the client's connection.
#[derive(Debug, Clone, Default)]
struct Downstream {
    ip: Option<IpAddr>,
    /// The client certificate verified on this TLS connection.
    cert: Option<ClientCert>,
}

impl Downstream {
    fn of(session: &Session) -> Self {
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

/// Per-request state, filled by `request_filter` for the later phases.
pub struct RequestCtx {
    /// The config this request runs under from start to end, even across a reload.
    snapshot: Arc<Snapshot>,
    upstream: Option<UpstreamId>,
    identity: Option<IdentityValues>,
    /// The normalized path, when it differs from what the client sent.
    normalized_path: Option<String>,
    /// The rate-limit verdict, reported to the client in headers on every response.
    quota: Option<Verdict>,
    downstream: Downstream,
    /// Connection attempts left for another target.
    retries_left: usize,
    /// The target of the current connection attempt.
    target: Option<usize>,
    /// The consumer, for upstreams that pick targets by consistent hashing.
    affinity: Option<String>,
    request_id: http::HeaderValue,
    /// When the exchange with the upstream must be over (its `timeout`).
    deadline: Option<Instant>,
}

impl RequestCtx {
    fn quota_headers(&self) -> Vec<(http::HeaderName, http::HeaderValue)> {
        match &self.quota {
            Some(v) => self.snapshot.rate_limiter.headers(v),
            None => Vec::new(),
        }
    }
}

/// What to do with a request that passed every check.
enum Admitted<'s> {
    Forward(UpstreamId, Option<IdentityValues>),
    Respond(&'s Reply),
}

/// One line per denial, for operators; the token itself is never logged.
fn log_denial(req: &RequestHeader, ctx: &RequestCtx, rejection: &Rejection) {
    let snap = &ctx.snapshot;
    let reason = match rejection {
        Rejection::BadPath(e) => e.to_string(),
        Rejection::NotFound => "no route".into(),
        Rejection::Unauthorized(e) => e.reason().into(),
        Rejection::Forbidden(e) => e.reason().into(),
        Rejection::Limited(v) => format!("rate_limited tier={}", snap.rate_limiter.tier_name(v)),
        Rejection::LimiterUnavailable(_) => "rate_limit_store_unavailable".into(),
    };
    log::info!(
        target: "portcullis::audit",
        "deny status={} method={} path={} request_id={} reason={reason}",
        rejection.status(),
        req.method,
        req.uri.path(),
        ctx.request_id.to_str().unwrap_or("-")
    );
}

/// Route, authenticate, authorize and rate-limit a request. Reads top to bottom as the
/// gateway's policy.
async fn admit<'s>(
    req: &RequestHeader,
    snap: &'s Snapshot,
    ctx: &mut RequestCtx,
) -> Result<Admitted<'s>, Rejection> {
    // 1. Route: on the normalized path, so the backend serves exactly what was authorized.
    let path = route::normalize(req.uri.path()).map_err(Rejection::BadPath)?;
    let host = req
        .headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or(req.uri.host());
    let route = snap
        .router
        .find(host, &path, &req.method)
        .ok_or(Rejection::NotFound)?;
    if let Cow::Owned(normalized) = path {
        ctx.normalized_path = Some(normalized);
    }

    // 2. Authenticate.
    let principal: Option<Principal> = match route.access {
        Access::Public => None,
        Access::Authenticated => {
            let token = bearer_token(req).map_err(Rejection::Unauthorized)?;
            let principal = snap
                .authenticator
                .authenticate(
                    token,
                    route.issuers.as_deref(),
                    ctx.downstream.cert.as_ref().map(|c| c.sha256.as_slice()),
                )
                .await;
            Some(principal.map_err(Rejection::Unauthorized)?)
        }
    };

    // 3. Authorize.
    let identity = match &principal {
        Some(p) => {
            route
                .policy
                .authorize(&req.method, p)
                .map_err(Rejection::Forbidden)?;
            let values = snap.identity.render(p).map_err(|_| {
                Rejection::Unauthorized(AuthError::InvalidClaim(
                    "claim not representable in a header",
                ))
            })?;
            Some(values)
        }
        None => None,
    };

    // 4. Rate-limit, per consumer of the caller's tier.
    if !snap.rate_limiter.is_empty() {
        let caller = Caller {
            principal: principal.as_ref(),
            ip: snap.client_ip.resolve(ctx.downstream.ip, req),
        };
        let verdict = snap
            .rate_limiter
            .check(&caller, route.limit_group)
            .await
            .map_err(Rejection::LimiterUnavailable)?;
        if let Some(verdict) = verdict {
            ctx.quota = Some(verdict);
            if !verdict.allowed() {
                return Err(Rejection::Limited(verdict));
            }
        }
    }

    // 5. Hand over to the upstream, or answer directly.
    if let Action::Forward(id) = &route.action {
        if snap.upstreams[*id].hashes() {
            ctx.affinity = Some(match &principal {
                Some(p) => p.subject.clone(),
                None => snap.client_ip.resolve(ctx.downstream.ip, req).to_string(),
            });
        }
    }
    Ok(match &route.action {
        Action::Forward(upstream) => Admitted::Forward(*upstream, identity),
        Action::Respond(reply) => Admitted::Respond(reply),
    })
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            snapshot: self.config.load_full(),
            upstream: None,
            identity: None,
            normalized_path: None,
            quota: None,
            downstream: Downstream::default(),
            retries_left: 0,
            target: None,
            affinity: None,
            request_id: http::HeaderValue::from_static("-"),
            deadline: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let snap = ctx.snapshot.clone();
        ctx.downstream = Downstream::of(session);
        ctx.request_id = request_id::of(session.req_header());
        let outcome = admit(session.req_header(), &snap, ctx).await;
        let mut reply = match outcome {
            Ok(Admitted::Forward(upstream, identity)) => {
                ctx.upstream = Some(upstream);
                ctx.identity = identity;
                ctx.retries_left = snap.upstreams[upstream].retries;
                return Ok(false);
            }
            Ok(Admitted::Respond(reply)) => reply.clone(),
            Err(rejection) => {
                log_denial(session.req_header(), ctx, &rejection);
                snap.responses.reply(rejection)
            }
        };
        reply.headers.extend(ctx.quota_headers());
        reply.headers.push((
            http::HeaderName::from_static(request_id::HEADER),
            ctx.request_id.clone(),
        ));
        reply.send(session).await?;
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let id = ctx.upstream.ok_or_else(|| {
            Error::explain(
                ErrorType::InternalError,
                "request reached upstream_peer unadmitted",
            )
        })?;
        let upstream = &ctx.snapshot.upstreams[id];
        let now = Instant::now();
        if ctx.deadline.is_none() {
            ctx.deadline = upstream.timeout.map(|t| now + t);
        }
        let time_left = ctx.deadline.map(|d| d.saturating_duration_since(now));
        if time_left.is_some_and(|t| t.is_zero()) {
            return Err(Error::explain(
                ErrorType::ConnectTimedout,
                "the upstream timeout passed before a connection was made",
            ));
        }
        // Every target down or ejected: answer 503 now rather than wait on a dead one.
        let target = upstream
            .pick(ctx.affinity.as_deref().map(str::as_bytes))
            .ok_or_else(|| Error::explain(ErrorType::HTTPStatus(503), "no target is available"))?;
        ctx.target = Some(target);
        Ok(Box::new(upstream.peer(target, time_left)))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.snapshot.identity.apply(
            upstream_request,
            ctx.identity.as_ref(),
            ctx.downstream.cert.as_ref(),
        )?;
        upstream_request.insert_header(request_id::HEADER, ctx.request_id.clone())?;
        if let Some(path) = ctx.normalized_path.take() {
            let uri = match upstream_request.uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            let uri = http::Uri::try_from(uri).map_err(|e| {
                Error::because(ErrorType::InternalError, "normalized path is not a URI", e)
            })?;
            upstream_request.set_uri(uri);
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let (Some(id), Some(target)) = (ctx.upstream, ctx.target) {
            ctx.snapshot.upstreams[id].eject(target);
        }
        // Nothing reached the backend, so another target may take the request, whatever the
        // method. `upstream_peer` moves on to the next target.
        if ctx.retries_left > 0 {
            ctx.retries_left -= 1;
            log::warn!("upstream {peer}: {e}; trying another target");
            e.set_retry(true);
        }
        e
    }

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
            .upstream
            .and_then(|id| ctx.snapshot.upstreams.get(id))
            .map_or("-", |u| &*u.name);
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
            let mut reply = ctx.snapshot.responses.upstream_failure(status);
            reply.headers.push((
                http::HeaderName::from_static(request_id::HEADER),
                ctx.request_id.clone(),
            ));
            if let Err(e) = reply.send(session).await {
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
        for (name, value) in ctx.quota_headers() {
            upstream_response.insert_header(name, value)?;
        }
        upstream_response.insert_header(request_id::HEADER, ctx.request_id.clone())?;
        if upstream_response.status == http::StatusCode::SWITCHING_PROTOCOLS {
            // A WebSocket lives as long as its token allows, not as long as one exchange.
            ctx.deadline = None;
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
        if ctx.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(Error::explain(
                ErrorType::ReadTimedout,
                "the upstream timeout passed during the response",
            ));
        }
        Ok(None)
    }
}

/// Why a request could not be proxied, as the client is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UpstreamFailure {
    /// 502: refused, reset, TLS failure, a malformed answer.
    BadGateway,
    /// 504: connect, read or write timeout.
    Timeout,
    /// A status the gateway itself raised.
    Status(u16),
    /// The client hung up or sent garbage: nobody to answer, or a 400.
    ClientGone,
    BadRequest,
    Internal,
}

impl UpstreamFailure {
    fn classify(e: &Error) -> Self {
        use pingora_core::{ErrorSource, ErrorType as T};
        match e.etype() {
            T::HTTPStatus(code) => return Self::Status(*code),
            T::ConnectTimedout | T::ReadTimedout | T::WriteTimedout | T::TLSHandshakeTimedout => {
                return Self::Timeout
            }
            _ => {}
        }
        match e.esource() {
            ErrorSource::Upstream => Self::BadGateway,
            ErrorSource::Downstream => match e.etype() {
                T::WriteError | T::ReadError | T::ConnectionClosed => Self::ClientGone,
                _ => Self::BadRequest,
            },
            ErrorSource::Internal | ErrorSource::Unset => match e.etype() {
                // Connect-side failures are raised before the source is set.
                T::ConnectRefused
                | T::ConnectNoRoute
                | T::ConnectError
                | T::TLSHandshakeFailure
                | T::InvalidCert
                | T::HandshakeError => Self::BadGateway,
                _ => Self::Internal,
            },
        }
    }

    fn status(self) -> u16 {
        match self {
            Self::BadGateway => 502,
            Self::Timeout => 504,
            Self::Status(code) => code,
            Self::ClientGone => 0,
            Self::BadRequest => 400,
            Self::Internal => 500,
        }
    }
}

//! The request path: route → authenticate → authorize → rate-limit → upstream, in that order,
//! in one place.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http::header::HOST;
use pingora_core::connectors::TransportConnector;
use pingora_core::protocols::http::v1::client::HttpSession as UpstreamSession;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use prometheus::IntGauge;

use crate::authenticate::{bearer_token, AuthError, Principal};
use crate::authorize::Granted;
use crate::client_ip;
use crate::config::Access;
use crate::identity::IdentityValues;
use crate::logs::{self, AccessRecord, AuditRecord};
use crate::metrics;
use crate::rate_limit::{Caller, Verdict};
use crate::request_id;
use crate::respond::{Rejection, Reply};
use crate::route;
use crate::snapshot::{Action, Route, SharedSnapshot, Snapshot};
use crate::tls::{self, ClientCert};
use crate::upstream::UpstreamId;
use crate::websocket::{self, handshake, registry::Registry, Relay, Renew};

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
    /// When the request's headers had been read.
    started: Instant,
    /// Position of the matched route in the snapshot's router.
    route: Option<usize>,
    /// The verified caller, for the logs.
    principal: Option<Arc<Principal>>,
    /// The bearer token's fingerprint, when the audit log is on.
    token_id: Option<String>,
    /// The rule that admitted the request.
    granted: Option<Granted>,
    client_ip: IpAddr,
    _in_flight: Held,
    /// Set while the connection is an open WebSocket.
    websocket: Option<Held>,
}

/// One unit of a gauge, given back when dropped: counts stay right however a request ends.
struct Held(&'static IntGauge);

impl Held {
    fn new(gauge: &'static IntGauge) -> Self {
        gauge.inc();
        Held(gauge)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl RequestCtx {
    fn route_name(&self) -> Option<&str> {
        self.route
            .and_then(|i| self.snapshot.router.routes().get(i))
            .map(|r| &*r.name)
    }

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

/// The audit line of a decision: every refusal, and every admission of an authenticated
/// request. The token itself is never written.
fn audit(req: &RequestHeader, ctx: &RequestCtx, rejection: Option<&Rejection>) {
    let snap = &ctx.snapshot;
    let Some(log) = &snap.logs.audit else {
        return;
    };
    let (decision, status, reason) = match rejection {
        None if ctx.principal.is_none() => return,
        None => ("allow", None, Cow::Borrowed("ok")),
        Some(r) => {
            let reason = match r {
                Rejection::BadPath(e) => Cow::Owned(e.to_string()),
                Rejection::NotFound => Cow::Borrowed("no_route"),
                Rejection::Unauthorized(e) => Cow::Borrowed(e.reason()),
                Rejection::Forbidden(e) => Cow::Borrowed(e.reason()),
                Rejection::Limited(v) => {
                    Cow::Owned(format!("rate_limited:{}", snap.rate_limiter.tier_name(v)))
                }
                Rejection::LimiterUnavailable(_) => Cow::Borrowed("rate_limit_store_unavailable"),
                Rejection::Undecided { .. } => Cow::Borrowed("introspection_unavailable"),
            };
            ("deny", Some(r.status()), reason)
        }
    };
    let p = ctx.principal.as_ref();
    log.record(&AuditRecord {
        time: logs::now(),
        log: "audit",
        request_id: ctx.request_id.to_str().unwrap_or("-"),
        client_ip: ctx.client_ip,
        method: req.method.as_str(),
        path: req.uri.path(),
        route: ctx.route_name(),
        decision,
        status,
        reason,
        rule: ctx.granted.map(|g| match g {
            Granted::AnyPrincipal => "authenticated".to_string(),
            Granted::Rule(i) => format!("allow[{i}]"),
        }),
        issuer: p.map(|p| &*p.issuer),
        subject: p.map(|p| p.subject.as_str()),
        client_id: p.and_then(|p| p.client_id.as_deref()),
        tenant: p.and_then(|p| p.tenant.as_deref()),
        token: ctx.token_id.clone(),
    });
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
    let host = host_of(req);
    let index = snap
        .router
        .find_index(host, &path, &req.method)
        .ok_or(Rejection::NotFound)?;
    ctx.route = Some(index);
    let route = &snap.router.routes()[index];
    if let Cow::Owned(normalized) = path {
        ctx.normalized_path = Some(normalized);
    }

    // 2. Authenticate.
    let principal: Option<Arc<Principal>> = match route.access {
        Access::Public => None,
        Access::Authenticated => {
            let token =
                token_of(req, route, snap).inspect_err(|e| metrics::authentication(e.reason()));
            let token = token.map_err(Rejection::Unauthorized)?;
            if snap.logs.audit.is_some() {
                ctx.token_id = Some(logs::token_fingerprint(&token));
            }
            let principal = snap
                .authenticator
                .authenticate(
                    &token,
                    route.issuers.as_deref(),
                    ctx.downstream.cert.as_ref().map(|c| c.sha256.as_slice()),
                )
                .await;
            metrics::authentication(principal.as_ref().map_or_else(|e| e.reason(), |_| "ok"));
            Some(principal.map_err(Rejection::from)?)
        }
    };

    let outcome = admit_caller(req, snap, route, principal.as_deref(), ctx).await;
    ctx.principal = principal;
    outcome
}

/// The request's token: its bearer token, or where the route says a WebSocket carries it
/// (browsers cannot set headers on a WebSocket).
fn token_of<'r>(
    req: &'r RequestHeader,
    route: &Route,
    snap: &Snapshot,
) -> Result<Cow<'r, str>, AuthError> {
    match &route.websocket {
        Some(sources) if handshake::is_websocket(req) => {
            handshake::token(req, sources, &snap.websocket)
        }
        _ => bearer_token(req).map(Cow::Borrowed),
    }
}

/// Steps 3 to 5 of [`admit`], for a caller authenticated (or not) on its route.
async fn admit_caller<'s>(
    req: &RequestHeader,
    snap: &'s Snapshot,
    route: &'s Route,
    principal: Option<&Principal>,
    ctx: &mut RequestCtx,
) -> Result<Admitted<'s>, Rejection> {
    // 3. Authorize.
    let identity = match principal {
        Some(p) => {
            let granted = route.policy.authorize(&req.method, p).map_err(|e| {
                metrics::authorization_denied(&route.name, e.reason());
                Rejection::Forbidden(e)
            });
            ctx.granted = Some(granted?);
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
            principal,
            ip: ctx.client_ip,
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
            ctx.affinity = Some(match principal {
                Some(p) => p.subject.clone(),
                None => ctx.client_ip.to_string(),
            });
        }
    }
    Ok(match &route.action {
        Action::Forward(upstream) => Admitted::Forward(*upstream, identity),
        Action::Respond(reply) => Admitted::Respond(reply),
    })
}

/// The host a request is for: its `Host` header, or the authority of an absolute URI.
fn host_of(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or(req.uri.host())
}

/// What the backend is told besides the client's request: the verified identity, the
/// request id, and the path as it was routed.
fn prepare_upstream_request(req: &mut RequestHeader, ctx: &mut RequestCtx) -> Result<()> {
    ctx.snapshot
        .identity
        .apply(req, ctx.identity.as_ref(), ctx.downstream.cert.as_ref())?;
    req.insert_header(request_id::HEADER, ctx.request_id.clone())?;
    if let Some(path) = ctx.normalized_path.take() {
        let uri = match req.uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let uri = http::Uri::try_from(uri).map_err(|e| {
            Error::because(ErrorType::InternalError, "normalized path is not a URI", e)
        })?;
        req.set_uri(uri);
    }
    Ok(())
}

/// Validates the tokens of one WebSocket against the config current at the time: renewal
/// tokens as they arrive, and the token in use when it is introspected again.
struct Renewal {
    config: SharedSnapshot,
    host: Option<String>,
    path: String,
    subject: String,
    tenant: Option<String>,
    cert: Option<Vec<u8>>,
    /// The token the connection lives by now: the one it was opened with, or the last renewal.
    token: std::sync::Mutex<String>,
}

/// Why a token does not keep a WebSocket open.
enum Unfit {
    Token(AuthError),
    /// The route is gone or no longer authenticated (a reload changed it).
    NoRoute,
    /// Another subject or tenant than the connection's.
    OtherSubject,
    Forbidden(crate::authorize::Forbidden),
}

impl Unfit {
    fn reason(&self) -> &'static str {
        match self {
            Unfit::Token(e) => e.reason(),
            Unfit::NoRoute => "no_route",
            Unfit::OtherSubject => "other_subject",
            Unfit::Forbidden(f) => f.reason(),
        }
    }
}

impl Renewal {
    /// The token's deadline, if it is still good for this connection.
    async fn check(&self, token: &str) -> Result<Option<Instant>, Unfit> {
        let snap = self.config.load_full();
        let route = snap
            .router
            .find_index(self.host.as_deref(), &self.path, &http::Method::GET)
            .and_then(|i| snap.router.routes().get(i))
            .filter(|r| r.access == Access::Authenticated)
            .ok_or(Unfit::NoRoute)?;
        let principal = snap
            .authenticator
            .authenticate(token, route.issuers.as_deref(), self.cert.as_deref())
            .await
            .map_err(Unfit::Token)?;
        if principal.subject != self.subject || principal.tenant != self.tenant {
            return Err(Unfit::OtherSubject);
        }
        route
            .policy
            .authorize(&http::Method::GET, &principal)
            .map_err(Unfit::Forbidden)?;
        Ok(websocket::deadline(principal.valid_until))
    }

    fn current_token(&self) -> String {
        self.token.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Whether the token in use is still active. A provider that cannot be asked ends no
    /// connection: the next check asks again, and the token's `exp` still holds.
    async fn still_active(&self) -> bool {
        match self.check(&self.current_token()).await {
            Ok(_) | Err(Unfit::Token(AuthError::Undecided { .. })) => true,
            Err(e) => {
                log::info!("websocket of {} ends: {}", self.subject, e.reason());
                false
            }
        }
    }
}

#[async_trait]
impl Renew for Renewal {
    async fn renew(&self, token: &str) -> Result<Option<Instant>, &'static str> {
        let deadline = self.check(token).await.map_err(|e| e.reason())?;
        if let Ok(mut current) = self.token.lock() {
            token.clone_into(&mut current);
        }
        Ok(deadline)
    }
}

impl Gateway {
    /// Serves a WebSocket upgrade to the end of the connection: the gateway connects to the
    /// backend itself, so it can close both sides when the token expires.
    async fn websocket(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        let snap = ctx.snapshot.clone();
        let id = ctx.upstream.ok_or_else(|| {
            Error::explain(ErrorType::InternalError, "websocket reached unadmitted")
        })?;
        let upstream = &snap.upstreams[id];
        let mut req = session.req_header().clone();
        prepare_upstream_request(&mut req, ctx)?;
        handshake::upstream_request(&mut req, &snap.websocket)?;

        // Connect as a proxied request would: another target while attempts are left.
        let (stream, peer) = loop {
            let target = upstream.pick(ctx.affinity.as_deref().map(str::as_bytes));
            let Some(target) = target else {
                return upstream_failed(session, ctx, 503).await;
            };
            ctx.target = Some(target);
            let peer = upstream.peer(target, None);
            match self.connector.new_stream(&peer).await {
                Ok(stream) => break (stream, peer),
                Err(e) => {
                    upstream.eject(target);
                    log::warn!("upstream {peer}: {e}");
                    if ctx.retries_left == 0 {
                        return upstream_failed(session, ctx, 502).await;
                    }
                    ctx.retries_left -= 1;
                }
            }
        };
        let mut backend = UpstreamSession::new_with_options(stream, &peer);
        let answered = async {
            backend.write_request_header(Box::new(req)).await?;
            backend.read_response().await
        };
        if let Err(e) = answered.await {
            log::warn!("upstream {peer}: websocket handshake: {e}");
            let status = UpstreamFailure::classify(&e).status();
            return upstream_failed(session, ctx, status.max(502)).await;
        }
        let Some(mut resp) = backend.resp_header().cloned() else {
            return upstream_failed(session, ctx, 502).await;
        };
        for (name, value) in ctx.quota_headers() {
            resp.insert_header(name, value)?;
        }
        resp.insert_header(request_id::HEADER, ctx.request_id.clone())?;

        if !backend.was_upgraded() {
            // The backend refused the upgrade: its answer goes to the client as it is.
            session.write_response_header(Box::new(resp), false).await?;
            while let Some(body) = backend.read_body_bytes().await? {
                session.write_response_body(Some(body), false).await?;
            }
            return session.write_response_body(None, true).await;
        }
        let deflate = handshake::client_response(&mut resp, session.req_header(), &snap.websocket)?;
        // Frames the backend sent along with its 101.
        let first = match futures_util::FutureExt::now_or_never(backend.read_body_bytes()) {
            Some(Ok(Some(bytes))) => bytes,
            _ => bytes::Bytes::new(),
        };
        session.write_response_header(Box::new(resp), false).await?;
        ctx.websocket = Some(Held::new(metrics::websockets_open()));

        let principal = ctx.principal.as_ref();
        let route = ctx.route.and_then(|i| snap.router.routes().get(i));
        // A token that may be revoked before it expires is asked about again now and then.
        let recheck = principal.and(snap.authenticator.websocket_recheck());
        let token = match (recheck, route) {
            (Some(_), Some(route)) => token_of(session.req_header(), route, &snap)
                .map(Cow::into_owned)
                .unwrap_or_default(),
            _ => String::new(),
        };
        let renewal = Arc::new(Renewal {
            config: self.config.clone(),
            host: host_of(session.req_header()).map(str::to_owned),
            path: route::normalize(session.req_header().uri.path())
                .map_err(|e| Error::because(ErrorType::InternalError, "path", e))?
                .into_owned(),
            subject: principal.map(|p| p.subject.clone()).unwrap_or_default(),
            tenant: principal.and_then(|p| p.tenant.clone()),
            cert: ctx.downstream.cert.as_ref().map(|c| c.sha256.clone()),
            token: std::sync::Mutex::new(token),
        });
        // Nothing to renew on a public route: every message goes through.
        let renew = principal.is_some().then_some(&*renewal as &dyn Renew);
        let revoked = recheck.map(|every| {
            let renewal = renewal.clone();
            websocket::watch_revocation(every, move || {
                let renewal = renewal.clone();
                async move { renewal.still_active().await }
            })
        });
        let relay = Relay::new(
            &snap.websocket,
            deflate,
            principal.and_then(|p| websocket::deadline(p.valid_until)),
            self.websockets.register(&renewal.subject),
            renew,
            revoked,
        );
        let ending = relay.run(session, backend.into_inner(), first).await;
        log::debug!(
            "websocket {} ended: {}",
            ctx.request_id.to_str().unwrap_or("-"),
            ending.label()
        );
        Ok(())
    }
}

/// The gateway's JSON answer when the upstream could not serve the request.
async fn upstream_failed(session: &mut Session, ctx: &RequestCtx, status: u16) -> Result<()> {
    let mut reply = ctx.snapshot.responses.upstream_failure(status);
    reply.headers.push((
        http::HeaderName::from_static(request_id::HEADER),
        ctx.request_id.clone(),
    ));
    reply.send(session).await
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
            started: Instant::now(),
            route: None,
            principal: None,
            token_id: None,
            granted: None,
            client_ip: client_ip::UNKNOWN,
            _in_flight: Held::new(metrics::in_flight()),
            websocket: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let snap = ctx.snapshot.clone();
        ctx.downstream = Downstream::of(session);
        ctx.request_id = request_id::of(session.req_header());
        ctx.client_ip = snap
            .client_ip
            .resolve(ctx.downstream.ip, session.req_header());
        let outcome = admit(session.req_header(), &snap, ctx).await;
        metrics::gateway_overhead(ctx.started.elapsed());
        audit(session.req_header(), ctx, outcome.as_ref().err());
        let mut reply = match outcome {
            Ok(Admitted::Forward(upstream, identity)) => {
                ctx.upstream = Some(upstream);
                ctx.identity = identity;
                ctx.retries_left = snap.upstreams[upstream].retries;
                let takes_websockets = ctx
                    .route
                    .and_then(|i| snap.router.routes().get(i))
                    .is_some_and(|r| r.websocket.is_some());
                if takes_websockets && handshake::is_websocket(session.req_header()) {
                    self.websocket(session, ctx).await?;
                    return Ok(true);
                }
                return Ok(false);
            }
            Ok(Admitted::Respond(reply)) => reply.clone(),
            Err(rejection) => snap.responses.reply(rejection),
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
        // Upgrades other than the WebSockets relayed above: the backend answers plain HTTP.
        if handshake::has_upgrade(upstream_request) {
            handshake::strip_upgrade(upstream_request);
        }
        prepare_upstream_request(upstream_request, ctx)
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
            if let Err(e) = upstream_failed(session, ctx, status).await {
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
        Ok(())
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        let took = ctx.started.elapsed();
        // Nobody was answered: the client left first (nginx's 499).
        let status = session
            .response_written()
            .map_or(499, |r| r.status.as_u16());
        let req = session.req_header();
        let route = ctx.route_name();
        metrics::request(route.unwrap_or(""), &req.method, status, took);
        let Some(log) = &ctx.snapshot.logs.access else {
            return;
        };
        let header =
            |name: http::header::HeaderName| req.headers.get(name).and_then(|v| v.to_str().ok());
        log.record(&AccessRecord {
            time: logs::now(),
            log: "access",
            request_id: ctx.request_id.to_str().unwrap_or("-"),
            client_ip: ctx.client_ip,
            method: req.method.as_str(),
            host: host_of(req).unwrap_or(""),
            path: req.uri.path(),
            status,
            route,
            upstream: ctx
                .upstream
                .and_then(|id| ctx.snapshot.upstreams.get(id))
                .map(|u| &*u.name),
            target: ctx
                .upstream
                .zip(ctx.target)
                .and_then(|(id, t)| ctx.snapshot.upstreams.get(id)?.targets().get(t).copied()),
            subject: ctx.principal.as_ref().map(|p| p.subject.as_str()),
            duration_ms: took.as_secs_f64() * 1000.0,
            bytes_sent: session.body_bytes_sent(),
            user_agent: header(http::header::USER_AGENT),
        });
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

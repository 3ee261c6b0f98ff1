//! Admission: route → authenticate → authorize → rate-limit, read top to bottom as the
//! gateway's policy. It takes only the request head, the snapshot and who is calling, and
//! returns what it decided and what it learned; a [`Pass`] to an upstream is made only here.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use http::header::{HeaderName, HeaderValue, HOST};
use http::Method;
use pingora_http::RequestHeader;

use crate::authenticate::source::{self, Located};
use crate::authenticate::{AuthError, Principal};
use crate::authorize::external::{self, ExtAuthz, Verdict};
use crate::authorize::{self, Forbidden, Granted};
use crate::config::{Access, OnError};
use crate::cors::{self, Preflight};
use crate::identity::IdentityValues;
use crate::metrics;
use crate::rate_limit::{self, Caller};
use crate::respond::{Rejection, Reply};
use crate::route::{self, RouteId};
use crate::session::{self, Active, Lapsed, Sessions};
use crate::snapshot::{Action, BodyPolicy, Route, ServerSettings, Snapshot};
use crate::tls::ClientCert;
use crate::token_service;
use crate::trace;
use crate::upstream::UpstreamId;
use crate::websocket::handshake;

/// Who is calling, as far as the connection tells.
pub struct Client<'a> {
    pub ip: IpAddr,
    pub cert: Option<&'a ClientCert>,
    /// Whether the audit log wants the token's fingerprint.
    pub audit: bool,
}

/// What admission learned about a request, whatever it decided: for headers and logs.
#[derive(Debug, Default)]
pub struct Facts {
    pub route: Option<RouteId>,
    /// The verified caller.
    pub principal: Option<Arc<Principal>>,
    /// The bearer token's fingerprint, when the audit log is on.
    pub token_id: Option<String>,
    /// The rule that admitted the request.
    pub granted: Option<Granted>,
    /// The rate-limit verdict, reported to the client in headers on every answer.
    pub quota: Option<rate_limit::Verdict>,
    /// On a route in shadow mode, the first refusal that was not carried out.
    pub shadowed: Option<Rejection>,
    /// What the route's external decision point decided: `allow`, `deny`, `error`.
    pub ext_authz: Option<&'static str>,
    /// The route's CORS headers for this request's origin, on every answer.
    pub cors: Vec<(HeaderName, HeaderValue)>,
    /// The browser session the caller was authenticated by.
    pub session: Option<Active>,
}

/// A request cleared to reach an upstream. Only admission makes one, so nothing can connect
/// to an upstream for a request that was not admitted.
#[derive(Debug)]
pub struct Pass {
    route: RouteId,
    upstream: UpstreamId,
    identity: Option<IdentityValues>,
    /// Set by the external decision point.
    decided_headers: Option<external::Headers>,
    /// The path for the upstream, when it is not what the client sent: normalized, or
    /// rewritten by the route.
    upstream_path: Option<String>,
    affinity: Option<String>,
    websocket: bool,
    body: BodyPolicy,
    /// The upstream's own token, in place of the caller's `Authorization`.
    authorization: Option<HeaderValue>,
}

impl Pass {
    pub fn route(&self) -> RouteId {
        self.route
    }

    pub fn upstream(&self) -> UpstreamId {
        self.upstream
    }

    /// The verified identity, as the upstream is told it.
    pub fn identity(&self) -> Option<&IdentityValues> {
        self.identity.as_ref()
    }

    /// Headers the external decision point set for the upstream.
    pub fn decided_headers(&self) -> &[(HeaderName, HeaderValue)] {
        self.decided_headers.as_deref().unwrap_or_default()
    }

    /// The path for the upstream, when it differs from what the client sent: the routed
    /// (normalized) path, or the route's rewrite of it.
    pub fn upstream_path(&self) -> Option<&str> {
        self.upstream_path.as_deref()
    }

    /// The consumer, for upstreams that pick targets by consistent hashing.
    pub fn affinity(&self) -> Option<&[u8]> {
        self.affinity.as_deref().map(str::as_bytes)
    }

    /// Whether the request is a WebSocket upgrade the gateway relays itself.
    pub fn is_websocket(&self) -> bool {
        self.websocket
    }

    /// What request bodies the route takes.
    pub fn body(&self) -> BodyPolicy {
        self.body
    }

    /// The `Authorization` the upstream requires, obtained by the gateway.
    pub fn authorization(&self) -> Option<&HeaderValue> {
        self.authorization.as_ref()
    }
}

/// What to do with a request.
#[derive(Debug)]
pub enum Decision<'s> {
    Forward(Pass),
    Respond(&'s Reply),
    /// A CORS preflight the route allows: 204 with these headers.
    Preflight(Vec<(HeaderName, HeaderValue)>),
    /// A request for the gateway's own token service.
    TokenService(token_service::Endpoint),
    /// A request for one of the gateway's session paths (`[sessions]`).
    Session(session::Endpoint),
    /// A page navigation on a browser route without a session: to the login, then back to
    /// this path and query.
    Login(String),
}

/// The outcome of admission.
pub struct Admission<'s> {
    pub facts: Facts,
    pub decision: Result<Decision<'s>, Rejection>,
}

/// Routes, authenticates, authorizes and rate-limits a request.
pub async fn admit<'s>(
    req: &RequestHeader,
    snap: &'s Snapshot,
    client: &Client<'_>,
) -> Admission<'s> {
    let mut facts = Facts::default();
    let decision = decide(req, snap, client, &mut facts).await;
    Admission { facts, decision }
}

async fn decide<'s>(
    req: &RequestHeader,
    snap: &'s Snapshot,
    client: &Client<'_>,
    facts: &mut Facts,
) -> Result<Decision<'s>, Rejection> {
    // 0. Edge limits on the request head.
    within_limits(req, &snap.server)?;

    // 1. Route: on the normalized path, so the backend serves exactly what was authorized.
    // A CORS preflight is routed as the request it asks about, and answered here: browsers
    // send it without credentials.
    let path = route::normalize(req.uri.path()).map_err(Rejection::BadPath)?;
    // The token service's paths come before every route.
    if let Some(endpoint) = snap.token_service.as_ref().and_then(|t| t.endpoint(&path)) {
        return Ok(Decision::TokenService(endpoint));
    }
    if let Some(endpoint) = snap.sessions.as_ref().and_then(|s| s.endpoint(&path)) {
        return Ok(Decision::Session(endpoint));
    }
    if let Some(method) = cors::preflight_method(req) {
        let id = snap.router.find_id(host_of(req), &path, &method);
        if let Some((id, cors)) = id.and_then(|id| Some((id, snap.router[id].cors.as_ref()?))) {
            facts.route = Some(id);
            return match cors.preflight(req, &method) {
                Preflight::Allowed(headers) => Ok(Decision::Preflight(headers)),
                Preflight::Refused(why) => Err(Rejection::CorsRefused(why)),
            };
        }
        // No CORS there: the OPTIONS request is routed as itself, like any other.
    }
    let id = snap
        .router
        .find_id(host_of(req), &path, &req.method)
        .ok_or(Rejection::NotFound)?;
    facts.route = Some(id);
    let route = &snap.router[id];
    if let Some(cors) = &route.cors {
        facts.cors = cors.response_headers(req);
    }

    // 2. Authenticate.
    if route.access == Access::Authenticated {
        let span = trace::child("authenticate");
        match authenticate(req, snap, route, client, facts).await {
            Ok(p) => {
                span.set("portcullis.auth.outcome", "ok");
                facts.principal = Some(p);
            }
            // A browser without a session is sent to log in; a script gets the 401.
            Err(Rejection::Unauthorized(_))
                if browser_route(snap, route, req).is_some()
                    && route.enforce
                    && session::is_navigation(&req.method, &req.headers) =>
            {
                span.set("portcullis.auth.outcome", "login");
                let back = req.uri.path_and_query().map_or("/", |p| p.as_str());
                return Ok(Decision::Login(back.to_owned()));
            }
            Err(r) => {
                span.set("portcullis.auth.outcome", super::audit::reason(&r, None));
                refuse(route, facts, r)?
            }
        }
    }
    let principal = facts.principal.clone();
    let principal = principal.as_deref();
    let session = facts.session.clone();
    let session = session.as_ref();

    // 3. Authorize on the local rules, and render the identity the upstream will see.
    let request = authorize::Request {
        method: &req.method,
        path: &path,
        headers: &req.headers,
        client_ip: client.ip,
        client_cert_subject: client.cert.and_then(|c| c.subject.as_deref()),
    };
    let span = trace::child("authorize");
    let decided = route.policy.authorize(&request, principal);
    span.set(
        "portcullis.authz.outcome",
        decided.as_ref().map_or_else(|e| e.reason(), |_| "granted"),
    );
    drop(span);
    match decided {
        Ok(granted) => facts.granted = Some(granted),
        Err(e) => {
            metrics::authorization_denied(&route.name, e.reason());
            refuse(route, facts, Rejection::Forbidden(e))?;
        }
    }
    let identity = match principal.map(|p| snap.identity.render(p)) {
        None => None,
        Some(Ok(values)) => Some(values),
        Some(Err(_)) => {
            let e = AuthError::InvalidClaim("claim not representable in a header");
            refuse(route, facts, Rejection::Unauthorized(e))?;
            None
        }
    };

    // 4. Ask the external decision point, once the local rules allowed. The calls that go
    // to the network are boxed here and below: they are large, and requests that make none
    // should not carry them in their futures.
    let decided_headers = match (&route.ext_authz, &facts.shadowed) {
        (Some(ext), None) => {
            Box::pin(consult(
                ext,
                req,
                snap,
                route,
                client,
                identity.as_ref(),
                facts,
            ))
            .await?
        }
        _ => None,
    };

    // 5. Rate-limit, per consumer of the caller's tier.
    if !snap.rate_limiter.is_empty() {
        let caller = Caller {
            principal,
            ip: client.ip,
        };
        let span = trace::child("rate_limit");
        let checked = snap.rate_limiter.check(&caller, route.limit_group).await;
        if let (Ok(Some(verdict)), true) = (&checked, span.recording()) {
            span.set(
                "portcullis.rate_limit.tier",
                snap.rate_limiter.tier_name(verdict).to_string(),
            );
            span.set("portcullis.rate_limit.allowed", verdict.allowed());
        }
        drop(span);
        match checked {
            Ok(Some(verdict)) => {
                facts.quota = Some(verdict);
                if !verdict.allowed() {
                    refuse(route, facts, Rejection::Limited(verdict))?;
                }
            }
            Ok(None) => {}
            Err(e) => refuse(route, facts, Rejection::LimiterUnavailable(e))?,
        }
    }

    // 6. Hand over to the upstream, with its own credentials where it requires them, or
    // answer directly.
    Ok(match &route.action {
        Action::Respond(reply) => Decision::Respond(reply),
        Action::Forward(upstream) => Decision::Forward(Pass {
            authorization: credentials(req, snap, route, *upstream, principal, session).await?,
            route: id,
            upstream: *upstream,
            identity,
            decided_headers,
            upstream_path: match (&route.rewrite, path) {
                (Some(r), path) => Some(r.apply(&path)),
                (None, Cow::Owned(p)) => Some(p),
                (None, Cow::Borrowed(_)) => None,
            },
            affinity: snap.upstreams[*upstream].hashes().then(|| match principal {
                Some(p) => p.subject.clone(),
                None => client.ip.to_string(),
            }),
            websocket: route.websocket.is_some() && handshake::is_websocket(req),
            body: route.body,
        }),
    })
}

/// The token the upstream requires, when it requires one: the gateway's own, or the caller's
/// exchanged. Not subject to shadow mode: without it the upstream would refuse anyway.
async fn credentials(
    req: &RequestHeader,
    snap: &Snapshot,
    route: &Route,
    upstream: UpstreamId,
    principal: Option<&Principal>,
    session: Option<&Active>,
) -> Result<Option<HeaderValue>, Rejection> {
    let Some(credentials) = &snap.upstreams[upstream].credentials else {
        // A session's upstream may be given the session's access token.
        let pass_session = snap
            .sessions
            .as_ref()
            .is_some_and(Sessions::passes_access_token);
        return Ok(session
            .filter(|_| pass_session)
            .and_then(|s| bearer(s.access_token())));
    };
    let caller = caller_token(req, route, snap, principal, session);
    let span = trace::child("upstream_credentials");
    let obtained = Box::pin(credentials.authorization(caller.as_deref())).await;
    span.set("portcullis.credentials.grant", credentials.grant().as_str());
    if let Err(e) = &obtained {
        span.fail(format!("{e:?}"));
    }
    obtained.map(Some).map_err(Rejection::UpstreamCredentials)
}

/// The request head is within `[server]`'s limits: 414 for a long target, 431 for too many
/// or too large headers.
fn within_limits(req: &RequestHeader, server: &ServerSettings) -> Result<(), Rejection> {
    let target = req.uri.path_and_query().map_or(0, |p| p.as_str().len());
    if target > server.max_uri_length {
        return Err(Rejection::UriTooLong);
    }
    if req.headers.len() > server.max_headers {
        return Err(Rejection::HeadersTooLarge);
    }
    // As on the wire: "Name: value\r\n" per header, after the request line.
    let line = req.method.as_str().len() + target + 12;
    let bytes = req
        .headers
        .iter()
        .fold(line, |sum, (n, v)| sum + n.as_str().len() + v.len() + 4);
    if bytes > server.max_header_bytes {
        return Err(Rejection::HeadersTooLarge);
    }
    Ok(())
}

/// The external decision point's verdict on an admitted request: the headers it sets for the
/// upstream, or a refusal.
async fn consult(
    ext: &ExtAuthz,
    req: &RequestHeader,
    snap: &Snapshot,
    route: &Route,
    client: &Client<'_>,
    identity: Option<&IdentityValues>,
    facts: &mut Facts,
) -> Result<Option<external::Headers>, Rejection> {
    let principal = facts.principal.as_deref();
    let token = caller_token(req, route, snap, principal, facts.session.as_ref());
    let question = external::Question {
        route: &route.name,
        method: &req.method,
        path_and_query: req.uri.path_and_query().map_or("/", |p| p.as_str()),
        headers: &req.headers,
        identity: identity.map(|i| i.headers()).unwrap_or_default(),
        principal,
        token: token.as_deref(),
        client_ip: client.ip,
    };
    let span = trace::child("ext_authz");
    let verdict = ext.decide(&question).await;
    span.set("portcullis.ext_authz.outcome", verdict.outcome());
    drop(span);
    facts.ext_authz = Some(verdict.outcome());
    match verdict {
        Verdict::Allow(headers) => return Ok(Some(headers)),
        Verdict::Deny(answer) => refuse(route, facts, Rejection::External(answer))?,
        Verdict::Forbid => refuse(route, facts, Forbidden::ExternalDenied.into())?,
        Verdict::Failed => match ext.on_error() {
            OnError::Allow => {}
            OnError::Deny => refuse(route, facts, Forbidden::ExternalUnavailable.into())?,
        },
    }
    Ok(None)
}

/// Carries out a refusal, or, on a route in shadow mode, records it and goes on.
fn refuse(route: &Route, facts: &mut Facts, rejection: Rejection) -> Result<(), Rejection> {
    if route.enforce {
        return Err(rejection);
    }
    metrics::shadow_refusal(&route.name, &super::audit::reason(&rejection, None));
    facts.shadowed.get_or_insert(rejection);
    Ok(())
}

async fn authenticate(
    req: &RequestHeader,
    snap: &Snapshot,
    route: &Route,
    client: &Client<'_>,
    facts: &mut Facts,
) -> Result<Arc<Principal>, Rejection> {
    // A browser sends cookies on its own, also when another site makes it: a cookie's token
    // does not let that site change anything, nor open a WebSocket.
    let changes = !matches!(req.method, Method::GET | Method::HEAD | Method::OPTIONS)
        || handshake::is_websocket(req);
    let active = match browser_route(snap, route, req) {
        Some(sessions) => {
            if changes && !source::same_origin(req) && !sessions.allows_origin(&req.headers) {
                metrics::authorization_denied(&route.name, Forbidden::CrossSite.reason());
                return Err(Rejection::Forbidden(Forbidden::CrossSite));
            }
            Box::pin(resume(sessions, req)).await.map_err(|e| {
                metrics::authentication(e.auth_error().reason());
                Rejection::from(e.auth_error())
            })?
        }
        None => None,
    };
    let located = match &active {
        // The session's access token stands for the session; its origin was checked above.
        Some(active) => Ok(Located {
            token: Cow::Borrowed(active.access_token()),
            from_cookie: false,
        }),
        None => token_of(req, route, snap),
    };
    let Located { token, from_cookie } = located.map_err(|e| {
        metrics::authentication(e.reason());
        Rejection::Unauthorized(e)
    })?;
    if from_cookie && changes && !source::same_origin(req) {
        metrics::authorization_denied(&route.name, Forbidden::CrossSite.reason());
        return Err(Rejection::Forbidden(Forbidden::CrossSite));
    }
    if client.audit {
        facts.token_id = Some(crate::logs::token_fingerprint(&token));
    }
    let principal = snap
        .authenticator
        .authenticate(
            &token,
            route.issuers.as_deref(),
            client.cert.map(|c| c.sha256.as_slice()),
        )
        .await;
    // A revoked session of the gateway's own tokens is refused, whether its token was just
    // verified or remembered.
    let principal = principal.and_then(|p| match &snap.token_service {
        Some(service) if service.is_revoked(&p) => Err(AuthError::Inactive),
        _ => Ok(p),
    });
    // So is the access token of a session that ended, wherever it is presented.
    let principal = principal.and_then(|p| match &snap.sessions {
        Some(sessions) if sessions.ended_token(&token, &p) => Err(AuthError::Inactive),
        _ => Ok(p),
    });
    if principal.is_ok() {
        facts.session = active.clone();
    }
    metrics::authentication(principal.as_ref().map_or_else(|e| e.reason(), |_| "ok"));
    principal.map_err(Rejection::from)
}

/// The sessions of a browser route: one marked `browser = true`, or any authenticated route of
/// a host of `[sessions] hosts`.
fn browser_route<'s>(
    snap: &'s Snapshot,
    route: &Route,
    req: &RequestHeader,
) -> Option<&'s Sessions> {
    let sessions = snap.sessions.as_ref()?;
    let by_host = || {
        !sessions.hosts().is_empty()
            && route.access == Access::Authenticated
            && host_of(req).is_some_and(|h| sessions.covers_host(h))
    };
    (route.browser || by_host()).then_some(sessions)
}

/// The request's session on a browser route, if its cookie names one that is still going.
async fn resume(sessions: &Sessions, req: &RequestHeader) -> Result<Option<Active>, Lapsed> {
    let Some(id) = sessions.session_id(&req.headers) else {
        return Ok(None);
    };
    let span = trace::child("session");
    let resumed = sessions.resume(id).await;
    span.set(
        "portcullis.session.outcome",
        match &resumed {
            Ok(_) => "ok",
            Err(Lapsed::Gone) => "none",
            Err(Lapsed::Unavailable(_)) => "unavailable",
        },
    );
    match resumed {
        Ok(active) => Ok(Some(active)),
        // A lost or ended session is no session: a login for a page, a 401 for a script.
        Err(Lapsed::Gone) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The caller's token, for an upstream exchange or a decision point: the session's access
/// token, or the request's own.
fn caller_token<'r>(
    req: &'r RequestHeader,
    route: &Route,
    snap: &Snapshot,
    principal: Option<&Principal>,
    session: Option<&'r Active>,
) -> Option<Cow<'r, str>> {
    principal?;
    match session {
        Some(s) => Some(Cow::Borrowed(s.access_token())),
        None => token_of(req, route, snap).ok().map(|l| l.token),
    }
}

fn bearer(token: &str) -> Option<HeaderValue> {
    let mut value = HeaderValue::try_from(format!("Bearer {token}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// The request's token, from where the route says it may be (for a WebSocket upgrade, where
/// `[routes.websocket]` says: browsers cannot set headers on a WebSocket).
pub fn token_of<'r>(
    req: &'r RequestHeader,
    route: &Route,
    snap: &Snapshot,
) -> Result<Located<'r>, AuthError> {
    match &route.websocket {
        Some(sources) if handshake::is_websocket(req) => {
            handshake::token(req, sources, &snap.websocket)
        }
        _ => source::locate(
            &req.headers,
            req.uri.query(),
            &route.token_from,
            &snap.websocket.query_parameter,
        ),
    }
}

/// The host a request is for: its `Host` header, or the authority of an absolute URI.
pub fn host_of(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or(req.uri.host())
}

#[cfg(test)]
mod tests;

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
            Err(r) => {
                span.set("portcullis.auth.outcome", super::audit::reason(&r, None));
                refuse(route, facts, r)?
            }
        }
    }
    let principal = facts.principal.clone();
    let principal = principal.as_deref();

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

    // 4. Ask the external decision point, once the local rules allowed.
    let decided_headers = match (&route.ext_authz, &facts.shadowed) {
        (Some(ext), None) => {
            consult(ext, req, snap, route, client, identity.as_ref(), facts).await?
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
            authorization: credentials(req, snap, route, *upstream, principal).await?,
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
) -> Result<Option<HeaderValue>, Rejection> {
    let Some(credentials) = &snap.upstreams[upstream].credentials else {
        return Ok(None);
    };
    let caller = principal
        .and_then(|_| token_of(req, route, snap).ok())
        .map(|l| l.token);
    let span = trace::child("upstream_credentials");
    let obtained = credentials.authorization(caller.as_deref()).await;
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
    let token = principal
        .and_then(|_| token_of(req, route, snap).ok())
        .map(|l| l.token);
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
    let Located { token, from_cookie } = token_of(req, route, snap).map_err(|e| {
        metrics::authentication(e.reason());
        Rejection::Unauthorized(e)
    })?;
    // A browser sends cookies on its own, also when another site makes it: a cookie's token
    // does not let that site change anything, nor open a WebSocket.
    let changes = !matches!(req.method, Method::GET | Method::HEAD | Method::OPTIONS)
        || handshake::is_websocket(req);
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
    metrics::authentication(principal.as_ref().map_or_else(|e| e.reason(), |_| "ok"));
    principal.map_err(Rejection::from)
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
mod tests {
    use std::net::Ipv4Addr;
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;
    use crate::authorize::Forbidden;
    use crate::config::Source;
    use crate::token::{self, TokenSpec};

    const ISS: &str = "https://idp.test";

    fn dev(file: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("conf/dev")
            .join(file)
    }

    fn snapshot(extra: &str) -> Snapshot {
        let text = format!(
            r#"[server]
listen = ["127.0.0.1:1"]

[issuers.idp]
issuer = "{ISS}"
audiences = ["api"]
jwks_file = "{jwks}"

[upstreams.backend]
targets = ["127.0.0.1:9"]

[[routes]]
path = "/public"
access = "public"
upstream = "backend"

[[routes]]
path_prefix = "/agents"
access = "authenticated"
upstream = "backend"
[[routes.allow]]
methods = ["GET"]
roles = ["agent"]

[[routes]]
path = "/hello"
access = "public"
respond = {{ body = "hi" }}
{extra}"#,
            jwks = dev("jwks.json").display()
        );
        let source = Source {
            path: PathBuf::from("test.toml"),
            text,
        };
        let config = source.parse().expect("test config parses");
        Snapshot::compile(&config, &source, None).expect("test config compiles")
    }

    fn token(roles: &[&str]) -> String {
        let key = token::load_key(&dev("private-key.pem"), jsonwebtoken::Algorithm::RS256)
            .expect("dev key");
        let spec = TokenSpec {
            alg: jsonwebtoken::Algorithm::RS256,
            kid: Some("dev-1".into()),
            typ: "at+jwt".into(),
            issuer: ISS.into(),
            audience: vec!["api".into()],
            subject: "alice".into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            scope: None,
            azp: None,
            ttl: Some(Duration::from_secs(300)),
            issued_ago: Duration::ZERO,
            not_before_in: None,
            claims: Vec::new(),
        };
        token::mint(&key, &spec).expect("mint")
    }

    fn request(method: &str, path: &str, token: Option<&str>) -> RequestHeader {
        let mut req = RequestHeader::build(method, path.as_bytes(), None).expect("request");
        if let Some(t) = token {
            req.insert_header("authorization", format!("Bearer {t}"))
                .expect("header");
        }
        req
    }

    async fn decide<'s>(snap: &'s Snapshot, req: &RequestHeader) -> Admission<'s> {
        let client = Client {
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            cert: None,
            audit: true,
        };
        admit(req, snap, &client).await
    }

    #[tokio::test]
    async fn unknown_paths_are_not_found_and_bad_ones_are_refused() {
        let snap = snapshot("");
        let a = decide(&snap, &request("GET", "/nowhere", None)).await;
        assert!(matches!(a.decision, Err(Rejection::NotFound)));
        assert!(a.facts.route.is_none());
        let a = decide(&snap, &request("GET", "/a/%2e%2e/%2e%2e/x", None)).await;
        assert!(
            matches!(a.decision, Err(Rejection::BadPath(_))),
            "{:?}",
            a.decision
        );
    }

    #[tokio::test]
    async fn public_routes_forward_without_identity() {
        let snap = snapshot("");
        let a = decide(&snap, &request("GET", "/public", Some("not-even-a-token"))).await;
        let Ok(Decision::Forward(pass)) = a.decision else {
            panic!("{:?}", a.decision);
        };
        assert!(pass.identity().is_none());
        assert!(a.facts.principal.is_none());
        assert!(a.facts.token_id.is_none());
    }

    #[tokio::test]
    async fn a_missing_token_is_unauthorized_on_its_route() {
        let snap = snapshot("");
        let a = decide(&snap, &request("GET", "/agents/7", None)).await;
        assert!(matches!(
            a.decision,
            Err(Rejection::Unauthorized(AuthError::Missing))
        ));
        assert_eq!(
            a.facts.route.map(|id| &*snap.router[id].name),
            Some("/agents")
        );
        let a = decide(&snap, &request("GET", "/agents/7", Some("x.y.z"))).await;
        assert!(matches!(a.decision, Err(Rejection::Unauthorized(_))));
    }

    #[tokio::test]
    async fn a_valid_token_without_the_role_is_forbidden_but_known() {
        let snap = snapshot("");
        let t = token(&["viewer"]);
        let a = decide(&snap, &request("GET", "/agents/7", Some(&t))).await;
        assert!(matches!(
            a.decision,
            Err(Rejection::Forbidden(Forbidden::Insufficient))
        ));
        assert_eq!(
            a.facts.principal.map(|p| p.subject.clone()).as_deref(),
            Some("alice")
        );
        assert!(a.facts.token_id.is_some());
        let t = token(&["agent"]);
        let a = decide(&snap, &request("DELETE", "/agents/7", Some(&t))).await;
        assert!(matches!(
            a.decision,
            Err(Rejection::Forbidden(Forbidden::MethodNotCovered))
        ));
    }

    #[tokio::test]
    async fn an_admitted_request_gets_a_pass_with_its_identity() {
        let snap = snapshot("");
        let t = token(&["agent"]);
        let a = decide(&snap, &request("GET", "/%61gents/7", Some(&t))).await;
        assert_eq!(a.facts.granted, Some(Granted::Rule(0)), "{:?}", a.decision);
        let Ok(Decision::Forward(pass)) = a.decision else {
            panic!("{:?}", a.decision);
        };
        assert_eq!(snap.upstreams[pass.upstream()].name.as_ref(), "backend");
        assert!(pass.identity().is_some());
        assert_eq!(pass.upstream_path(), Some("/agents/7"));
        assert!(!pass.is_websocket());
    }

    #[tokio::test]
    async fn direct_answers_are_the_routes_own() {
        let snap = snapshot("");
        let a = decide(&snap, &request("GET", "/hello", None)).await;
        let Ok(Decision::Respond(reply)) = a.decision else {
            panic!("{:?}", a.decision);
        };
        assert_eq!(reply.status, 200);
        assert_eq!(&reply.body[..], b"hi");
    }

    #[tokio::test]
    async fn the_tier_limit_refuses_the_request_over_it() {
        let snap = snapshot(
            "\n[[rate_limit.tiers]]\nname = \"anonymous\"\ncallers = \"anonymous\"\nlimits = [\"1/minute\"]\n",
        );
        let first = decide(&snap, &request("GET", "/public", None)).await;
        assert!(first.decision.is_ok());
        assert!(first.facts.quota.is_some_and(|q| q.allowed()));
        let second = decide(&snap, &request("GET", "/public", None)).await;
        assert!(matches!(second.decision, Err(Rejection::Limited(_))));
        assert!(second.facts.quota.is_some_and(|q| !q.allowed()));
    }
}

//! `[[routes]]`, compiled: where each route sends a request, who may use it, and how it is
//! limited. A route joins the other parts of the config by their ids.

use bytes::Bytes;
use http::HeaderValue;

use crate::authenticate::{Authenticator, IssuerId};
use crate::authorize::external::ExtAuthz;
use crate::authorize::{Policy, Rule, RuleContext};
use crate::config::{
    Access, CallerKind, CredentialGrant, Invalid, KeyPath, RouteCallers, RouteConf, TokenSource,
};
use crate::cors::Cors;
use crate::rate_limit::{GroupId, Groups};
use crate::respond::Reply;
use crate::rewrite::{HeaderEdits, Rewrite};
use crate::route::{self, MethodSet, PathKind, Router};
use crate::upstream::{Upstream, UpstreamId, Upstreams};

/// What a matched route does with an admitted request.
#[derive(Debug)]
pub enum Action {
    Forward(UpstreamId),
    Respond(Reply),
}

/// A compiled route.
#[derive(Debug)]
pub struct Route {
    pub name: Box<str>,
    /// Where it applies.
    pub pattern: route::Pattern,
    pub access: Access,
    /// Issuers this route trusts; `None`: all.
    pub issuers: Option<Vec<IssuerId>>,
    pub policy: Policy,
    /// `false`: shadow mode, refusals are logged and not carried out.
    pub enforce: bool,
    /// Asked after the local rules allow.
    pub ext_authz: Option<ExtAuthz>,
    pub limit_group: Option<GroupId>,
    pub action: Action,
    /// Where a WebSocket upgrade's token may come from; `None`: the route takes no upgrades.
    pub websocket: Option<Vec<TokenSource>>,
    /// Where the token of any other request may come from.
    pub token_from: Vec<TokenSource>,
    /// What request bodies the route takes, and how.
    pub body: BodyPolicy,
    /// How the path sent upstream differs from the routed one.
    pub rewrite: Option<Rewrite>,
    pub request_headers: HeaderEdits,
    pub response_headers: HeaderEdits,
    /// Cross-origin calls from browsers.
    pub cors: Option<Cors>,
    /// A browser route: the caller may be a `[sessions]` session.
    pub browser: bool,
}

/// A route's request bodies.
#[derive(Debug, Clone, Copy)]
pub struct BodyPolicy {
    /// Largest body, in bytes.
    pub max: u64,
    /// Whether a small body is read whole before anything goes upstream.
    pub buffer: bool,
}

/// The parts of the config routes refer to by name, and the server's defaults.
pub struct Names<'a> {
    /// `[server] max_body_size`.
    pub max_body_size: u64,
    pub upstreams: &'a Upstreams,
    pub groups: &'a Groups,
    /// `[sessions]`, which browser routes need.
    pub sessions: Option<&'a crate::session::Sessions>,
}

/// `routes[i].limit_group` of every route, collected before the tiers that refer to them.
pub fn limit_groups(routes: &[RouteConf]) -> Result<Groups, Invalid> {
    let mut groups = Groups::default();
    for (i, route) in routes.iter().enumerate() {
        if let Some(group) = &route.limit_group {
            let at = KeyPath::root().key("routes").index(i).key("limit_group");
            groups.add(group, &at)?;
        }
    }
    Ok(groups)
}

/// Compiles every route into a router.
/// Claims that rules read are registered with `authenticator`.
pub fn compile(
    routes: &[RouteConf],
    names: &Names<'_>,
    authenticator: &mut Authenticator,
) -> Result<Router<Route>, Invalid> {
    let mut router = Router::default();
    for (i, conf) in routes.iter().enumerate() {
        let at = KeyPath::root().key("routes").index(i);
        let route = Route::compile(conf, &at, names, authenticator)?;
        let pattern = route.pattern.clone();
        router.add(pattern.key(), route).map_err(|other| {
            let field = match pattern.kind {
                PathKind::Exact => "path",
                PathKind::Prefix => "path_prefix",
            };
            let m = format!(
                "overlaps route {:?} on the same path and methods",
                other.name
            );
            Invalid::new(at.key(field), m)
        })?;
    }
    Ok(router)
}

impl Route {
    /// Compiles `[[routes]]` element `at`.
    fn compile(
        r: &RouteConf,
        at: &KeyPath,
        names: &Names<'_>,
        authenticator: &mut Authenticator,
    ) -> Result<Route, Invalid> {
        let err = |field: &str, m: &str| Invalid::new(at.key(field), m);

        let (raw_path, kind, field) = match (&r.path, &r.path_prefix) {
            (Some(p), None) => (p, PathKind::Exact, "path"),
            (None, Some(p)) => (p, PathKind::Prefix, "path_prefix"),
            _ => return Err(err("path", "set exactly one of path and path_prefix")),
        };
        let path = route::normalize(raw_path).map_err(|e| err(field, &e.to_string()))?;
        let segments = route::parse_pattern(&path, kind).map_err(|e| err(field, &e))?;
        let methods = MethodSet::parse(r.methods.as_deref()).map_err(|e| err("methods", &e))?;
        let host = r.host.as_deref().map(str::to_ascii_lowercase);
        if host.as_deref() == Some("") {
            return Err(err(
                "host",
                "must not be empty (leave it out to match any host)",
            ));
        }

        let action = match (&r.upstream, &r.respond) {
            (Some(name), None) => match names.upstreams.find(name) {
                Some(id) if r.access == Access::Public && exchanges(&names.upstreams[id]) => {
                    let m = format!(
                        "upstream {name:?} exchanges the caller's token: the route must be \
                         authenticated"
                    );
                    return Err(err("access", &m));
                }
                Some(id) => Action::Forward(id),
                None => {
                    let known: Vec<&str> = names.upstreams.names().collect();
                    let m = format!("no upstream named {name:?} (defined: {})", known.join(", "));
                    return Err(err("upstream", &m));
                }
            },
            (None, Some(respond)) => {
                if !(100..=599).contains(&respond.status) {
                    return Err(err("respond", "status must be between 100 and 599"));
                }
                let content_type = HeaderValue::from_str(&respond.content_type)
                    .map_err(|_| err("respond", "content_type is not a valid header value"))?;
                Action::Respond(Reply::new(
                    respond.status,
                    content_type,
                    Bytes::from(respond.body.clone()),
                ))
            }
            _ => return Err(err("upstream", "set exactly one of upstream and respond")),
        };

        let issuers = match &r.issuers {
            None => None,
            Some(list) => Some(
                list.iter()
                    .enumerate()
                    .map(|(i, n)| {
                        authenticator.find(n).ok_or_else(|| {
                            let known: Vec<&str> =
                                authenticator.issuers().iter().map(|i| &*i.name).collect();
                            let m =
                                format!("no issuer named {n:?} (defined: {})", known.join(", "));
                            Invalid::new(at.key("issuers"), m)
                                .pointing_at(at.key("issuers").index(i))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };

        let params: Vec<(&str, usize)> = segments
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s {
                route::Segment::Param(name) => Some((&**name, i)),
                route::Segment::Literal(_) => None,
            })
            .collect();
        let cx = RuleContext { params: &params };
        let mut deny = Vec::with_capacity(r.deny.len());
        for (i, conf) in r.deny.iter().enumerate() {
            let at = at.key("deny").index(i);
            let rule = Rule::compile(conf, &at, &cx, authenticator)?;
            if !rule.methods().overlaps(methods) {
                return Err(Invalid::new(
                    at.key("methods"),
                    "can never match: the route takes none of these methods",
                ));
            }
            if r.access == Access::Public && rule.needs_principal() {
                return Err(Invalid::new(
                    at,
                    "can never match: a public route reads no token, so roles, scopes, \
                     clients, claims, match and caller users/services never hold",
                ));
            }
            deny.push(rule);
        }
        let policy = match r.access {
            Access::Public => {
                if !r.allow.is_empty() || issuers.is_some() || r.callers.is_some() {
                    return Err(err(
                        "access",
                        "a public route takes no `allow` rules, `issuers` or `callers`",
                    ));
                }
                Policy {
                    deny,
                    ..Policy::default()
                }
            }
            Access::Authenticated => {
                if authenticator.issuers().is_empty() {
                    return Err(err(
                        "access",
                        "authenticated routes need at least one [issuers.NAME]",
                    ));
                }
                let mut allow = Vec::with_capacity(r.allow.len());
                for (i, conf) in r.allow.iter().enumerate() {
                    let at = at.key("allow").index(i);
                    if conf.caller == Some(CallerKind::Anonymous) {
                        return Err(Invalid::new(
                            at.key("caller"),
                            "can never match: an authenticated route has no anonymous callers",
                        ));
                    }
                    allow.push(Rule::compile(conf, &at, &cx, authenticator)?);
                }
                Policy {
                    callers: r.callers.unwrap_or(RouteCallers::Users),
                    allow,
                    deny,
                }
            }
        };
        let ext_authz = r
            .ext_authz
            .as_ref()
            .map(|conf| ExtAuthz::compile(conf, &at.key("ext_authz")))
            .transpose()?;

        let token_from = match &r.token_from {
            None => vec![TokenSource::Header],
            Some(_) if r.access == Access::Public => {
                return Err(err("token_from", "a public route reads no token"));
            }
            Some(list) if list.is_empty() => {
                return Err(err("token_from", "needs at least one source"));
            }
            Some(list) if list.contains(&TokenSource::Subprotocol) => {
                return Err(err(
                    "token_from",
                    "subprotocol is for WebSocket upgrades: set it in [routes.websocket]",
                ));
            }
            Some(list) => list.clone(),
        };

        let websocket = match &r.websocket {
            None => None,
            Some(_) if matches!(action, Action::Respond(_)) => {
                return Err(err("websocket", "WebSockets need an `upstream`"));
            }
            Some(_) if matches!(action, Action::Forward(id) if names.upstreams[id].speaks_http2()) =>
            {
                return Err(err(
                    "websocket",
                    "WebSockets are relayed over HTTP/1.1: the upstream has protocol = \"http2\"",
                ));
            }
            Some(ws) if ws.token_from.is_empty() => {
                return Err(err("websocket", "token_from needs at least one source"));
            }
            Some(ws) if r.access == Access::Public && ws.token_from != [TokenSource::Header] => {
                return Err(err(
                    "websocket",
                    "a public route reads no token: leave out token_from",
                ));
            }
            Some(ws) => Some(ws.token_from.clone()),
        };

        let pattern = route::Pattern {
            host: host.map(Into::into),
            segments,
            kind,
            methods,
        };
        let rewrite = match (&r.strip_prefix, &r.rewrite) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "rewrite",
                    "set at most one of strip_prefix and rewrite",
                ))
            }
            (Some(p), None) => Some(Rewrite::strip_prefix(p, &pattern, &at.key("strip_prefix"))?),
            (None, Some(t)) => Some(Rewrite::template(t, &pattern, &at.key("rewrite"))?),
            (None, None) => None,
        };
        let edits = |conf: &Option<crate::config::HeaderEditsConf>, key: &str| match conf {
            Some(c) => HeaderEdits::compile(c, &at.key(key)),
            None => Ok(HeaderEdits::default()),
        };
        let request_headers = edits(&r.request_headers, "request_headers")?;
        let response_headers = edits(&r.response_headers, "response_headers")?;
        if matches!(action, Action::Respond(_))
            && (rewrite.is_some() || !request_headers.is_empty() || !response_headers.is_empty())
        {
            return Err(err(
                "respond",
                "a route that answers itself sends nothing upstream: no strip_prefix, rewrite \
                 or header edits",
            ));
        }

        let cors = r
            .cors
            .as_ref()
            .map(|c| Cors::compile(c, pattern.methods, &at.key("cors")))
            .transpose()?;

        let on_session_host = |s: &crate::session::Sessions| {
            pattern.host.as_deref().is_some_and(|h| s.covers_host(h))
        };
        let browser = match names.sessions {
            None if r.browser => {
                return Err(err("browser", "browser routes need a [sessions] table"));
            }
            None => false,
            Some(_) if r.browser && r.access == Access::Public => {
                return Err(err(
                    "browser",
                    "a public route has no sessions: set access = \"authenticated\"",
                ));
            }
            Some(s) => r.browser || (r.access == Access::Authenticated && on_session_host(s)),
        };

        Ok(Route {
            browser,
            name: r.name.clone().unwrap_or_else(|| raw_path.clone()).into(),
            pattern,
            access: r.access,
            issuers,
            policy,
            enforce: r.enforce,
            ext_authz,
            limit_group: r.limit_group.as_deref().and_then(|g| names.groups.find(g)),
            action,
            websocket,
            token_from,
            body: BodyPolicy {
                max: r.max_body_size.unwrap_or(names.max_body_size),
                buffer: r.request_buffering,
            },
            rewrite,
            request_headers,
            response_headers,
            cors,
        })
    }
}

/// Whether an upstream's credentials are the caller's token exchanged.
fn exchanges(upstream: &Upstream) -> bool {
    upstream
        .credentials
        .as_ref()
        .is_some_and(|c| c.grant() == CredentialGrant::TokenExchange)
}

//! `explain`: what the gateway would do with a request, and why, without sending it
//! anywhere. Which route matches (and which near misses do not), whether the token would be
//! accepted, which rule decides, which rate-limit tier and consumer apply, and what the
//! upstream would receive. The token itself never appears in the answer.

use std::net::IpAddr;

use http::{HeaderMap, Method};
use serde::Serialize;
use serde_json::{Map, Value};

use super::{Action, Route, Snapshot};
use crate::authenticate::{source, Principal};
use crate::authorize::{self, Forbidden};
use crate::config::Access;
use crate::rate_limit::Caller;
use crate::route;

/// What the request carries to authenticate.
pub enum Credential {
    None,
    /// A token to verify as the gateway would (signature included).
    Token(String),
    /// Claims, as a token would carry them; every check but the signature.
    Claims(Map<String, Value>),
}

/// The request to explain.
pub struct Question {
    pub method: Method,
    /// `/path?query`, or an absolute URL (its host then counts as the `Host`).
    pub url: String,
    pub headers: HeaderMap,
    pub credential: Credential,
    pub client_ip: IpAddr,
}

/// A question as the CLI and the admin listener take it, all text.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuestionText {
    pub method: String,
    pub url: String,
    /// `Name: value` lines.
    #[serde(default)]
    pub headers: Vec<String>,
    pub token: Option<String>,
    /// A JSON object of claims.
    pub claims: Option<Value>,
    /// Default: 127.0.0.1.
    pub client_ip: Option<String>,
}

impl QuestionText {
    pub fn parse(self) -> Result<Question, String> {
        let method = Method::from_bytes(self.method.to_ascii_uppercase().as_bytes())
            .map_err(|_| format!("{:?} is not a method", self.method))?;
        let mut headers = HeaderMap::new();
        for h in &self.headers {
            let (name, value) = h
                .split_once(':')
                .ok_or_else(|| format!("header {h:?} is not `Name: value`"))?;
            let name = http::header::HeaderName::try_from(name.trim())
                .map_err(|_| format!("{name:?} is not a header name"))?;
            let value = http::HeaderValue::from_str(value.trim())
                .map_err(|_| format!("header {name}: not a header value"))?;
            headers.append(name, value);
        }
        let credential = match (self.token, self.claims) {
            (Some(_), Some(_)) => return Err("give a token or claims, not both".into()),
            (Some(t), None) => Credential::Token(t),
            (None, Some(Value::Object(c))) => Credential::Claims(c),
            (None, Some(_)) => return Err("claims must be a JSON object".into()),
            (None, None) => Credential::None,
        };
        let client_ip = match self.client_ip {
            None => IpAddr::from([127, 0, 0, 1]),
            Some(ip) => ip
                .parse()
                .map_err(|_| format!("{ip:?} is not an address"))?,
        };
        if !self.url.starts_with('/') && !self.url.contains("://") {
            return Err(format!(
                "{:?} is neither a path nor an absolute URL",
                self.url
            ));
        }
        Ok(Question {
            method,
            url: self.url,
            headers,
            credential,
            client_ip,
        })
    }
}

#[derive(Debug, Serialize)]
pub struct Explanation {
    pub method: String,
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The route that matched, if any.
    pub route: Option<RouteFacts>,
    /// Routes that take this path but not this request, and why.
    pub near_misses: Vec<NearMiss>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenFacts>,
    /// `allow` or `deny`, with the status, the reason and the deciding rule.
    pub decision: Decision,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitFacts>,
    /// What the upstream would receive, when the request would be forwarded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<UpstreamFacts>,
}

#[derive(Debug, Serialize)]
pub struct RouteFacts {
    pub name: String,
    pub index: usize,
    pub access: &'static str,
    pub enforced: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ext_authz: Option<&'static str>,
}

#[derive(Debug, Serialize)]
pub struct NearMiss {
    pub route: String,
    pub why: String,
}

#[derive(Debug, Serialize)]
pub struct TokenFacts {
    pub accepted: bool,
    /// Why not, as the audit log says it (`expired`, `bad_signature` …), and in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub roles: Vec<String>,
    pub scopes: Vec<String>,
    /// `false` when explained from claims: the signature was not checked.
    pub signature_checked: bool,
}

#[derive(Debug, Serialize)]
pub struct Decision {
    pub outcome: &'static str,
    pub status: u16,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// On a route in shadow mode, a refusal that would only be logged.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub not_enforced: bool,
}

#[derive(Debug, Serialize)]
pub struct RateLimitFacts {
    pub tier: String,
    pub consumer: String,
    pub limits: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct UpstreamFacts {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A route that answers itself: its status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub respond: Option<u16>,
    /// The path sent upstream (after the route's `strip_prefix` or `rewrite`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The identity headers set on the request, by name.
    pub identity_headers: std::collections::BTreeMap<String, String>,
    /// How the upstream's own token, which replaces the caller's, is obtained.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials: Option<&'static str>,
}

fn decision(outcome: &'static str, status: u16, reason: impl Into<String>) -> Decision {
    Decision {
        outcome,
        status,
        reason: reason.into(),
        rule: None,
        not_enforced: false,
    }
}

fn token_facts(principal: &Principal, signature_checked: bool) -> TokenFacts {
    TokenFacts {
        accepted: true,
        reason: None,
        detail: None,
        issuer: Some(principal.issuer.to_string()),
        subject: Some(principal.subject.clone()),
        kind: Some(principal.kind.as_str()),
        client_id: principal.client_id.clone(),
        tenant: principal.tenant.clone(),
        roles: principal.roles.clone(),
        scopes: principal.scopes.clone(),
        signature_checked,
    }
}

/// Why `route` does not take this request, if it takes its path at all.
fn near_miss(route: &Route, host: Option<&str>, path: &str, method: &Method) -> Option<String> {
    let p = &route.pattern;
    if !p.matches_path(path) {
        return None;
    }
    if !p.matches_host(host) {
        let bound = p.host.as_deref().unwrap_or_default();
        return Some(format!("bound to host {bound:?}"));
    }
    if !p.methods.contains(method) {
        return Some(format!("does not take {method}"));
    }
    Some("a more specific route takes the path first".into())
}

impl Snapshot {
    /// Explains `q` as the running gateway would decide it. The external decision point is
    /// not called: the answer says when it would be.
    pub async fn explain(&self, q: &Question) -> Explanation {
        let (path_and_query, url_host) = match q.url.parse::<http::Uri>() {
            Ok(uri) => (
                uri.path_and_query()
                    .map_or("/".to_string(), |p| p.as_str().to_string()),
                uri.host().map(str::to_string),
            ),
            Err(_) => (q.url.clone(), None),
        };
        let raw_path = path_and_query.split('?').next().unwrap_or("/").to_string();
        let host = q
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
            .or(url_host);
        let mut out = Explanation {
            method: q.method.to_string(),
            path: raw_path.clone(),
            host: host.clone(),
            route: None,
            near_misses: Vec::new(),
            token: None,
            decision: decision("deny", 404, "no_route"),
            rate_limit: None,
            upstream: None,
        };
        let path = match route::normalize(&raw_path) {
            Ok(p) => p.into_owned(),
            Err(e) => {
                out.decision = decision("deny", 400, e.to_string());
                return out;
            }
        };
        out.path = path.clone();
        let found = self.router.find_id(host.as_deref(), &path, &q.method);
        for (i, r) in self.router.routes().iter().enumerate() {
            if found.is_some_and(|id| std::ptr::eq(&self.router[id], r)) {
                continue;
            }
            if let Some(why) = near_miss(r, host.as_deref(), &path, &q.method) {
                out.near_misses.push(NearMiss {
                    route: format!("{} (routes[{i}])", r.name),
                    why,
                });
            }
        }
        let Some(id) = found else {
            return out;
        };
        let route = &self.router[id];
        let index = self
            .router
            .routes()
            .iter()
            .position(|r| std::ptr::eq(r, route))
            .unwrap_or_default();
        out.route = Some(RouteFacts {
            name: route.name.to_string(),
            index,
            access: match route.access {
                Access::Public => "public",
                Access::Authenticated => "authenticated",
            },
            enforced: route.enforce,
            ext_authz: route
                .ext_authz
                .as_ref()
                .map(|_| "asked after the local rules allow"),
        });

        // Authenticate.
        let mut refusal: Option<Decision> = None;
        let mut principal = None;
        if route.access == Access::Authenticated {
            let verdict = match &q.credential {
                Credential::Claims(claims) => self
                    .authenticator
                    .principal_of_claims(claims, route.issuers.as_deref())
                    .map(|p| (p, false)),
                Credential::Token(t) => self
                    .authenticator
                    .authenticate(t, route.issuers.as_deref(), None)
                    .await
                    .map(|p| (p, true)),
                Credential::None => {
                    let query = path_and_query.split_once('?').map(|(_, q)| q);
                    let sources = &route.token_from;
                    match source::locate(
                        &q.headers,
                        query,
                        sources,
                        &self.websocket.query_parameter,
                    ) {
                        Ok(found) => self
                            .authenticator
                            .authenticate(&found.token, route.issuers.as_deref(), None)
                            .await
                            .map(|p| (p, true)),
                        Err(e) => Err(e),
                    }
                }
            };
            match verdict {
                Ok((p, checked)) => {
                    out.token = Some(token_facts(&p, checked));
                    principal = Some(p);
                }
                Err(e) => {
                    out.token = Some(TokenFacts {
                        accepted: false,
                        reason: Some(e.reason().to_string()),
                        detail: Some(e.to_string()),
                        issuer: None,
                        subject: None,
                        kind: None,
                        client_id: None,
                        tenant: None,
                        roles: Vec::new(),
                        scopes: Vec::new(),
                        signature_checked: !matches!(q.credential, Credential::Claims(_)),
                    });
                    refusal = Some(decision("deny", 401, e.reason()));
                }
            }
        }

        // Authorize.
        let request = authorize::Request {
            method: &q.method,
            path: &path,
            headers: &q.headers,
            client_ip: q.client_ip,
            client_cert_subject: None,
        };
        let mut rule = None;
        match route.policy.authorize(&request, principal.as_deref()) {
            _ if refusal.is_some() => {}
            Ok(granted) => rule = Some(granted.rule()),
            Err(e) => {
                let mut d = decision("deny", 403, e.reason());
                d.rule = Forbidden::rule(e);
                refusal = Some(d);
            }
        }

        // Rate limit, reached by a request not refused before (or not refused for real): the
        // tier and consumer the caller counts against.
        let caller = Caller {
            principal: principal.as_deref(),
            ip: q.client_ip,
        };
        let reached = refusal.is_none() || !route.enforce;
        if let Some((tier, consumer, limits)) = reached
            .then(|| self.rate_limiter.classify(&caller, route.limit_group))
            .flatten()
        {
            out.rate_limit = Some(RateLimitFacts {
                tier: tier.to_string(),
                consumer,
                limits,
            });
        }

        out.decision = match refusal {
            Some(mut d) => {
                d.not_enforced = !route.enforce;
                d
            }
            None => Decision {
                rule,
                ..decision("allow", 200, "ok")
            },
        };
        if out.decision.outcome == "allow" || !route.enforce {
            let identity_headers = principal
                .as_deref()
                .and_then(|p| self.identity.render(p).ok())
                .map(|v| {
                    v.headers()
                        .iter()
                        .map(|(n, v)| {
                            (
                                n.to_string(),
                                String::from_utf8_lossy(v.as_bytes()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.upstream = Some(match &route.action {
                Action::Forward(u) => UpstreamFacts {
                    name: Some(self.upstreams[*u].name.to_string()),
                    respond: None,
                    path: Some(
                        route
                            .rewrite
                            .as_ref()
                            .map_or(path.clone(), |r| r.apply(&path)),
                    ),
                    identity_headers,
                    credentials: self.upstreams[*u]
                        .credentials
                        .as_ref()
                        .map(|c| c.grant().as_str()),
                },
                Action::Respond(reply) => UpstreamFacts {
                    name: None,
                    respond: Some(reply.status),
                    path: None,
                    identity_headers,
                    credentials: None,
                },
            });
        }
        out
    }
}

impl Explanation {
    /// The explanation for people, a fact per line.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let mut line = |l: String| {
            s.push_str(&l);
            s.push('\n');
        };
        line(format!("request:   {} {}", self.method, self.path));
        match &self.route {
            Some(r) => line(format!(
                "route:     {} (routes[{}], {}{})",
                r.name,
                r.index,
                r.access,
                if r.enforced { "" } else { ", shadow mode" }
            )),
            None => line("route:     none matches".into()),
        }
        for m in &self.near_misses {
            line(format!("  not:     {}: {}", m.route, m.why));
        }
        if let Some(t) = &self.token {
            if t.accepted {
                line(format!(
                    "token:     accepted{}: issuer {}, subject {}, {}",
                    if t.signature_checked {
                        ""
                    } else {
                        " (claims; signature not checked)"
                    },
                    t.issuer.as_deref().unwrap_or("-"),
                    t.subject.as_deref().unwrap_or("-"),
                    t.kind.unwrap_or("-"),
                ));
                line(format!(
                    "           roles [{}], scopes [{}]",
                    t.roles.join(", "),
                    t.scopes.join(" ")
                ));
                if let Some(c) = &t.client_id {
                    line(format!("           client {c}"));
                }
                if let Some(tenant) = &t.tenant {
                    line(format!("           tenant {tenant}"));
                }
            } else {
                line(format!(
                    "token:     refused: {} ({})",
                    t.reason.as_deref().unwrap_or("-"),
                    t.detail.as_deref().unwrap_or("-")
                ));
            }
        }
        let d = &self.decision;
        line(format!(
            "decision:  {} {} {}{}{}",
            d.outcome,
            d.status,
            d.reason,
            d.rule
                .as_deref()
                .map(|r| format!(" by {r}"))
                .unwrap_or_default(),
            if d.not_enforced {
                " (not enforced: shadow mode)"
            } else {
                ""
            }
        ));
        if let Some(ext) = self.route.as_ref().and_then(|r| r.ext_authz) {
            line(format!("ext_authz: {ext}"));
        }
        if let Some(r) = &self.rate_limit {
            line(format!(
                "limit:     tier {}, consumer {}, {}",
                r.tier,
                r.consumer,
                if r.limits.is_empty() {
                    "no limits".to_string()
                } else {
                    r.limits.join(", ")
                }
            ));
        }
        if let Some(u) = &self.upstream {
            match (&u.name, u.respond) {
                (Some(n), _) => line(format!(
                    "upstream:  {n}, path {}",
                    u.path.as_deref().unwrap_or("-")
                )),
                (None, Some(status)) => {
                    line(format!("upstream:  none; the gateway answers {status}"))
                }
                _ => {}
            }
            for (n, v) in &u.identity_headers {
                line(format!("  header:  {n}: {v}"));
            }
            if let Some(grant) = u.credentials {
                line(format!(
                    "  header:  authorization: the upstream's own token ({grant}), not the caller's"
                ));
            }
        }
        s
    }
}

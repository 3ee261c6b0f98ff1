//! Authorization: may this caller do this request on this route? Deny rules first, then allow
//! rules, then (when the route has one) an external decision point.

mod condition;
pub mod external;

use std::net::IpAddr;

use http::{HeaderMap, Method};

use crate::authenticate::{Authenticator, Principal, PrincipalKind};
use crate::config::{Invalid, KeyPath, RouteCallers, RuleConf};
use crate::route::MethodSet;
use condition::Condition;
pub use condition::RuleContext;

/// What a rule may look at besides the caller.
pub struct Request<'a> {
    pub method: &'a Method,
    /// The normalized path the route matched.
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    pub client_ip: IpAddr,
    /// The TLS client certificate's subject (RFC 4514), on mutual-TLS listeners.
    pub client_cert_subject: Option<&'a str>,
}

/// One `[[routes.allow]]` or `[[routes.deny]]` rule: it is met when it covers the method and
/// every condition holds.
#[derive(Debug, Clone)]
pub struct Rule {
    methods: MethodSet,
    conditions: Vec<Condition>,
}

impl Rule {
    /// Compiles a rule at `at`. Claims it reads are registered with `authenticator`, so that
    /// verified tokens carry them.
    pub fn compile(
        conf: &RuleConf,
        at: &KeyPath,
        cx: &RuleContext<'_>,
        authenticator: &mut Authenticator,
    ) -> Result<Rule, Invalid> {
        let methods = MethodSet::parse(conf.methods.as_deref())
            .map_err(|e| Invalid::new(at.key("methods"), e))?;
        let conditions = condition::compile(conf, at, cx, authenticator)?;
        Ok(Rule {
            methods,
            conditions,
        })
    }

    /// The methods the rule covers.
    pub fn methods(&self) -> MethodSet {
        self.methods
    }

    /// Whether some condition needs a verified caller (and so never holds on a public route).
    pub fn needs_principal(&self) -> bool {
        self.conditions.iter().any(Condition::needs_principal)
    }

    /// Whether some condition reads request headers.
    pub fn reads_headers(&self) -> bool {
        self.conditions.iter().any(Condition::reads_headers)
    }

    fn met(&self, req: &Request<'_>, principal: Option<&Principal>) -> bool {
        self.methods.contains(req.method) && self.conditions.iter().all(|c| c.holds(req, principal))
    }
}

/// The rules of a route. An authenticated route without allow rules admits any verified
/// principal of the right kind; a public route admits anyone its deny rules do not refuse.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Service tokens reach only routes made for them, whatever their roles.
    pub callers: RouteCallers,
    pub allow: Vec<Rule>,
    pub deny: Vec<Rule>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            callers: RouteCallers::Users,
            allow: Vec::new(),
            deny: Vec::new(),
        }
    }
}

/// The caller may not do this: a 403.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Forbidden {
    #[error("service tokens may not use this route")]
    ServiceOnUserRoute,
    #[error("this route is for service tokens")]
    UserOnServiceRoute,
    #[error("no rule covers this method")]
    MethodNotCovered,
    #[error("missing role or scope")]
    Insufficient,
    /// A deny rule, by index, refused the request.
    #[error("refused by a deny rule")]
    Denied(usize),
    /// The external decision point refused, without an answer of its own.
    #[error("refused by the external decision point")]
    ExternalDenied,
    /// The external decision point could not decide, and the route's `on_error` is `deny`.
    #[error("the external decision point could not decide")]
    ExternalUnavailable,
    /// A token from a cookie on a cross-site request that changes something (or opens a
    /// WebSocket).
    #[error("cross-site request with a cookie's token")]
    CrossSite,
}

impl Forbidden {
    pub fn reason(self) -> &'static str {
        match self {
            Forbidden::ServiceOnUserRoute => "service_token_on_user_route",
            Forbidden::UserOnServiceRoute => "user_token_on_service_route",
            Forbidden::MethodNotCovered => "method_not_allowed",
            Forbidden::Insufficient => "insufficient_role_or_scope",
            Forbidden::Denied(_) => "denied_by_rule",
            Forbidden::ExternalDenied => "ext_authz_denied",
            Forbidden::ExternalUnavailable => "ext_authz_unavailable",
            Forbidden::CrossSite => "cross_site_request",
        }
    }

    /// The rule that decided, for the audit log.
    pub fn rule(self) -> Option<String> {
        match self {
            Forbidden::Denied(i) => Some(format!("deny[{i}]")),
            _ => None,
        }
    }
}

/// The outcome of a granted request: which rule let it through (for the audit trail).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granted {
    /// A public route (no deny rule refused).
    Public,
    /// The route has no allow rules: any verified token.
    AnyPrincipal,
    /// Index of the admitting rule.
    Rule(usize),
}

impl Granted {
    /// The rule that decided, for the audit log.
    pub fn rule(self) -> String {
        match self {
            Granted::Public => "public".to_string(),
            Granted::AnyPrincipal => "authenticated".to_string(),
            Granted::Rule(i) => format!("allow[{i}]"),
        }
    }
}

impl Policy {
    /// Decides on the local rules. `principal` is `None` on public routes.
    pub fn authorize(
        &self,
        req: &Request<'_>,
        principal: Option<&Principal>,
    ) -> Result<Granted, Forbidden> {
        if let Some(p) = principal {
            match (self.callers, p.kind) {
                (RouteCallers::Users, PrincipalKind::Service) => {
                    return Err(Forbidden::ServiceOnUserRoute)
                }
                (RouteCallers::Services, PrincipalKind::User) => {
                    return Err(Forbidden::UserOnServiceRoute)
                }
                _ => {}
            }
        }
        if let Some(i) = self.deny.iter().position(|r| r.met(req, principal)) {
            return Err(Forbidden::Denied(i));
        }
        if principal.is_none() {
            return Ok(Granted::Public);
        }
        if self.allow.is_empty() {
            return Ok(Granted::AnyPrincipal);
        }
        let mut covered = false;
        for (i, rule) in self.allow.iter().enumerate() {
            if !rule.methods.contains(req.method) {
                continue;
            }
            covered = true;
            if rule.met(req, principal) {
                return Ok(Granted::Rule(i));
            }
        }
        Err(if covered {
            Forbidden::Insufficient
        } else {
            Forbidden::MethodNotCovered
        })
    }

    /// Whether some rule reads request headers (which a WebSocket renewal then keeps).
    pub fn reads_headers(&self) -> bool {
        self.allow.iter().chain(&self.deny).any(Rule::reads_headers)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::authenticate::ClaimValue;

    fn principal(roles: &[&str], scopes: &[&str]) -> Principal {
        Principal {
            issuer: "t".into(),
            kind: PrincipalKind::User,
            subject: "u".into(),
            client_id: Some("portal".into()),
            tenant: None,
            roles: roles.iter().map(|s| s.to_string()).collect(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            valid_until: None,
            extra: Vec::new(),
            derived: Default::default(),
        }
    }

    /// A policy from TOML rules, for a route at `/agencies/{agency}/reports`.
    fn policy(allow: &str, deny: &str, auth: &mut Authenticator) -> Policy {
        #[derive(serde::Deserialize)]
        struct Rules {
            #[serde(default)]
            allow: Vec<RuleConf>,
            #[serde(default)]
            deny: Vec<RuleConf>,
        }
        let rules: Rules = toml::from_str(&format!("{allow}\n{deny}")).unwrap();
        let params = [("agency", 1)];
        let cx = RuleContext { params: &params };
        let at = KeyPath::root();
        let compile = |list: &[RuleConf], auth: &mut Authenticator| -> Vec<Rule> {
            list.iter()
                .map(|r| Rule::compile(r, &at, &cx, auth).unwrap())
                .collect()
        };
        Policy {
            callers: RouteCallers::Users,
            allow: compile(&rules.allow, auth),
            deny: compile(&rules.deny, auth),
        }
    }

    fn request<'a>(method: &'a Method, path: &'a str, headers: &'a HeaderMap) -> Request<'a> {
        Request {
            method,
            path,
            headers,
            client_ip: Ipv4Addr::new(10, 1, 2, 3).into(),
            client_cert_subject: None,
        }
    }

    fn decide(p: &Policy, method: Method, who: &Principal) -> Result<Granted, Forbidden> {
        let headers = HeaderMap::new();
        p.authorize(
            &request(&method, "/agencies/north/reports", &headers),
            Some(who),
        )
    }

    const AGENTS: &str = r#"
[[allow]]
methods = ["GET"]
roles = ["agent", "supervisor", "admin"]
[[allow]]
methods = ["POST", "PUT", "DELETE"]
roles = ["supervisor", "admin"]
"#;

    #[test]
    fn role_by_method_table() {
        let p = policy(AGENTS, "", &mut Authenticator::default());
        let agent = principal(&["agent"], &[]);
        let supervisor = principal(&["supervisor"], &[]);
        assert_eq!(decide(&p, Method::GET, &agent), Ok(Granted::Rule(0)));
        assert_eq!(
            decide(&p, Method::POST, &agent),
            Err(Forbidden::Insufficient)
        );
        for m in [Method::GET, Method::POST, Method::PUT, Method::DELETE] {
            assert!(decide(&p, m, &supervisor).is_ok());
        }
        assert_eq!(
            decide(&p, Method::PATCH, &supervisor),
            Err(Forbidden::MethodNotCovered)
        );
        assert_eq!(
            decide(&p, Method::GET, &principal(&["guest"], &[])),
            Err(Forbidden::Insufficient)
        );
    }

    #[test]
    fn scopes_are_all_required() {
        let p = policy(
            "[[allow]]\nscopes = [\"a\", \"b\"]",
            "",
            &mut Authenticator::default(),
        );
        assert!(decide(&p, Method::GET, &principal(&[], &["a", "b", "c"])).is_ok());
        assert!(decide(&p, Method::GET, &principal(&[], &["a"])).is_err());
    }

    #[test]
    fn service_tokens_only_on_service_routes() {
        let mut auth = Authenticator::default();
        let admin = principal(&["admin"], &[]);
        let service = Principal {
            kind: PrincipalKind::Service,
            ..admin.clone()
        };
        let user_route = policy(AGENTS, "", &mut auth);
        assert_eq!(
            decide(&user_route, Method::GET, &service),
            Err(Forbidden::ServiceOnUserRoute)
        );
        let system = Policy {
            callers: RouteCallers::Services,
            ..policy(AGENTS, "", &mut auth)
        };
        assert!(decide(&system, Method::GET, &service).is_ok());
        assert_eq!(
            decide(&system, Method::GET, &admin),
            Err(Forbidden::UserOnServiceRoute)
        );
        let any = Policy {
            callers: RouteCallers::Any,
            ..policy(AGENTS, "", &mut auth)
        };
        assert!(decide(&any, Method::GET, &service).is_ok());
        assert!(decide(&any, Method::GET, &admin).is_ok());
    }

    #[test]
    fn no_rules_admit_any_principal() {
        let p = Policy::default();
        assert_eq!(
            decide(&p, Method::DELETE, &principal(&[], &[])),
            Ok(Granted::AnyPrincipal)
        );
    }

    #[test]
    fn clients_claims_and_tenant_matches() {
        let mut auth = Authenticator::default();
        let p = policy(
            r#"
[[allow]]
clients = ["portal", "mobile"]
claims = { agency_type = ["partner", "own"], email_verified = true, amr = { contains = "mfa" } }
match = { agency = "claim:agency_id" }
"#,
            "",
            &mut auth,
        );
        // Slots in the order the claims were registered: agency_type, amr, email_verified
        // (sorted keys), then agency_id.
        let mut who = principal(&[], &[]);
        who.extra = vec![
            ClaimValue::Text("partner".into()),
            ClaimValue::List(vec!["pwd".into(), "mfa".into()]),
            ClaimValue::Bool(true),
            ClaimValue::Text("north".into()),
        ];
        assert_eq!(decide(&p, Method::GET, &who), Ok(Granted::Rule(0)));
        let headers = HeaderMap::new();
        let south = request(&Method::GET, "/agencies/south/reports", &headers);
        assert_eq!(
            p.authorize(&south, Some(&who)),
            Err(Forbidden::Insufficient)
        );

        let fails = |change: &dyn Fn(&mut Principal)| {
            let mut other = who.clone();
            change(&mut other);
            decide(&p, Method::GET, &other).is_err()
        };
        assert!(fails(&|p| p.client_id = Some("cli".into())));
        assert!(fails(&|p| p.extra[0] = ClaimValue::Text("public".into())));
        assert!(fails(&|p| p.extra[1] = ClaimValue::List(vec!["pwd".into()])));
        assert!(fails(&|p| p.extra[2] = ClaimValue::Text("true".into())));
        assert!(fails(&|p| p.extra[3] = ClaimValue::Absent));
        assert!(fails(&|p| p.extra[3] = ClaimValue::Text("North".into())));
    }

    #[test]
    fn deny_rules_come_first_and_read_the_network() {
        let p = policy(
            AGENTS,
            r#"
[[deny]]
methods = ["DELETE"]
not_from = ["10.0.0.0/8"]
[[deny]]
methods = ["PUT"]
from = ["10.1.0.0/16"]
"#,
            &mut Authenticator::default(),
        );
        let supervisor = principal(&["supervisor"], &[]);
        // 10.1.2.3 is inside the office network: DELETE passes, PUT is denied.
        assert_eq!(
            decide(&p, Method::DELETE, &supervisor),
            Ok(Granted::Rule(1))
        );
        assert_eq!(
            decide(&p, Method::PUT, &supervisor),
            Err(Forbidden::Denied(1))
        );
        let headers = HeaderMap::new();
        let outside = Request {
            client_ip: Ipv4Addr::new(192, 0, 2, 1).into(),
            ..request(&Method::DELETE, "/agencies/north/reports", &headers)
        };
        assert_eq!(
            p.authorize(&outside, Some(&supervisor)),
            Err(Forbidden::Denied(0))
        );
        // On a public route, only the deny rules apply.
        let public = Policy {
            allow: Vec::new(),
            ..p
        };
        assert_eq!(public.authorize(&outside, None), Err(Forbidden::Denied(0)));
        let get = request(&Method::GET, "/agencies/north/reports", &headers);
        assert_eq!(public.authorize(&get, None), Ok(Granted::Public));
    }
}

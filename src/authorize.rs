//! Authorization: may this principal use this route with this method?

use http::Method;

use crate::authenticate::{Principal, PrincipalKind};
use crate::config::RouteCallers;
use crate::route::MethodSet;

/// One `[[routes.allow]]` rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub methods: MethodSet,
    /// Any one of these roles; empty means no role is needed.
    pub roles: Vec<Box<str>>,
    /// Every one of these scopes.
    pub scopes: Vec<Box<str>>,
}

impl Rule {
    fn admits(&self, principal: &Principal) -> bool {
        (self.roles.is_empty() || self.roles.iter().any(|r| principal.has_role(r)))
            && self.scopes.iter().all(|s| principal.has_scope(s))
    }
}

/// The rules of an authenticated route. Without rules, any verified principal of the right
/// kind is admitted.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Service tokens reach only routes made for them, whatever their roles.
    pub callers: RouteCallers,
    pub rules: Vec<Rule>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            callers: RouteCallers::Users,
            rules: Vec::new(),
        }
    }
}

/// The principal is authenticated but may not do this: a 403.
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
}

impl Forbidden {
    pub fn reason(self) -> &'static str {
        match self {
            Forbidden::ServiceOnUserRoute => "service_token_on_user_route",
            Forbidden::UserOnServiceRoute => "user_token_on_service_route",
            Forbidden::MethodNotCovered => "method_not_allowed",
            Forbidden::Insufficient => "insufficient_role_or_scope",
        }
    }
}

/// The outcome of a granted request: which rule let it through (for the audit trail).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granted {
    /// The route has no rules: any verified token.
    AnyPrincipal,
    /// Index of the admitting rule.
    Rule(usize),
}

impl Policy {
    pub fn authorize(&self, method: &Method, principal: &Principal) -> Result<Granted, Forbidden> {
        match (self.callers, principal.kind) {
            (RouteCallers::Users, PrincipalKind::Service) => {
                return Err(Forbidden::ServiceOnUserRoute)
            }
            (RouteCallers::Services, PrincipalKind::User) => {
                return Err(Forbidden::UserOnServiceRoute)
            }
            _ => {}
        }
        if self.rules.is_empty() {
            return Ok(Granted::AnyPrincipal);
        }
        let mut covered = false;
        for (i, rule) in self.rules.iter().enumerate() {
            if !rule.methods.contains(method) {
                continue;
            }
            covered = true;
            if rule.admits(principal) {
                return Ok(Granted::Rule(i));
            }
        }
        Err(if covered {
            Forbidden::Insufficient
        } else {
            Forbidden::MethodNotCovered
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(roles: &[&str], scopes: &[&str]) -> Principal {
        Principal {
            issuer: "t".into(),
            kind: PrincipalKind::User,
            subject: "u".into(),
            client_id: None,
            tenant: None,
            roles: roles.iter().map(|s| s.to_string()).collect(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            valid_until: None,
            extra: Vec::new(),
        }
    }

    fn rule(methods: &[&str], roles: &[&str], scopes: &[&str]) -> Rule {
        let m: Vec<String> = methods.iter().map(|s| s.to_string()).collect();
        Rule {
            methods: MethodSet::parse(Some(&m)).unwrap(),
            roles: roles.iter().map(|s| (*s).into()).collect(),
            scopes: scopes.iter().map(|s| (*s).into()).collect(),
        }
    }

    fn agents_policy() -> Policy {
        Policy {
            rules: vec![
                rule(&["GET"], &["agent", "supervisor", "admin"], &[]),
                rule(&["POST", "PUT", "DELETE"], &["supervisor", "admin"], &[]),
            ],
            ..Policy::default()
        }
    }

    #[test]
    fn role_by_method_table() {
        let p = agents_policy();
        let agent = principal(&["agent"], &[]);
        let supervisor = principal(&["supervisor"], &[]);
        assert_eq!(p.authorize(&Method::GET, &agent), Ok(Granted::Rule(0)));
        assert_eq!(
            p.authorize(&Method::POST, &agent),
            Err(Forbidden::Insufficient)
        );
        for m in [Method::GET, Method::POST, Method::PUT, Method::DELETE] {
            assert!(p.authorize(&m, &supervisor).is_ok());
        }
        assert_eq!(
            p.authorize(&Method::PATCH, &supervisor),
            Err(Forbidden::MethodNotCovered)
        );
        assert_eq!(
            p.authorize(&Method::GET, &principal(&["guest"], &[])),
            Err(Forbidden::Insufficient)
        );
    }

    #[test]
    fn scopes_are_all_required() {
        let p = Policy {
            rules: vec![rule(&["GET"], &[], &["a", "b"])],
            ..Policy::default()
        };
        assert!(p
            .authorize(&Method::GET, &principal(&[], &["a", "b", "c"]))
            .is_ok());
        assert!(p.authorize(&Method::GET, &principal(&[], &["a"])).is_err());
    }

    #[test]
    fn service_tokens_only_on_service_routes() {
        let admin = principal(&["admin"], &[]);
        let service = Principal {
            kind: PrincipalKind::Service,
            ..admin.clone()
        };
        let user_route = agents_policy();
        assert_eq!(
            user_route.authorize(&Method::GET, &service),
            Err(Forbidden::ServiceOnUserRoute)
        );
        let system = Policy {
            callers: RouteCallers::Services,
            ..agents_policy()
        };
        assert!(system.authorize(&Method::GET, &service).is_ok());
        assert_eq!(
            system.authorize(&Method::GET, &admin),
            Err(Forbidden::UserOnServiceRoute)
        );
        let any = Policy {
            callers: RouteCallers::Any,
            ..agents_policy()
        };
        assert!(any.authorize(&Method::GET, &service).is_ok());
        assert!(any.authorize(&Method::GET, &admin).is_ok());
    }

    #[test]
    fn no_rules_admit_any_principal() {
        let p = Policy::default();
        assert_eq!(
            p.authorize(&Method::DELETE, &principal(&[], &[])),
            Ok(Granted::AnyPrincipal)
        );
    }
}

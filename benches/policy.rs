//! The authorization decision of a route for a Keycloak-shaped principal: a dozen roles, a
//! few scopes. Role rules by method, and a rule with claim conditions and a tenant match.

use std::net::Ipv4Addr;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, Method};
use portcullis::authenticate::{Authenticator, ClaimValue, Principal, PrincipalKind};
use portcullis::authorize::{Policy, Request, Rule, RuleContext};
use portcullis::config::{KeyPath, RouteCallers, RuleConf};

fn principal(roles: &[&str]) -> Principal {
    let keycloak_defaults = ["offline_access", "uma_authorization", "default-roles-acme"];
    Principal {
        issuer: Arc::from("keycloak"),
        kind: PrincipalKind::User,
        subject: "8f2c5e0a-1d3b-4c6e-9a7f-0b1c2d3e4f5a".into(),
        client_id: Some("portal".into()),
        tenant: Some("agency-42".into()),
        roles: keycloak_defaults
            .iter()
            .chain(["manage-account", "view-profile", "reports-viewer"].iter())
            .chain(["team-a", "team-b", "beta"].iter())
            .chain(roles)
            .map(|r| r.to_string())
            .collect(),
        scopes: ["openid", "profile", "email", "agents:read", "reports:read"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        valid_until: Some(u64::MAX),
        // The claims the tenant rule reads, in the order it registers them.
        extra: vec![
            ClaimValue::Text("partner".into()),
            ClaimValue::Bool(true),
            ClaimValue::Text("agency-42".into()),
        ],
        derived: Default::default(),
    }
}

/// A policy from `[[allow]]` tables, for a route at `/agencies/{agency}/reports`.
fn policy(toml: &str) -> Policy {
    #[derive(serde::Deserialize)]
    struct Rules {
        allow: Vec<RuleConf>,
    }
    let rules: Rules = toml::from_str(toml).expect("rules");
    let params = [("agency", 1)];
    let cx = RuleContext { params: &params };
    let mut auth = Authenticator::default();
    Policy {
        callers: RouteCallers::Users,
        allow: rules
            .allow
            .iter()
            .map(|r| Rule::compile(r, &KeyPath::root(), &cx, &mut auth).expect("rule"))
            .collect(),
        deny: Vec::new(),
    }
}

const ROLES: &str = r#"
[[allow]]
methods = ["DELETE"]
roles = ["admin"]
[[allow]]
methods = ["GET", "HEAD"]
roles = ["agent", "supervisor", "admin"]
scopes = ["agents:read"]
[[allow]]
methods = ["POST", "PUT"]
roles = ["supervisor", "admin"]
"#;

const TENANT: &str = r#"
[[allow]]
methods = ["GET"]
roles = ["agent", "supervisor"]
clients = ["portal", "mobile"]
claims = { agency_type = ["partner", "own"], email_verified = true }
match = { agency = "claim:agency_id" }
"#;

fn bench(c: &mut Criterion) {
    let roles = policy(ROLES);
    let tenant = policy(TENANT);
    let agent = principal(&["agent"]);
    let guest = principal(&[]);
    let headers = HeaderMap::new();
    let request = |method: &'static Method, path: &'static str| Request {
        method,
        path,
        headers: &headers,
        client_ip: Ipv4Addr::new(10, 0, 0, 1).into(),
        client_cert_subject: None,
    };
    let own = "/agencies/agency-42/reports";
    let other = "/agencies/agency-7/reports";
    let cases = [
        (
            "policy_allow",
            &roles,
            &agent,
            request(&Method::GET, own),
            true,
        ),
        (
            "policy_deny_role",
            &roles,
            &guest,
            request(&Method::GET, own),
            false,
        ),
        (
            "policy_deny_method",
            &roles,
            &agent,
            request(&Method::PATCH, own),
            false,
        ),
        (
            "policy_tenant_allow",
            &tenant,
            &agent,
            request(&Method::GET, own),
            true,
        ),
        (
            "policy_tenant_other_agency",
            &tenant,
            &agent,
            request(&Method::GET, other),
            false,
        ),
    ];
    for (name, policy, who, req, allowed) in cases {
        assert_eq!(policy.authorize(&req, Some(who)).is_ok(), allowed, "{name}");
        c.bench_function(name, |b| {
            b.iter(|| policy.authorize(std::hint::black_box(&req), std::hint::black_box(Some(who))))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);

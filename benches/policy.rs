//! The authorization decision of a route for a Keycloak-shaped principal: a dozen roles, a
//! few scopes, three rules.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use http::Method;
use portcullis::authenticate::{Principal, PrincipalKind};
use portcullis::authorize::{Policy, Rule};
use portcullis::config::RouteCallers;
use portcullis::route::MethodSet;

fn methods(names: &[&str]) -> MethodSet {
    let names: Vec<String> = names.iter().map(|m| m.to_string()).collect();
    MethodSet::parse(Some(&names)).expect("methods")
}

fn rule(names: &[&str], roles: &[&str], scopes: &[&str]) -> Rule {
    Rule {
        methods: methods(names),
        roles: roles.iter().map(|r| (*r).into()).collect(),
        scopes: scopes.iter().map(|s| (*s).into()).collect(),
    }
}

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
        extra: vec![],
    }
}

fn policy(c: &mut Criterion) {
    let policy = Policy {
        callers: RouteCallers::Users,
        rules: vec![
            rule(&["DELETE"], &["admin"], &[]),
            rule(
                &["GET", "HEAD"],
                &["agent", "supervisor", "admin"],
                &["agents:read"],
            ),
            rule(&["POST", "PUT"], &["supervisor", "admin"], &[]),
        ],
    };
    let agent = principal(&["agent"]);
    let guest = principal(&[]);
    let cases = [
        ("policy_allow", &agent, Method::GET, true),
        ("policy_deny_role", &guest, Method::GET, false),
        ("policy_deny_method", &agent, Method::PATCH, false),
    ];
    for (name, who, method, allowed) in cases {
        assert_eq!(policy.authorize(&method, who).is_ok(), allowed, "{name}");
        c.bench_function(name, |b| {
            b.iter(|| policy.authorize(std::hint::black_box(&method), std::hint::black_box(who)))
        });
    }
}

criterion_group!(benches, policy);
criterion_main!(benches);

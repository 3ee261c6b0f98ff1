//! Cost of one rate-limit decision in the local backend, and of the headers it produces.

use std::path::Path;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use portcullis::authenticate::{Principal, PrincipalKind};
use portcullis::rate_limit::Caller;
use portcullis::snapshot::Snapshot;

fn snapshot(limits: &str) -> Snapshot {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = format!(
        r#"
[server]
listen = ["127.0.0.1:1"]

[[rate_limit.tiers]]
name = "users"
limits = [{limits}]
"#
    );
    let path = dir.path().join("bench.toml");
    std::fs::write(&path, conf).expect("write");
    Snapshot::load(Path::new(&path), None).expect("bench config")
}

fn principal(i: usize) -> Principal {
    Principal {
        issuer: "idp".into(),
        kind: PrincipalKind::User,
        subject: format!("user-{i}"),
        client_id: Some("portal".into()),
        tenant: None,
        roles: vec!["agent".into()],
        scopes: Vec::new(),
        valid_until: None,
        extra: Vec::new(),
        derived: Default::default(),
    }
}

fn decide(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let users: Vec<Principal> = (0..10_000).map(principal).collect();
    let mut group = c.benchmark_group("rate_limit");
    for (name, limits) in [
        ("one limit", r#""1000000/second""#),
        (
            "burst + long window",
            r#""1000000/second", "100000000/hour""#,
        ),
    ] {
        let snap = snapshot(limits);
        let limiter = &snap.rate_limiter;
        let mut i = 0;
        group.bench_function(format!("decide, {name}, 10k consumers"), |b| {
            b.iter_batched(
                || {
                    i = (i + 1) % users.len();
                    &users[i]
                },
                |p| {
                    let caller = Caller {
                        principal: Some(p),
                        ip: [127, 0, 0, 1].into(),
                    };
                    rt.block_on(limiter.check(&caller, None))
                },
                BatchSize::SmallInput,
            )
        });
        let caller = Caller {
            principal: Some(&users[0]),
            ip: [127, 0, 0, 1].into(),
        };
        let verdict = rt
            .block_on(limiter.check(&caller, None))
            .ok()
            .flatten()
            .expect("a verdict");
        group.bench_function(format!("headers, {name}"), |b| {
            b.iter(|| limiter.headers(&verdict))
        });
    }
    group.finish();
}

criterion_group!(benches, decide);
criterion_main!(benches);

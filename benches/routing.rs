//! Route lookup over 1,000 routes of mixed kinds.

use criterion::{criterion_group, criterion_main, Criterion};
use http::Method;
use portcullis::route::{normalize, parse_pattern, MethodSet, PathKind, RouteKey, Router};

fn router() -> Router<usize> {
    let mut r = Router::default();
    for i in 0..1000 {
        let (path, kind) = match i % 4 {
            0 => (format!("/svc{}/items/{i}", i % 25), PathKind::Exact),
            1 => (format!("/svc{}/items/{i}/{{id}}", i % 25), PathKind::Exact),
            2 => (
                format!("/svc{}/tenants/{{tenant}}/res{i}/{{id}}/detail", i % 25),
                PathKind::Exact,
            ),
            _ => (format!("/svc{}/static{i}", i % 25), PathKind::Prefix),
        };
        let segments = parse_pattern(&path, kind).expect("pattern");
        let key = RouteKey {
            host: None,
            segments: &segments,
            kind,
            methods: MethodSet::ALL,
        };
        assert!(r.add(key, i).is_ok(), "{path}");
    }
    r
}

fn routing(c: &mut Criterion) {
    let r = router();
    let cases = [
        ("route_exact", "/svc4/items/504", Some(504)),
        ("route_template", "/svc5/items/505/abc", Some(505)),
        (
            "route_deep_template",
            "/svc6/tenants/t1/res506/42/detail",
            Some(506),
        ),
        ("route_prefix", "/svc7/static507/a/b/c", Some(507)),
        ("route_miss", "/svc8/unknown/path", None),
    ];
    for (name, path, expected) in cases {
        assert_eq!(
            r.find(None, path, &Method::GET).copied(),
            expected,
            "{path}"
        );
        c.bench_function(name, |b| {
            b.iter(|| {
                let p = normalize(std::hint::black_box(path)).expect("path");
                r.find(None, &p, &Method::GET).copied()
            })
        });
    }
}

criterion_group!(benches, routing);
criterion_main!(benches);

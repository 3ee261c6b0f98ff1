//! Token verification cost: RS256 and ES256, through the same path a request takes, cold
//! (every token verified: `[token_cache] max_entries = 0`) and cached (a token seen before).

use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis::snapshot::Snapshot;
use portcullis::token::{self, TokenSpec};

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn snapshot(cache_entries: usize) -> Snapshot {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = fixtures();
    let conf = format!(
        r#"
[server]
listen = ["127.0.0.1:1"]

[token_cache]
max_entries = {cache_entries}

[issuers.rsa]
issuer = "https://rsa.test"
audiences = ["api"]
jwks_file = "{rsa}"

[issuers.ec]
issuer = "https://ec.test"
audiences = ["api"]
algorithms = ["ES256"]
jwks_file = "{ec}"
"#,
        rsa = f.join("rsa-1.jwks.json").display(),
        ec = f.join("ec-1.jwks.json").display()
    );
    let path = dir.path().join("bench.toml");
    std::fs::write(&path, conf).expect("write");
    Snapshot::load(&path, None).expect("bench config")
}

fn mint(key: &str, alg: jsonwebtoken::Algorithm, kid: &str, iss: &str) -> String {
    let key = token::load_key(&fixtures().join(key), alg).expect("key");
    let spec = TokenSpec {
        alg,
        kid: Some(kid.into()),
        typ: "at+jwt".into(),
        issuer: iss.into(),
        audience: vec!["api".into()],
        subject: "alice".into(),
        roles: vec!["agent".into(), "supervisor".into()],
        scope: Some("openid agents:read".into()),
        azp: Some("portal".into()),
        ttl: Some(std::time::Duration::from_secs(3600)),
        issued_ago: std::time::Duration::ZERO,
        not_before_in: None,
        claims: vec![],
    };
    token::mint(&key, &spec).expect("mint")
}

fn verify(c: &mut Criterion) {
    let cold = snapshot(0);
    let cached = snapshot(1000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let rs = mint(
        "rsa-1.pem",
        jsonwebtoken::Algorithm::RS256,
        "rsa-1",
        "https://rsa.test",
    );
    let es = mint(
        "ec-1.pem",
        jsonwebtoken::Algorithm::ES256,
        "ec-1",
        "https://ec.test",
    );
    let runs = [
        ("verify_rs256_cold", &cold, &rs),
        ("verify_rs256_cached", &cached, &rs),
        ("verify_es256_cold", &cold, &es),
        ("verify_es256_cached", &cached, &es),
    ];
    for (name, snap, token) in runs {
        assert!(rt
            .block_on(snap.authenticator.authenticate(token, None, None))
            .is_ok());
        c.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(snap.authenticator.authenticate(
                    std::hint::black_box(token),
                    None,
                    None,
                ))
            })
        });
    }
    // Flip a character inside the signature: decodes fine, fails the RSA check.
    let mut bytes = rs.clone().into_bytes();
    let i = bytes.len() - 20;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(bytes).expect("ascii");
    c.bench_function("reject_bad_signature_rs256", |b| {
        b.iter(|| {
            rt.block_on(cached.authenticator.authenticate(
                std::hint::black_box(&tampered),
                None,
                None,
            ))
        })
    });
}

criterion_group!(benches, verify);
criterion_main!(benches);

//! The verified-token cache through the running gateway: a token is verified once, yet a
//! cached token never outlives its `exp`, its issuer's keys, or a route's choice of issuers.

mod common;

use std::time::{Duration, Instant};

use common::{
    fixture_jwks as jwks, free_port, get, metric, signed_with, Echo, FileServer, Gateway,
};

/// A gateway with `cache` lines in `[token_cache]`, its admin port, and the key server of
/// issuer `idp` (serving `rsa-1`); issuer `other` takes its keys from a file, and route
/// `/only-other` trusts `other` alone.
struct Setup {
    gw: Gateway,
    admin: u16,
    idp: FileServer,
    _echo: Echo,
}

fn start(cache: &str) -> Setup {
    let echo = Echo::start();
    let idp = FileServer::start();
    idp.put("jwks.json", &jwks(&["rsa-1"]));
    let admin = free_port();
    let jwks_url = idp.url("/jwks.json");
    let gw = Gateway::start(&format!(
        r#"
[admin]
listen = "127.0.0.1:{admin}"

[token_cache]
{cache}

[issuers.idp]
issuer = "https://idp.test"
audiences = ["api"]
clock_skew = "0s"
jwks_url = "{jwks_url}"

[issuers.idp.keys]
refresh_interval = "1s"
min_refresh_interval = "1s"

[issuers.other]
issuer = "https://other.test"
audiences = ["api"]
jwks_file = "{{fixtures}}/rsa-2.jwks.json"

[upstreams.backend]
targets = ["127.0.0.1:{port}"]

[[routes]]
path = "/any"
upstream = "backend"
access = "authenticated"

[[routes]]
path = "/only-other"
upstream = "backend"
access = "authenticated"
issuers = ["other"]
"#,
        port = echo.port
    ));
    Setup {
        gw,
        admin,
        idp,
        _echo: echo,
    }
}

async fn lookups(admin: u16, result: &str) -> f64 {
    metric(
        admin,
        &format!("portcullis_token_cache_lookups_total{{result=\"{result}\"}}"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_verified_once_then_served_from_the_cache() {
    let setup = start("");
    let url = setup.gw.url("/any");
    let good = signed_with("rsa-1", "rsa-1", "https://idp.test", &[]);

    for _ in 0..50 {
        assert_eq!(get(&url, Some(&good)).await.status, 200);
    }
    assert_eq!(lookups(setup.admin, "miss").await, 1.0, "verified once");
    assert_eq!(lookups(setup.admin, "hit").await, 49.0);
    assert_eq!(
        metric(setup.admin, "portcullis_token_cache_entries").await,
        1.0
    );

    // The same token on a route that trusts only the other issuer: refused, cached or not.
    let r = get(&setup.gw.url("/only-other"), Some(&good)).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(
        lookups(setup.admin, "hit").await,
        50.0,
        "answered from the cache"
    );
    let other = signed_with("rsa-2", "rsa-2", "https://other.test", &[]);
    assert_eq!(
        get(&setup.gw.url("/only-other"), Some(&other)).await.status,
        200
    );

    // A token differing in one byte of its signature is not the cached one.
    let mut forged = good.clone().into_bytes();
    let last = forged.len() - 2;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    assert_eq!(get(&url, Some(&forged)).await.status, 401);
    assert_eq!(lookups(setup.admin, "miss").await, 3.0);
    // Sent again, it is refused from the cache, with the same answer.
    let r = get(&url, Some(&forged)).await;
    assert_eq!(r.status, 401);
    assert!(r
        .header("www-authenticate")
        .is_some_and(|h| h.contains("bad signature")));
    assert_eq!(lookups(setup.admin, "refused").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_token_is_refused_once_it_expires() {
    let setup = start("");
    let url = setup.gw.url("/any");
    let brief = signed_with("rsa-1", "rsa-1", "https://idp.test", &["--ttl", "2s"]);
    let issued = Instant::now();

    assert_eq!(get(&url, Some(&brief)).await.status, 200);
    assert_eq!(get(&url, Some(&brief)).await.status, 200);
    assert!(lookups(setup.admin, "hit").await >= 1.0);
    // `exp` has one-second resolution: past exp + 1 s it is expired whatever the rounding.
    tokio::time::sleep(Duration::from_millis(3100).saturating_sub(issued.elapsed())).await;
    let r = get(&url, Some(&brief)).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(
        r.header("www-authenticate")
            .is_some_and(|h| h.contains("token expired")),
        "{:?}",
        r.header("www-authenticate")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_change_voids_the_tokens_verified_with_the_old_keys() {
    let setup = start("");
    let url = setup.gw.url("/any");
    let good = signed_with("rsa-1", "rsa-1", "https://idp.test", &[]);
    assert_eq!(get(&url, Some(&good)).await.status, 200);
    assert_eq!(get(&url, Some(&good)).await.status, 200);
    // Signed with rsa-2 but naming rsa-1's kid: a bad signature, remembered as refused.
    let impostor = signed_with("rsa-2", "rsa-1", "https://idp.test", &[]);
    assert_eq!(get(&url, Some(&impostor)).await.status, 401);
    assert_eq!(get(&url, Some(&impostor)).await.status, 401);
    assert_eq!(lookups(setup.admin, "refused").await, 1.0);

    // Refetches of an unchanged key set keep the cache.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(get(&url, Some(&good)).await.status, 200);
    assert_eq!(lookups(setup.admin, "miss").await, 2.0);

    // The provider replaces the key under the same kid (the old one was compromised, say):
    // the cached token goes with the old key, and the refusal of the token signed with the new
    // one is forgotten.
    let mut replaced: serde_json::Value = serde_json::from_str(&jwks(&["rsa-2"])).unwrap();
    replaced["keys"][0]["kid"] = "rsa-1".into();
    setup.idp.put("jwks.json", &replaced.to_string());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = get(&url, Some(&good)).await.status;
        if status == 401 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            Instant::now() < deadline,
            "still accepted after the key went"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get(&url, Some(&impostor)).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_cache_off_every_request_is_verified() {
    let setup = start("max_entries = 0");
    let good = signed_with("rsa-1", "rsa-1", "https://idp.test", &[]);
    for _ in 0..5 {
        assert_eq!(get(&setup.gw.url("/any"), Some(&good)).await.status, 200);
    }
    assert_eq!(lookups(setup.admin, "hit").await, 0.0);
    assert_eq!(
        metric(setup.admin, "portcullis_token_cache_entries").await,
        0.0
    );
}

//! The JWKS lifecycle through the running gateway, against a real HTTP key server.

mod common;

use std::time::{Duration, Instant};

use common::{fixture_jwks as jwks, get, join_all, signed_with, Echo, FileServer, Gateway};

fn gateway(echo: &Echo, key_source: &str, refresh: &str) -> Gateway {
    Gateway::start(&format!(
        r#"
# The audit trail, in the test's log.
[logging]
audit_log = "stderr"

[issuers.idp]
issuer = "https://idp.test"
audiences = ["api"]
{key_source}

[issuers.idp.keys]
{refresh}
min_refresh_interval = "1s"
unknown_kid_cooldown = "2s"
fetch_timeout = "2s"

[upstreams.backend]
targets = ["127.0.0.1:{port}"]

[[routes]]
path = "/any"
upstream = "backend"
access = "authenticated"
"#,
        port = echo.port
    ))
}

async fn wait_for_status(url: &str, token: &str, status: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = get(url, Some(token)).await.status;
        if got == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{url}: still {got}, wanted {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_key_is_accepted_without_restart_and_unknown_kid_floods_are_bounded() {
    let echo = Echo::start();
    let idp = FileServer::start();
    idp.put("jwks.json", &jwks(&["rsa-1"]));
    let source = format!("jwks_url = \"{}\"", idp.url("/jwks.json"));
    let gw = gateway(&echo, &source, "refresh_interval = \"1h\"");
    let url = gw.url("/any");
    wait_for_status(
        &url,
        &signed_with("rsa-1", "rsa-1", "https://idp.test", &[]),
        200,
    )
    .await;

    // The provider rotates: a token signed with the new key arrives.
    idp.put("jwks.json", &jwks(&["rsa-1", "rsa-2"]));
    tokio::time::sleep(Duration::from_millis(2100)).await; // past the cooldown of the first fetch
    let rotated = signed_with("rsa-2", "rsa-2", "https://idp.test", &[]);
    let r = get(&url, Some(&rotated)).await;
    assert_eq!(r.status, 200, "rotated key not picked up: {}", r.body);

    // 600 requests with made-up kids over ~3 s: at most one fetch per 2 s cooldown.
    let before = idp.hits("/jwks.json").await;
    let started = Instant::now();
    let forged: Vec<String> = (0..20)
        .map(|i| signed_with("rsa-2", &format!("made-up-{i}"), "https://idp.test", &[]))
        .collect();
    let mut statuses = Vec::new();
    for round in 0..30 {
        let batch = forged.iter().map(|t| {
            let url = url.clone();
            let t = t.clone();
            async move { get(&url, Some(&t)).await.status }
        });
        statuses.extend(join_all(batch).await);
        if round % 3 == 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    let elapsed = started.elapsed();
    let fetches = idp.hits("/jwks.json").await - before;
    eprintln!(
        "unknown-kid flood: {} requests in {elapsed:?} caused {fetches} JWKS fetches",
        statuses.len()
    );
    assert!(
        statuses.iter().all(|s| *s == 401),
        "unknown kids must be 401"
    );
    let bound = elapsed.as_secs_f64() / 2.0 + 1.0;
    assert!(
        (fetches as f64) <= bound,
        "{fetches} JWKS fetches for {} requests in {elapsed:?} (bound {bound:.1})",
        statuses.len()
    );
    assert!(
        fetches >= 1,
        "an unknown kid after the cooldown should refetch once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_down_after_keys_were_loaded_keeps_valid_tokens_working() {
    let echo = Echo::start();
    let mut idp = FileServer::start();
    idp.put("jwks.json", &jwks(&["rsa-1"]));
    let source = format!("jwks_url = \"{}\"", idp.url("/jwks.json"));
    let gw = gateway(&echo, &source, "refresh_interval = \"1s\"");
    let url = gw.url("/any");
    let good = signed_with("rsa-1", "rsa-1", "https://idp.test", &[]);
    wait_for_status(&url, &good, 200).await;

    idp.stop();
    tokio::time::sleep(Duration::from_millis(2500)).await; // several failed refreshes
    assert_eq!(get(&url, Some(&good)).await.status, 200);
    let unknown = signed_with("rsa-2", "rsa-2", "https://idp.test", &[]);
    assert_eq!(get(&url, Some(&unknown)).await.status, 401);
    assert!(
        gw.log().contains("keeping the last good keys"),
        "{}",
        gw.log()
    );

    idp.restart();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(get(&url, Some(&good)).await.status, 200);
}

#[tokio::test]
async fn keys_never_loaded_answer_401_not_500() {
    let echo = Echo::start();
    let dead = common::free_port();
    let source = format!("jwks_url = \"http://127.0.0.1:{dead}/jwks.json\"");
    let gw = gateway(&echo, &source, "refresh_interval = \"1h\"");
    let r = get(
        &gw.url("/any"),
        Some(&signed_with("rsa-1", "rsa-1", "https://idp.test", &[])),
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.body, "401 Authorization Required");
    let needle = r#""reason":"keys_unavailable""#;
    let log = gw.log_with(needle);
    assert!(log.contains(needle), "{log}");
}

#[tokio::test]
async fn discovery_finds_the_jwks_and_max_age_drives_refresh() {
    let echo = Echo::start();
    let idp = FileServer::start();
    let issuer = idp.url("");
    idp.put(
        ".well-known/openid-configuration",
        &serde_json::json!({ "issuer": issuer, "jwks_uri": idp.url("/jwks.json") }).to_string(),
    );
    idp.put("jwks.json", &jwks(&["rsa-1"]));
    idp.put("jwks.json.cache-control", "public, max-age=1");
    let gw = Gateway::start(&format!(
        r#"
[issuers.idp]
issuer = "{issuer}"
audiences = ["api"]
discovery = true

[issuers.idp.keys]
refresh_interval = "1h"
min_refresh_interval = "1s"

[upstreams.backend]
targets = ["127.0.0.1:{port}"]

[[routes]]
path = "/any"
upstream = "backend"
access = "authenticated"
"#,
        port = echo.port
    ));
    wait_for_status(
        &gw.url("/any"),
        &signed_with("rsa-1", "rsa-1", &issuer, &[]),
        200,
    )
    .await;
    let before = idp.hits("/jwks.json").await;
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let refreshed = idp.hits("/jwks.json").await - before;
    // max-age=1 (within the 1 s floor) instead of the 1 h default: about 3 refreshes.
    assert!(
        (2..=5).contains(&refreshed),
        "{refreshed} refreshes in 3.2 s"
    );
    assert_eq!(
        idp.hits("/.well-known/openid-configuration").await,
        1,
        "discovery is cached"
    );
}

#[tokio::test]
async fn discovery_document_for_another_issuer_is_refused() {
    let echo = Echo::start();
    let idp = FileServer::start();
    let issuer = idp.url("");
    idp.put(
        ".well-known/openid-configuration",
        &serde_json::json!({ "issuer": "https://someone-else.test", "jwks_uri": idp.url("/jwks.json") }).to_string(),
    );
    idp.put("jwks.json", &jwks(&["rsa-1"]));
    let source = "discovery = true";
    let body = format!(
        "[issuers.idp]\nissuer = \"{issuer}\"\naudiences = [\"api\"]\n{source}\n\n[upstreams.backend]\ntargets = [\"127.0.0.1:{}\"]\n\n[[routes]]\npath = \"/any\"\nupstream = \"backend\"\naccess = \"authenticated\"\n",
        echo.port
    );
    let gw = Gateway::start(&body);
    let r = get(
        &gw.url("/any"),
        Some(&signed_with("rsa-1", "rsa-1", &issuer, &[])),
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(
        idp.hits("/jwks.json").await,
        0,
        "keys from a mismatched discovery document were fetched"
    );
}

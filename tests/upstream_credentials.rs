//! Credentials for upstreams (`[upstreams.NAME.credentials]`), against the real
//! `oidc-provider`: the gateway's own client-credentials token, renewed in the background
//! under load, and the caller's token exchanged (RFC 8693) per caller. Tokens for
//! `https://short.portcullis.test` live 4 s, so renewal happens within the test.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{client, join_all, metric, send, Echo, Gateway, Provider};

const API: &str = "https://api.portcullis.test";
const SHORT: &str = "https://short.portcullis.test";
const GATEWAY_CLIENT: &str = "portcullis-gateway";
const GATEWAY_SECRET: &str = "portcullis-gateway-secret-0123456789";

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// The claims of a JWT, read without verification (the test only looks).
fn claims(jwt: &str) -> serde_json::Value {
    use base64::Engine;
    let payload = jwt.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

/// The bearer token the echo upstream received.
fn upstream_token(echo_body: &serde_json::Value) -> String {
    let values = echo_body["headers"]["authorization"]
        .as_array()
        .unwrap_or_else(|| panic!("no Authorization reached the upstream: {echo_body}"));
    assert_eq!(values.len(), 1, "{echo_body}");
    let value = values[0].as_str().expect("text");
    value
        .strip_prefix("Bearer ")
        .unwrap_or_else(|| panic!("not a bearer token: {value}"))
        .to_string()
}

async fn set_token_endpoint(idp: &Provider, up: bool) {
    let action = if up { "recover" } else { "fail" };
    let r = client()
        .post(format!("{}/test/token-endpoint/{action}", idp.issuer))
        .send()
        .await
        .expect("provider control");
    assert!(r.status().is_success());
}

async fn exchanges(idp: &Provider) -> u64 {
    let r: serde_json::Value = client()
        .get(format!("{}/test/exchanges", idp.issuer))
        .send()
        .await
        .expect("provider counter")
        .json()
        .await
        .expect("JSON");
    r["count"].as_u64().expect("count")
}

fn gateway(idp: &Provider, echo: &Echo, grant: &str, admin: u16) -> Gateway {
    let issuer = &idp.issuer;
    let (access, callers) = match grant {
        "client_credentials" => ("public", ""),
        _ => ("authenticated", "callers = \"services\""),
    };
    Gateway::start_with(
        "",
        &format!(
            r#"
[admin]
listen = "127.0.0.1:{admin}"

[issuers.provider]
issuer = "{issuer}"
audiences = ["{API}"]
discovery = true

[issuers.other]
issuer = "https://idp.test"
audiences = ["api"]
jwks_file = "{{fixtures}}/rsa-1.jwks.json"

[upstreams.backend]
targets = ["127.0.0.1:{port}"]

[upstreams.backend.credentials]
grant = "{grant}"
token_endpoint = "{issuer}/token"
client_id = "{GATEWAY_CLIENT}"
client_secret_env = "GATEWAY_SECRET"
resource = "{SHORT}"
scope = "agents:read"
retry_after = "2s"

[[routes]]
path_prefix = "/orders"
upstream = "backend"
access = "{access}"
{callers}
"#,
            port = echo.port
        ),
        &[("GATEWAY_SECRET", GATEWAY_SECRET)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_gateways_own_token_is_renewed_under_load_and_never_sent_expired() {
    let idp = Provider::start();
    let echo = Echo::start();
    let admin = common::free_port();
    let gw = gateway(&idp, &echo, "client_credentials", admin);

    // The caller's Authorization is replaced, not passed on.
    let r = send("GET", &gw.url("/orders/1"), Some("caller-token"), &[]).await;
    assert_eq!(r.status, 200, "{} / log: {}", r.body, gw.log());
    let token = upstream_token(&r.json());
    assert_ne!(token, "caller-token");
    let c = claims(&token);
    assert_eq!(c["aud"], SHORT, "{c}");
    assert_eq!(c["client_id"], GATEWAY_CLIENT, "{c}");
    assert_eq!(c["scope"], "agents:read", "{c}");

    // `explain` says where the upstream's Authorization comes from.
    let out = std::process::Command::new(common::BIN)
        .args(["explain", "-c"])
        .arg(&gw.conf)
        .args(["GET", &gw.url("/orders/1")])
        .env("GATEWAY_SECRET", GATEWAY_SECRET)
        .output()
        .expect("run explain");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("authorization: the upstream's own token (client_credentials)"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Eight clients for 9 s, more than two token lifetimes: every request reaches the
    // upstream with a token that has not expired when its answer is back, and the tokens
    // are renewed once per renewal, not once per request.
    let url = gw.url("/orders/load");
    let until = Instant::now() + Duration::from_secs(9);
    let results = join_all((0..8).map(|_| {
        let url = url.clone();
        async move {
            let http = client();
            let mut seen = Vec::new();
            while Instant::now() < until {
                let r = http.get(&url).send().await.expect("request");
                let status = r.status().as_u16();
                let body: serde_json::Value = r.json().await.expect("JSON");
                let received = unix_now();
                seen.push((status, upstream_token(&body), received));
            }
            seen
        }
    }))
    .await;
    let all: Vec<_> = results.into_iter().flatten().collect();
    assert!(all.len() >= 200, "only {} requests", all.len());
    let mut tokens = BTreeSet::new();
    for (status, token, received) in &all {
        assert_eq!(*status, 200);
        let exp = claims(token)["exp"].as_f64().expect("exp");
        assert!(
            exp > *received,
            "a token expired at {exp} reached the upstream, answered at {received}"
        );
        tokens.insert(token.clone());
    }
    // 4 s tokens are renewed after 1 s and dropped after 2 s: 9 s takes at least 4.
    assert!(
        (4..=12).contains(&tokens.len()),
        "{} distinct tokens for {} requests",
        tokens.len(),
        all.len()
    );
    let calls = metric(
        admin,
        "portcullis_upstream_credential_calls_total{grant=\"client_credentials\",result=\"ok\",upstream=\"backend\"}",
    )
    .await;
    assert!(
        calls as usize <= tokens.len() + 2,
        "{calls} calls for {} tokens",
        tokens.len()
    );

    // The token endpoint goes down: the token held is used while it may be, then requests
    // get 503 and the upstream gets nothing, never an expired token.
    set_token_endpoint(&idp, false).await;
    let down = Instant::now();
    let mut refused = 0;
    while down.elapsed() < Duration::from_secs(4) {
        let r = send("GET", &gw.url("/orders/down"), None, &[]).await;
        match r.status {
            200 => {
                let exp = claims(&upstream_token(&r.json()))["exp"]
                    .as_f64()
                    .expect("exp");
                assert!(exp > unix_now(), "an expired token was sent");
            }
            503 => {
                refused += 1;
                assert_eq!(r.header("retry-after"), Some("2"));
                assert!(r.body.contains("no token could be obtained"), "{}", r.body);
            }
            s => panic!("unexpected status {s}: {}", r.body),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        refused > 10,
        "only {refused} refusals while the endpoint was down"
    );
    let r = send("GET", &gw.url("/orders/down"), None, &[]).await;
    assert_eq!(r.status, 503);
    let failed = metric(
        admin,
        "portcullis_upstream_credential_calls_total{grant=\"client_credentials\",result=\"error\",upstream=\"backend\"}",
    )
    .await;
    // Left alone for a second after each failure, not asked once per request.
    assert!(
        (1.0..=6.0).contains(&failed),
        "{failed} failed calls in 4 s"
    );

    // Back up: within the backoff the next request gets a fresh token.
    set_token_endpoint(&idp, true).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = send("GET", &gw.url("/orders/back"), None, &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!tokens.contains(&upstream_token(&r.json())));
    assert!(
        !gw.log().contains(GATEWAY_SECRET),
        "the client secret was logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_callers_token_is_exchanged_once_and_again_before_it_expires() {
    let idp = Provider::start();
    let echo = Echo::start();
    let admin = common::free_port();
    let gw = gateway(&idp, &echo, "token_exchange", admin);

    let caller = idp.token(API, "agents:read").await;
    let r = send("GET", &gw.url("/orders/1"), Some(&caller), &[]).await;
    assert_eq!(r.status, 200, "{} / log: {}", r.body, gw.log());
    let exchanged = upstream_token(&r.json());
    assert_ne!(exchanged, caller);
    let c = claims(&exchanged);
    assert_eq!(c["aud"], SHORT, "{c}");
    // About the caller, obtained by the gateway.
    assert_eq!(c["sub"], claims(&caller)["sub"], "{c}");
    assert_eq!(c["act"]["sub"], GATEWAY_CLIENT, "{c}");
    assert_eq!(exchanges(&idp).await, 1);

    // The same caller again: remembered, no second exchange.
    let r = send("GET", &gw.url("/orders/2"), Some(&caller), &[]).await;
    assert_eq!(upstream_token(&r.json()), exchanged);
    assert_eq!(exchanges(&idp).await, 1);

    // Twenty requests at once with a new caller token: one exchange between them.
    let other = idp.token(API, "agents:read").await;
    let url = gw.url("/orders/3");
    let replies = join_all((0..20).map(|_| {
        let (url, other) = (url.clone(), other.clone());
        async move { send("GET", &url, Some(&other), &[]).await }
    }))
    .await;
    let seen: BTreeSet<String> = replies
        .iter()
        .map(|r| {
            assert_eq!(r.status, 200, "{}", r.body);
            upstream_token(&r.json())
        })
        .collect();
    assert_eq!(seen.len(), 1, "one exchanged token for one caller token");
    assert_eq!(exchanges(&idp).await, 2);

    // For 5 s, more than the exchanged token lives: exchanged again before it expires, never
    // sent expired.
    let mut tokens = BTreeSet::new();
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        let r = send("GET", &gw.url("/orders/4"), Some(&caller), &[]).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let token = upstream_token(&r.json());
        let exp = claims(&token)["exp"].as_f64().expect("exp");
        assert!(exp > unix_now(), "an expired exchanged token was sent");
        tokens.insert(token);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(tokens.len() >= 2, "never exchanged again: {tokens:?}");

    // A token the gateway accepts but the provider will not exchange (another issuer's):
    // 403, and the refusal is remembered.
    let foreign = common::rsa_token("svc", "agent", &["--claim", "client_id=svc"]);
    let before = exchanges(&idp).await;
    for _ in 0..3 {
        let r = send("GET", &gw.url("/orders/5"), Some(&foreign), &[]).await;
        assert_eq!(r.status, 403, "{} / log: {}", r.body, gw.log());
        assert!(r.body.contains("token_exchange_refused"), "{}", r.body);
    }
    assert_eq!(exchanges(&idp).await, before + 1);

    // The token endpoint down: 503 for a caller whose token was not exchanged yet.
    let fresh = idp.token(API, "agents:read").await;
    set_token_endpoint(&idp, false).await;
    let r = send("GET", &gw.url("/orders/6"), Some(&fresh), &[]).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.header("retry-after"), Some("2"));
    set_token_endpoint(&idp, true).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = send("GET", &gw.url("/orders/6"), Some(&fresh), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!gw.log().contains(&caller), "a caller token was logged");
}

#[test]
fn a_public_route_cannot_reach_an_upstream_that_exchanges_tokens() {
    let (code, stderr) = common::check_config(
        r#"[server]
listen = ["127.0.0.1:1"]

[upstreams.backend]
targets = ["127.0.0.1:9"]

[upstreams.backend.credentials]
grant = "token_exchange"
token_endpoint = "http://127.0.0.1:1/token"
client_id = "gw"
client_secret_env = "PATH"

[[routes]]
path = "/x"
upstream = "backend"
access = "public"
"#,
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("gateway.toml:16:") && stderr.contains("routes[0].access"),
        "{stderr}"
    );
    assert!(stderr.contains("exchanges the caller's token"), "{stderr}");
}

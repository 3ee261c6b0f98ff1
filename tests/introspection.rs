//! Opaque tokens and revocation, through the running gateway, against a real provider (npm
//! `oidc-provider`, with introspection and revocation on): RFC 7662 introspection, its cache,
//! single flight, and what happens when the provider is slow or gone.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use common::{get, join_all, metric, Echo, Gateway, Provider, Reply};

/// Opaque access tokens are issued for this resource; JWTs for the other.
const OPAQUE: &str = "https://opaque.portcullis.test";
const API: &str = "https://api.portcullis.test";
const SECRET_ENV: (&str, &str) = (
    "PORTCULLIS_TEST_INTROSPECTION_SECRET",
    "portcullis-gateway-secret-0123456789",
);

/// A gateway in front of `echo` trusting `idp`, with `introspection` lines added to its
/// `[issuers.provider.introspection]` table.
fn start(idp: &Provider, echo: &Echo, introspection: &str, extra: &str) -> Gateway {
    Gateway::start_with("", &config(idp, echo, introspection, extra), &[SECRET_ENV])
}

fn config(idp: &Provider, echo: &Echo, introspection: &str, extra: &str) -> String {
    format!(
        r#"
[issuers.provider]
issuer = "{issuer}"
audiences = ["{OPAQUE}", "{API}"]
discovery = true

[issuers.provider.introspection]
client_id = "portcullis-gateway"
client_secret_env = "{env}"
{introspection}

[upstreams.backend]
targets = ["127.0.0.1:{port}"]

[[routes]]
path = "/agents"
upstream = "backend"
access = "authenticated"
callers = "services"

[[routes.allow]]
methods = ["GET"]
roles = ["agent"]
scopes = ["agents:read"]

[[routes]]
path = "/reports"
upstream = "backend"
access = "authenticated"
callers = "services"

[[routes.allow]]
scopes = ["reports:read"]

# Answered by the gateway itself, for floods the echo upstream could not keep up with.
[[routes]]
path = "/quick"
respond = {{ status = 200, body = "ok" }}
access = "authenticated"
callers = "services"

[[routes.allow]]
scopes = ["agents:read"]

{extra}
"#,
        issuer = idp.issuer,
        env = SECRET_ENV.0,
        port = echo.port,
    )
}

fn challenge(r: &Reply) -> &str {
    r.header("www-authenticate").unwrap_or_default()
}

#[tokio::test]
async fn opaque_tokens_are_introspected_and_their_scopes_enforced() {
    let idp = Provider::start();
    let echo = Echo::start();
    let admin = common::free_port();
    let gw = start(
        &idp,
        &echo,
        "",
        &format!(
            r#"[admin]
listen = "127.0.0.1:{admin}"

[issuers.local]
issuer = "https://idp.test"
audiences = ["api"]
jwks_file = "{{fixtures}}/rsa-1.jwks.json"

[[routes]]
path = "/local-only"
respond = {{ status = 200, body = "ok" }}
access = "authenticated"
issuers = ["local"]
"#
        ),
    );

    let token = idp.token(OPAQUE, "agents:read").await;
    assert!(!token.contains('.'), "an opaque token expected: {token}");
    let r = get(&gw.url("/agents"), Some(&token)).await;
    assert_eq!(r.status, 200, "{} / log: {}", r.body, gw.log());
    // The provider's answer feeds the identity headers as a JWT's claims would: a client
    // credentials token's subject is its client.
    let seen = r.json();
    assert_eq!(
        seen["headers"]["x-user-id"],
        serde_json::json!([Provider::CLIENT])
    );
    assert_eq!(
        seen["headers"]["x-client-id"],
        serde_json::json!([Provider::CLIENT])
    );
    assert_eq!(
        seen["headers"]["x-user-roles"],
        serde_json::json!(["agent"])
    );
    // Authenticated, but without the scope.
    let r = get(&gw.url("/reports"), Some(&token)).await;
    assert_eq!(r.status, 403, "{}", r.body);

    // A token the provider never issued.
    let r = get(&gw.url("/agents"), Some("Zm9yZ2VkLW9wYXF1ZS10b2tlbg")).await;
    assert_eq!(r.status, 401);
    assert!(
        challenge(&r).contains("token not active"),
        "{}",
        challenge(&r)
    );

    // JWTs are still verified locally in mode `opaque`: no introspection. Nor is the
    // provider asked about a token on a route that does not trust it.
    let calls = idp.introspections().await;
    let r = get(&gw.url("/local-only"), Some(&token)).await;
    assert_eq!(r.status, 401);
    assert!(
        challenge(&r).contains("issuer not accepted"),
        "{}",
        challenge(&r)
    );
    let jwt = idp.token(API, "agents:read").await;
    assert_eq!(get(&gw.url("/agents"), Some(&jwt)).await.status, 200);
    assert_eq!(idp.introspections().await, calls);

    let calls = metric(
        admin,
        "portcullis_introspection_calls_total{issuer=\"provider\",result=\"active\"}",
    )
    .await;
    assert_eq!(calls, 1.0);
    let inactive = metric(
        admin,
        "portcullis_introspection_calls_total{issuer=\"provider\",result=\"inactive\"}",
    )
    .await;
    assert_eq!(inactive, 1.0);
}

#[tokio::test]
async fn a_revoked_token_is_refused_once_its_cache_entry_ends_and_at_once_uncached() {
    let idp = Provider::start();
    let echo = Echo::start();
    let cached = start(&idp, &echo, "cache_ttl = \"2s\"", "");
    // Without caching, and with the other client authentication method.
    let uncached = Gateway::start_with(
        "",
        &config(&idp, &echo, "cache_ttl = \"0s\"", "").replace(
            "client_id = \"portcullis-gateway\"",
            "client_id = \"portcullis-gateway-post\"\nauth_method = \"client_secret_post\"",
        ),
        &[(SECRET_ENV.0, "portcullis-gateway-post-secret-0123")],
    );

    let token = idp.token(OPAQUE, "agents:read").await;
    let first = Instant::now();
    assert_eq!(get(&cached.url("/agents"), Some(&token)).await.status, 200);
    let r = get(&uncached.url("/agents"), Some(&token)).await;
    assert_eq!(r.status, 200, "{} / log: {}", r.body, uncached.log());
    idp.revoke(&token).await;

    let r = get(&uncached.url("/agents"), Some(&token)).await;
    assert_eq!(r.status, 401, "uncached: refused at once");
    assert!(challenge(&r).contains("token not active"));
    let r = get(&cached.url("/agents"), Some(&token)).await;
    assert!(
        first.elapsed() < Duration::from_secs(2),
        "the machine stalled; the check below needs the entry alive"
    );
    assert_eq!(r.status, 200, "cached: still active until the entry ends");

    // The entry ends 2 s after the first answer.
    let refused_at = loop {
        let r = get(&cached.url("/agents"), Some(&token)).await;
        if r.status == 401 {
            assert!(challenge(&r).contains("token not active"));
            break first.elapsed();
        }
        assert_eq!(r.status, 200);
        assert!(first.elapsed() < Duration::from_secs(5), "never refused");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        refused_at >= Duration::from_millis(1900),
        "refused after {refused_at:?}, before the entry's 2 s"
    );
}

#[tokio::test]
async fn a_thousand_concurrent_requests_with_one_new_token_make_one_call() {
    let idp = Provider::start();
    let echo = Echo::start();
    // Nothing remembered: only requests in flight together can share an answer.
    let gw = start(&idp, &echo, "cache_ttl = \"0s\"\ntimeout = \"20s\"", "");
    let token = idp.token(OPAQUE, "agents:read").await;
    let before = idp.introspections().await;

    // The provider is frozen while the requests arrive, so they all wait for the first
    // request's call; it answers once all are in.
    idp.pause();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let url = gw.url("/quick");
    let requests: Vec<_> = (0..1000)
        .map(|_| {
            let request = client.get(&url).bearer_auth(&token).send();
            async move { request.await.map(|r| r.status().as_u16()) }
        })
        .collect();
    let flood = tokio::spawn(join_all(requests));
    tokio::time::sleep(Duration::from_secs(3)).await;
    idp.resume();
    let statuses = flood.await.expect("flood");
    let ok = statuses.iter().filter(|s| matches!(s, Ok(200))).count();
    let other: Vec<_> = statuses
        .iter()
        .filter(|s| !matches!(s, Ok(200)))
        .take(3)
        .collect();
    assert_eq!(ok, 1000, "not 200: {other:?}");
    assert_eq!(idp.introspections().await - before, 1);

    // And without the freeze, every request asks again.
    assert_eq!(get(&url, Some(&token)).await.status, 200);
    assert_eq!(idp.introspections().await - before, 2);
}

#[tokio::test]
async fn an_unreachable_provider_gives_503_for_unknown_tokens_and_200_for_cached_ones() {
    let mut idp = Provider::start();
    let echo = Echo::start();
    let gw = start(
        &idp,
        &echo,
        "timeout = \"1s\"\nretry_after = \"7s\"\ncache_ttl = \"60s\"",
        "",
    );
    let known = idp.token(OPAQUE, "agents:read").await;
    let unknown = idp.token(OPAQUE, "agents:read").await;
    assert_eq!(get(&gw.url("/agents"), Some(&known)).await.status, 200);

    let undecided = |r: &Reply| {
        assert_eq!(r.status, 503, "{}", r.body);
        assert_eq!(r.header("retry-after"), Some("7"));
        assert_eq!(r.json()["error"], "temporarily_unavailable");
    };

    // Slow: the provider takes connections and never answers.
    idp.pause();
    let started = Instant::now();
    let r = get(&gw.url("/agents"), Some(&unknown)).await;
    let took = started.elapsed();
    undecided(&r);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "answered after {took:?}, the timeout is 1 s"
    );
    let started = Instant::now();
    assert_eq!(get(&gw.url("/agents"), Some(&known)).await.status, 200);
    assert!(started.elapsed() < Duration::from_millis(500));

    // Down: connections are refused.
    idp.resume();
    idp.stop();
    let started = Instant::now();
    undecided(&get(&gw.url("/agents"), Some(&unknown)).await);
    assert!(started.elapsed() < Duration::from_millis(900));
    assert_eq!(get(&gw.url("/agents"), Some(&known)).await.status, 200);
    let log = gw.log_with("introspection at issuer provider failed");
    assert!(!log.contains(&unknown), "the token must never be logged");
}

#[test]
fn check_names_the_introspection_key_at_fault() {
    let text = r#"[server]
listen = ["127.0.0.1:8080"]

[issuers.a]
issuer = "https://a.test"
audiences = ["api"]
discovery = true

[issuers.a.introspection]
client_id = "gw"
client_secret_env = "PORTCULLIS_TEST_UNSET_VARIABLE"
"#;
    let (code, err) = common::check_config(text);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(":11:") && err.contains("issuers.a.introspection.client_secret_env"),
        "{err}"
    );
    assert!(
        err.contains("PORTCULLIS_TEST_UNSET_VARIABLE is not set"),
        "{err}"
    );

    // Turned off, the table is not checked further: no secret is needed.
    let off = text.replace(
        "[issuers.a.introspection]",
        "[issuers.a.introspection]\nmode = \"off\"",
    );
    let (code, err) = common::check_config(&off);
    assert_eq!(code, Some(0), "{err}");
}

/// An introspection endpoint that answers `active` as told (or the whole `answer` when one is
/// set), and records what it was asked. oidc-provider refuses to introspect JWT access tokens
/// ("structured tokens cannot be introspected"), so mode `always` is tried against this one;
/// the answers other providers give (Authlib, Keycloak) are played by it too.
struct Endpoint {
    port: u16,
    active: Arc<AtomicBool>,
    answer: Arc<Mutex<Option<String>>>,
    asked: Arc<Mutex<Vec<String>>>,
}

impl Endpoint {
    async fn start() -> Endpoint {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let active = Arc::new(AtomicBool::new(true));
        let answer: Arc<Mutex<Option<String>>> = Arc::default();
        let asked: Arc<Mutex<Vec<String>>> = Arc::default();
        let (state, told, log) = (active.clone(), answer.clone(), asked.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (state, told, log) = (state.clone(), told.clone(), log.clone());
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    // Headers, then as many body bytes as Content-Length says.
                    loop {
                        let Ok(n) = stream.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        request.extend_from_slice(&buf[..n]);
                        let text = String::from_utf8_lossy(&request).to_string();
                        if let Some((head, body)) = text.split_once("\r\n\r\n") {
                            let length = head
                                .lines()
                                .find_map(|l| {
                                    let (name, value) = l.split_once(':')?;
                                    name.eq_ignore_ascii_case("content-length")
                                        .then(|| value.trim().parse::<usize>().ok())?
                                })
                                .unwrap_or(0);
                            if body.len() >= length {
                                break;
                            }
                        }
                    }
                    log.lock()
                        .expect("lock")
                        .push(String::from_utf8_lossy(&request).to_string());
                    let told = told.lock().expect("lock").clone();
                    let body = told.unwrap_or_else(|| {
                        format!(
                            r#"{{"active":{},"token_type":"Bearer"}}"#,
                            state.load(Ordering::SeqCst)
                        )
                    });
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(reply.as_bytes()).await;
                });
            }
        });
        Endpoint {
            port,
            active,
            answer,
            asked,
        }
    }
}

#[tokio::test]
async fn mode_always_refuses_a_revoked_jwt_before_its_expiry() {
    let endpoint = Endpoint::start().await;
    let gw = Gateway::start_with(
        "",
        &format!(
            r#"
[issuers.idp]
issuer = "https://idp.test"
audiences = ["api"]
jwks_file = "{{fixtures}}/rsa-1.jwks.json"

[issuers.idp.introspection]
mode = "always"
endpoint = "http://127.0.0.1:{port}/introspect"
client_id = "gate way"
client_secret_env = "{env}"
cache_ttl = "0s"

[[routes]]
path = "/agents"
respond = {{ status = 200, body = "ok" }}
access = "authenticated"

[[routes.allow]]
roles = ["agent"]
"#,
            port = endpoint.port,
            env = SECRET_ENV.0,
        ),
        &[(SECRET_ENV.0, "s3cret:/")],
    );
    let token = common::rsa_token("alice", "agent", &["--ttl", "1h"]);
    let r = get(&gw.url("/agents"), Some(&token)).await;
    assert_eq!(r.status, 200, "{} / log: {}", r.body, gw.log());

    // The JWT itself was asked about, with the client authenticated as RFC 6749 §2.3.1 says.
    let asked = endpoint.asked.lock().expect("lock").clone();
    assert_eq!(asked.len(), 1);
    assert!(asked[0].starts_with("POST /introspect "), "{}", asked[0]);
    let form = format!("token={token}&token_type_hint=access_token");
    assert!(asked[0].ends_with(&form), "{}", asked[0]);
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode("gate+way:s3cret%3A%2F");
    assert!(
        asked[0].to_ascii_lowercase().contains(&format!(
            "authorization: basic {}",
            basic.to_ascii_lowercase()
        )),
        "{}",
        asked[0]
    );

    // Revoked at the provider: refused although the signature and `exp` are fine.
    endpoint.active.store(false, Ordering::SeqCst);
    let r = get(&gw.url("/agents"), Some(&token)).await;
    assert_eq!(r.status, 401);
    assert!(
        challenge(&r).contains("token not active"),
        "{}",
        challenge(&r)
    );
    // A token that fails its own checks is refused before the provider is asked.
    let forged = format!("{}x", &token[..token.len() - 1]);
    assert_eq!(get(&gw.url("/agents"), Some(&forged)).await.status, 401);
    assert_eq!(endpoint.asked.lock().expect("lock").len(), 2);
}

#[tokio::test]
async fn answers_without_a_subject_or_an_audience_are_read_as_rfc_7662_allows() {
    let endpoint = Endpoint::start().await;
    let echo = Echo::start();
    let gateway = |require_audience: bool| {
        Gateway::start_with(
            "",
            &format!(
                r#"
[issuers.auth]
issuer = "https://auth.test"
audiences = ["api"]
algorithms = ["HS256"]
hmac_secret_file = "{{fixtures}}/hs-secret.txt"

[issuers.auth.introspection]
endpoint = "http://127.0.0.1:{port}/introspect"
client_id = "gateway"
client_secret_env = "{env}"
cache_ttl = "0s"
negative_cache_ttl = "0s"
require_audience = {require_audience}

[upstreams.backend]
targets = ["127.0.0.1:{echo}"]

[[routes]]
path = "/reports"
upstream = "backend"
access = "authenticated"
callers = "services"

[[routes.allow]]
scopes = ["reports:read"]
"#,
                port = endpoint.port,
                env = SECRET_ENV.0,
                echo = echo.port,
            ),
            &[SECRET_ENV],
        )
    };
    let strict = gateway(true);
    let trusting = gateway(false);
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 600;
    let answer = |members: &str| {
        *endpoint.answer.lock().expect("lock") = Some(format!(
            r#"{{"active":true,"client_id":"reporter","scope":"reports:read","exp":{exp}{members}}}"#
        ));
    };

    // Authlib's answer for a client token: `"sub": null` is no subject, so the client is.
    answer(r#","sub":null,"aud":"api","username":null"#);
    let r = get(&strict.url("/reports"), Some("opaque-client-token")).await;
    assert_eq!(r.status, 200, "{} / {}", r.body, strict.log());
    assert_eq!(
        r.json()["headers"]["x-user-id"],
        serde_json::json!(["reporter"])
    );

    // No `aud` at all: refused unless the issuer takes the provider's word for it.
    answer("");
    let r = get(&strict.url("/reports"), Some("opaque-client-token")).await;
    assert_eq!(r.status, 401);
    assert!(
        challenge(&r).contains("wrong audience"),
        "{}",
        challenge(&r)
    );
    let r = get(&trusting.url("/reports"), Some("opaque-client-token")).await;
    assert_eq!(r.status, 200, "{}", r.body);

    // An `aud` that is there must still be this gateway's.
    answer(r#","aud":"billing""#);
    let r = get(&trusting.url("/reports"), Some("opaque-client-token")).await;
    assert_eq!(r.status, 401);
}

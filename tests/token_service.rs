//! The gateway's own anonymous session tokens (`[token_service]`): issued, verified by the
//! gateway and by an independent verifier (PyJWT against the published key set), limited per
//! session, issued within limits per address and network (trusted-proxy aware), behind a
//! captcha verified with the providers' documented API, and revoked across instances through
//! a real Redis.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    client, debian_python, fixture, free_port, get, repo_path, send, Captcha, Echo, Gateway, Redis,
    Reply,
};

const ISS: &str = "https://portal.example.test";

fn key() -> String {
    repo_path("conf/dev/session-key.pem").display().to_string()
}

/// A gateway with the token service, a route for its tokens and a per-session tier.
fn config(echo: &Echo, admin: u16, extra_service: &str, extra: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:{admin}"

[client_ip]
trusted_proxies = ["127.0.0.1/32"]

[token_service]
issuer = "{ISS}"
audiences = ["portal"]
key_file = "{key}"
ttl = "10m"
{extra_service}

[upstreams.backend]
targets = ["127.0.0.1:{port}"]

[[routes]]
path_prefix = "/portal"
upstream = "backend"
access = "authenticated"
issuers = ["anonymous"]

[[rate_limit.tiers]]
name = "sessions"
callers = "users"
issuers = ["anonymous"]
claim = {{ name = "tier", values = ["anonymous"] }}
limits = ["3/minute"]
{extra}
"#,
        key = key(),
        port = echo.port
    )
}

async fn issue(gw: &Gateway, from: &str, headers: &[(&str, &str)], form: &str) -> Reply {
    let mut request = client()
        .post(gw.url("/auth/anonymous"))
        .header("x-forwarded-for", from)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let r = request.send().await.expect("token request");
    Reply {
        status: r.status().as_u16(),
        headers: r.headers().clone(),
        body: r.text().await.expect("body"),
    }
}

fn token_of(r: &Reply) -> String {
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["access_token"]
        .as_str()
        .expect("access_token")
        .to_string()
}

fn claims(jwt: &str) -> serde_json::Value {
    use base64::Engine;
    let payload = jwt.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("claims")
}

async fn revoke(admin: u16, body: &str) -> Reply {
    let r = client()
        .post(format!("http://127.0.0.1:{admin}/sessions/revoke"))
        .body(body.to_string())
        .send()
        .await
        .expect("revoke");
    Reply {
        status: r.status().as_u16(),
        headers: r.headers().clone(),
        body: r.text().await.expect("body"),
    }
}

/// PyJWT, knowing nothing of the gateway but its published key set, verifies a token.
fn verify_with_pyjwt(jwks: &str, token: &str) -> Result<String, String> {
    let script = r#"
import json, sys
import jwt
jwks, token = json.loads(sys.argv[1]), sys.argv[2]
key = jwt.PyJWK(jwks["keys"][0])
claims = jwt.decode(token, key.key, algorithms=["ES256"], audience="portal",
                    issuer="https://portal.example.test")
header = jwt.get_unverified_header(token)
assert header["kid"] == jwks["keys"][0]["kid"], header
print(claims["sub"])
"#;
    let out = Command::new(debian_python())
        .args(["-c", script, jwks, token])
        .output()
        .expect("python3");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_tokens_are_issued_verified_limited_and_revoked() {
    let echo = Echo::start();
    let admin = free_port();
    let gw = Gateway::start(&config(
        &echo,
        admin,
        "[token_service.issuance]\nper_address = [\"3/minute\"]\nper_network = [\"5/minute\"]",
        "",
    ));

    // Issued: a signed JWT for a fresh random session, not to be stored by caches.
    let r = issue(&gw, "198.51.100.1", &[], "").await;
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let body = r.json();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 600);
    let token = token_of(&r);
    let header = jsonwebtoken::decode_header(&token).expect("JWT header");
    assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    let c = claims(&token);
    assert_eq!(c["iss"], ISS);
    assert_eq!(c["aud"], "portal");
    assert_eq!(c["tier"], "anonymous");
    let sub = c["sub"].as_str().expect("sub").to_string();
    assert_eq!(sub.len(), 32, "a 128-bit session id: {sub}");
    assert!(c["jti"].as_str().is_some_and(|j| j.len() == 32 && j != sub));
    assert_eq!(
        c["exp"].as_u64().expect("exp") - c["iat"].as_u64().expect("iat"),
        600
    );

    // Published: the key set and a discovery document naming it.
    let jwks = get(&gw.url("/.well-known/jwks.json"), None).await;
    assert_eq!(jwks.status, 200);
    assert_eq!(
        jwks.json()["keys"][0]["kid"],
        header.kid.clone().expect("kid")
    );
    assert!(
        jwks.json()["keys"][0].get("d").is_none(),
        "private key published"
    );
    let discovery = get(&gw.url("/.well-known/openid-configuration"), None).await;
    assert_eq!(discovery.json()["issuer"], ISS);
    assert_eq!(
        discovery.json()["jwks_uri"],
        format!("{ISS}/.well-known/jwks.json")
    );
    // An independent verifier accepts the token with the published key, and refuses a
    // token signed by another key under the same kid.
    assert_eq!(verify_with_pyjwt(&jwks.body, &token), Ok(sub.clone()));
    let forged = common::token(&[
        "--key",
        fixture("ec-1.pem").to_str().expect("path"),
        "--alg",
        "ES256",
        "--kid",
        header.kid.as_deref().expect("kid"),
        "--iss",
        ISS,
        "--aud",
        "portal",
        "--sub",
        &sub,
        "--claim",
        "tier=anonymous",
    ]);
    assert!(verify_with_pyjwt(&jwks.body, &forged).is_err());

    // The gateway trusts its own tokens, and forwards the session as the identity.
    let r = send("GET", &gw.url("/portal/home"), Some(&token), &[]).await;
    assert_eq!(r.status, 200, "{} / log: {}", r.body, gw.log());
    assert_eq!(r.json()["headers"]["x-user-id"], serde_json::json!([sub]));
    let r = send("GET", &gw.url("/portal/home"), Some(&forged), &[]).await;
    assert_eq!(r.status, 401);

    // Limited per session: the fourth request of this session is refused; another session
    // from the same address is not.
    for _ in 0..2 {
        let r = send("GET", &gw.url("/portal/home"), Some(&token), &[]).await;
        assert_eq!(r.status, 200);
    }
    let r = send("GET", &gw.url("/portal/home"), Some(&token), &[]).await;
    assert_eq!(r.status, 429);
    let second = token_of(&issue(&gw, "198.51.100.1", &[], "").await);
    let r = send("GET", &gw.url("/portal/home"), Some(&second), &[]).await;
    assert_eq!(r.status, 200);

    // Issuance per address (as the trusted proxy tells it), then per /24.
    let _third = token_of(&issue(&gw, "198.51.100.1", &[], "").await);
    let r = issue(&gw, "198.51.100.1", &[], "").await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r
        .header("retry-after")
        .is_some_and(|s| s.parse::<u64>().is_ok()));
    assert!(r.body.contains("address"), "{}", r.body);
    token_of(&issue(&gw, "198.51.100.2", &[], "").await);
    token_of(&issue(&gw, "198.51.100.3", &[], "").await);
    let r = issue(&gw, "198.51.100.4", &[], "").await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.body.contains("network"), "{}", r.body);
    token_of(&issue(&gw, "203.0.113.9", &[], "").await);
    // Only POST issues.
    let r = get(&gw.url("/auth/anonymous"), None).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));

    // Revoked by jti: refused at once, though the gateway had the token verified and cached;
    // another session goes on.
    let jti = claims(&second)["jti"].as_str().expect("jti").to_string();
    let r = revoke(admin, &format!(r#"{{"jti":"{jti}"}}"#)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["published"], serde_json::Value::Null);
    let r = send("GET", &gw.url("/portal/home"), Some(&second), &[]).await;
    assert_eq!(r.status, 401);
    assert!(r
        .header("www-authenticate")
        .is_some_and(|w| w.contains("token not active")));
    let fresh = token_of(&issue(&gw, "203.0.113.10", &[], "").await);
    assert_eq!(
        send("GET", &gw.url("/portal/home"), Some(&fresh), &[])
            .await
            .status,
        200
    );
    // Revoked by session.
    let fresh_sub = claims(&fresh)["sub"].as_str().expect("sub").to_string();
    let r = revoke(admin, &format!(r#"{{"sub":"{fresh_sub}"}}"#)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = send("GET", &gw.url("/portal/home"), Some(&fresh), &[]).await;
    assert_eq!(r.status, 401);
    let r = revoke(admin, r#"{"aud":"x"}"#).await;
    assert_eq!(r.status, 400);

    let issued = common::metric(
        admin,
        "portcullis_token_service_requests_total{outcome=\"issued\"}",
    )
    .await;
    assert_eq!(issued, 7.0);
    let log = gw.log();
    for t in [&token, &second, &fresh] {
        assert!(!log.contains(t.as_str()), "a token was logged");
    }
}

/// The published key set's `kid`s, once the gateway's has `count` keys (after a reload).
async fn kids_once(gw: &Gateway, count: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let jwks = get(&gw.url("/.well-known/jwks.json"), None).await.json();
        let keys = jwks["keys"].as_array().cloned().unwrap_or_default();
        if keys.len() == count {
            return keys
                .iter()
                .map(|k| k["kid"].as_str().unwrap_or_default().into())
                .collect();
        }
        assert!(Instant::now() < deadline, "never {count} keys: {jwks}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_change_keeps_the_sessions_the_previous_key_signed() {
    let echo = Echo::start();
    let admin = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let new_key = dir.path().join("new.pem");
    let made = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
        ])
        .arg(&new_key)
        .output()
        .expect("openssl");
    assert!(made.status.success(), "{made:?}");
    let new_key = new_key.display().to_string();
    let gw = Gateway::start(&config(&echo, admin, "", ""));
    let old_kid = kids_once(&gw, 1).await.remove(0);
    let old = token_of(&issue(&gw, "198.51.100.30", &[], "").await);
    assert_eq!(get(&gw.url("/portal/a"), Some(&old)).await.status, 200);

    // The new key signs; the old one, kept as a previous key, is still published and trusted.
    let changed = config(&echo, admin, "previous_keys = [{ key_file = \"OLD\" }]", "")
        .replace(&key(), &new_key)
        .replace("OLD", &key());
    gw.reload(&changed);
    let kids = kids_once(&gw, 2).await;
    assert_eq!(kids[1], old_kid, "{kids:?}");
    assert_ne!(kids[0], old_kid);
    let new = token_of(&issue(&gw, "198.51.100.31", &[], "").await);
    let header = jsonwebtoken::decode_header(&new).expect("JWT header");
    assert_eq!(header.kid.as_deref(), Some(kids[0].as_str()));
    assert_eq!(get(&gw.url("/portal/a"), Some(&old)).await.status, 200);
    assert_eq!(get(&gw.url("/portal/a"), Some(&new)).await.status, 200);

    // Once the previous key is dropped, what it signed is refused; the new key's tokens pass.
    gw.reload(&config(&echo, admin, "", "").replace(&key(), &new_key));
    assert_eq!(kids_once(&gw, 1).await, kids[..1]);
    assert_eq!(get(&gw.url("/portal/a"), Some(&old)).await.status, 401);
    assert_eq!(get(&gw.url("/portal/a"), Some(&new)).await.status, 200);

    // The same key twice is a config error naming the entry.
    let twice = config(
        &echo,
        admin,
        &format!("previous_keys = [{{ key_file = \"{}\" }}]", key()),
        "",
    );
    let twice = format!(
        "[server]\nlisten = [\"127.0.0.1:{}\"]\n{twice}",
        free_port()
    );
    let (code, err) = common::check_config(&twice);
    assert_ne!(code, Some(0));
    assert!(err.contains("token_service.previous_keys[0].kid"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captcha_is_verified_with_the_providers_api_before_a_token_is_issued() {
    let echo = Echo::start();
    let captcha = Captcha::start();
    let admin = free_port();
    let section = |on_error: &str| {
        format!(
            "[token_service.captcha]\nverify_url = \"{}\"\nsecret_env = \"CAPTCHA_SECRET\"\n\
             timeout = \"500ms\"\non_error = \"{on_error}\"",
            captcha.url()
        )
    };
    let gw = Gateway::start_with(
        "",
        &config(&echo, admin, &section("fail_closed"), ""),
        &[("CAPTCHA_SECRET", "captcha-secret")],
    );

    let r = issue(&gw, "198.51.100.7", &[], "").await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("captcha_required"));
    assert_eq!(captcha.calls().await, 0, "no response, no verification");

    let r = issue(&gw, "198.51.100.7", &[], "captcha_response=robot").await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("captcha_failed"));

    let r = issue(&gw, "198.51.100.7", &[], "captcha_response=human&other=1").await;
    token_of(&r);
    // The provider got the site secret, the response and the visitor's address.
    let last = captcha.last().await;
    assert_eq!(last["secret"], "captcha-secret");
    assert_eq!(last["response"], "human");
    assert_eq!(last["remoteip"], "198.51.100.7");
    token_of(&issue(&gw, "198.51.100.8", &[("x-captcha-response", "human")], "").await);

    // A provider that fails or does not answer in time: no token (fail_closed) ...
    let started = Instant::now();
    let r = issue(&gw, "198.51.100.9", &[], "captcha_response=slow").await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(started.elapsed() < Duration::from_millis(2500));
    let r = issue(&gw, "198.51.100.9", &[], "captcha_response=broken").await;
    assert_eq!(r.status, 503, "{}", r.body);

    // ... or a token all the same (fail_open), after a reload.
    gw.reload(&config(&echo, admin, &section("fail_open"), ""));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = issue(&gw, "198.51.100.10", &[], "captcha_response=broken").await;
    token_of(&r);
    // A failed check is still a failure.
    let r = issue(&gw, "198.51.100.10", &[], "captcha_response=robot").await;
    assert_eq!(r.status, 403);
    assert!(
        !gw.log().contains("captcha-secret"),
        "the secret was logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_and_issuance_limits_are_shared_through_redis() {
    let redis = Redis::start();
    let echo = Echo::start();
    let shared = format!(
        "[token_service.issuance]\nper_address = [\"2/minute\"]\nbackend = \"redis\"\n\n\
         [rate_limit.redis]\nurl = \"{}\"",
        redis.url()
    );
    let (admin_a, admin_b) = (free_port(), free_port());
    let a = Gateway::start(&config(&echo, admin_a, "", &shared));
    let b = Gateway::start(&config(&echo, admin_b, "", &shared));

    // Two issued by two instances use up the address's shared allowance.
    let token = token_of(&issue(&a, "198.51.100.20", &[], "").await);
    let other = token_of(&issue(&b, "198.51.100.20", &[], "").await);
    let r = issue(&a, "198.51.100.20", &[], "").await;
    assert_eq!(r.status, 429, "{}", r.body);

    // Either instance takes either's tokens.
    for gw in [&a, &b] {
        for t in [&token, &other] {
            let r = send("GET", &gw.url("/portal/x"), Some(t), &[]).await;
            assert_eq!(r.status, 200, "{}", r.body);
        }
    }

    // Revoked on A: refused on B within a second, its cached verification notwithstanding.
    let jti = claims(&token)["jti"].as_str().expect("jti").to_string();
    let r = revoke(admin_a, &format!(r#"{{"jti":"{jti}"}}"#)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["published"], true);
    let revoked_at = Instant::now();
    loop {
        let r = send("GET", &b.url("/portal/x"), Some(&token), &[]).await;
        if r.status == 401 {
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(1),
            "B still takes the revoked token: {}",
            r.status
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        send("GET", &b.url("/portal/x"), Some(&other), &[])
            .await
            .status,
        200
    );

    // An instance started afterwards knows of it too, from what Redis keeps.
    let c = Gateway::start(&config(&echo, free_port(), "", &shared));
    let started = Instant::now();
    loop {
        let r = send("GET", &c.url("/portal/x"), Some(&token), &[]).await;
        if r.status == 401 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(3), "C takes it");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ttl: i64 = redis
        .cli(&["TTL", &format!("portcullis:rl:revoked:jti:{jti}")])
        .trim()
        .parse()
        .expect("TTL");
    assert!(
        (590..=610).contains(&ttl),
        "kept for the token lifetime, not {ttl} s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_gateway_verifies_the_tokens_through_discovery() {
    let echo = Echo::start();
    let issuing = Gateway::start(&config(&echo, free_port(), "", ""));
    // Its public address is its `issuer`, so that its discovery document is reachable there.
    let public = format!("http://127.0.0.1:{}", issuing.port);
    issuing.reload(&config(&echo, free_port(), "", "").replace(ISS, &public));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let token = token_of(&issue(&issuing, "198.51.100.30", &[], "").await);
    assert_eq!(claims(&token)["iss"], public);

    let verifying = Gateway::start(&format!(
        r#"
[issuers.portal]
issuer = "{public}"
audiences = ["portal"]
algorithms = ["ES256"]
discovery = true

[upstreams.backend]
targets = ["127.0.0.1:{port}"]

[[routes]]
path_prefix = "/orders"
upstream = "backend"
access = "authenticated"
"#,
        port = echo.port
    ));
    let r = send("GET", &verifying.url("/orders/1"), Some(&token), &[]).await;
    assert_eq!(r.status, 200, "{} / log: {}", r.body, verifying.log());
    let sub = claims(&token)["sub"].clone();
    assert_eq!(r.json()["headers"]["x-user-id"], serde_json::json!([sub]));
}

//! Token validation through the running gateway: every bad token is a 401, never a 5xx.

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::{fixture, get, rsa_token, send, token, Echo, Gateway};
use serde_json::json;

fn gateway(echo: &Echo) -> Gateway {
    Gateway::start(&format!(
        r#"
# The audit trail, in the test's log.
[logging]
audit_log = "stderr"

[issuers.idp]
issuer = "https://idp.test"
audiences = ["api"]
algorithms = ["RS256"]
clock_skew = "5s"
jwks_file = "{{fixtures}}/rsa-1.jwks.json"

[issuers.ec]
issuer = "https://ec.test"
audiences = ["api"]
algorithms = ["ES256"]
jwks_file = "{{fixtures}}/ec-1.jwks.json"

[issuers.ed]
issuer = "https://ed.test"
audiences = ["api"]
algorithms = ["EdDSA"]
jwks_file = "{{fixtures}}/ed-1.jwks.json"

[issuers.hs]
issuer = "https://hs.test"
audiences = ["api"]
algorithms = ["HS256"]
hmac_secret_file = "{{fixtures}}/hs-secret.txt"

[issuers.jobs]
issuer = "https://jobs.test"
audiences = ["api"]
allow_non_expiring = true
jwks_file = "{{fixtures}}/rsa-2.jwks.json"

[issuers.typed]
issuer = "https://typed.test"
audiences = ["api"]
jwks_file = "{{fixtures}}/rsa-2.jwks.json"

[issuers.typed.token_type]
header = ["at+jwt"]
claim = {{ name = "typ", values = ["Bearer"] }}

[issuers.spaced]
issuer = "https://spaced.test"
audiences = ["api"]
jwks_file = "{{fixtures}}/rsa-2.jwks.json"

[issuers.spaced.claims]
roles = ["roles"]
roles_format = "space_separated"

[upstreams.backend]
targets = ["127.0.0.1:{port}"]

[[routes]]
path = "/supervisors"
upstream = "backend"
access = "authenticated"
issuers = ["spaced"]

[[routes.allow]]
roles = ["supervisor"]

[[routes]]
path = "/any"
upstream = "backend"
access = "authenticated"
callers = "any"

[[routes]]
path = "/idp-only"
upstream = "backend"
access = "authenticated"
issuers = ["idp"]
"#,
        port = echo.port
    ))
}

fn key(name: &str) -> String {
    fixture(name).display().to_string()
}

fn mint(key_file: &str, alg: &str, kid: &str, iss: &str, extra: &[&str]) -> String {
    let k = key(key_file);
    let mut args = vec![
        "--key", &k, "--alg", alg, "--kid", kid, "--iss", iss, "--aud", "api", "--sub", "u1",
    ];
    args.extend_from_slice(extra);
    token(&args)
}

fn b64(v: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

fn claims(iss: &str) -> serde_json::Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    json!({"iss": iss, "aud": "api", "sub": "mallory", "exp": now + 600, "realm_access": {"roles": ["admin"]}})
}

#[tokio::test]
async fn every_configured_algorithm_verifies() {
    let echo = Echo::start();
    let gw = gateway(&echo);
    let secret = key("hs-secret.txt");
    let tokens = [
        rsa_token("u1", "agent", &[]),
        mint("ec-1.pem", "ES256", "ec-1", "https://ec.test", &[]),
        mint("ed-1.pem", "EdDSA", "ed-1", "https://ed.test", &[]),
        token(&[
            "--key",
            &secret,
            "--alg",
            "HS256",
            "--no-kid",
            "--iss",
            "https://hs.test",
            "--aud",
            "api",
            "--sub",
            "u1",
        ]),
    ];
    for t in &tokens {
        let r = get(&gw.url("/any"), Some(t)).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
}

#[tokio::test]
async fn bad_tokens_are_401_invalid_token_never_5xx() {
    let echo = Echo::start();
    let gw = gateway(&echo);
    let good = rsa_token("u1", "agent", &[]);
    let (message, signature) = good.rsplit_once('.').unwrap();
    let (header, _) = message.split_once('.').unwrap();

    // HMAC keyed with the RSA public key, the classic algorithm confusion.
    let public_pem = std::fs::read(fixture("rsa-1.pub.pem")).unwrap();
    let mut hs_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs_header.kid = Some("rsa-1".into());
    let hmac_with_public_key = jsonwebtoken::encode(
        &hs_header,
        &claims("https://idp.test"),
        &jsonwebtoken::EncodingKey::from_secret(&public_pem),
    )
    .unwrap();

    let mut flipped = signature.to_string().into_bytes();
    flipped[10] = if flipped[10] == b'A' { b'B' } else { b'A' };
    let flipped = format!("{message}.{}", String::from_utf8(flipped).unwrap());

    let cases: Vec<(&str, String)> = vec![
        (
            "expired",
            rsa_token("u1", "agent", &["--issued-ago", "2h", "--ttl", "1h"]),
        ),
        (
            "not yet valid",
            rsa_token("u1", "agent", &["--not-before-in", "1h"]),
        ),
        (
            "unknown issuer",
            token(&[
                "--key",
                &key("rsa-1.pem"),
                "--kid",
                "rsa-1",
                "--iss",
                "https://evil.test",
                "--aud",
                "api",
                "--sub",
                "u1",
            ]),
        ),
        (
            "wrong audience",
            token(&[
                "--key",
                &key("rsa-1.pem"),
                "--kid",
                "rsa-1",
                "--iss",
                "https://idp.test",
                "--aud",
                "other",
                "--sub",
                "u1",
            ]),
        ),
        (
            "unknown kid",
            mint("rsa-1.pem", "RS256", "nope", "https://idp.test", &[]),
        ),
        ("missing exp", rsa_token("u1", "agent", &["--no-exp"])),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "typ": "JWT"})),
                b64(&claims("https://idp.test"))
            ),
        ),
        (
            "alg none with signature",
            format!(
                "{}.{}.AAAA",
                b64(&json!({"alg": "none"})),
                b64(&claims("https://idp.test"))
            ),
        ),
        ("hmac with the public key", hmac_with_public_key),
        (
            "algorithm not allowed for issuer",
            rsa_token("u1", "agent", &["--alg", "RS384"]),
        ),
        (
            "signed by another key",
            mint("rsa-2.pem", "RS256", "rsa-1", "https://idp.test", &[]),
        ),
        (
            "tampered payload",
            format!("{header}.{}.{signature}", b64(&claims("https://idp.test"))),
        ),
        ("tampered signature", flipped),
        ("garbage", "not-a-token".into()),
        ("five parts", format!("{good}.a.b")),
        ("bad base64", "@@@.###.$$$".into()),
        ("oversized", "a".repeat(20_000)),
        (
            "control characters in sub",
            rsa_token("a\u{7}b", "agent", &[]),
        ),
    ];
    for (what, t) in &cases {
        let r = get(&gw.url("/any"), Some(t)).await;
        assert_eq!(r.status, 401, "{what}: {}", r.body);
        assert_eq!(r.body, "401 Authorization Required", "{what}");
        let challenge = r.header("www-authenticate").unwrap_or_default();
        assert!(
            challenge.contains(r#"error="invalid_token""#),
            "{what}: {challenge}"
        );
    }
    for reason in [
        "expired",
        "not_yet_valid",
        "unknown_issuer",
        "wrong_audience",
        "unknown_kid",
        "missing_exp",
        "malformed",
        "algorithm_not_allowed",
        "bad_signature",
    ] {
        let needle = format!(r#""reason":"{reason}""#);
        assert!(gw.log_with(&needle).contains(&needle), "no {reason} in log");
    }
}

#[tokio::test]
async fn jku_and_embedded_jwk_headers_are_ignored() {
    let echo = Echo::start();
    let gw = gateway(&echo);
    // Signed with rsa-2, pointing at its own key: must not be trusted for issuer idp.
    let pem = std::fs::read(fixture("rsa-2.pem")).unwrap();
    let enc = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap();
    let jwk =
        jsonwebtoken::jwk::Jwk::from_encoding_key(&enc, jsonwebtoken::Algorithm::RS256).unwrap();
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    h.jku = Some("http://127.0.0.1:1/jwks.json".into());
    h.jwk = Some(jwk);
    let t = jsonwebtoken::encode(&h, &claims("https://idp.test"), &enc).unwrap();
    assert_eq!(get(&gw.url("/any"), Some(&t)).await.status, 401);
}

#[tokio::test]
async fn non_expiring_tokens_only_where_the_issuer_allows_them() {
    let echo = Echo::start();
    let gw = gateway(&echo);
    // A backend job's token: issued to the client itself, no user behind it.
    let job = mint(
        "rsa-2.pem",
        "RS256",
        "rsa-2",
        "https://jobs.test",
        &["--no-exp", "--azp", "u1"],
    );
    assert_eq!(get(&gw.url("/any"), Some(&job)).await.status, 200);
    // A user's token from the same issuer must expire.
    let user_at_jobs = mint(
        "rsa-2.pem",
        "RS256",
        "rsa-2",
        "https://jobs.test",
        &["--no-exp", "--azp", "portal"],
    );
    assert_eq!(get(&gw.url("/any"), Some(&user_at_jobs)).await.status, 401);
    // An issuer that does not allow it.
    let user = rsa_token("u1", "agent", &["--no-exp"]);
    assert_eq!(get(&gw.url("/any"), Some(&user)).await.status, 401);
}

#[tokio::test]
async fn routes_accept_only_their_issuers() {
    let echo = Echo::start();
    let gw = gateway(&echo);
    let ec = mint("ec-1.pem", "ES256", "ec-1", "https://ec.test", &[]);
    let r = get(&gw.url("/idp-only"), Some(&ec)).await;
    assert_eq!(r.status, 401);
    assert!(r
        .header("www-authenticate")
        .unwrap_or_default()
        .contains("issuer not accepted"));
    assert_eq!(
        get(&gw.url("/idp-only"), Some(&rsa_token("u1", "", &[])))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn clock_skew_tolerates_small_drift() {
    let echo = Echo::start();
    let gw = gateway(&echo);
    // Expired 2 s ago, within the issuer's 5 s skew.
    let t = rsa_token("u1", "agent", &["--issued-ago", "62s", "--ttl", "60s"]);
    assert_eq!(get(&gw.url("/any"), Some(&t)).await.status, 200);
    let t = rsa_token("u1", "agent", &["--issued-ago", "70s", "--ttl", "60s"]);
    assert_eq!(get(&gw.url("/any"), Some(&t)).await.status, 401);
}

#[tokio::test]
async fn many_bad_requests_leave_the_gateway_serving() {
    let echo = Echo::start();
    let mut gw = gateway(&echo);
    let junk = [
        "",
        "Bearer",
        "Bearer a.b",
        "Bearer ....",
        "Bearer eyJ.eyJ.eyJ",
    ];
    for j in junk {
        let r = send("GET", &gw.url("/any"), None, &[("authorization", j)]).await;
        assert!(r.status == 401 || r.status == 400, "{j:?} -> {}", r.status);
    }
    assert!(gw.is_running());
    assert_eq!(
        get(&gw.url("/any"), Some(&rsa_token("u1", "", &[])))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn critical_header_extensions_and_future_issue_times_are_refused() {
    let echo = Echo::start();
    let gw = gateway(&echo);
    let pem = std::fs::read(fixture("rsa-1.pem")).unwrap();
    let enc = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap();
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    h.kid = Some("rsa-1".into());
    let plain = jsonwebtoken::encode(&h, &claims("https://idp.test"), &enc).unwrap();
    assert_eq!(get(&gw.url("/any"), Some(&plain)).await.status, 200);
    // RFC 7515 §4.1.11: a validly signed token naming an extension nobody here understands.
    h.crit = Some(vec!["exp".into()]);
    let critical = jsonwebtoken::encode(&h, &claims("https://idp.test"), &enc).unwrap();
    let r = get(&gw.url("/any"), Some(&critical)).await;
    assert_eq!(r.status, 401);
    assert!(
        r.header("www-authenticate")
            .unwrap_or_default()
            .contains("unsupported critical header"),
        "{:?}",
        r.header("www-authenticate")
    );

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let ahead = |secs: u64| format!("iat={}", now + secs);
    // Within the 5 s clock skew: fine. A day ahead: refused.
    let skewed = rsa_token("u1", "agent", &["--claim", &ahead(3)]);
    assert_eq!(get(&gw.url("/any"), Some(&skewed)).await.status, 200);
    let future = rsa_token("u1", "agent", &["--claim", &ahead(86_400)]);
    let r = get(&gw.url("/any"), Some(&future)).await;
    assert_eq!(r.status, 401);
    assert!(r
        .header("www-authenticate")
        .unwrap_or_default()
        .contains("token issued in the future"));
}

#[tokio::test]
async fn a_roles_claim_of_the_wrong_shape_is_refused_not_guessed() {
    let echo = Echo::start();
    let gw = gateway(&echo);
    // `groups` is a roles claim of the default layout: an array of strings.
    let array = rsa_token("u1", "agent", &["--claim", r#"groups=["ops"]"#]);
    assert_eq!(get(&gw.url("/any"), Some(&array)).await.status, 200);
    for (claim, why) in [
        (r#"groups="admin""#, "roles claim is not an array"),
        (r#"groups=["ops",7]"#, "roles claim holds more than strings"),
        ("scope=5", "scope claim is neither a string nor an array"),
    ] {
        let t = rsa_token("u1", "agent", &["--claim", claim]);
        let r = get(&gw.url("/any"), Some(&t)).await;
        assert_eq!(r.status, 401, "{claim}");
        let challenge = r.header("www-authenticate").unwrap_or_default();
        assert!(challenge.contains(why), "{claim}: {challenge}");
    }
}

#[tokio::test]
async fn id_and_refresh_tokens_are_not_access_tokens() {
    let echo = Echo::start();
    let gw = gateway(&echo);
    let typed = |extra: &[&str]| mint("rsa-2.pem", "RS256", "rsa-2", "https://typed.test", extra);
    // RFC 9068 header and Keycloak's claim: an access token.
    let access = typed(&["--typ", "application/AT+JWT", "--claim", "typ=Bearer"]);
    assert_eq!(get(&gw.url("/any"), Some(&access)).await.status, 200);
    // Same audience, same keys, but an ID token, a refresh token, or an untyped JWT.
    for (what, token) in [
        ("id token", typed(&["--typ", "JWT", "--claim", "typ=ID"])),
        (
            "refresh token",
            typed(&["--typ", "at+jwt", "--claim", "typ=Refresh"]),
        ),
        ("no typ claim", typed(&["--typ", "at+jwt"])),
        (
            "header typ JWT",
            typed(&["--typ", "JWT", "--claim", "typ=Bearer"]),
        ),
    ] {
        let r = get(&gw.url("/any"), Some(&token)).await;
        assert_eq!(r.status, 401, "{what}");
        assert!(
            r.header("www-authenticate")
                .unwrap_or_default()
                .contains("not an access token"),
            "{what}: {:?}",
            r.header("www-authenticate")
        );
    }
}

#[tokio::test]
async fn an_issuer_may_say_its_roles_are_space_separated() {
    let echo = Echo::start();
    let gw = gateway(&echo);
    let spaced = |roles: &str| {
        let claim = format!("roles={roles}");
        mint(
            "rsa-2.pem",
            "RS256",
            "rsa-2",
            "https://spaced.test",
            &["--claim", &claim],
        )
    };
    let url = gw.url("/supervisors");
    assert_eq!(
        get(&url, Some(&spaced(r#""agent supervisor""#)))
            .await
            .status,
        200
    );
    assert_eq!(get(&url, Some(&spaced(r#""agent""#))).await.status, 403);
    // That issuer's roles are a string: an array is the wrong shape there.
    let r = get(&url, Some(&spaced(r#"["supervisor"]"#))).await;
    assert_eq!(r.status, 401);
    assert!(r
        .header("www-authenticate")
        .unwrap_or_default()
        .contains("roles claim is not a string"));
}

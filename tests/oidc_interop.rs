//! Interop with a real, certified OpenID provider (npm `oidc-provider`), through the gateway.

mod common;

use common::{get, Echo, Gateway, Provider};

const CLIENT: &str = Provider::CLIENT;
const API: &str = "https://api.portcullis.test";

#[tokio::test]
async fn tokens_from_a_real_provider_are_verified_through_discovery() {
    let idp = Provider::start();
    let issuer = &idp.issuer;
    let echo = Echo::start();
    let gw = Gateway::start(&format!(
        r#"
[issuers.provider]
issuer = "{issuer}"
audiences = ["{API}"]
algorithms = ["RS256", "PS256", "ES256"]
discovery = true

[upstreams.backend]
targets = ["127.0.0.1:{port}"]

# Client-credentials tokens have no user behind them: these routes are for services.
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

# A user-context route: the same roles, but only for tokens with a user behind them.
[[routes]]
path = "/profile"
upstream = "backend"
access = "authenticated"

[[routes.allow]]
roles = ["agent"]
"#,
        port = echo.port
    ));

    let token = idp.token(API, "agents:read").await;
    let header = jsonwebtoken::decode_header(&token).expect("JWT access token");
    assert_eq!(
        header.typ.as_deref(),
        Some("at+jwt"),
        "RFC 9068 access token expected"
    );

    let r = get(&gw.url("/agents"), Some(&token)).await;
    assert_eq!(r.status, 200, "{} / log: {}", r.body, gw.log());
    let seen = r.json();
    assert_eq!(seen["headers"]["x-user-id"], serde_json::json!([CLIENT]));
    assert_eq!(seen["headers"]["x-client-id"], serde_json::json!([CLIENT]));

    // The provider marks client-credentials tokens as RFC 9068 says (`sub` is the client), so
    // the gateway knows no user is behind it and keeps it off user routes, roles or not.
    let r = get(&gw.url("/profile"), Some(&token)).await;
    assert_eq!(r.status, 403, "{}", r.body);

    // Authenticated, but the token lacks the scope.
    assert_eq!(get(&gw.url("/reports"), Some(&token)).await.status, 403);
    let both = idp.token(API, "agents:read reports:read").await;
    assert_eq!(get(&gw.url("/reports"), Some(&both)).await.status, 200);

    // The same provider, the same signature, another audience.
    let other = idp
        .token("https://other.portcullis.test", "agents:read")
        .await;
    let r = get(&gw.url("/agents"), Some(&other)).await;
    assert_eq!(r.status, 401);
    assert!(r
        .header("www-authenticate")
        .unwrap_or_default()
        .contains("wrong audience"));
}

//! Routing and authorization through the running gateway, to a real upstream process.

mod common;

use common::{get, raw_get_status, rsa_token, send, Echo, Gateway};

fn gateway(echo: &Echo) -> Gateway {
    Gateway::start(&format!(
        r#"
[issuers.idp]
issuer = "https://idp.test"
audiences = ["api"]
jwks_file = "{{fixtures}}/rsa-1.jwks.json"

[issuers.idp.claims]
tenant = "agency_id"

[upstreams.backend]
targets = ["127.0.0.1:{port}"]

[[routes]]
name = "agents"
path = "/agents/{{id}}"
upstream = "backend"
access = "authenticated"

[[routes.allow]]
methods = ["GET"]
roles = ["agent", "supervisor", "admin"]

[[routes.allow]]
methods = ["POST", "PUT", "DELETE"]
roles = ["supervisor", "admin"]

[[routes]]
path = "/ccm/channels/service-identifier/{{id}}"
methods = ["GET"]
upstream = "backend"
access = "public"

[[routes]]
path_prefix = "/public/"
upstream = "backend"
access = "public"

[[routes]]
path = "/reports"
upstream = "backend"
access = "authenticated"

[[routes.allow]]
scopes = ["reports:read"]
"#,
        port = echo.port
    ))
}

const FORBIDDEN_BODY: &str = r#"{"error":"access_denied","error_description":"not_authorized"}"#;

#[tokio::test]
async fn role_by_method_table() {
    let echo = Echo::start();
    let gw = gateway(&echo);
    let url = gw.url("/agents/42");
    let agent = rsa_token("alice", "agent", &[]);

    let r = get(&url, Some(&agent)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["path"], "/agents/42");

    for method in ["POST", "PUT", "DELETE"] {
        let r = send(method, &url, Some(&agent), &[]).await;
        assert_eq!(r.status, 403, "agent {method}");
        assert_eq!(r.body, FORBIDDEN_BODY);
        assert_eq!(r.header("content-type"), Some("application/json"));
    }

    for role in ["supervisor", "admin"] {
        let t = rsa_token("bob", role, &[]);
        for method in ["GET", "POST", "PUT", "DELETE"] {
            let r = send(method, &url, Some(&t), &[]).await;
            assert_eq!(r.status, 200, "{role} {method}: {}", r.body);
            assert_eq!(r.json()["method"], method);
        }
    }

    let guest = rsa_token("eve", "guest", &[]);
    let r = get(&url, Some(&guest)).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.body, FORBIDDEN_BODY);

    // PATCH is covered by no rule: authenticated, but not allowed.
    let admin = rsa_token("root", "admin", &[]);
    assert_eq!(send("PATCH", &url, Some(&admin), &[]).await.status, 403);
}

#[tokio::test]
async fn missing_token_is_401_with_bearer_challenge() {
    let echo = Echo::start();
    let gw = gateway(&echo);
    let r = get(&gw.url("/agents/42"), None).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.body, "401 Authorization Required");
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer realm="portcullis""#)
    );

    let r = send(
        "GET",
        &gw.url("/agents/42"),
        None,
        &[("authorization", "Basic dXNlcjpwYXNz")],
    )
    .await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn public_templates_and_prefixes_match_and_near_misses_do_not() {
    let echo = Echo::start();
    let gw = gateway(&echo);
    for path in [
        "/ccm/channels/service-identifier/abc",
        "/public",
        "/public/",
        "/public/a/b",
    ] {
        let r = get(&gw.url(path), None).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        assert_eq!(r.json()["path"], path);
    }
    for path in [
        "/ccm/channels/service-identifier/",
        "/ccm/channels/service-identifier",
        "/ccm/channels/service-identifier/a/b",
        "/ccm/channels/other/abc",
        "/publicity",
        "/agents",
        "/",
    ] {
        let r = get(&gw.url(path), None).await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.json()["error"], "not_found");
    }
    // The templated public route is GET only.
    let r = send(
        "POST",
        &gw.url("/ccm/channels/service-identifier/abc"),
        None,
        &[],
    )
    .await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn encoded_paths_are_normalized_and_traversal_is_refused() {
    let echo = Echo::start();
    let gw = gateway(&echo);
    let r = get(
        &gw.url("/ccm/%63hannels/service-identifier/a%62c?x=1"),
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/ccm/channels/service-identifier/abc?x=1");

    for path in [
        "/public/../agents/1",
        "/public/%2e%2e/agents/1",
        "/public/%2E./agents/1",
        "/public/a%2fb",
        "/public//x",
        "/public/a\\b",
    ] {
        assert_eq!(raw_get_status(gw.port, path), 400, "{path}");
    }
}

#[tokio::test]
async fn spoofed_identity_headers_never_reach_the_upstream() {
    let echo = Echo::start();
    let gw = gateway(&echo);
    let forged = [
        ("x-user-id", "admin"),
        ("x-user-roles", "admin"),
        ("x-tenant-id", "other-agency"),
        ("x-client-id", "trusted-service"),
    ];

    // Public route: no identity at all may arrive.
    let r = send("GET", &gw.url("/public/x"), None, &forged).await;
    let headers = &r.json()["headers"];
    for (name, _) in forged {
        assert!(headers.get(name).is_none(), "{name} leaked: {headers}");
    }

    // Authenticated route: exactly the verified identity, once.
    let t = rsa_token(
        "alice",
        "agent,reader",
        &["--azp", "portal", "--claim", "agency_id=17"],
    );
    let r = send("GET", &gw.url("/agents/1"), Some(&t), &forged).await;
    assert_eq!(r.status, 200);
    let headers = &r.json()["headers"];
    assert_eq!(headers["x-user-id"], serde_json::json!(["alice"]));
    assert_eq!(headers["x-user-roles"], serde_json::json!(["agent,reader"]));
    assert_eq!(headers["x-tenant-id"], serde_json::json!(["17"]));
    assert_eq!(headers["x-client-id"], serde_json::json!(["portal"]));
}

#[tokio::test]
async fn hop_by_hop_headers_are_not_forwarded() {
    let echo = Echo::start();
    let gw = gateway(&echo);
    let r = send(
        "GET",
        &gw.url("/public/x"),
        None,
        &[
            ("connection", "keep-alive, x-private"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("x-kept", "1"),
        ],
    )
    .await;
    let headers = &r.json()["headers"];
    assert!(headers.get("x-private").is_none(), "{headers}");
    assert!(headers.get("keep-alive").is_none(), "{headers}");
    assert_eq!(headers["x-kept"], serde_json::json!(["1"]));
}

#[tokio::test]
async fn scopes_are_enforced() {
    let echo = Echo::start();
    let gw = gateway(&echo);
    let with = rsa_token("svc", "", &["--scope", "openid reports:read"]);
    let without = rsa_token("svc", "", &["--scope", "openid"]);
    assert_eq!(get(&gw.url("/reports"), Some(&with)).await.status, 200);
    assert_eq!(get(&gw.url("/reports"), Some(&without)).await.status, 403);
}

#[tokio::test]
async fn every_request_carries_one_request_id_and_trace_context_passes() {
    let echo = Echo::start();
    let gw = gateway(&echo);
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = send(
        "GET",
        &gw.url("/public/x"),
        None,
        &[("traceparent", traceparent)],
    )
    .await;
    assert_eq!(r.status, 200);
    let id = r.header("x-request-id").expect("X-Request-Id").to_string();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    let seen = r.json();
    assert_eq!(seen["headers"]["x-request-id"], serde_json::json!([id]));
    assert_eq!(
        seen["headers"]["traceparent"],
        serde_json::json!([traceparent])
    );

    // A caller's own id is kept; the gateway's denials carry it too.
    let r = send(
        "GET",
        &gw.url("/agents/1"),
        None,
        &[("x-request-id", "caller-42")],
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("x-request-id"), Some("caller-42"));
    let other = get(&gw.url("/public/x"), None).await;
    assert_ne!(other.header("x-request-id"), Some(id.as_str()));
}

#[tokio::test]
async fn edge_limits_and_what_a_route_changes_on_the_way() {
    let echo = Echo::start();
    let gw = Gateway::start_with(
        "max_uri_length = 2048\nmax_headers = 30\nmax_header_bytes = 8192",
        &format!(
            r#"
[upstreams.backend]
targets = ["127.0.0.1:{port}"]

[[routes]]
path_prefix = "/api/agents"
upstream = "backend"
access = "public"
strip_prefix = "/api"

[routes.request_headers]
set = {{ "X-Api-Version" = "2" }}
remove = ["X-Debug"]

[routes.response_headers]
set = {{ "X-Frame-Options" = "DENY" }}
remove = ["Server"]

[[routes]]
path_prefix = "/agencies/{{agency}}/reports"
upstream = "backend"
access = "public"
rewrite = "/v2/reports/{{agency}}"
"#,
            port = echo.port
        ),
        &[],
    );

    // The path sent upstream, the query kept; request and response header edits.
    let r = send(
        "GET",
        &gw.url("/api/agents/7?x=1"),
        None,
        &[("x-debug", "1"), ("x-api-version", "1")],
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = r.json();
    assert_eq!(seen["path"], "/agents/7?x=1");
    assert_eq!(seen["headers"]["x-api-version"], serde_json::json!(["2"]));
    assert!(seen["headers"].get("x-debug").is_none(), "{seen}");
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert!(r.header("server").is_none(), "{:?}", r.headers);
    let seen = get(&gw.url("/agencies/north/reports/2026?q=1"), None)
        .await
        .json();
    assert_eq!(seen["path"], "/v2/reports/north/2026?q=1");

    // 414 for a long target, 431 for too many or too large headers; the limits are the
    // config's, below Pingora's own.
    let long = format!("/api/agents/{}", "a".repeat(2100));
    let r = get(&gw.url(&long), None).await;
    assert_eq!(r.status, 414);
    assert_eq!(r.json()["error"], "uri_too_long");
    let many: Vec<(String, String)> = (0..31).map(|i| (format!("x-h{i}"), "v".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let r = send("GET", &gw.url("/api/agents/1"), None, &many).await;
    assert_eq!(r.status, 431);
    assert_eq!(r.json()["error"], "request_header_fields_too_large");
    let big = "v".repeat(9000);
    let r = send("GET", &gw.url("/api/agents/1"), None, &[("x-big", &big)]).await;
    assert_eq!(r.status, 431);
    let within = "v".repeat(6000);
    let r = send("GET", &gw.url("/api/agents/1"), None, &[("x-big", &within)]).await;
    assert_eq!(r.status, 200);

    // `explain` says which path the upstream would get.
    let out = std::process::Command::new(common::BIN)
        .args(["explain", "-c"])
        .arg(&gw.conf)
        .args(["GET", "/agencies/north/reports/2026?q=1"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.contains("upstream:  backend, path /v2/reports/north/2026"),
        "{out}"
    );
}

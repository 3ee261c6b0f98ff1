//! CORS through the running gateway: preflights answered at the edge, the CORS headers on
//! the upstream's answers and on the gateway's own refusals, and a real browser calling the
//! API from a page on another origin.

mod common;

use std::process::Command;

use common::{rsa_token, send, Echo, FileServer, Gateway};

fn gateway(echo: &Echo, page_origin: &str) -> Gateway {
    Gateway::start(&format!(
        r#"
[issuers.idp]
issuer = "https://idp.test"
audiences = ["api"]
jwks_file = "{{fixtures}}/rsa-1.jwks.json"

[upstreams.backend]
targets = ["127.0.0.1:{port}"]

[[routes]]
path = "/api/agents"
methods = ["GET", "POST"]
upstream = "backend"
access = "authenticated"

[routes.cors]
allow_origins = ["{page_origin}", "https://*.portal.test"]
allow_headers = ["authorization", "content-type", "x-trace"]
allow_credentials = true
max_age = "1h"

[[routes]]
path = "/api/open"
upstream = "backend"
access = "public"

[routes.cors]
allow_origins = ["*"]

[[routes]]
path = "/api/private"
upstream = "backend"
access = "authenticated"

[[routes]]
path = "/api/get-only"
methods = ["GET"]
upstream = "backend"
access = "public"
"#,
        port = echo.port
    ))
}

#[tokio::test]
async fn preflights_are_answered_at_the_edge_without_a_token() {
    let echo = Echo::start();
    let gw = gateway(&echo, "https://desk.example.com");
    let url = gw.url("/api/agents");
    let preflight = |origin: &'static str, method: &'static str, headers: &'static str| {
        let url = url.clone();
        async move {
            let mut h = vec![
                ("origin", origin),
                ("access-control-request-method", method),
            ];
            if !headers.is_empty() {
                h.push(("access-control-request-headers", headers));
            }
            send("OPTIONS", &url, None, &h).await
        }
    };

    let r = preflight(
        "https://desk.example.com",
        "POST",
        "Authorization,Content-Type",
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://desk.example.com")
    );
    assert_eq!(r.header("access-control-allow-methods"), Some("GET, POST"));
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("authorization, content-type")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(r.header("access-control-max-age"), Some("3600"));
    assert_eq!(r.header("vary"), Some("Origin"));
    assert_eq!(r.header("content-length"), None, "a 204 has no body");
    assert!(r.body.is_empty());

    // A subdomain of the pattern is allowed; the pattern's domain itself and look-alikes are not.
    let r = preflight("https://eu.portal.test", "GET", "").await;
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://eu.portal.test")
    );
    for origin in [
        "https://portal.test",
        "https://desk.example.com.evil.test",
        "null",
    ] {
        let r = preflight(origin, "GET", "").await;
        assert_eq!(r.status, 403, "{origin}");
        assert_eq!(r.json()["error"], "cors_refused");
        assert_eq!(r.header("access-control-allow-origin"), None, "{origin}");
    }
    // A method the route does not take, a header not allowed.
    let r = preflight("https://desk.example.com", "DELETE", "").await;
    assert_eq!(r.status, 404, "DELETE is no route here: {}", r.body);
    let r = preflight("https://desk.example.com", "GET", "x-secret").await;
    assert_eq!(r.status, 403);

    // Without CORS on the route, OPTIONS is an ordinary request: it needs a token.
    let r = send(
        "OPTIONS",
        &gw.url("/api/private"),
        None,
        &[
            ("origin", "https://desk.example.com"),
            ("access-control-request-method", "GET"),
        ],
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("access-control-allow-origin"), None);
    // A preflight does not open a route to a method it does not take.
    let r = send(
        "OPTIONS",
        &gw.url("/api/get-only"),
        None,
        &[
            ("origin", "https://desk.example.com"),
            ("access-control-request-method", "GET"),
        ],
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.body);
}

#[tokio::test]
async fn answers_and_refusals_carry_the_cors_headers() {
    let echo = Echo::start();
    let gw = gateway(&echo, "https://desk.example.com");
    let url = gw.url("/api/agents");
    let token = rsa_token("alice", "agent", &[]);
    let origin = ("origin", "https://desk.example.com");

    let r = send("GET", &url, Some(&token), &[origin]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://desk.example.com")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    let exposed = r.header("access-control-expose-headers").expect("expose");
    assert!(exposed.contains("www-authenticate") && exposed.contains("x-request-id"));
    // The upstream's Vary is kept, the gateway's added.
    let vary: Vec<&str> = r
        .headers
        .get_all("vary")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    assert!(vary.contains(&"Origin"), "{vary:?}");

    // The gateway's own 401 is readable by the page.
    let r = send("GET", &url, Some("not-a-token"), &[origin]).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://desk.example.com")
    );
    assert!(r.header("www-authenticate").is_some());

    // Another origin gets the answer, without the headers that would let its page read it.
    let r = send(
        "GET",
        &url,
        Some(&token),
        &[("origin", "https://evil.test")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert_eq!(r.header("vary"), Some("Origin"));

    // Any origin, no credentials: a plain star.
    let r = send(
        "GET",
        &gw.url("/api/open"),
        None,
        &[("origin", "https://x.test")],
    )
    .await;
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(r.header("access-control-allow-credentials"), None);
}

/// The page's script calls the API on the gateway's origin and writes what it saw into the
/// document, which headless Chromium prints.
const PAGE: &str = r#"<!doctype html>
<html><body><pre id="out">pending</pre><script>
const api = "http://127.0.0.1:GATEWAY";
async function call(path, init) {
  try {
    const r = await fetch(api + path, init);
    return { status: r.status, request_id: r.headers.get("x-request-id"),
             www: r.headers.get("www-authenticate"), body: await r.text() };
  } catch (e) { return { blocked: String(e) }; }
}
(async () => {
  const out = {};
  out.preflighted = await call("/api/agents", { method: "POST",
    headers: { "Authorization": "Bearer TOKEN", "Content-Type": "application/json" },
    body: "{}" });
  out.credentialed = await call("/api/agents", { credentials: "include",
    headers: { "Authorization": "Bearer TOKEN" } });
  out.refused = await call("/api/agents", { headers: { "Authorization": "Bearer nope" } });
  out.no_cors = await call("/api/private", { headers: { "Authorization": "Bearer TOKEN" } });
  out.header_not_allowed = await call("/api/agents", {
    headers: { "Authorization": "Bearer TOKEN", "X-Secret": "1" } });
  document.getElementById("out").textContent = JSON.stringify(out);
})();
</script></body></html>"#;

fn chromium_dump(url: &str) -> String {
    let profile = tempfile::tempdir().expect("profile");
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=20000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .output()
        .expect("chromium is needed for the browser tests (Debian package chromium)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn a_page_on_another_origin_calls_the_api_in_chromium() {
    let echo = Echo::start();
    let pages = FileServer::start();
    let page_origin = format!("http://127.0.0.1:{}", pages.port);
    let gw = gateway(&echo, &page_origin);
    // The supervisor may POST; the token sits in the page as an SPA would hold it.
    let token = rsa_token("bob", "agent", &[]);
    pages.put(
        "app.html",
        &PAGE
            .replace("GATEWAY", &gw.port.to_string())
            .replace("TOKEN", &token),
    );

    let dom = tokio::task::spawn_blocking({
        let url = pages.url("/app.html");
        move || chromium_dump(&url)
    })
    .await
    .expect("chromium");
    let json = dom
        .split("<pre id=\"out\">")
        .nth(1)
        .and_then(|s| s.split("</pre>").next())
        .unwrap_or_else(|| panic!("no result in the page: {dom}"));
    let json = json.replace("&quot;", "\"").replace("&amp;", "&");
    let out: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));

    // After a preflight, the POST reached the backend and the page read its answer.
    let pre = &out["preflighted"];
    assert_eq!(pre["status"], 200, "{out}");
    // A header the gateway exposes is readable; the rest of the answer too.
    assert!(
        pre["request_id"].as_str().is_some_and(|id| !id.is_empty()),
        "{out}"
    );
    let echoed: serde_json::Value = serde_json::from_str(pre["body"].as_str().unwrap()).unwrap();
    assert_eq!(echoed["method"], "POST");
    assert_eq!(out["credentialed"]["status"], 200, "{out}");
    // The gateway's 401, with its challenge, is readable by the script.
    assert_eq!(out["refused"]["status"], 401, "{out}");
    assert!(out["refused"]["www"]
        .as_str()
        .unwrap()
        .starts_with("Bearer"));
    // Without CORS on the route, or with a header it does not allow, the browser blocks it.
    assert!(out["no_cors"]["blocked"].is_string(), "{out}");
    assert!(out["header_not_allowed"]["blocked"].is_string(), "{out}");
}

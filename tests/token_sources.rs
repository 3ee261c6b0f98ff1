//! Where a route's token may be (`token_from`): the bearer header, another header, a cookie,
//! the query; tried in order, never logged, the query's token kept from the upstream, and a
//! cookie's token refused on cross-site requests that change something.

mod common;

use std::path::Path;
use std::process::Command;

use common::{json_lines, send, signed_with, Echo, Gateway, BIN};

/// A gateway whose access and audit logs are files in `logs`.
fn start(echo: &Echo, logs: &Path) -> Gateway {
    Gateway::start(&format!(
        r#"
[logging]
access_log = "{access}"
audit_log = "{audit}"

[issuers.idp]
issuer = "https://idp.test"
audiences = ["api"]
jwks_file = "{{fixtures}}/rsa-1.jwks.json"

[upstreams.backend]
targets = ["127.0.0.1:{port}"]

[[routes]]
path_prefix = "/app"
upstream = "backend"
access = "authenticated"
token_from = ["header", "header:X-Api-Token", "cookie:at", "query:access_token"]

[[routes]]
path_prefix = "/api"
upstream = "backend"
access = "authenticated"
"#,
        access = logs.join("access.log").display(),
        audit = logs.join("audit.log").display(),
        port = echo.port
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_found_where_the_route_says_and_never_logged() {
    let echo = Echo::start();
    let logs = tempfile::tempdir().expect("tempdir");
    let gw = start(&echo, logs.path());
    let token = signed_with("rsa-1", "rsa-1", "https://idp.test", &[]);
    let url = gw.url("/app/orders?page=2");
    let cookie = format!("theme=dark; at={token}");

    let bearer = format!("Bearer {token}");
    for (name, value) in [
        ("authorization", bearer.as_str()),
        ("x-api-token", token.as_str()),
        ("x-api-token", bearer.as_str()),
        ("cookie", cookie.as_str()),
    ] {
        let r = send("GET", &url, None, &[(name, value)]).await;
        assert_eq!(r.status, 200, "{name}: {}", r.body);
        assert_eq!(r.json()["headers"]["x-user-id"][0], "u1", "{name}");
    }
    // From the query: the upstream gets the rest of the query, not the token.
    let r = send(
        "GET",
        &gw.url(&format!("/app/orders?page=2&access_token={token}&sort=asc")),
        None,
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["path"], "/app/orders?page=2&sort=asc");

    // Nothing, an empty or a doubled cookie: 401.
    assert_eq!(send("GET", &url, None, &[]).await.status, 401);
    let doubled = format!("at={token}; at={token}");
    assert_eq!(
        send("GET", &url, None, &[("cookie", &doubled)])
            .await
            .status,
        401
    );
    assert_eq!(
        send("GET", &url, None, &[("cookie", "at=")]).await.status,
        401
    );
    // The route without token_from reads the bearer header only.
    let r = send("GET", &gw.url("/api/x"), None, &[("cookie", &cookie)]).await;
    assert_eq!(r.status, 401);

    // `explain` reads the token where the route says.
    let explained = Command::new(BIN)
        .args([
            "explain",
            "-c",
            gw.conf.to_str().expect("path"),
            "--json",
            "-H",
        ])
        .arg(format!("Cookie: {cookie}"))
        .args(["GET", "/app/orders"])
        .output()
        .expect("explain");
    let answer: serde_json::Value =
        serde_json::from_slice(&explained.stdout).expect("explain JSON");
    assert_eq!(answer["token"]["accepted"], true, "{answer}");
    assert_eq!(answer["token"]["subject"], "u1", "{answer}");

    let dir = logs.path();
    let logged = format!(
        "{}{}{}",
        std::fs::read_to_string(dir.join("access.log")).unwrap_or_default(),
        std::fs::read_to_string(dir.join("audit.log")).unwrap_or_default(),
        gw.log()
    );
    assert!(!json_lines(&dir.join("audit.log")).is_empty());
    assert!(
        !logged.contains(&token[token.len() - 30..]),
        "a token was logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_token_does_not_let_another_site_change_anything() {
    let echo = Echo::start();
    let logs = tempfile::tempdir().expect("tempdir");
    let gw = start(&echo, logs.path());
    let token = signed_with("rsa-1", "rsa-1", "https://idp.test", &[]);
    let url = gw.url("/app/orders");
    let cookie = format!("at={token}");
    let host = format!("127.0.0.1:{}", gw.port);
    let same_origin = format!("http://{host}");

    let post = |headers: Vec<(&'static str, String)>| {
        let url = url.clone();
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            send("POST", &url, None, &h).await
        }
    };
    // A page of another site posts: the browser adds the cookie, and says where it is from.
    let r = post(vec![
        ("cookie", cookie.clone()),
        ("sec-fetch-site", "cross-site".into()),
        ("origin", "https://evil.test".into()),
    ])
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = post(vec![
        ("cookie", cookie.clone()),
        ("origin", "https://evil.test".into()),
    ])
    .await;
    assert_eq!(r.status, 403, "an older browser, Origin only");
    // The gateway's own pages, and programs that are no browser, may.
    let r = post(vec![
        ("cookie", cookie.clone()),
        ("sec-fetch-site", "same-origin".into()),
    ])
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = post(vec![("cookie", cookie.clone()), ("origin", same_origin)]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(post(vec![("cookie", cookie.clone())]).await.status, 200);
    // A cross-site read is no change; a header's token cannot be sent by another site.
    let r = send(
        "GET",
        &url,
        None,
        &[("cookie", &cookie), ("sec-fetch-site", "cross-site")],
    )
    .await;
    assert_eq!(r.status, 200);
    let r = post(vec![
        ("x-api-token", token.clone()),
        ("sec-fetch-site", "cross-site".into()),
    ])
    .await;
    assert_eq!(r.status, 200);

    let audit = json_lines(&logs.path().join("audit.log"));
    assert!(
        audit.iter().any(|l| l["reason"] == "cross_site_request"),
        "{audit:?}"
    );
}

#[test]
fn token_from_is_checked_with_the_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("gateway.toml");
    let write = |route: &str| {
        std::fs::write(
            &conf,
            format!(
                "[server]\nlisten = [\"127.0.0.1:1\"]\n\n[issuers.idp]\nissuer = \"https://i\"\n\
                 audiences = [\"api\"]\ndiscovery = true\n\n[upstreams.a]\ntargets = [\"127.0.0.1:9\"]\n\n\
                 [[routes]]\npath = \"/\"\nupstream = \"a\"\n{route}\n"
            ),
        )
        .expect("write");
        let o = Command::new(BIN)
            .args(["check", "-c", conf.to_str().expect("path")])
            .output()
            .expect("check");
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    let (ok, err) = write("access = \"public\"\ntoken_from = [\"cookie:at\"]");
    assert!(!ok && err.contains("routes[0].token_from"), "{err}");
    let (ok, err) = write("access = \"authenticated\"\ntoken_from = [\"cookie\"]");
    assert!(!ok && err.contains("cookie needs a name"), "{err}");
    let (ok, err) = write("access = \"authenticated\"\ntoken_from = [\"subprotocol\"]");
    assert!(!ok && err.contains("[routes.websocket]"), "{err}");
    let (ok, err) = write("access = \"authenticated\"\ntoken_from = [\"cookie:at\", \"query\"]");
    assert!(ok, "{err}");
}

//! `portcullis import apisix` on Apache APISIX's own documented examples
//! (tests/fixtures/apisix/), the results checked by `portcullis check`, and an imported
//! config serving through the running gateway.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{fixture, get, send, Echo, Gateway, BIN};

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run portcullis")
}

/// Imports `file`; the config written, and what was reported as not translated.
fn import(file: &Path, dir: &Path) -> (String, String) {
    let out = dir.join("imported.toml");
    let o = run(&[
        "import",
        "apisix",
        file.to_str().expect("path"),
        "-o",
        out.to_str().expect("path"),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "import failed: {stderr}");
    let check = run(&["check", "--skip-dns", "-c", out.to_str().expect("path")]);
    assert!(
        check.status.success(),
        "the imported config does not pass check: {}\n{}",
        String::from_utf8_lossy(&check.stderr),
        std::fs::read_to_string(&out).unwrap_or_default()
    );
    (std::fs::read_to_string(&out).expect("imported"), stderr)
}

fn route<'a>(config: &'a toml::Table, name: &str) -> &'a toml::Table {
    config["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .filter_map(|r| r.as_table())
        .find(|r| r.get("name").and_then(|n| n.as_str()) == Some(name))
        .unwrap_or_else(|| panic!("no route {name}"))
}

const SECRETS: &[&str] = &[
    "jack-hs256-secret-that-is-very-long",
    "your-client-secret",
    "your-session-secret",
    "quickstart-client-secret-from-keycloak",
    "p@ssw0rd",
];

#[test]
fn the_documented_adc_examples_translate_into_a_config_that_passes_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (text, reported) = import(&fixture("apisix/adc.yaml"), dir.path());
    let c: toml::Table = toml::from_str(&text).expect("TOML");

    // openid-connect: the provider from discovery, `/api/v1/*` as a prefix.
    let oidc = route(&c, "openid-connect-route");
    assert_eq!(oidc["path_prefix"].as_str(), Some("/api/v1"));
    assert_eq!(oidc["access"].as_str(), Some("authenticated"));
    let issuer = oidc["issuers"][0].as_str().expect("issuer");
    assert_eq!(
        c["issuers"][issuer]["issuer"].as_str(),
        Some("http://keycloak:8080/realms/master")
    );
    assert_eq!(
        c["issuers"][issuer]["audiences"][0].as_str(),
        Some("apisix")
    );
    assert!(reported.contains("browser login"), "{reported}");

    // jwt-auth: authenticated, against a placeholder issuer said to be one.
    assert_eq!(
        route(&c, "jwt-route")["access"].as_str(),
        Some("authenticated")
    );
    assert!(reported.contains("jwt-auth consumers"), "{reported}");
    assert!(text.contains("consumer \"jack\": key \"jack-key\", HS256"));

    // authz-keycloak: the realm's issuer; its permissions are reported.
    let authz = route(&c, "authz-keycloak-route");
    assert_eq!(authz["issuers"][0].as_str(), Some("quickstart-realm"));
    assert!(reported.contains("Authorization Services"), "{reported}");

    // limit-count: 1 per 30 s per client address, on that route only.
    let limited = route(&c, "limit-count-route");
    assert_eq!(limited["access"].as_str(), Some("public"));
    let group = limited["limit_group"].as_str().expect("group");
    let tier = &c["rate_limit"]["tiers"][0];
    assert_eq!(tier["callers"].as_str(), Some("anonymous"));
    assert_eq!(tier["consumer"].as_str(), Some("client_ip"));
    assert_eq!(tier["group_limits"][group][0].as_str(), Some("1/30s"));

    // cors-route matches what authz-keycloak-route does: kept as a comment, and said.
    assert!(reported.contains("route cors-route: matches the same requests"));
    assert!(text.contains("# allow_origins = [\"http://sub.domain.com\""));

    // Every upstream node, with its port.
    let upstream = authz["upstream"].as_str().expect("upstream");
    assert_eq!(
        c["upstreams"][upstream]["targets"][0].as_str(),
        Some("httpbin.org:80")
    );
    for secret in SECRETS {
        assert!(!text.contains(secret), "{secret} copied");
    }
}

#[test]
fn an_admin_api_export_with_services_and_consumers_translates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (text, reported) = import(&fixture("apisix/admin-export.json"), dir.path());
    let c: toml::Table = toml::from_str(&text).expect("TOML");
    // Routes of a service take its upstream and its limit-count (group srv1), and
    // proxy-rewrite's uri.
    for name in ["limit-count-route-1", "limit-count-route-2-2"] {
        let r = route(&c, name);
        assert_eq!(r["limit_group"].as_str(), Some("srv1"), "{name}");
        assert_eq!(r["rewrite"].as_str(), Some("/get"), "{name}");
    }
    assert_eq!(
        route(&c, "limit-count-route-1")["path"].as_str(),
        Some("/get1")
    );
    // jwt-auth's token places, as APISIX reads them.
    let jwt = route(&c, "jwt-route");
    let sources: Vec<&str> = jwt["token_from"]
        .as_array()
        .expect("token_from")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(
        sources,
        [
            "header:jwt-auth-header",
            "query:jwt-query",
            "cookie:jwt-cookie"
        ]
    );
    // key-auth, regex origins and the RS256 consumer are reported.
    for said in [
        "key-auth",
        "allow_origins_by_regex",
        "consumer \"cred-jack-jwt-auth-2\": key \"jack-key\", RS256",
    ] {
        assert!(reported.contains(said), "{said:?} not reported: {reported}");
    }
    for secret in SECRETS {
        assert!(!text.contains(secret), "{secret} copied");
    }
}

#[test]
fn one_route_object_translates_with_its_cors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (text, _) = import(&fixture("apisix/route.json"), dir.path());
    let c: toml::Table = toml::from_str(&text).expect("TOML");
    let cors = &route(&c, "cors-route")["cors"];
    assert_eq!(
        cors["allow_origins"].as_array().map(Vec::len),
        Some(2),
        "{cors:?}"
    );
    assert_eq!(cors["allow_methods"][1].as_str(), Some("POST"));
    assert_eq!(cors["allow_credentials"].as_bool(), Some(true));
    assert_eq!(cors["max_age"].as_str(), Some("50s"));
}

#[test]
fn bad_input_is_a_clear_error_and_check_resolves_names_unless_told_not_to() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("apisix.yaml");
    std::fs::write(&bad, "routes:\n  - uri: /a\n    upstream: {nodes: [\n").expect("write");
    let o = run(&["import", "apisix", bad.to_str().expect("path")]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr.contains("apisix.yaml") && stderr.contains("line"),
        "{stderr}"
    );

    let conf = dir.path().join("gateway.toml");
    std::fs::write(
        &conf,
        "[server]\nlisten = [\"127.0.0.1:1\"]\n[upstreams.a]\ntargets = [\"no-such-host.invalid:80\"]\n\
         [[routes]]\npath = \"/\"\nupstream = \"a\"\naccess = \"public\"\n",
    )
    .expect("write");
    let path = conf.to_str().expect("path");
    let o = run(&["check", "-c", path]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot resolve"));
    assert!(run(&["check", "--skip-dns", "-c", path]).status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_route_serves_with_its_limit_and_cors() {
    let echo = Echo::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let apisix = dir.path().join("route.json");
    std::fs::write(
        &apisix,
        format!(
            r#"{{
  "id": "orders",
  "uri": "/orders/*",
  "methods": ["GET", "POST"],
  "plugins": {{
    "limit-count": {{"count": 2, "time_window": 60, "key_type": "var", "key": "remote_addr"}},
    "cors": {{"allow_origins": "https://app.example.com", "allow_methods": "GET,POST"}}
  }},
  "upstream": {{"type": "roundrobin", "nodes": {{"127.0.0.1:{}": 1}}}}
}}"#,
            echo.port
        ),
    )
    .expect("write");
    let (text, _) = import(&apisix, dir.path());
    // The test harness writes its own [server] table.
    let body: String = text
        .split("\n\n")
        .filter(|block| !block.contains("[server]"))
        .collect::<Vec<_>>()
        .join("\n\n");
    let gw = Gateway::start(&body);
    for _ in 0..2 {
        let r = get(&gw.url("/orders/7"), None).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["path"], "/orders/7");
    }
    assert_eq!(get(&gw.url("/orders/7"), None).await.status, 429);
    assert_eq!(get(&gw.url("/other"), None).await.status, 404);
    let preflight = send(
        "OPTIONS",
        &gw.url("/orders/7"),
        None,
        &[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "POST"),
        ],
    )
    .await;
    assert_eq!(preflight.status, 204);
    assert_eq!(
        preflight.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
}

//! Richer policy through the running gateway: conditions on clients, claims, tenants, the
//! caller kind and the network; deny rules; shadow mode; an external decision point (a real
//! HTTP server) in the ext_authz and OPA shapes.

mod common;

use std::time::{Duration, Instant};

use common::{get, json_lines, raw_get_status, rsa_token, send, Authz, Echo, Gateway};

const ISSUER: &str = r#"
[issuers.idp]
issuer = "https://idp.test"
audiences = ["api"]
jwks_file = "{fixtures}/rsa-1.jwks.json"

[issuers.idp.claims]
tenant = "agency_id"
"#;

fn gateway(echo: &Echo, authz: &Authz, audit: &std::path::Path) -> Gateway {
    gateway_with(echo, authz, audit, "")
}

/// The test config, with `extra` at its end.
fn gateway_with(echo: &Echo, authz: &Authz, audit: &std::path::Path, extra: &str) -> Gateway {
    Gateway::start(&format!(
        r#"
[logging]
audit_log = "{audit}"
{ISSUER}
[upstreams.backend]
targets = ["127.0.0.1:{echo}"]

# Supervisors of the portal and mobile apps, and verified partners, read their own agency.
[[routes]]
name = "reports"
path = "/agencies/{{agency}}/reports"
upstream = "backend"
access = "authenticated"
[[routes.allow]]
methods = ["GET"]
roles = ["supervisor"]
clients = ["portal", "mobile"]
match = {{ agency = "claim:agency_id" }}
[[routes.allow]]
methods = ["GET"]
claims = {{ agency_type = "partner", email_verified = true, amr = {{ contains = "mfa" }} }}
match = {{ agency = "claim:agency_id" }}

# Users of the apps register; service tokens only from the local network.
[[routes]]
name = "register"
path = "/register"
upstream = "backend"
access = "authenticated"
callers = "any"
[[routes.allow]]
caller = "users"
clients = ["portal", "mobile"]
[[routes.allow]]
caller = "services"
from = ["127.0.0.0/8"]

[[routes]]
name = "tenant-header"
path = "/data"
upstream = "backend"
access = "authenticated"
[[routes.allow]]
match = {{ "header:X-Agency" = "claim:agency_id" }}

# Never a DELETE from outside the office network (not this one); PUT never from here.
[[routes]]
name = "bulk"
path = "/agents/bulk"
upstream = "backend"
access = "authenticated"
[[routes.allow]]
roles = ["admin"]
[[routes.deny]]
methods = ["DELETE"]
not_from = ["10.0.0.0/8"]
[[routes.deny]]
methods = ["PUT"]
from = ["127.0.0.1"]

[[routes]]
name = "status"
path = "/status"
upstream = "backend"
access = "public"
[[routes.deny]]
methods = ["POST"]
from = ["127.0.0.0/8"]

[[routes]]
name = "legacy"
path_prefix = "/legacy"
upstream = "backend"
access = "authenticated"
enforce = false
[[routes.allow]]
roles = ["admin"]

[[routes]]
name = "ext"
path_prefix = "/ext"
upstream = "backend"
access = "authenticated"
[routes.ext_authz]
kind = "http"
url = "http://127.0.0.1:{authz}/check"
timeout = "500ms"
send_headers = ["x-test-decision"]
upstream_headers = ["x-authz-tenant"]
cache_ttl = "30s"

[[routes]]
name = "ext-open"
path_prefix = "/open"
upstream = "backend"
access = "authenticated"
[routes.ext_authz]
kind = "http"
url = "http://127.0.0.1:{authz}/check"
timeout = "500ms"
send_headers = ["x-test-decision"]
cache_ttl = "0s"
on_error = "allow"

[[routes]]
name = "flight"
path = "/flight"
respond = {{ body = "in" }}
access = "authenticated"
[routes.ext_authz]
kind = "http"
url = "http://127.0.0.1:{authz}/check"
send_headers = ["x-test-decision"]

[[routes]]
name = "opa"
path_prefix = "/opa"
upstream = "backend"
access = "authenticated"
[routes.ext_authz]
kind = "opa"
url = "http://127.0.0.1:{authz}/v1/data/portcullis/allow"
upstream_headers = ["x-opa"]
cache_ttl = "0s"
{extra}"#,
        audit = audit.display(),
        echo = echo.port,
        authz = authz.port,
    ))
}

fn supervisor(agency: &str, client: &str) -> String {
    rsa_token(
        "sup-1",
        "supervisor",
        &["--azp", client, "--claim", &format!("agency_id={agency}")],
    )
}

#[tokio::test]
async fn conditions_on_clients_claims_tenants_callers_and_networks() {
    let (echo, authz) = (Echo::start(), Authz::start());
    let logs = tempfile::tempdir().unwrap();
    let gw = gateway(&echo, &authz, &logs.path().join("audit.log"));
    let status = |path: &str, token: String| {
        let url = gw.url(path);
        async move { get(&url, Some(&token)).await.status }
    };

    // Clients: the role is not enough from another app.
    assert_eq!(
        status("/agencies/north/reports", supervisor("north", "portal")).await,
        200
    );
    assert_eq!(
        status("/agencies/north/reports", supervisor("north", "mobile")).await,
        200
    );
    assert_eq!(
        status("/agencies/north/reports", supervisor("north", "cli")).await,
        403
    );

    // Tenant isolation: another agency, another case, encodings that would reach another one.
    let north = supervisor("north", "portal");
    assert_eq!(status("/agencies/south/reports", north.clone()).await, 403);
    assert_eq!(status("/agencies/North/reports", north.clone()).await, 403);
    assert_eq!(status("/agencies/north/reports/", north.clone()).await, 404);
    // An encoded unreserved character is the same agency, decoded as the backend will.
    assert_eq!(
        status("/agencies/%6Eorth/reports", north.clone()).await,
        200
    );
    for path in [
        "/agencies/north%2F..%2Fsouth/reports",
        "/agencies/north/..%2Fsouth/reports",
        "/agencies/north/../south/reports",
    ] {
        let s = raw_get_status(gw.port, path);
        assert!(s == 400 || s == 404, "{path}: {s}");
    }
    // A tenant claim with a space, written encoded in the path.
    let spaced = supervisor("north east", "portal");
    assert_eq!(status("/agencies/north%20east/reports", spaced).await, 200);

    // Claims: a partner with a verified email and MFA, and each condition missing.
    let partner = |extra: &[&str]| {
        let mut args = vec!["--claim", "agency_id=north", "--azp", "partner-app"];
        args.extend_from_slice(extra);
        rsa_token("p-1", "", &args)
    };
    let full = [
        "--claim",
        "agency_type=partner",
        "--claim",
        "email_verified=true",
        "--claim",
        r#"amr=["pwd","mfa"]"#,
    ];
    assert_eq!(status("/agencies/north/reports", partner(&full)).await, 200);
    assert_eq!(status("/agencies/south/reports", partner(&full)).await, 403);
    // Each condition missing in turn: the MFA, the verified email (false, or a string), the
    // agency type.
    for (i, changed) in [
        (5, r#"amr=["pwd"]"#),
        (3, "email_verified=false"),
        (3, r#"email_verified="true""#),
        (1, "agency_type=internal"),
    ] {
        let mut claims = full;
        claims[i] = changed;
        let s = status("/agencies/north/reports", partner(&claims)).await;
        assert_eq!(s, 403, "{changed}");
    }

    // The caller kind: a user of the portal, a service token (sub = azp) from 127.0.0.1.
    let user = rsa_token("u-1", "", &["--azp", "portal"]);
    let cli_user = rsa_token("u-1", "", &["--azp", "cli"]);
    let service = rsa_token("batch", "", &["--azp", "batch"]);
    assert_eq!(status("/register", user).await, 200);
    assert_eq!(status("/register", cli_user).await, 403);
    assert_eq!(status("/register", service).await, 200);

    // A header equal to the tenant claim.
    let url = gw.url("/data");
    let h = |agency: &'static str| [("x-agency", agency)];
    assert_eq!(
        send("GET", &url, Some(&north), &h("north")).await.status,
        200
    );
    assert_eq!(
        send("GET", &url, Some(&north), &h("south")).await.status,
        403
    );
    assert_eq!(send("GET", &url, Some(&north), &[]).await.status, 403);
}

#[tokio::test]
async fn deny_rules_win_over_allow_rules() {
    let (echo, authz) = (Echo::start(), Authz::start());
    let logs = tempfile::tempdir().unwrap();
    let audit = logs.path().join("audit.log");
    let gw = gateway(&echo, &authz, &audit);
    let admin = rsa_token("root", "admin", &[]);
    let url = gw.url("/agents/bulk");
    // From 127.0.0.1, outside 10.0.0.0/8: DELETE is denied to an admin; PUT too.
    assert_eq!(send("GET", &url, Some(&admin), &[]).await.status, 200);
    let denied = send("DELETE", &url, Some(&admin), &[]).await;
    assert_eq!(denied.status, 403);
    assert_eq!(denied.json()["error"], "access_denied");
    assert_eq!(send("PUT", &url, Some(&admin), &[]).await.status, 403);
    // On a public route, deny rules on the network apply without a token.
    assert_eq!(get(&gw.url("/status"), None).await.status, 200);
    assert_eq!(
        send("POST", &gw.url("/status"), None, &[]).await.status,
        403
    );

    let lines = json_lines(&audit);
    let line = lines
        .iter()
        .find(|l| l["method"] == "DELETE")
        .expect("an audit line for the DELETE");
    assert_eq!(line["decision"], "deny");
    assert_eq!(line["reason"], "denied_by_rule");
    assert_eq!(line["rule"], "deny[0]");
    assert_eq!(line["subject"], "root");
    let line = lines.iter().find(|l| l["method"] == "PUT").unwrap();
    assert_eq!(line["rule"], "deny[1]");
}

#[tokio::test]
async fn shadow_mode_forwards_and_logs_what_it_would_have_refused() {
    let (echo, authz) = (Echo::start(), Authz::start());
    let logs = tempfile::tempdir().unwrap();
    let audit = logs.path().join("audit.log");
    let gw = gateway(&echo, &authz, &audit);
    let agent = rsa_token("a-1", "agent", &[]);
    let admin = rsa_token("root", "admin", &[]);

    // Would be 403: forwarded, with the verified identity.
    let r = get(&gw.url("/legacy/x"), Some(&agent)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["headers"]["x-user-id"][0], "a-1");
    // Would be 401: forwarded without identity headers, and a forged one is stripped.
    let r = send("GET", &gw.url("/legacy/y"), None, &[("x-user-id", "root")]).await;
    assert_eq!(r.status, 200);
    assert!(r.json()["headers"].get("x-user-id").is_none(), "{}", r.body);
    assert_eq!(
        get(&gw.url("/legacy/z"), Some("not.a.token")).await.status,
        200
    );
    // Allowed as usual.
    assert_eq!(get(&gw.url("/legacy/w"), Some(&admin)).await.status, 200);

    let lines = json_lines(&audit);
    let find = |path: &str| {
        lines
            .iter()
            .find(|l| l["path"] == path)
            .unwrap_or_else(|| panic!("no audit line for {path}: {lines:?}"))
            .clone()
    };
    let x = find("/legacy/x");
    assert_eq!(x["decision"], "deny");
    assert_eq!(x["status"], 403);
    assert_eq!(x["reason"], "insufficient_role_or_scope");
    assert_eq!(x["enforced"], false);
    let y = find("/legacy/y");
    assert_eq!(
        (y["status"].as_u64(), y["enforced"].as_bool()),
        (Some(401), Some(false))
    );
    assert_eq!(y["reason"], "missing");
    let w = find("/legacy/w");
    assert_eq!(w["decision"], "allow");
    assert!(w.get("enforced").is_none(), "{w}");
}

#[tokio::test]
async fn the_external_decision_point_allows_denies_and_fails_as_configured() {
    let (echo, authz) = (Echo::start(), Authz::start());
    let logs = tempfile::tempdir().unwrap();
    let audit = logs.path().join("audit.log");
    let gw = gateway(&echo, &authz, &audit);
    let token = supervisor("north", "portal");
    let ask = |path: &str, decision: &'static str| {
        let url = gw.url(path);
        let token = token.clone();
        async move {
            let headers: &[(&str, &str)] = if decision.is_empty() {
                &[]
            } else {
                &[("x-test-decision", decision)]
            };
            send("GET", &url, Some(&token), headers).await
        }
    };

    // Allowed: the upstream gets the chosen header, not the others.
    let r = ask("/ext/a?q=1", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = r.json();
    assert_eq!(seen["headers"]["x-authz-tenant"][0], "from-authz");
    assert!(seen["headers"].get("x-not-forwarded").is_none());
    // What the decision point was told: the request line and identity, never the token.
    let last = authz.last().await;
    assert_eq!(last[":path"], "/check/ext/a?q=1");
    assert_eq!(last[":method"], "GET");
    assert_eq!(last["x-forwarded-uri"], "/ext/a?q=1");
    assert_eq!(last["x-user-id"], "sup-1");
    assert!(last.get("authorization").is_none(), "{last}");

    // Denied: its status and body reach the client.
    let r = ask("/ext/b", "deny").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.body, r#"{"error":"blocked by policy"}"#);
    assert!(r.header("x-secret").is_none());
    let r = ask("/ext/b", "unauth").await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer realm="authz""#)
    );

    // Failures: on_error = deny is a 403; on_error = allow lets the request through.
    let started = Instant::now();
    assert_eq!(ask("/ext/slow", "slow").await.status, 403);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(ask("/ext/c", "error").await.status, 403);
    assert_eq!(ask("/open/c", "error").await.status, 200);
    assert_eq!(ask("/open/slow", "slow").await.status, 200);

    // Decisions are remembered: asking again calls nobody.
    let before = authz.calls().await;
    assert_eq!(ask("/ext/a?q=1", "").await.status, 200);
    assert_eq!(ask("/ext/b", "deny").await.status, 403);
    assert_eq!(authz.calls().await, before);

    // OPA: a reader is allowed with the policy's header; others and undefined are refused.
    let reader = rsa_token("r-1", "reader", &[]);
    let r = get(&gw.url("/opa/x"), Some(&reader)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["headers"]["x-opa"][0], "yes");
    assert_eq!(get(&gw.url("/opa/x"), Some(&token)).await.status, 403);
    assert_eq!(
        get(&gw.url("/opa/undefined"), Some(&reader)).await.status,
        403
    );

    let lines = json_lines(&audit);
    let reasons: Vec<(String, String)> = lines
        .iter()
        .filter(|l| l["path"] == "/ext/b" || l["path"] == "/ext/c")
        .map(|l| {
            (
                l["reason"].as_str().unwrap().into(),
                l["ext_authz"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        reasons.contains(&("ext_authz_denied".into(), "deny".into())),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&("ext_authz_unavailable".into(), "error".into())),
        "{reasons:?}"
    );
}

#[tokio::test]
async fn identical_questions_in_flight_share_one_call() {
    let (echo, authz) = (Echo::start(), Authz::start());
    let logs = tempfile::tempdir().unwrap();
    let gw = gateway(&echo, &authz, &logs.path().join("audit.log"));
    let token = supervisor("north", "portal");
    let client = common::client();
    let url = gw.url("/flight");
    let started = Instant::now();
    let requests = (0..500).map(|_| {
        client
            .get(&url)
            .bearer_auth(&token)
            .header("x-test-decision", "slow-allow")
            .send()
    });
    let answers = futures_util::future::join_all(requests).await;
    let statuses: Vec<_> = answers
        .iter()
        .map(|r| {
            r.as_ref()
                .map(|r| r.status().as_u16())
                .map_err(|e| e.to_string())
        })
        .collect();
    let ok = statuses.iter().filter(|s| **s == Ok(200)).count();
    let other: Vec<_> = statuses.iter().filter(|s| **s != Ok(200)).take(5).collect();
    assert_eq!(ok, 500, "after {:?}: {other:?}", started.elapsed());
    assert_eq!(authz.calls().await, 1);
}

/// `portcullis explain` on the test config; its standard output.
fn explain(gw: &Gateway, args: &[&str]) -> String {
    let out = std::process::Command::new(common::BIN)
        .arg("explain")
        .arg("-c")
        .arg(&gw.conf)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn explain_answers_on_the_command_line_and_the_admin_listener() {
    let (echo, authz) = (Echo::start(), Authz::start());
    let admin_port = common::free_port();
    let logs = tempfile::tempdir().unwrap();
    // The test config with an admin listener and the agents route of the other tests.
    let extra = format!(
        "\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\n[[routes]]\nname = \"agents\"\npath = \"/agents/{{id}}\"\nupstream = \"backend\"\naccess = \"authenticated\"\n[[routes.allow]]\nmethods = [\"GET\"]\nroles = [\"agent\", \"supervisor\"]\n[[routes.allow]]\nmethods = [\"POST\", \"PUT\", \"DELETE\"]\nroles = [\"supervisor\"]\n"
    );
    let gw = gateway_with(&echo, &authz, &logs.path().join("audit.log"), &extra);

    // The agent / supervisor × method table, from tokens checked as the gateway checks them.
    let agent = rsa_token("a-1", "agent", &["--azp", "portal"]);
    let supervisor = rsa_token("s-1", "supervisor", &[]);
    let table = [
        (&agent, "GET", "allow 200 ok by allow[0]"),
        (&agent, "POST", "deny 403 insufficient_role_or_scope"),
        (&agent, "DELETE", "deny 403 insufficient_role_or_scope"),
        (&agent, "PATCH", "deny 403 method_not_allowed"),
        (&supervisor, "GET", "allow 200 ok by allow[0]"),
        (&supervisor, "PUT", "allow 200 ok by allow[1]"),
        (&supervisor, "DELETE", "allow 200 ok by allow[1]"),
    ];
    for (token, method, expected) in table {
        let out = explain(&gw, &["--token", token, method, "/agents/7"]);
        assert!(
            out.contains(&format!("decision:  {expected}\n")),
            "{method}: {out}"
        );
        assert!(out.contains("route:     agents (routes["), "{out}");
        assert!(
            !out.contains(token.as_str()),
            "the token was printed: {out}"
        );
    }
    let out = explain(&gw, &["--token", &agent, "GET", "/agents/7"]);
    assert!(
        out.contains("token:     accepted: issuer idp, subject a-1, user"),
        "{out}"
    );
    assert!(out.contains("client portal"), "{out}");
    assert!(out.contains("  header:  x-user-id: a-1"), "{out}");
    assert!(out.contains("upstream:  backend, path /agents/7"), "{out}");

    // A rejected token: which check failed, and no upstream.
    let expired = rsa_token("a-1", "agent", &["--issued-ago", "2h"]);
    let out = explain(&gw, &["--token", &expired, "GET", "/agents/7"]);
    assert!(out.contains("token:     refused: expired"), "{out}");
    assert!(out.contains("decision:  deny 401 expired"), "{out}");
    assert!(!out.contains("upstream:"), "{out}");
    assert!(!out.contains(&expired), "{out}");

    // Claims instead of a token; deny rules; near misses; tenant matches.
    let claims = r#"{"iss":"https://idp.test","aud":"api","sub":"root","exp":4102444800,"realm_access":{"roles":["admin"]}}"#;
    let out = explain(&gw, &["--claims", claims, "DELETE", "/agents/bulk"]);
    assert!(
        out.contains("decision:  deny 403 denied_by_rule by deny[0]"),
        "{out}"
    );
    assert!(out.contains("signature not checked"), "{out}");
    let out = explain(
        &gw,
        &[
            "--claims",
            claims,
            "--client-ip",
            "10.2.3.4",
            "DELETE",
            "/agents/bulk",
        ],
    );
    assert!(out.contains("decision:  allow 200 ok by allow[0]"), "{out}");
    assert!(out.contains("not:     agents (routes["), "{out}");
    let north = supervisor_token_claims("north");
    let out = explain(&gw, &["--claims", &north, "GET", "/agencies/south/reports"]);
    assert!(
        out.contains("decision:  deny 403 insufficient_role_or_scope"),
        "{out}"
    );
    let out = explain(&gw, &["--claims", &north, "GET", "/agencies/north/reports"]);
    assert!(out.contains("decision:  allow 200 ok by allow[0]"), "{out}");
    let out = explain(&gw, &["GET", "/nowhere"]);
    assert!(
        out.contains("route:     none matches") && out.contains("deny 404 no_route"),
        "{out}"
    );

    // The admin listener answers the same as JSON, from the running config.
    let url = format!("http://127.0.0.1:{admin_port}/explain");
    let mut answered = None;
    for _ in 0..100 {
        let body = serde_json::json!({"method": "GET", "url": "/agents/7", "token": agent});
        let r = common::client().post(&url).json(&body).send().await;
        if let Ok(r) = r {
            answered = Some((r.status().as_u16(), r.text().await.unwrap()));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = answered.expect("the admin listener answers");
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains(&agent), "the token was printed: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["route"]["name"], "agents");
    assert_eq!(v["token"]["subject"], "a-1");
    assert_eq!(v["decision"]["outcome"], "allow");
    assert_eq!(v["decision"]["rule"], "allow[0]");
    assert_eq!(v["upstream"]["identity_headers"]["x-user-id"], "a-1");
    let bad = common::client()
        .post(&url)
        .body(r#"{"method": "GET"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

fn supervisor_token_claims(agency: &str) -> String {
    serde_json::json!({
        "iss": "https://idp.test", "aud": "api", "sub": "s-2", "exp": 4102444800u64,
        "azp": "portal", "agency_id": agency, "realm_access": {"roles": ["supervisor"]},
    })
    .to_string()
}

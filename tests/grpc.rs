//! gRPC through the running gateway: a real grpcio server behind an HTTP/2 (h2c) upstream, a
//! real grpcio client on the gateway's plain listener, and the gateway's own refusals read by
//! that client as gRPC status codes.

mod common;

use std::process::{Command, Stdio};

use common::{free_port, repo_path, rsa_token, wait_for_port, Gateway, Proc};

fn grpc_server() -> (u16, Proc) {
    grpc_server_with(&[])
}

/// The gRPC server, with `tls` = [certificate, key] over TLS.
fn grpc_server_with(tls: &[String]) -> (u16, Proc) {
    let port = free_port();
    let child = Command::new(common::debian_python())
        .arg(repo_path("tests/support/grpc_fixture.py"))
        .args(["server", &port.to_string()])
        .args(tls)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 with grpcio (Debian package python3-grpcio) is needed");
    wait_for_port(port, "gRPC server");
    (port, Proc(child))
}

/// One call by the grpcio client: its code, details, answers and trailers.
async fn call(gw: &Gateway, which: &str, token: Option<&str>) -> serde_json::Value {
    let target = format!("127.0.0.1:{}", gw.port);
    let mut args = vec![
        repo_path("tests/support/grpc_fixture.py")
            .display()
            .to_string(),
        "client".into(),
        target,
        which.into(),
    ];
    args.extend(token.map(str::to_string));
    let out = tokio::task::spawn_blocking(move || {
        Command::new(common::debian_python())
            .args(&args)
            .output()
            .expect("run the gRPC client")
    })
    .await
    .expect("client thread");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("{e}: {text} {}", String::from_utf8_lossy(&out.stderr)))
}

fn gateway(backend: u16, limit: &str) -> Gateway {
    gateway_to(backend, limit, "")
}

fn gateway_to(backend: u16, limit: &str, upstream_tls: &str) -> Gateway {
    Gateway::start(&format!(
        r#"
[issuers.idp]
issuer = "https://idp.test"
audiences = ["api"]
jwks_file = "{{fixtures}}/rsa-1.jwks.json"

{limit}

[upstreams.echo]
targets = ["127.0.0.1:{backend}"]
protocol = "http2"
{upstream_tls}

[[routes]]
path_prefix = "/test.Echo"
methods = ["POST"]
upstream = "echo"
access = "authenticated"

[[routes.allow]]
roles = ["agent"]
"#
    ))
}

#[tokio::test]
async fn unary_and_streaming_calls_pass_with_their_trailers() {
    let (backend, _server) = grpc_server();
    let gw = gateway(backend, "");
    let token = rsa_token("alice", "agent", &[]);

    let r = call(&gw, "unary", Some(&token)).await;
    assert_eq!(r["code"], "OK", "{r}");
    let answer: serde_json::Value =
        serde_json::from_str(r["answers"][0].as_str().expect("answer")).expect("json");
    assert_eq!(answer["echo"], "hello");
    // The backend sees the verified identity, as a bearer call's backend does.
    assert_eq!(answer["user"], "alice");

    let r = call(&gw, "stream", Some(&token)).await;
    assert_eq!(r["code"], "OK", "{r}");
    assert_eq!(
        r["answers"],
        serde_json::json!(["part 0", "part 1", "part 2"])
    );
    assert_eq!(r["trailers"]["x-trailer"], "kept");
}

#[tokio::test]
async fn refusals_reach_grpc_clients_as_grpc_status_codes() {
    let (backend, _server) = grpc_server();
    let gw = gateway(
        backend,
        r#"
[[rate_limit.tiers]]
name = "users"
limits = ["2/1m"]
"#,
    );
    let r = call(&gw, "unary", None).await;
    assert_eq!(r["code"], "UNAUTHENTICATED", "{r}");
    let r = call(&gw, "unary", Some("not.a.token")).await;
    assert_eq!(r["code"], "UNAUTHENTICATED", "{r}");
    assert!(
        r["details"].as_str().expect("details").contains("token"),
        "{r}"
    );

    let viewer = rsa_token("victor", "viewer", &[]);
    let r = call(&gw, "unary", Some(&viewer)).await;
    assert_eq!(r["code"], "PERMISSION_DENIED", "{r}");

    let agent = rsa_token("alice", "agent", &[]);
    for _ in 0..2 {
        assert_eq!(call(&gw, "unary", Some(&agent)).await["code"], "OK");
    }
    let r = call(&gw, "unary", Some(&agent)).await;
    assert_eq!(r["code"], "RESOURCE_EXHAUSTED", "{r}");
}

#[tokio::test]
async fn an_unreachable_backend_is_unavailable_to_grpc_clients() {
    let gw = gateway(free_port(), "");
    let token = rsa_token("alice", "agent", &[]);
    let r = call(&gw, "unary", Some(&token)).await;
    assert_eq!(r["code"], "UNAVAILABLE", "{r}");
}

#[tokio::test]
async fn grpc_reaches_a_tls_backend_over_http2_by_alpn() {
    let pki = common::Pki::new();
    let (backend, _server) = grpc_server_with(&[pki.path("server.pem"), pki.path("server.key")]);
    let tls = format!(
        "[upstreams.echo.tls]\nsni = \"localhost\"\nca_file = \"{}\"",
        pki.path("ca.pem")
    );
    let gw = gateway_to(backend, "", &tls);
    let token = rsa_token("alice", "agent", &[]);
    let r = call(&gw, "stream", Some(&token)).await;
    assert_eq!(r["code"], "OK", "{r}");
    assert_eq!(
        r["answers"],
        serde_json::json!(["part 0", "part 1", "part 2"])
    );
    assert_eq!(r["trailers"]["x-trailer"], "kept");
}

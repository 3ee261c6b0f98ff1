//! TLS at the edge (SNI, HTTP/2, client certificates, certificate-bound tokens) and mutual TLS
//! to upstreams, with certificates made by the openssl CLI and real TLS peers.

mod common;

use std::process::{Command, Stdio};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::{free_port, rsa_token, Echo, Gateway, Pki, TlsEcho};

fn edge(pki: &Pki, client_auth: &str, tls_port: u16, rest: &str) -> Gateway {
    edge_with_issuer(pki, client_auth, tls_port, "", rest)
}

fn edge_with_issuer(
    pki: &Pki,
    client_auth: &str,
    tls_port: u16,
    issuer_extra: &str,
    rest: &str,
) -> Gateway {
    let client_ca = if client_auth == "none" {
        String::new()
    } else {
        format!("client_ca_file = \"{}\"", pki.path("ca.pem"))
    };
    Gateway::start(&format!(
        r#"
[server.tls]
listen = ["127.0.0.1:{tls_port}"]
certificates = [
  {{ cert_file = "{server}", key_file = "{server_key}" }},
  {{ cert_file = "{other}", key_file = "{other_key}" }},
]
client_auth = "{client_auth}"
{client_ca}

[issuers.idp]
issuer = "https://idp.test"
audiences = ["api"]
jwks_file = "{{fixtures}}/rsa-1.jwks.json"
{issuer_extra}

{rest}
"#,
        server = pki.path("server.pem"),
        server_key = pki.path("server.key"),
        other = pki.path("other-name.pem"),
        other_key = pki.path("other-name.key"),
    ))
}

const HELLO: &str = r#"
[[routes]]
path = "/hello"
access = "public"
respond = { body = "hello" }

[[routes]]
path = "/orders"
access = "authenticated"
respond = { body = "orders" }
"#;

/// `openssl s_client` against the port; returns (handshake succeeded, its output).
fn s_client(port: u16, extra: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("openssl s_client");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (text.contains("-----BEGIN CERTIFICATE-----"), text)
}

#[tokio::test]
async fn edge_tls_serves_http2_by_sni_and_refuses_old_protocols() {
    let pki = Pki::new();
    let port = free_port();
    let admin = free_port();
    let admin_section = format!("[admin]\nlisten = \"127.0.0.1:{admin}\"\n");
    let gw = edge(&pki, "none", port, &(admin_section + HELLO));
    common::wait_for_port(port, "TLS listener");

    let client = pki.client(None);
    let r = client
        .get(format!("https://localhost:{port}/hello"))
        .send()
        .await
        .expect("https request");
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2, "ALPN chose h2");
    assert_eq!(r.text().await.unwrap(), "hello");

    // HTTP/1.1 clients are served too.
    let h1 = reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(pki.path("ca.pem")).unwrap()).unwrap(),
        )
        .build()
        .unwrap();
    let r = h1
        .get(format!("https://localhost:{port}/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_11);

    // The certificate follows SNI; an unknown name gets the first one.
    let (_, other) = s_client(port, &["-servername", "other.test"]);
    assert!(
        other.contains("CN=other.test") || other.contains("CN = other.test"),
        "{other}"
    );
    let (_, unknown) = s_client(port, &["-servername", "nobody.test"]);
    assert!(
        unknown.contains("CN=localhost") || unknown.contains("CN = localhost"),
        "{unknown}"
    );

    // TLS 1.2 is the floor.
    let (ok, _) = s_client(port, &["-tls1_2"]);
    assert!(ok, "TLS 1.2 is accepted");
    // The client is made willing (OpenSSL 3 refuses TLS 1.1 by itself at its default security
    // level), so the refusal must come from the gateway.
    let (ok, out) = s_client(port, &["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"]);
    assert!(!ok, "TLS 1.1 must be refused:\n{out}");
    assert!(
        out.contains("SSL alert number"),
        "refused by the server:\n{out}"
    );

    // A peer that leaves before the handshake (a TCP health check; the gateway's own
    // readiness probe at start) is no error worth a line; a failed handshake is the client's,
    // logged at info, never as the server's error.
    for _ in 0..3 {
        drop(std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect"));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let log = gw.log();
    let handshakes: Vec<&str> = log.lines().filter(|l| l.contains("handshake")).collect();
    assert!(
        handshakes.iter().all(|l| l.contains(" INFO ")),
        "{handshakes:#?}"
    );
    assert!(
        !handshakes.iter().any(|l| l.contains("handshake eof")),
        "{handshakes:#?}"
    );
    assert!(
        handshakes
            .iter()
            .any(|l| l.contains("Downstream handshake error from 127.0.0.1")),
        "the refused TLS 1.1 client: {handshakes:#?}"
    );
    // Both are counted.
    let failures = "portcullis_tls_handshake_failures_total";
    let failed = common::metric(admin, &format!("{failures}{{reason=\"failed\"}}")).await;
    assert_eq!(failed, 1.0, "the TLS 1.1 client");
    let abandoned = common::metric(admin, &format!("{failures}{{reason=\"abandoned\"}}")).await;
    assert!(abandoned >= 3.0, "{abandoned}");
}

#[tokio::test]
async fn a_required_client_certificate_is_enforced() {
    let pki = Pki::new();
    let port = free_port();
    let _gw = edge(&pki, "required", port, HELLO);
    common::wait_for_port(port, "TLS listener");
    let url = format!("https://localhost:{port}/hello");

    assert!(
        pki.client(None).get(&url).send().await.is_err(),
        "no client certificate: the handshake fails"
    );
    assert!(
        pki.client(Some("rogue-client"))
            .get(&url)
            .send()
            .await
            .is_err(),
        "a certificate from another CA fails"
    );
    let r = pki.client(Some("client")).get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_bound_token_works_only_with_its_certificate() {
    let pki = Pki::new();
    let echo = Echo::start();
    let port = free_port();
    let _gw = edge(
        &pki,
        "optional",
        port,
        &format!(
            r#"
[upstreams.backend]
targets = ["127.0.0.1:{}"]

[[routes]]
path = "/orders"
access = "authenticated"
upstream = "backend"
"#,
            echo.port
        ),
    );
    common::wait_for_port(port, "TLS listener");
    let url = format!("https://localhost:{port}/orders");
    let thumbprint = URL_SAFE_NO_PAD.encode(pki.sha256("client"));
    let bound = rsa_token(
        "alice",
        "agent",
        &["--claim", &format!(r#"cnf={{"x5t#S256":"{thumbprint}"}}"#)],
    );

    let with_cert = pki.client(Some("client"));
    let r = with_cert
        .get(&url)
        .bearer_auth(&bound)
        .header("x-client-cert-sha256", "forged")
        .header("x-client-cert-subject", "CN=admin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen: serde_json::Value = r.json().await.unwrap();
    let hex: String = pki
        .sha256("client")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        seen["headers"]["x-client-cert-sha256"],
        serde_json::json!([hex]),
        "the verified fingerprint replaces the client's"
    );
    assert_eq!(
        seen["headers"]["x-client-cert-subject"],
        serde_json::json!(["CN=reports-job,O=Acme\\, Inc."]),
        "the verified subject, RFC 4514, replaces the client's"
    );

    for (who, client) in [
        ("no certificate", pki.client(None)),
        ("another certificate", pki.client(Some("gateway"))),
    ] {
        let r = client.get(&url).bearer_auth(&bound).send().await.unwrap();
        assert_eq!(r.status(), 401, "{who}");
        let challenge = r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(challenge.contains("invalid_token"), "{who}: {challenge}");
        assert!(
            challenge.contains("not bound to the client certificate"),
            "{challenge}"
        );
    }
    // An unbound token still works where the issuer does not require binding.
    let plain = rsa_token("bob", "agent", &[]);
    let r = pki
        .client(None)
        .get(&url)
        .bearer_auth(&plain)
        .header("x-client-cert-subject", "CN=admin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen: serde_json::Value = r.json().await.unwrap();
    assert!(
        seen["headers"].get("x-client-cert-subject").is_none(),
        "a client without a certificate cannot claim a subject: {seen}"
    );
}

#[tokio::test]
async fn an_issuer_can_require_bound_tokens() {
    let pki = Pki::new();
    let port = free_port();
    let _gw = edge_with_issuer(&pki, "optional", port, "require_bound_tokens = true", HELLO);
    common::wait_for_port(port, "TLS listener");
    let url = format!("https://localhost:{port}/orders");
    let client = pki.client(Some("client"));

    let plain = rsa_token("bob", "agent", &[]);
    let r = client.get(&url).bearer_auth(&plain).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        challenge.contains("not bound to a client certificate"),
        "{challenge}"
    );

    let thumbprint = URL_SAFE_NO_PAD.encode(pki.sha256("client"));
    let bound = rsa_token(
        "alice",
        "agent",
        &["--claim", &format!(r#"cnf={{"x5t#S256":"{thumbprint}"}}"#)],
    );
    let r = client.get(&url).bearer_auth(&bound).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

fn upstream_gateway(pki: &Pki, backend_port: u16, tls: &str) -> Gateway {
    Gateway::start(&format!(
        r#"
[upstreams.backend]
targets = ["127.0.0.1:{backend_port}"]
connect_timeout = "1s"
retries = 0

[upstreams.backend.tls]
sni = "localhost"
ca_file = "{ca}"
{tls}

[[routes]]
path_prefix = "/"
access = "public"
upstream = "backend"
"#,
        ca = pki.path("ca.pem"),
    ))
}

#[tokio::test]
async fn upstreams_are_reached_over_mutual_tls() {
    let pki = Pki::new();
    let strict = TlsEcho::start(&pki, "server", Some("ca"));
    let client_cert = format!(
        "client_cert_file = \"{}\"\nclient_key_file = \"{}\"",
        pki.path("gateway.pem"),
        pki.path("gateway.key")
    );

    let gw = upstream_gateway(&pki, strict.port, &client_cert);
    let r = common::get(&gw.url("/agents"), None).await;
    assert_eq!(r.status, 200, "{} / {}", r.body, gw.log());
    assert_eq!(r.json()["path"], "/agents");

    // Without a client certificate the backend refuses the handshake.
    let gw = upstream_gateway(&pki, strict.port, "");
    let r = common::get(&gw.url("/agents"), None).await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.json()["error"], "bad_gateway");
    assert!(gw.log().contains("upstream backend: 502"), "{}", gw.log());

    // A backend whose certificate another CA signed is not trusted.
    let rogue = TlsEcho::start(&pki, "rogue-server", None);
    let gw = upstream_gateway(&pki, rogue.port, &client_cert);
    let r = common::get(&gw.url("/agents"), None).await;
    assert_eq!(r.status, 502, "{}", r.body);
    let log = gw.log();
    assert!(log.contains("upstream backend: 502"), "{log}");
}

#[tokio::test]
async fn rules_can_require_a_client_certificate_subject() {
    let pki = Pki::new();
    let port = free_port();
    let rest = r#"
[[routes]]
path = "/jobs"
access = "authenticated"
respond = { body = "jobs" }
[[routes.allow]]
client_cert_subject = ["CN=reports-job,O=Acme\\, Inc."]

# Without a token, a deny rule on the certificate still applies.
[[routes]]
path = "/status"
access = "public"
respond = { body = "up" }
[[routes.deny]]
client_cert_subject = ["CN=reports-job,O=Acme\\, Inc."]
"#;
    let _gw = edge(&pki, "optional", port, rest);
    common::wait_for_port(port, "TLS listener");
    let token = rsa_token("job", "", &[]);
    let status = |identity: Option<&'static str>, path: &'static str| {
        let client = pki.client(identity);
        let token = token.clone();
        async move {
            let url = format!("https://localhost:{port}{path}");
            let r = client.get(&url).bearer_auth(&token).send().await.unwrap();
            r.status().as_u16()
        }
    };
    assert_eq!(status(Some("client"), "/jobs").await, 200);
    assert_eq!(status(Some("gateway"), "/jobs").await, 403);
    assert_eq!(status(None, "/jobs").await, 403);
    assert_eq!(status(Some("client"), "/status").await, 403);
    assert_eq!(status(Some("gateway"), "/status").await, 200);
    assert_eq!(status(None, "/status").await, 200);
}

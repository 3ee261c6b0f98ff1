//! WebSockets through the running gateway to a real WebSocket backend: identity on the
//! upgrade, close at token expiry, in-band renewal, token sources per route, eviction (local
//! and across instances through Redis), and byte-for-byte pass-through.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use common::{free_port, metric, rsa_token, Gateway, Provider, Redis};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What the backend saw on one connection.
#[derive(Debug, Clone, Default)]
struct Seen {
    uri: String,
    headers: Vec<(String, String)>,
    messages: Vec<Message>,
    /// The Close frame the backend received, code and reason.
    close: Option<(u16, String)>,
    ended: bool,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn texts(&self) -> Vec<String> {
        self.messages
            .iter()
            .filter_map(|m| match m {
                Message::Text(t) => Some(t.to_string()),
                _ => None,
            })
            .collect()
    }
}

/// A WebSocket echo backend. It answers `close-me` with Close 1000 and chooses subprotocol
/// `chat` when offered.
struct Backend {
    port: u16,
    connections: Arc<Mutex<Vec<Arc<Mutex<Seen>>>>>,
}

impl Backend {
    async fn start() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let connections: Arc<Mutex<Vec<Arc<Mutex<Seen>>>>> = Arc::default();
        let all = connections.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = Arc::new(Mutex::new(Seen::default()));
                all.lock().expect("lock").push(seen.clone());
                tokio::spawn(serve(stream, seen));
            }
        });
        Backend { port, connections }
    }

    fn last(&self) -> Seen {
        let all = self.connections.lock().expect("lock");
        let last = all.last().expect("the backend got a connection");
        let seen = last.lock().expect("lock").clone();
        seen
    }

    fn count(&self) -> usize {
        self.connections.lock().expect("lock").len()
    }
}

// The handshake callback's error type is tungstenite's, large by its design.
#[allow(clippy::result_large_err)]
async fn serve(stream: TcpStream, seen: Arc<Mutex<Seen>>) {
    let record = seen.clone();
    let callback = move |req: &Request, mut resp: Response| {
        let mut s = record.lock().expect("lock");
        s.uri = req.uri().to_string();
        s.headers = req
            .headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let offered = req
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if offered.split(',').any(|p| p.trim() == "chat") {
            resp.headers_mut()
                .insert("sec-websocket-protocol", "chat".parse().expect("value"));
        }
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    while let Some(Ok(message)) = ws.next().await {
        match &message {
            Message::Close(frame) => {
                seen.lock().expect("lock").close = frame
                    .as_ref()
                    .map(|f| (u16::from(f.code), f.reason.to_string()));
            }
            Message::Text(t) if t.as_str() == "close-me" => {
                let _ = ws
                    .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                        code: CloseCode::Normal,
                        reason: "bye".into(),
                    }))
                    .await;
            }
            Message::Text(_) | Message::Binary(_) => {
                let echoed = ws.send(message.clone()).await;
                if echoed.is_err() {
                    break;
                }
            }
            _ => {}
        }
        seen.lock().expect("lock").messages.push(message);
    }
    seen.lock().expect("lock").ended = true;
}

fn config(backend: u16, extra: &str) -> String {
    format!(
        r#"
[issuers.idp]
issuer = "https://idp.test"
audiences = ["api"]
jwks_file = "{{fixtures}}/rsa-1.jwks.json"
clock_skew = "0s"

[issuers.idp.claims]
tenant = "agency_id"

[upstreams.push]
targets = ["127.0.0.1:{backend}"]

[[routes]]
path = "/ws"
access = "authenticated"
upstream = "push"

[routes.websocket]

[[routes]]
path = "/browser"
access = "authenticated"
upstream = "push"

[routes.websocket]
token_from = ["query", "subprotocol"]

[[routes]]
path = "/plain"
access = "authenticated"
upstream = "push"

{extra}
"#
    )
}

fn user_token(sub: &str, tenant: &str, ttl: &str) -> String {
    let claim = format!("agency_id=\"{tenant}\"");
    rsa_token(sub, "agent", &["--ttl", ttl, "--claim", &claim])
}

/// The token's `exp`, seconds since the epoch.
fn exp_of(token: &str) -> f64 {
    let payload = token.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    let claims: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON claims");
    claims["exp"].as_f64().expect("exp")
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

async fn connect(
    gw: &Gateway,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(Client, http::Response<Option<Vec<u8>>>), tokio_tungstenite::tungstenite::Error> {
    let mut req = format!("ws://127.0.0.1:{}{path}", gw.port)
        .into_client_request()
        .expect("request");
    for (n, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(n.as_bytes()).expect("name"),
            v.parse().expect("value"),
        );
    }
    tokio_tungstenite::connect_async(req).await
}

async fn open(gw: &Gateway, token: &str) -> Client {
    let bearer = format!("Bearer {token}");
    connect(gw, "/ws", &[("authorization", &bearer)])
        .await
        .expect("upgrade accepted")
        .0
}

/// Reads until a Close frame arrives; returns its code, reason and arrival time.
async fn close_of(ws: &mut Client, limit: Duration) -> (u16, String, f64) {
    let read = async {
        while let Some(m) = ws.next().await {
            if let Ok(Message::Close(frame)) = m {
                let at = now();
                let (code, reason) = frame
                    .map(|f| (u16::from(f.code), f.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                // Reading on sends the client's answering Close frame.
                let _ = tokio::time::timeout(Duration::from_secs(1), ws.next()).await;
                return (code, reason, at);
            }
        }
        (
            1006,
            "connection dropped without a Close frame".into(),
            now(),
        )
    };
    tokio::time::timeout(limit, read)
        .await
        .expect("the connection was closed in time")
}

/// Sends `text` and waits for its echo.
async fn round_trip(ws: &mut Client, text: &str) {
    ws.send(Message::text(text)).await.expect("send");
    let echoed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return t.to_string(),
                Some(Ok(_)) => continue,
                other => panic!("no echo of {text:?}: {other:?}"),
            }
        }
    })
    .await
    .expect("echo in time");
    assert_eq!(echoed, text);
}

fn renewal(token: &str) -> Message {
    Message::text(serde_json::json!({"type": "access_token", "token": token}).to_string())
}

async fn wait_for(mut done: impl FnMut() -> bool, what: &str) {
    for _ in 0..100 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn an_idle_websocket_is_closed_at_expiry_with_identity_forwarded() {
    let backend = Backend::start().await;
    let admin = free_port();
    let logs = tempfile::tempdir().unwrap();
    let access = logs.path().join("access.log");
    let gw = Gateway::start(&config(
        backend.port,
        &format!(
            "[admin]\nlisten = \"127.0.0.1:{admin}\"\n[logging]\naccess_log = \"{}\"\n",
            access.display()
        ),
    ));
    let token = user_token("alice", "agency-7", "2s");
    let exp = exp_of(&token);
    let mut ws = open(&gw, &token).await;
    round_trip(&mut ws, "hello").await;
    assert_eq!(metric(admin, "portcullis_websockets_open").await, 1.0);
    // The relay runs apart from the connection's HTTP handling, and the connection still
    // holds its place under max_connections.
    let clients = format!(
        "portcullis_client_connections{{listener=\"127.0.0.1:{}\"}}",
        gw.port
    );
    assert_eq!(metric(admin, &clients).await, 1.0);
    assert!(
        common::json_lines(&access).is_empty(),
        "a WebSocket is logged when it ends"
    );

    let seen = backend.last();
    assert_eq!(seen.header("x-user-id"), Some("alice"));
    assert_eq!(seen.header("x-tenant-id"), Some("agency-7"));
    assert_eq!(seen.header("x-user-roles"), Some("agent"));

    let (code, reason, at) = close_of(&mut ws, Duration::from_secs(5)).await;
    assert_eq!((code, reason.as_str()), (4001, "token expired"));
    let late = at - exp;
    assert!(
        (0.0..1.0).contains(&late),
        "closed {late:.3} s after exp, not within 1 s"
    );
    // The backend was told too, with the same code.
    wait_for(|| backend.last().ended, "the backend's side to close").await;
    assert_eq!(backend.last().close, Some((4001, "token expired".into())));
    assert_eq!(
        metric(
            admin,
            "portcullis_websockets_closed_total{reason=\"expired\"}"
        )
        .await,
        1.0
    );
    assert_eq!(metric(admin, "portcullis_websockets_open").await, 0.0);
    assert_eq!(metric(admin, &clients).await, 0.0);
    // One access line for the whole connection: its status, life and bytes to the client
    // (the echo and the Close frame).
    wait_for(
        || !common::json_lines(&access).is_empty(),
        "the access line",
    )
    .await;
    let lines = common::json_lines(&access);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert_eq!(
        (line["status"].as_u64(), line["path"].as_str()),
        (Some(101), Some("/ws"))
    );
    assert_eq!(line["subject"], "alice");
    let lived = line["duration_ms"].as_f64().unwrap_or(0.0);
    assert!(lived > 1000.0, "logged a life of {lived} ms");
    let sent = line["bytes_sent"].as_u64().unwrap_or(0);
    assert!(
        sent >= ("hello".len() + 2 + 2 + 2 + "token expired".len()) as u64,
        "{sent}"
    );
}

#[tokio::test]
async fn a_websocket_closes_when_its_introspected_token_is_revoked() {
    let idp = Provider::start();
    let backend = Backend::start().await;
    let env = "PORTCULLIS_TEST_INTROSPECTION_SECRET";
    let gw = Gateway::start_with(
        "",
        &format!(
            r#"
[issuers.provider]
issuer = "{issuer}"
audiences = ["https://opaque.portcullis.test"]
discovery = true

[issuers.provider.introspection]
client_id = "portcullis-gateway"
client_secret_env = "{env}"
cache_ttl = "1s"
websocket_recheck = "1s"

[upstreams.push]
targets = ["127.0.0.1:{port}"]

[[routes]]
path = "/ws"
access = "authenticated"
callers = "any"
upstream = "push"

[routes.websocket]
"#,
            issuer = idp.issuer,
            port = backend.port,
        ),
        &[(env, "portcullis-gateway-secret-0123456789")],
    );
    let token = idp
        .token("https://opaque.portcullis.test", "agents:read")
        .await;
    let mut ws = open(&gw, &token).await;
    round_trip(&mut ws, "hello").await;
    // Checks that find the token active leave the connection alone.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    round_trip(&mut ws, "still here").await;

    idp.revoke(&token).await;
    let revoked = now();
    let (code, reason, at) = close_of(&mut ws, Duration::from_secs(6)).await;
    assert_eq!((code, reason.as_str()), (4004, "token revoked"));
    // At most one recheck interval plus the answer's cache time, and some slack.
    assert!(
        at - revoked < 3.5,
        "closed {:.1} s after revocation",
        at - revoked
    );
    wait_for(
        || backend.last().close.is_some(),
        "the backend's Close frame",
    )
    .await;
    assert_eq!(backend.last().close, Some((4004, "token revoked".into())));
}

#[tokio::test]
async fn renewal_moves_the_deadline_and_never_reaches_the_backend() {
    let backend = Backend::start().await;
    let gw = Gateway::start(&config(backend.port, ""));
    let first = user_token("alice", "agency-7", "2s");
    let mut ws = open(&gw, &first).await;
    round_trip(&mut ws, "before").await;

    let second = user_token("alice", "agency-7", "4s");
    let exp = exp_of(&second);
    ws.send(renewal(&second)).await.expect("send renewal");
    round_trip(&mut ws, "after").await;
    // Past the first token's expiry, the connection still works.
    tokio::time::sleep(Duration::from_secs_f64(
        (exp_of(&first) - now() + 0.5).max(0.0),
    ))
    .await;
    round_trip(&mut ws, "still here").await;

    let (code, _, at) = close_of(&mut ws, Duration::from_secs(8)).await;
    assert_eq!(code, 4001);
    assert!(
        (0.0..1.0).contains(&(at - exp)),
        "closed {:.3} s after the renewed exp",
        at - exp
    );
    let texts = backend.last().texts();
    assert_eq!(texts, ["before", "after", "still here"]);
    assert!(!texts.iter().any(|t| t.contains("access_token")));
}

#[tokio::test]
async fn a_renewal_for_another_subject_or_tenant_closes_the_connection() {
    let backend = Backend::start().await;
    let gw = Gateway::start(&config(backend.port, ""));
    for (sub, tenant) in [("mallory", "agency-7"), ("alice", "agency-9")] {
        let mut ws = open(&gw, &user_token("alice", "agency-7", "1h")).await;
        ws.send(renewal(&user_token(sub, tenant, "1h")))
            .await
            .expect("send");
        let (code, reason, _) = close_of(&mut ws, Duration::from_secs(3)).await;
        assert_eq!((code, reason.as_str()), (4002, "renewal rejected"));
    }
    // A malformed renewal token too.
    let mut ws = open(&gw, &user_token("alice", "agency-7", "1h")).await;
    ws.send(renewal("not-a-token")).await.expect("send");
    assert_eq!(close_of(&mut ws, Duration::from_secs(3)).await.0, 4002);
    assert!(!backend.last().texts().iter().any(|t| t.contains("token")));
}

#[tokio::test]
async fn token_sources_are_per_route() {
    let backend = Backend::start().await;
    let gw = Gateway::start(&config(backend.port, ""));
    let token = user_token("alice", "agency-7", "1h");

    // /ws takes the header only.
    let query = format!("/ws?access_token={token}");
    let refused = connect(&gw, &query, &[]).await.expect_err("refused");
    assert!(refused.to_string().contains("401"), "{refused}");

    // /browser takes the query parameter, which the backend never sees.
    let query = format!("/browser?room=7&access_token={token}");
    let (mut ws, _) = connect(&gw, &query, &[])
        .await
        .expect("query token accepted");
    round_trip(&mut ws, "q").await;
    let seen = backend.last();
    assert_eq!(seen.uri, "/browser?room=7");
    assert_eq!(seen.header("x-user-id"), Some("alice"));

    // ... and the subprotocol, echoed back as the marker when the backend chose none.
    let offer = format!("access_token, {token}");
    let (mut ws, resp) = connect(&gw, "/browser", &[("sec-websocket-protocol", &offer)])
        .await
        .expect("subprotocol token accepted");
    assert_eq!(resp.headers()["sec-websocket-protocol"], "access_token");
    round_trip(&mut ws, "s").await;
    assert_eq!(backend.last().header("sec-websocket-protocol"), None);

    // A subprotocol the backend chooses is kept.
    let offer = format!("chat, access_token, {token}");
    let (_ws, resp) = connect(&gw, "/browser", &[("sec-websocket-protocol", &offer)])
        .await
        .expect("accepted");
    assert_eq!(resp.headers()["sec-websocket-protocol"], "chat");
    assert_eq!(
        backend.last().header("sec-websocket-protocol"),
        Some("chat")
    );

    // /browser does not take the header; a missing token is a 401, a bad one too.
    let bearer = format!("Bearer {token}");
    let refused = connect(&gw, "/browser", &[("authorization", &bearer)])
        .await
        .expect_err("refused");
    assert!(refused.to_string().contains("401"), "{refused}");
    let refused = connect(&gw, "/browser?access_token=garbage", &[])
        .await
        .expect_err("refused");
    assert!(refused.to_string().contains("401"), "{refused}");

    // A route without [routes.websocket] serves the request as plain HTTP.
    let before = backend.count();
    let refused = connect(&gw, "/plain", &[("authorization", &bearer)])
        .await
        .expect_err("no upgrade");
    assert!(!refused.to_string().contains("401"), "{refused}");
    assert_eq!(backend.count(), before + 1);
}

#[tokio::test]
async fn a_cookie_token_opens_a_websocket_only_from_the_gateways_own_origin() {
    let backend = Backend::start().await;
    let extra = r#"
[[routes]]
path = "/desk"
access = "authenticated"
upstream = "push"

[routes.websocket]
token_from = ["cookie:at"]
"#;
    let gw = Gateway::start(&config(backend.port, extra));
    let cookie = format!("at={}", user_token("alice", "agency-7", "1h"));
    // Another site's page opens a WebSocket: the browser adds the cookie and the Origin.
    let refused = connect(
        &gw,
        "/desk",
        &[("cookie", &cookie), ("origin", "https://evil.test")],
    )
    .await
    .expect_err("cross-site hijacking refused");
    assert!(refused.to_string().contains("403"), "{refused}");
    let before = backend.count();
    let origin = format!("http://127.0.0.1:{}", gw.port);
    let (mut ws, _) = connect(&gw, "/desk", &[("cookie", &cookie), ("origin", &origin)])
        .await
        .expect("same origin accepted");
    round_trip(&mut ws, "c").await;
    assert_eq!(backend.count(), before + 1);
    assert_eq!(backend.last().header("x-user-id"), Some("alice"));
}

#[tokio::test]
async fn eviction_ends_a_subjects_websockets_on_every_instance() {
    let redis = Redis::start();
    let backend = Backend::start().await;
    let (admin_a, admin_b) = (free_port(), free_port());
    let shared = format!("[websocket]\nredis_url = \"{}\"\n", redis.url());
    let a = Gateway::start(&config(
        backend.port,
        &format!("{shared}\n[admin]\nlisten = \"127.0.0.1:{admin_a}\"\n"),
    ));
    let b = Gateway::start(&config(
        backend.port,
        &format!("{shared}\n[admin]\nlisten = \"127.0.0.1:{admin_b}\"\n"),
    ));
    let alice = user_token("alice", "agency-7", "1h");
    let bob = user_token("bob", "agency-7", "1h");
    let mut alice_a = open(&a, &alice).await;
    let mut alice_a2 = open(&a, &alice).await;
    let mut alice_b = open(&b, &alice).await;
    let mut bob_a = open(&a, &bob).await;
    // Both instances have subscribed before the order goes out.
    wait_for(
        || a.log().contains("subscribed") && b.log().contains("subscribed"),
        "both instances to subscribe",
    )
    .await;

    let resp = common::client()
        .post(format!("http://127.0.0.1:{admin_a}/websockets/evict"))
        .body(r#"{"subject":"alice"}"#)
        .send()
        .await
        .expect("admin answers");
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.expect("JSON");
    assert_eq!(body["closed"], 2);
    assert_eq!(body["published"], true);

    for ws in [&mut alice_a, &mut alice_a2, &mut alice_b] {
        let (code, reason, _) = close_of(ws, Duration::from_secs(3)).await;
        assert_eq!((code, reason.as_str()), (4003, "evicted"));
    }
    round_trip(&mut bob_a, "bob stays").await;
    assert_eq!(
        metric(
            admin_b,
            "portcullis_websockets_closed_total{reason=\"evicted\"}"
        )
        .await,
        1.0
    );

    // Bad orders get a clear answer.
    let bad = common::client()
        .post(format!("http://127.0.0.1:{admin_a}/websockets/evict"))
        .body("alice")
        .send()
        .await
        .expect("admin answers");
    assert_eq!(bad.status(), 400);
    let get = common::client()
        .get(format!("http://127.0.0.1:{admin_a}/websockets/evict"))
        .send()
        .await
        .expect("admin answers");
    assert_eq!(get.status(), 405);
}

/// A client may send its first frames in the same packet as the upgrade request: they reach
/// the backend once the relay has the connection, and the echo comes back.
#[tokio::test]
async fn frames_sent_with_the_upgrade_request_are_relayed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = Backend::start().await;
    let gw = Gateway::start(&config(backend.port, ""));
    let token = user_token("alice", "agency-7", "1h");
    let mut wire = format!(
        "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Authorization: Bearer {token}\r\n\r\n",
        gw.port
    )
    .into_bytes();
    // A masked text frame, "early", in the same write as the request.
    let mask = [1u8, 2, 3, 4];
    let masked = |payload: &[u8]| -> Vec<u8> {
        payload
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect()
    };
    wire.extend([0x81, 0x80 | 5]);
    wire.extend(mask);
    wire.extend(masked(b"early"));
    let mut stream = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    stream.write_all(&wire).await.unwrap();

    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            let n = stream.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            // The 101, then the unmasked echo: 0x81 0x05 "early".
            if got.windows(7).any(|w| w == b"\x81\x05early") {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("the echo within 5 s");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    assert!(
        got.windows(7).any(|w| w == b"\x81\x05early"),
        "no echo of the frame sent with the request: {text:?}"
    );
}

#[tokio::test]
async fn frames_pass_through_intact() {
    let backend = Backend::start().await;
    let gw = Gateway::start(&config(backend.port, ""));
    let mut ws = open(&gw, &user_token("alice", "agency-7", "1h")).await;

    // 1 MiB binary message.
    let big: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.expect("send");
    let echoed = loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => break b,
            Some(Ok(_)) => continue,
            other => panic!("no echo: {other:?}"),
        }
    };
    assert_eq!(echoed.len(), big.len());
    assert!(echoed == big, "1 MiB echo differs");

    // A fragmented text message, a renewal-sized one included, with a ping in between.
    let parts = ["{\"type\":", "\"chat\",", "\"text\":\"hi\"}"];
    ws.send(Message::Frame(Frame::message(
        parts[0],
        OpCode::Data(Data::Text),
        false,
    )))
    .await
    .expect("send");
    ws.send(Message::Frame(Frame::message(
        parts[1],
        OpCode::Data(Data::Continue),
        false,
    )))
    .await
    .expect("send");
    ws.send(Message::Ping("p".into())).await.expect("ping");
    ws.send(Message::Frame(Frame::message(
        parts[2],
        OpCode::Data(Data::Continue),
        true,
    )))
    .await
    .expect("send");
    let mut got_pong = false;
    let text = loop {
        match ws.next().await {
            Some(Ok(Message::Pong(p))) => got_pong = &p[..] == b"p",
            Some(Ok(Message::Text(t))) => break t.to_string(),
            Some(Ok(_)) => continue,
            other => panic!("no echo: {other:?}"),
        }
    };
    assert_eq!(text, parts.concat());
    assert!(got_pong, "the backend's pong came back");

    // The backend closes: the client gets its Close frame as sent.
    ws.send(Message::text("close-me")).await.expect("send");
    let (code, reason, _) = close_of(&mut ws, Duration::from_secs(3)).await;
    assert_eq!((code, reason.as_str()), (1000, "bye"));
}

/// Runs a client of `tests/support/ws_fixture.py` with `args`; returns its JSON report.
/// `context` is shown with a failure.
async fn python_client<const N: usize>(args: [&str; N], context: String) -> serde_json::Value {
    let script = common::repo_path("tests/support/ws_fixture.py");
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(common::debian_python())
            .arg(&script)
            .args(&args)
            .output()
    })
    .await
    .expect("join")
    .expect("run the python client");
    assert!(
        out.status.success(),
        "python client failed: {}\n{context}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON report")
}

#[tokio::test]
async fn renewal_works_with_permessage_deflate_from_a_python_client() {
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("backend.log");
    let server_script = common::repo_path("tests/support/ws_fixture.py");
    let _server = common::Proc(
        std::process::Command::new(common::debian_python())
            .arg(&server_script)
            .args(["server", &port.to_string()])
            .arg(&log)
            .spawn()
            .expect("python3 with websockets"),
    );
    common::wait_for_port(port, "python websocket backend");
    let gw = Gateway::start(&config(port, ""));
    let first = user_token("alice", "agency-7", "2s");
    let second = user_token("alice", "agency-7", "4s");
    let url = format!("ws://127.0.0.1:{}/ws", gw.port);
    let report = python_client(["renew", &url, &first, &second], String::new()).await;
    let extensions = report["extensions"].as_str().unwrap_or_default();
    assert!(
        extensions.contains("permessage-deflate")
            && extensions.contains("client_no_context_takeover"),
        "negotiated: {extensions:?}"
    );
    assert_eq!(
        report["echoes"],
        serde_json::json!(["hello", "after", "past the first expiry"])
    );
    assert_eq!(report["close_code"], 4001);
    let late = report["closed_after_exp"].as_f64().expect("closed");
    assert!((0.0..1.0).contains(&late), "closed {late:.3} s after exp");
    let seen = std::fs::read_to_string(&log).expect("backend log");
    assert!(
        !seen.contains("access_token"),
        "the renewal reached the backend: {seen}"
    );
    assert_eq!(seen.lines().count(), 3, "{seen}");
}

/// Over a TLS listener the relay reads and writes through TLS, large messages included,
/// and closes at expiry as over plain TCP.
#[tokio::test]
async fn a_websocket_over_tls_relays_and_closes_at_expiry() {
    let pki = common::Pki::new();
    let backend = Backend::start().await;
    let tls_port = free_port();
    let gw = Gateway::start(&config(
        backend.port,
        &format!(
            "[server.tls]\nlisten = [\"127.0.0.1:{tls_port}\"]\n\
             certificates = [{{ cert_file = \"{}\", key_file = \"{}\" }}]\n",
            pki.path("server.pem"),
            pki.path("server.key")
        ),
    ));
    common::wait_for_port(tls_port, "the TLS listener");
    let token = user_token("alice", "agency-7", "3s");
    let url = format!("wss://localhost:{tls_port}/ws");
    let ca = pki.path("ca.pem");
    let report = python_client(["tls", &url, &token, &ca], gw.log()).await;
    assert_eq!(report["big_echoed"], true, "{report}");
    assert_eq!(report["echo"], "hello");
    assert_eq!(report["close_code"], 4001);
    let late = report["closed_after_exp"].as_f64().expect("closed");
    assert!((0.0..1.0).contains(&late), "closed {late:.3} s after exp");
}

#[tokio::test]
async fn shutdown_tells_websockets_to_reconnect_elsewhere() {
    let backend = Backend::start().await;
    let mut gw = Gateway::start_with("drain_delay = \"0s\"", &config(backend.port, ""), &[]);
    let mut ws = open(&gw, &user_token("alice", "agency-7", "1h")).await;
    round_trip(&mut ws, "hi").await;
    gw.signal("TERM");
    let (code, reason, _) = close_of(&mut ws, Duration::from_secs(5)).await;
    assert_eq!((code, reason.as_str()), (1001, "gateway shutting down"));
    let exit = tokio::task::spawn_blocking(move || gw.wait_exit(Duration::from_secs(10)))
        .await
        .expect("join");
    assert_eq!(
        exit,
        Some(0),
        "the gateway exited once the websocket closed"
    );
    wait_for(|| backend.last().ended, "the backend's side to close").await;
    assert_eq!(backend.last().close.map(|c| c.0), Some(1001));
}

#[tokio::test]
async fn public_routes_and_refused_upgrades() {
    let backend = Backend::start().await;
    let echo = common::Echo::start();
    let extra = format!(
        r#"
[upstreams.http]
targets = ["127.0.0.1:{}"]

[[routes]]
path = "/lobby"
access = "public"
upstream = "push"

[routes.websocket]

[[routes]]
path = "/not-a-websocket"
access = "public"
upstream = "http"

[routes.websocket]
"#,
        echo.port
    );
    let gw = Gateway::start(&config(backend.port, &extra));

    // No token needed, and nothing is taken for a renewal: every message goes through.
    let (mut ws, _) = connect(&gw, "/lobby", &[]).await.expect("public upgrade");
    let lookalike = serde_json::json!({"type": "access_token", "token": "x"}).to_string();
    round_trip(&mut ws, &lookalike).await;
    assert_eq!(backend.last().texts(), [lookalike]);

    // A backend that answers the upgrade with plain HTTP: its answer reaches the client.
    let refused = connect(&gw, "/not-a-websocket", &[])
        .await
        .expect_err("no 101");
    assert!(refused.to_string().contains("200"), "{refused}");
}

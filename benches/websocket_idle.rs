//! Many idle WebSockets through one gateway process, each closed when its token expires.
//!
//! Opens N connections (default 100,000; `WS_CONNECTIONS`) through the release gateway to an
//! in-process echo backend, with tokens whose expiries are spread over 20 seconds, then
//! reports the gateway's resident memory per connection, its CPU while they sit idle (against
//! the same process idle with no connection, measured in this run), and the distribution of
//! (Close frame received − token expiry) over all of them.
//!
//! Run through `benches/websocket_idle.sh`, which raises the open-file limit first. Beyond
//! 20,000 connections (`WS_PER_ADDRESS`), clients and backend spread over several loopback
//! addresses, so that 100,000 fit the ephemeral ports. `WS_TLS=1`: the clients connect to a
//! TLS listener (a certificate made with the openssl CLI), as browsers do with `wss://`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::Algorithm;
use portcullis::token::{load_key, mint, TokenSpec};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const SPREAD_SECS: u64 = 20;

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// CPU time the process used so far, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<u64> = rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
    let hz: f64 = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0);
    ticks as f64 / hz
}

/// CPU share of the process over `window`.
async fn cpu_share(pid: u32, window: Duration) -> f64 {
    let before = cpu_secs(pid);
    tokio::time::sleep(window).await;
    (cpu_secs(pid) - before) / window.as_secs_f64()
}

/// The echo backend, run in a process of its own (this binary again): with the clients in
/// the same process, the descriptors would not fit one process's limit.
async fn echo_backend(port: u16, addresses: usize) {
    let mut accepting = tokio::task::JoinSet::new();
    for a in 0..addresses {
        let listener = TcpListener::bind((address(a), port)).await.expect("bind");
        accepting.spawn(echo_on(listener));
    }
    while accepting.join_next().await.is_some() {}
}

async fn echo_on(listener: TcpListener) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            while let Some(Ok(m)) = ws.next().await {
                if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// Connections per loopback address: one address has about 28,000 ephemeral ports towards
/// one destination, so larger runs spread clients, and the gateway's backend connections,
/// over 127.0.0.1, 127.0.0.2, ...
fn per_address() -> usize {
    std::env::var("WS_PER_ADDRESS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&p| p > 0)
        .unwrap_or(20_000)
}

fn address(k: usize) -> std::net::Ipv4Addr {
    let k = k as u32 + 1;
    std::net::Ipv4Addr::new(127, 0, (k >> 8) as u8, k as u8)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn wait_port(port: u16) {
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("nothing listens on {port}");
}

/// A CA and a certificate for `localhost` it signed, made with the openssl CLI in `dir`
/// (cert.pem, key.pem), and a connector that trusts the CA.
fn tls_setup(dir: &Path) -> tokio_rustls::TlsConnector {
    let openssl = |args: &str| {
        let out = Command::new("openssl")
            .args(args.split_whitespace())
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(out.status.success(), "openssl {args}: {out:?}");
    };
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    openssl(&format!(
        "req -x509 {ec} -days 2 -subj /CN=bench-ca -keyout ca.key -out ca.pem"
    ));
    openssl(&format!(
        "req {ec} -subj /CN=localhost -keyout key.pem -out leaf.csr"
    ));
    std::fs::write(dir.join("leaf.ext"), "subjectAltName=DNS:localhost\n").expect("leaf.ext");
    openssl("x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile leaf.ext -out cert.pem");
    let pem = std::fs::read(dir.join("ca.pem")).expect("ca.pem");
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.expect("a certificate")).expect("a root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// The WebSocket handshake on `stream`; tells `opened` whether it succeeded, then waits for the
/// Close frame: (when it came − `exp`, its code).
async fn hold<S: AsyncRead + AsyncWrite + Unpin>(
    stream: std::io::Result<S>,
    req: tokio_tungstenite::tungstenite::handshake::client::Request,
    exp: f64,
    permit: tokio::sync::OwnedSemaphorePermit,
    opened: tokio::sync::mpsc::Sender<bool>,
) -> Option<(f64, Option<u16>)> {
    let connected = match stream {
        Ok(stream) => tokio_tungstenite::client_async(req, stream).await.ok(),
        Err(_) => None,
    };
    drop(permit);
    let _ = opened.send(connected.is_some()).await;
    drop(opened);
    let (mut ws, _) = connected?;
    while let Some(m) = ws.next().await {
        if let Ok(Message::Close(frame)) = m {
            let code = frame.map(|f| u16::from(f.code));
            return Some((now() - exp, code));
        }
    }
    None
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

#[tokio::main]
async fn main() {
    if let Some(port) = std::env::var("WS_BENCH_BACKEND")
        .ok()
        .and_then(|p| p.parse().ok())
    {
        let addresses = std::env::var("WS_BENCH_ADDRESSES")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(1);
        return echo_backend(port, addresses).await;
    }
    // `cargo test --all-targets` runs this target too, without `--bench`: nothing to do then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("websocket_idle: run with `cargo bench --bench websocket_idle`");
        return;
    }
    let n: usize = std::env::var("WS_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().expect("tempdir");
    let addresses = n.div_ceil(per_address()).max(1);
    let backend = free_port();
    let mut backend_proc = Command::new(std::env::current_exe().expect("this binary"))
        .env("WS_BENCH_BACKEND", backend.to_string())
        .env("WS_BENCH_ADDRESSES", addresses.to_string())
        .spawn()
        .expect("start the backend");
    wait_port(backend);
    let port = free_port();
    let admin = free_port();
    let fixtures = root.join("tests/fixtures");
    let tls = std::env::var("WS_TLS").is_ok_and(|v| v == "1");
    let connector = tls.then(|| tls_setup(dir.path()));
    // Over TLS, the clients use the TLS listener; the plain one is left idle.
    let (plain, tls_listener) = match tls {
        true => (
            free_port(),
            format!(
                "\n[server.tls]\nlisten = [\"127.0.0.1:{port}\"]\ncertificates = \
                 [{{ cert_file = \"{d}/cert.pem\", key_file = \"{d}/key.pem\" }}]\n",
                d = dir.path().display()
            ),
        ),
        false => (port, String::new()),
    };
    let config = format!(
        r#"[server]
listen = ["127.0.0.1:{plain}"]
threads = 2
max_connections = {cap}
drain_delay = "0s"
grace_period = "1s"
pid_file = "{d}/pid"
upgrade_sock = "{d}/upgrade.sock"
{tls_listener}

[logging]
access_log = "off"
audit_log = "off"

[admin]
listen = "127.0.0.1:{admin}"

[issuers.idp]
issuer = "https://idp.test"
audiences = ["api"]
jwks_file = "{f}/rsa-1.jwks.json"
clock_skew = "0s"

[upstreams.push]
targets = [{targets}]

[[routes]]
path = "/ws"
access = "authenticated"
upstream = "push"

[routes.websocket]
"#,
        d = dir.path().display(),
        f = fixtures.display(),
        cap = n + 100,
        targets = (0..addresses)
            .map(|a| format!("\"{}:{backend}\"", address(a)))
            .collect::<Vec<_>>()
            .join(", "),
    );
    let conf = dir.path().join("gateway.toml");
    std::fs::write(&conf, config).expect("write config");
    // PORTCULLIS_BIN measures another build (say, before a change) with the same harness.
    let binary = std::env::var("PORTCULLIS_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_portcullis").to_string());
    let mut gateway = Command::new(binary)
        .args(["run", "-c"])
        .arg(&conf)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start the gateway");
    let pid = gateway.id();
    // The plain listener: a bare probe of the TLS one would log a failed handshake.
    wait_port(plain);

    // One token per expiry second, shared by the connections that expire then. The first
    // expiry leaves time to open every connection and measure them idle.
    let key = load_key(&fixtures.join("rsa-1.pem"), Algorithm::RS256).expect("fixture key");
    let open_for = 30 + n as u64 / 500;
    let tokens: Vec<(String, f64)> = (0..SPREAD_SECS)
        .map(|k| {
            let spec = TokenSpec {
                alg: Algorithm::RS256,
                kid: Some("rsa-1".into()),
                typ: "at+jwt".into(),
                issuer: "https://idp.test".into(),
                audience: vec!["api".into()],
                subject: format!("user-{k}"),
                roles: vec!["agent".into()],
                scope: None,
                azp: None,
                ttl: Some(Duration::from_secs(open_for + k)),
                issued_ago: Duration::ZERO,
                not_before_in: None,
                claims: Vec::new(),
            };
            let token = mint(&key, &spec).expect("mint");
            // `exp` is whole seconds: read it back rather than guess the rounding.
            let payload = token.split('.').nth(1).unwrap_or_default();
            let claims: serde_json::Value = base64_claims(payload);
            (token, claims["exp"].as_f64().unwrap_or(0.0))
        })
        .collect();

    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = rss_kib(pid);
    let idle_empty = cpu_share(pid, Duration::from_secs(5)).await;

    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(200));
    let mut tasks = Vec::with_capacity(n);
    let (opened_tx, mut opened_rx) = tokio::sync::mpsc::channel::<bool>(n.max(1));
    for i in 0..n {
        let (token, exp) = tokens[i % tokens.len()].clone();
        let gate = gate.clone();
        let opened = opened_tx.clone();
        let connector = connector.clone();
        tasks.push(tokio::spawn(async move {
            let url = match connector {
                Some(_) => format!("wss://localhost:{port}/ws"),
                None => format!("ws://127.0.0.1:{port}/ws"),
            };
            let mut req = url.into_client_request().ok()?;
            let bearer = format!("Bearer {token}").parse().ok()?;
            req.headers_mut().insert("authorization", bearer);
            let permit = gate.acquire_owned().await.ok()?;
            let connected = async {
                let socket = tokio::net::TcpSocket::new_v4()?;
                let from = i / per_address();
                // The first address is the kernel's own choice, with ports picked at connect
                // time: bound ports can not be shared with earlier runs' TIME_WAIT sockets.
                if from > 0 {
                    socket.set_reuseaddr(true)?;
                    socket.bind((address(from), 0).into())?;
                }
                socket.connect(([127, 0, 0, 1], port).into()).await
            }
            .await;
            match (connected, connector) {
                (Ok(stream), Some(tls)) => {
                    let name =
                        rustls::pki_types::ServerName::try_from("localhost").expect("a DNS name");
                    let stream = tls.connect(name, stream).await;
                    hold(stream, req, exp, permit, opened).await
                }
                (stream, _) => hold(stream, req, exp, permit, opened).await,
            }
        }));
    }
    drop(opened_tx);
    let mut failed = 0;
    for _ in 0..n {
        if opened_rx.recv().await != Some(true) {
            failed += 1;
        }
    }
    let open_time = started.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_open = rss_kib(pid);
    let idle_open = cpu_share(pid, Duration::from_secs(10)).await;
    let first_expiry = tokens.first().map_or(0.0, |t| t.1);
    let left = first_expiry - now();

    let mut lateness = Vec::with_capacity(n);
    let mut wrong_code = 0;
    for t in tasks {
        match t.await.ok().flatten() {
            Some((late, Some(4001))) => lateness.push(late),
            Some(_) => wrong_code += 1,
            None => {}
        }
    }
    lateness.sort_by(|a, b| a.total_cmp(b));
    // The gateway's own account: from the expiry to its Close frame written, without this
    // process's time to read 10,000 sockets on the same cores.
    let gateway_side = close_delays(admin).await;
    for child in [&mut gateway, &mut backend_proc] {
        let _ = child.kill();
        let _ = child.wait();
    }

    let per_conn = (rss_open.saturating_sub(rss_before)) as f64 / n.max(1) as f64;
    println!(
        "websocket_idle: {n} connections through one gateway process (2 threads), \
         from {addresses} client address(es) to as many backend addresses"
    );
    println!(
        "  opened in {:.1} s ({failed} failed); first expiry {left:.1} s after the idle measurement",
        open_time.as_secs_f64()
    );
    println!(
        "  gateway RSS: {rss_before} KiB idle empty, {rss_open} KiB with {n} open: {per_conn:.1} KiB per connection"
    );
    println!(
        "  gateway CPU while idle: {:.2} % of a core empty, {:.2} % with {n} open",
        idle_empty * 100.0,
        idle_open * 100.0
    );
    let within = lateness.iter().filter(|l| (0.0..1.0).contains(*l)).count();
    println!(
        "  close - expiry over {} closes with 4001 ({wrong_code} with another code): \
         min {:.1} ms, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; within [0, 1 s): {within}",
        lateness.len(),
        percentile(&lateness, 0.0) * 1000.0,
        percentile(&lateness, 0.5) * 1000.0,
        percentile(&lateness, 0.99) * 1000.0,
        percentile(&lateness, 1.0) * 1000.0,
    );
    if let Some((buckets, count)) = gateway_side {
        let share = |le: &str| {
            buckets
                .iter()
                .find(|(b, _)| b == le)
                .map_or(0.0, |(_, c)| *c / count.max(1.0))
        };
        let p99 = buckets
            .iter()
            .find(|(_, c)| *c >= 0.99 * count)
            .map_or("over 1 s".to_string(), |(le, _)| {
                format!("at most {} ms", le.parse::<f64>().unwrap_or(0.0) * 1000.0)
            });
        println!(
            "  gateway side (expiry to Close frame written), {count} closes: {:.1} % within 5 ms, {:.1} % within 20 ms; p99 {p99}",
            share("0.005") * 100.0,
            share("0.02") * 100.0,
        );
    }
    if failed > 0 || within != n {
        std::process::exit(1);
    }
}

/// The gateway's histogram of expiry-to-Close delays: cumulative (bound, count) buckets, and
/// the count.
async fn close_delays(admin: u16) -> Option<(Vec<(String, f64)>, f64)> {
    let text = reqwest::get(format!("http://127.0.0.1:{admin}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let name = "portcullis_websocket_expiry_close_delay_seconds";
    let mut buckets = Vec::new();
    let mut count = 0.0;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let Some((series, value)) = rest.rsplit_once(' ') else {
            continue;
        };
        let value: f64 = value.parse().ok()?;
        if let Some(le) = series.strip_prefix("_bucket{le=\"") {
            buckets.push((le.trim_end_matches("\"}").to_string(), value));
        } else if series == "_count" {
            count = value;
        }
    }
    Some((buckets, count))
}

fn base64_claims(payload: &str) -> serde_json::Value {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

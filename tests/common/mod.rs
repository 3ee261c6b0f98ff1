//! Harness for tests through the running binary: real processes on loopback ports.
#![allow(dead_code)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// A port nothing listens on now, never handed out before in this test process, and below the
/// kernel's ephemeral range (`net.ipv4.ip_local_port_range`, 32768 and up). Ports from that
/// range are also what the kernel gives to `bind(…:0)` and to outgoing connections: a port
/// taken from there and handed to a server still starting could meanwhile be given to another
/// socket, even a moment's listener, and the test would talk to the wrong one.
pub fn free_port() -> u16 {
    const FIRST: u32 = 10_000;
    const SPAN: u32 = 22_000;
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    // Test binaries run one after another; each starts elsewhere in the span.
    let start = std::process::id() % SPAN;
    loop {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert!(n < SPAN, "no free port left below the ephemeral range");
        let port = u16::try_from(FIRST + (start + n) % SPAN).expect("port");
        if bindable(port) {
            return port;
        }
    }
}

/// Whether `port` can be bound on 127.0.0.1 now. The probe binds without listening: a
/// listening probe could be inherited by a child that another test thread is forking, and stay
/// listening until that child's exec closes it, long enough for [`wait_for_port`] to take it
/// for the server it waits for.
pub fn bindable(port: u16) -> bool {
    tokio::net::TcpSocket::new_v4()
        .and_then(|s| s.bind(([127, 0, 0, 1], port).into()))
        .is_ok()
}

/// Waits until something listens on the port. Read from the kernel's socket table rather than
/// by connecting: the check leaves no connection behind for the server to handle, and cannot
/// connect to itself, as a probe of a port nobody listens on can.
pub fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if listening(port) {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("{what} did not start listening on {port}");
}

/// Whether a TCP socket is in LISTEN state on `port` (any address, IPv4 or IPv6).
fn listening(port: u16) -> bool {
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|table| {
        std::fs::read_to_string(table).is_ok_and(|text| {
            text.lines().skip(1).any(|line| {
                let mut fields = line.split_whitespace();
                let local = fields.nth(1).unwrap_or_default();
                let state = fields.nth(1).unwrap_or_default();
                let local_port = local.rsplit(':').next().unwrap_or_default();
                state == "0A" && u16::from_str_radix(local_port, 16) == Ok(port)
            })
        })
    })
}

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // A failed test tells whether its servers were still running, and if not, how they
        // ended (a signal shows as `signal: N`).
        if std::thread::panicking() {
            if let Ok(Some(status)) = self.0.try_wait() {
                eprintln!("--- process {} had already ended: {status}", self.0.id());
            }
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A failed test shows what its gateway logged.
impl Drop for Gateway {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- gateway log ({}) ---\n{}",
                self.conf.display(),
                self.log()
            );
        }
    }
}

/// A gateway process on its own port, with its own config directory.
pub struct Gateway {
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub conf: PathBuf,
    /// Extra `[server]` settings, kept across [`Gateway::reload`].
    server: String,
    proc: Proc,
}

impl Gateway {
    /// Starts `portcullis run` with `body` as the config, after a generated `[server]` table.
    /// `{fixtures}` in `body` stands for the fixtures directory.
    pub fn start(body: &str) -> Gateway {
        Self::start_with("", body, &[])
    }

    /// As [`Gateway::start`], with `server` lines added to `[server]` and environment `env`.
    pub fn start_with(server: &str, body: &str, env: &[(&str, &str)]) -> Gateway {
        Self::start_on(free_port(), server, body, env)
    }

    /// As [`Gateway::start_with`], on a port chosen before (for a config that names it).
    pub fn start_on(port: u16, server: &str, body: &str, env: &[(&str, &str)]) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("gateway.toml");
        std::fs::write(&conf, Self::config_with(port, dir.path(), server, body))
            .expect("write config");
        let child = Self::spawn(&conf, &dir.path().join("gateway.log"), &[], env);
        let gw = Gateway {
            port,
            dir,
            conf,
            server: server.to_string(),
            proc: Proc(child),
        };
        wait_for_port(port, "gateway");
        gw
    }

    fn spawn(conf: &Path, log: &Path, args: &[&str], env: &[(&str, &str)]) -> Child {
        let log = std::fs::File::create(log).expect("log file");
        Command::new(BIN)
            .args(["run", "-c"])
            .arg(conf)
            .args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start portcullis")
    }

    /// Starts a second process on the same config with `-u`: it takes over the listening
    /// sockets once this one gets SIGQUIT. Its log is `gateway-new.log`.
    pub fn start_upgrade(&self) -> Proc {
        let log = self.dir.path().join("gateway-new.log");
        Proc(Self::spawn(&self.conf, &log, &["-u"], &[]))
    }

    pub fn config(port: u16, dir: &Path, body: &str) -> String {
        Self::config_with(port, dir, "", body)
    }

    fn config_with(port: u16, dir: &Path, server: &str, body: &str) -> String {
        let fixtures = fixture("").display().to_string();
        let d = dir.display();
        // `server` lines replace the defaults they name.
        let defaults = [
            format!("listen = [\"127.0.0.1:{port}\"]"),
            "threads = 1".to_string(),
            "grace_period = \"1s\"".to_string(),
            format!("pid_file = \"{d}/pid\""),
            format!("upgrade_sock = \"{d}/upgrade.sock\""),
        ];
        let mut table = String::from("[server]\n");
        for line in defaults {
            let key = line.split(' ').next().unwrap_or_default();
            if !server.lines().any(|l| l.starts_with(&format!("{key} "))) {
                table.push_str(&line);
                table.push('\n');
            }
        }
        format!(
            "{table}{server}\n\n{}",
            body.replace("{fixtures}", fixtures.trim_end_matches('/'))
        )
    }

    /// Sends a signal (`HUP`, `TERM`, `QUIT` …) to the process.
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{name}");
    }

    /// Waits up to `limit` for the process to exit; its exit code, or `None` if still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.proc.0.try_wait() {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    /// The log once it contains `needle` (5 s at most): the audit and access logs are written
    /// by their own threads, a moment after the answer.
    pub fn log_with(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log = self.log();
            if log.contains(needle) || Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.proc.0.id()
    }

    /// Replaces the config (after the generated `[server]` table) and sends SIGHUP.
    pub fn reload(&self, body: &str) {
        self.write_config(body);
        self.signal("HUP");
    }

    /// Replaces the config file atomically (as an editor or a deployment tool would), without
    /// telling the process.
    pub fn write_config(&self, body: &str) {
        let text = Self::config_with(self.port, self.dir.path(), &self.server, body);
        let tmp = self.conf.with_extension("tmp");
        std::fs::write(&tmp, text).expect("write config");
        std::fs::rename(&tmp, &self.conf).expect("rename config");
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.proc.0.try_wait(), Ok(None))
    }
}

/// The echo upstream: answers with JSON describing the request it received.
pub struct Echo {
    pub port: u16,
    _proc: Proc,
}

impl Echo {
    pub fn start() -> Echo {
        let port = free_port();
        let proc = python(&["echo", &port.to_string()]);
        wait_for_port(port, "echo upstream");
        Echo { port, _proc: proc }
    }
}

/// A backend that fails on purpose and counts what reaches it (see `flaky` in
/// tests/support/http_fixture.py).
pub struct Flaky {
    pub port: u16,
    pub host: String,
    _proc: Proc,
}

impl Flaky {
    pub fn start() -> Flaky {
        let port = free_port();
        let proc = python(&["flaky", &port.to_string()]);
        wait_for_port(port, "flaky upstream");
        Flaky {
            port,
            host: "127.0.0.1".into(),
            _proc: proc,
        }
    }

    /// One listening on `host` (another loopback address) at `port`.
    pub fn start_at(host: &str, port: u16) -> Flaky {
        let child = Command::new("python3")
            .arg(repo_path("tests/support/http_fixture.py"))
            .args(["flaky", &port.to_string()])
            .env("FIXTURE_HOST", host)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 is needed for the test servers");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while TcpStream::connect((host, port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "flaky upstream on {host}:{port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Flaky {
            port,
            host: host.to_string(),
            _proc: Proc(child),
        }
    }

    /// Requests that reached it for `path`.
    pub async fn hits(&self, path: &str) -> u64 {
        let url = format!("http://{}:{}/__hits?path={path}", self.host, self.port);
        get(&url, None).await.body.trim().parse().expect("hits")
    }

    /// Every request fails with 503 (`true`) or is served again (`false`).
    pub async fn set_failing(&self, failing: bool) {
        let path = if failing { "/__fail" } else { "/__recover" };
        let url = format!("http://{}:{}{path}", self.host, self.port);
        let r = send("POST", &url, None, &[]).await;
        assert_eq!(r.status, 200);
    }
}

/// An external decision point (see `authz` in tests/support/http_fixture.py).
pub struct Authz {
    pub port: u16,
    _proc: Proc,
}

impl Authz {
    pub fn start() -> Authz {
        let port = free_port();
        let proc = python(&["authz", &port.to_string()]);
        wait_for_port(port, "decision point");
        Authz { port, _proc: proc }
    }

    /// How many decisions it was asked for.
    pub async fn calls(&self) -> u64 {
        let url = format!("http://127.0.0.1:{}/__calls", self.port);
        get(&url, None)
            .await
            .body
            .trim()
            .parse()
            .expect("calls count")
    }

    /// The headers of the last question, and `:path`, `:method`.
    pub async fn last(&self) -> serde_json::Value {
        get(&format!("http://127.0.0.1:{}/__last", self.port), None)
            .await
            .json()
    }
}

/// A captcha provider's verify API (see `captcha` in tests/support/http_fixture.py).
pub struct Captcha {
    pub port: u16,
    _proc: Proc,
}

impl Captcha {
    pub fn start() -> Captcha {
        let port = free_port();
        let proc = python(&["captcha", &port.to_string()]);
        wait_for_port(port, "captcha verifier");
        Captcha { port, _proc: proc }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/siteverify", self.port)
    }

    /// How many verifications it was asked for.
    pub async fn calls(&self) -> u64 {
        let url = format!("http://127.0.0.1:{}/__calls", self.port);
        get(&url, None).await.body.trim().parse().expect("calls")
    }

    /// The form of the last verification.
    pub async fn last(&self) -> serde_json::Value {
        get(&format!("http://127.0.0.1:{}/__last", self.port), None)
            .await
            .json()
    }
}

/// A static file server standing in for an identity provider's JWKS endpoint.
pub struct FileServer {
    pub port: u16,
    pub root: tempfile::TempDir,
    proc: Option<Proc>,
}

impl FileServer {
    pub fn start() -> FileServer {
        let root = tempfile::tempdir().expect("tempdir");
        let mut server = FileServer {
            port: free_port(),
            root,
            proc: None,
        };
        server.restart();
        server
    }

    pub fn restart(&mut self) {
        let root = self.root.path().display().to_string();
        self.proc = Some(python(&["files", &self.port.to_string(), &root]));
        wait_for_port(self.port, "file server");
    }

    pub fn stop(&mut self) {
        self.proc = None;
    }

    /// Atomically replaces a served file.
    pub fn put(&self, name: &str, contents: &str) {
        let path = self.root.path().join(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        let tmp = PathBuf::from(format!("{}.tmp", path.display()));
        std::fs::write(&tmp, contents).expect("write");
        std::fs::rename(&tmp, &path).expect("rename");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub async fn hits(&self, path: &str) -> u64 {
        let body = reqwest::get(self.url(&format!("/__hits?path={path}")))
            .await
            .expect("hits")
            .text()
            .await
            .expect("hits body");
        body.trim().parse().expect("hits count")
    }
}

fn python(args: &[&str]) -> Proc {
    let script = repo_path("tests/support/http_fixture.py");
    let child = Command::new("python3")
        .arg(script)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 is needed for the test servers");
    Proc(child)
}

/// Debian's interpreter, where the test suite's packages (`python3-websockets`,
/// `python3-grpcio`) are installed.
pub fn debian_python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// Runs `portcullis check` on `text`, written to a `gateway.toml` of its own: the exit code
/// and what it printed on stderr.
pub fn check_config(text: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("gateway.toml");
    std::fs::write(&conf, text).expect("write config");
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&conf)
        .output()
        .expect("run portcullis check");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Mints a token with `portcullis token`.
pub fn token(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("token")
        .args(args)
        .output()
        .expect("run portcullis token");
    assert!(
        out.status.success(),
        "token failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_string()
}

/// A token signed with fixture `rsa-1.pem` for issuer `https://idp.test`, audience `api`.
pub fn rsa_token(sub: &str, roles: &str, extra: &[&str]) -> String {
    let key = fixture("rsa-1.pem");
    let mut args = vec![
        "--key",
        key.to_str().expect("path"),
        "--kid",
        "rsa-1",
        "--iss",
        "https://idp.test",
        "--aud",
        "api",
        "--sub",
        sub,
        "--roles",
        roles,
    ];
    args.extend_from_slice(extra);
    token(&args)
}

/// A JWKS document holding the keys of the named fixtures (`rsa-1` → `rsa-1.jwks.json`).
pub fn fixture_jwks(names: &[&str]) -> String {
    let keys: Vec<serde_json::Value> = names
        .iter()
        .flat_map(|n| {
            let text = std::fs::read_to_string(fixture(&format!("{n}.jwks.json"))).unwrap();
            let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
            doc["keys"].as_array().unwrap().clone()
        })
        .collect();
    serde_json::json!({ "keys": keys }).to_string()
}

/// A token signed with fixture key `key` and naming `kid`, for issuer `iss`, audience `api`,
/// subject `u1`.
pub fn signed_with(key: &str, kid: &str, iss: &str, extra: &[&str]) -> String {
    let k = fixture(&format!("{key}.pem")).display().to_string();
    let mut args = vec![
        "--key", &k, "--kid", kid, "--iss", iss, "--aud", "api", "--sub", "u1",
    ];
    args.extend_from_slice(extra);
    token(&args)
}

pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}

/// Sends a request with an optional bearer token and extra headers.
pub async fn send(
    method: &str,
    url: &str,
    bearer: Option<&str>,
    headers: &[(&str, &str)],
) -> Reply {
    exchange(&client(), method, url, bearer, headers).await
}

/// Like [`send`], on a given client (and its kept-alive connections).
pub async fn exchange(
    client: &reqwest::Client,
    method: &str,
    url: &str,
    bearer: Option<&str>,
    headers: &[(&str, &str)],
) -> Reply {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = client.request(method, url);
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("request to {url} failed: {e}"));
    Reply {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body: resp.text().await.expect("body"),
    }
}

pub async fn get(url: &str, bearer: Option<&str>) -> Reply {
    send("GET", url, bearer, &[]).await
}

/// Sends `GET {target}` over a raw socket (HTTP clients normalize paths themselves) and
/// returns the status code.
pub fn raw_get_status(port: u16, target: &str) -> u16 {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {out:?}"))
}

/// Runs futures concurrently on the test runtime and collects their results in order.
pub async fn join_all<T, F>(futures: impl IntoIterator<Item = F>) -> Vec<T>
where
    T: Send + 'static,
    F: std::future::Future<Output = T> + Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("task panicked"));
    }
    out
}

/// A real `redis-server` on its own port, stopped when dropped. It can be killed and started
/// again on the same port.
pub struct Redis {
    pub port: u16,
    dir: tempfile::TempDir,
    proc: Option<Proc>,
}

impl Redis {
    pub fn start() -> Redis {
        let mut r = Redis {
            port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            proc: None,
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again), empty.
    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (apt-get install redis-server)");
        self.proc = Some(Proc(child));
        wait_for_port(self.port, "redis-server");
    }

    /// Kills the server outright, as a crash would.
    pub fn kill(&mut self) {
        self.proc = None;
    }

    /// Freezes (`SIGSTOP`) or thaws (`SIGCONT`) the server: connections stay open, answers stop.
    pub fn signal(&self, signal: &str) {
        let pid = self.proc.as_ref().expect("redis running").0.id();
        let ok = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {signal} {pid}");
    }

    /// Runs a command with `redis-cli` and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

/// Like [`send`] with GET, from a chosen loopback source address (all of 127.0.0.0/8 is
/// local on Linux).
pub async fn send_from(
    source: &str,
    url: &str,
    bearer: Option<&str>,
    headers: &[(&str, &str)],
) -> Reply {
    let client = reqwest::Client::builder()
        .no_proxy()
        .local_address(Some(source.parse().expect("source address")))
        .build()
        .expect("client");
    exchange(&client, "GET", url, bearer, headers).await
}

/// The lines of a JSON-lines log (the access and audit logs), parsed.
pub fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// The value of one Prometheus sample from an admin listener, e.g.
/// `portcullis_rate_limit_decisions_total{outcome="allowed",tier="users"}`; 0 when absent.
pub async fn metric(admin_port: u16, sample: &str) -> f64 {
    let text = get(&format!("http://127.0.0.1:{admin_port}/metrics"), None)
        .await
        .body;
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Test certificates made with the openssl CLI: a CA, another CA, and leaves signed by them.
///
/// * `server`: localhost, api.test, 127.0.0.1 (by `ca`)
/// * `other-name`: other.test (by `ca`)
/// * `client` (`CN=reports-job,O=Acme\, Inc.`), `gateway`: client certificates (by `ca`)
/// * `rogue-server`: localhost, 127.0.0.1 (by `other-ca`)
/// * `rogue-client`: a client certificate (by `other-ca`)
pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        let pki = Pki {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        pki.ca("ca");
        pki.ca("other-ca");
        let server = "subjectAltName=DNS:localhost,DNS:api.test,IP:127.0.0.1\n\
                      extendedKeyUsage=serverAuth";
        let client = "extendedKeyUsage=clientAuth";
        pki.leaf("server", "ca", "localhost", server);
        pki.leaf(
            "other-name",
            "ca",
            "other.test",
            "subjectAltName=DNS:other.test\nextendedKeyUsage=serverAuth",
        );
        pki.leaf("client", "ca", "/O=Acme, Inc./CN=reports-job", client);
        pki.leaf("gateway", "ca", "portcullis", client);
        pki.leaf("rogue-server", "other-ca", "localhost", server);
        pki.leaf("rogue-client", "other-ca", "reports-job", client);
        pki
    }

    /// `name.pem` or `name.key`.
    pub fn path(&self, file: &str) -> String {
        self.dir.path().join(file).display().to_string()
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn ca(&self, name: &str) {
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
        ]);
    }

    /// `cn` is a common name, or a whole `-subj` when it starts with `/`.
    fn leaf(&self, name: &str, ca: &str, cn: &str, extensions: &str) {
        let subject = if cn.starts_with('/') {
            cn.to_string()
        } else {
            format!("/CN={cn}")
        };
        let ext = format!("{name}.ext");
        std::fs::write(
            self.dir.path().join(&ext),
            format!("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n{extensions}\n"),
        )
        .expect("write extensions");
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &subject,
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-extfile",
            &ext,
        ]);
    }

    /// SHA-256 of a certificate's DER encoding, as RFC 8705's `x5t#S256` hashes it.
    pub fn sha256(&self, name: &str) -> Vec<u8> {
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
            .arg(self.path(&format!("{name}.pem")))
            .output()
            .expect("openssl");
        let text = String::from_utf8_lossy(&out.stdout);
        let hex = text
            .trim()
            .rsplit('=')
            .next()
            .unwrap_or("")
            .replace(':', "");
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
            .collect()
    }

    /// A client trusting `ca`, optionally presenting `identity` (a leaf's name).
    pub fn client(&self, identity: Option<&str>) -> reqwest::Client {
        let ca = std::fs::read(self.path("ca.pem")).expect("ca");
        let mut b = reqwest::Client::builder()
            .no_proxy()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("ca pem"));
        if let Some(name) = identity {
            let mut pem = std::fs::read(self.path(&format!("{name}.pem"))).expect("cert");
            pem.extend(std::fs::read(self.path(&format!("{name}.key"))).expect("key"));
            b = b.identity(reqwest::Identity::from_pem(&pem).expect("identity"));
        }
        b.build().expect("client")
    }
}

/// The echo upstream over TLS, with `cert` (a [`Pki`] leaf); with `client_ca`, it requires a
/// client certificate signed by that CA.
pub struct TlsEcho {
    pub port: u16,
    _proc: Proc,
}

impl TlsEcho {
    pub fn start(pki: &Pki, cert: &str, client_ca: Option<&str>) -> TlsEcho {
        let port = free_port();
        let port_s = port.to_string();
        let cert_path = pki.path(&format!("{cert}.pem"));
        let key_path = pki.path(&format!("{cert}.key"));
        let mut args = vec!["tls-echo", &port_s, &cert_path, &key_path];
        let ca_path = client_ca.map(|ca| pki.path(&format!("{ca}.pem")));
        if let Some(ca) = &ca_path {
            args.push(ca);
        }
        let proc = python(&args);
        wait_for_port(port, "TLS echo upstream");
        TlsEcho { port, _proc: proc }
    }
}

/// The test identity provider: the certified npm `oidc-provider` (tests/idp/server.mjs) on a
/// free port, with client `portcullis-test` for client credentials grants.
pub struct Provider {
    proc: Proc,
    pub issuer: String,
    /// What the provider printed, for the message of a failed test.
    log: tempfile::NamedTempFile,
}

impl Provider {
    pub const CLIENT: &'static str = "portcullis-test";
    pub const SECRET: &'static str = "portcullis-test-secret-0123456789";

    pub fn start() -> Provider {
        let dir = repo_path("tests/idp");
        assert!(
            dir.join("node_modules/oidc-provider").exists(),
            "tests/idp/node_modules is missing: run the test command from the README (it runs `npm ci`)"
        );
        let port = free_port();
        let log = tempfile::NamedTempFile::new().expect("log file");
        let child = Command::new("node")
            .arg(dir.join("server.mjs"))
            .arg(port.to_string())
            .stdout(log.reopen().expect("log"))
            .stderr(log.reopen().expect("log"))
            .spawn()
            .expect("node is needed for the interop tests");
        let proc = Proc(child);
        wait_for_port(port, "oidc-provider");
        Provider {
            proc,
            issuer: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    /// What the provider printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// A real client credentials grant (RFC 6749 §4.4) for a resource indicator (RFC 8707).
    pub async fn token(&self, resource: &str, scope: &str) -> String {
        let resp = client()
            .post(format!("{}/token", self.issuer))
            .basic_auth(Self::CLIENT, Some(Self::SECRET))
            .form(&[
                ("grant_type", "client_credentials"),
                ("resource", resource),
                ("scope", scope),
            ])
            .send()
            .await
            .unwrap_or_else(|e| panic!("token request: {e}; provider log:\n{}", self.log()));
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.expect("token response");
        assert!(status.is_success(), "token endpoint: {status} {body}");
        body["access_token"]
            .as_str()
            .expect("access_token")
            .to_string()
    }

    /// Registers a client (RFC 7591) with `metadata`; the provider's answer (`client_id`,
    /// `client_secret` …).
    pub async fn register(&self, metadata: &serde_json::Value) -> serde_json::Value {
        let resp = client()
            .post(format!("{}/reg", self.issuer))
            .json(metadata)
            .send()
            .await
            .expect("registration");
        let status = resp.status().as_u16();
        let answer: serde_json::Value = resp.json().await.expect("registration answer");
        assert_eq!(status, 201, "registration: {answer}");
        answer
    }

    /// Revokes a token (RFC 7009).
    pub async fn revoke(&self, token: &str) {
        let resp = client()
            .post(format!("{}/token/revocation", self.issuer))
            .basic_auth(Self::CLIENT, Some(Self::SECRET))
            .form(&[("token", token)])
            .send()
            .await
            .expect("revocation request");
        assert!(resp.status().is_success(), "revocation: {}", resp.status());
    }

    /// How many introspection requests the provider has served.
    pub async fn introspections(&self) -> u64 {
        let body = get(&format!("{}/test/introspections", self.issuer), None)
            .await
            .json();
        body["count"].as_u64().expect("count")
    }

    /// Freezes the process (SIGSTOP): connections are accepted by the kernel, never answered.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    pub fn resume(&self) {
        self.signal("CONT");
    }

    /// Kills the process: connections are refused.
    pub fn stop(&mut self) {
        let _ = self.proc.0.kill();
        let _ = self.proc.0.wait();
    }

    fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.proc.0.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{name}");
    }
}

/// An upstream that counts the connections it accepts and answers every request on them
/// (keep-alive) with the body it read: raw, chunked framing included, when short, else its
/// length in bytes.
pub struct CountingUpstream {
    pub port: u16,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl CountingUpstream {
    pub async fn start() -> CountingUpstream {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut data = Vec::new();
                    let mut chunk = vec![0u8; 65536];
                    loop {
                        while let Some(body) = take_request(&mut data) {
                            let text = if body.len() < 200 {
                                String::from_utf8_lossy(&body).into_owned()
                            } else {
                                body.len().to_string()
                            };
                            let reply = format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{text}",
                                text.len()
                            );
                            if conn.write_all(reply.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => data.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        CountingUpstream { port, accepted }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Takes one whole request off the front of `data`, if it is all there; returns its body
/// (a `Content-Length` one, or a chunked one raw).
fn take_request(data: &mut Vec<u8>) -> Option<Vec<u8>> {
    let end = data.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
    let rest = &data[end + 4..];
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    let body_len = match length {
        Some(n) if rest.len() >= n => n,
        Some(_) => return None,
        None if !head.contains("chunked") => 0,
        None => rest.windows(5).position(|w| w == b"0\r\n\r\n")? + 5,
    };
    let body = rest[..body_len].to_vec();
    data.drain(..end + 4 + body_len);
    Some(body)
}

/// A WebSocket backend echoing every text message; its port.
pub async fn websocket_echo() -> u16 {
    use futures_util::{SinkExt, StreamExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    if message.is_text() && ws.send(message).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

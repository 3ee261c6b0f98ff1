//! OpenTelemetry tracing through the running gateway: spans exported over OTLP/HTTP to a real
//! receiver that decodes them with OpenTelemetry's own protobuf messages
//! (tests/support/otlp_fixture.py), W3C trace context continued and passed upstream.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{
    debian_python, fixture_jwks, free_port, get, metric, repo_path, send, signed_with,
    wait_for_port, Echo, FileServer, Gateway, Proc, Provider,
};
use serde_json::Value;

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// Where the receiver's Python packages live: `opentelemetry-proto` from PyPI, installed
/// here once (tests/run.sh does it before the tests run).
fn python_packages() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = repo_path("target/pydeps");
        let importable = Command::new(debian_python())
            .args(["-c", "import opentelemetry.proto.collector.trace.v1"])
            .env("PYTHONPATH", &dir)
            .status()
            .is_ok_and(|s| s.success());
        if !importable {
            let ok = Command::new(debian_python())
                .args(["-m", "pip", "install", "--quiet", "--target"])
                .arg(&dir)
                .arg("opentelemetry-proto==1.45.2")
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                ok,
                "pip install --target target/pydeps opentelemetry-proto failed"
            );
        }
        dir
    })
}

/// The OTLP receiver.
struct Collector {
    port: u16,
    _proc: Proc,
}

impl Collector {
    fn start() -> Collector {
        let port = free_port();
        let child = Command::new(debian_python())
            .arg(repo_path("tests/support/otlp_fixture.py"))
            .arg(port.to_string())
            .env("PYTHONPATH", python_packages())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs the OTLP receiver");
        let proc = Proc(child);
        wait_for_port(port, "OTLP receiver");
        Collector { port, _proc: proc }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/v1/traces", self.port)
    }

    async fn spans(&self) -> Vec<Value> {
        let r = get(&format!("http://127.0.0.1:{}/__spans", self.port), None).await;
        serde_json::from_str(&r.body).expect("spans JSON")
    }

    /// The spans of one trace, once at least `count` of them arrived.
    async fn trace(&self, trace_id: &str, count: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let spans: Vec<Value> = self
                .spans()
                .await
                .into_iter()
                .filter(|s| s["trace_id"] == trace_id)
                .collect();
            if spans.len() >= count {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "trace {trace_id}: {} of {count} spans arrived: {spans:#?}",
                spans.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn received(&self, text: &str) -> bool {
        let url = format!("http://127.0.0.1:{}/__raw_contains?s={text}", self.port);
        get(&url, None).await.body == "yes"
    }

    async fn answer_with(&self, status: u16) {
        let url = format!("http://127.0.0.1:{}/__status?code={status}", self.port);
        assert_eq!(send("POST", &url, None, &[]).await.status, 200);
    }
}

fn named<'a>(spans: &'a [Value], name: &str) -> &'a Value {
    spans
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no span {name:?} in {spans:#?}"))
}

fn traceparent(trace: &str, sampled: bool) -> String {
    format!(
        "00-{trace}-{CLIENT_SPAN}-{}",
        if sampled { "01" } else { "00" }
    )
}

/// A gateway tracing to `collector`, and its admin port.
fn gateway(collector: &Collector, echo: &Echo, keys: &str, tracing: &str) -> (Gateway, u16) {
    let admin = free_port();
    let gw = Gateway::start(&format!(
        r#"
[admin]
listen = "127.0.0.1:{admin}"

[tracing]
endpoint = "{endpoint}"
interval = "100ms"
{tracing}

[issuers.idp]
issuer = "https://idp.test"
audiences = ["api"]
{keys}

[issuers.idp.keys]
min_refresh_interval = "1s"
unknown_kid_cooldown = "1s"

[upstreams.backend]
targets = ["127.0.0.1:{echo}"]

[[rate_limit.tiers]]
name = "users"
limits = ["100000/minute"]

[[routes]]
path_prefix = "/orders"
upstream = "backend"
access = "authenticated"
"#,
        endpoint = collector.endpoint(),
        echo = echo.port,
    ));
    (gw, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_one_span_tree_continued_from_the_client_and_passed_upstream() {
    let collector = Collector::start();
    let echo = Echo::start();
    let idp = FileServer::start();
    idp.put("jwks.json", &fixture_jwks(&["rsa-1"]));
    let keys = format!("jwks_url = \"{}\"", idp.url("/jwks.json"));
    let (gw, _) = gateway(&collector, &echo, &keys, "");
    let token = signed_with("rsa-1", "rsa-1", "https://idp.test", &[]);
    let parent = traceparent(CLIENT_TRACE, true);
    let headers = [
        ("traceparent", parent.as_str()),
        ("tracestate", "vendor=opaque"),
    ];
    // The keys are fetched in the background at start: wait for them.
    let deadline = Instant::now() + Duration::from_secs(10);
    let r = loop {
        let r = send(
            "GET",
            &gw.url("/orders/7?access_token=nope"),
            Some(&token),
            &headers,
        )
        .await;
        if r.status == 200 || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(r.status, 200, "{}", r.body);

    // The upstream got the trace, with the gateway's upstream span as its parent.
    let seen = r.json();
    let upstream_parent = seen["headers"]["traceparent"][0]
        .as_str()
        .expect("traceparent");
    let fields: Vec<&str> = upstream_parent.split('-').collect();
    assert_eq!(fields.len(), 4, "{upstream_parent}");
    assert_eq!(
        (fields[0], fields[1], fields[3]),
        ("00", CLIENT_TRACE, "01")
    );
    assert_ne!(fields[2], CLIENT_SPAN);
    assert_eq!(seen["headers"]["tracestate"][0], "vendor=opaque");

    let spans = collector.trace(CLIENT_TRACE, 5).await;
    let server = named(&spans, "GET /orders");
    assert_eq!(server["kind"], 2, "server");
    assert_eq!(server["parent_span_id"], CLIENT_SPAN);
    assert_eq!(server["trace_state"], "vendor=opaque");
    assert_eq!(server["attributes"]["http.route"], "/orders");
    assert_eq!(server["attributes"]["http.request.method"], "GET");
    assert_eq!(server["attributes"]["url.path"], "/orders/7");
    assert_eq!(server["attributes"]["http.response.status_code"], 200);
    assert_eq!(server["resource"]["service.name"], "portcullis");
    assert_eq!(server["scope"], "portcullis");
    let server_id = server["span_id"].as_str().expect("id");
    for name in ["authenticate", "authorize", "rate_limit", "upstream"] {
        let span = named(&spans, name);
        assert_eq!(span["parent_span_id"], server_id, "{name}");
        assert!(span["start"].as_u64() >= server["start"].as_u64(), "{name}");
        assert!(span["end"].as_u64() <= server["end"].as_u64(), "{name}");
        assert!(span["start"].as_u64() <= span["end"].as_u64(), "{name}");
    }
    let auth = named(&spans, "authenticate");
    assert_eq!(auth["attributes"]["portcullis.auth.outcome"], "ok");
    assert_eq!(auth["attributes"]["portcullis.token_cache"], "miss");
    assert_eq!(
        named(&spans, "authorize")["attributes"]["portcullis.authz.outcome"],
        "granted"
    );
    let limit = named(&spans, "rate_limit");
    assert_eq!(limit["attributes"]["portcullis.rate_limit.tier"], "users");
    assert_eq!(limit["attributes"]["portcullis.rate_limit.allowed"], true);
    let upstream = named(&spans, "upstream");
    assert_eq!(upstream["kind"], 3, "client");
    assert_eq!(upstream["span_id"], fields[2]);
    assert_eq!(upstream["attributes"]["portcullis.upstream"], "backend");
    assert_eq!(upstream["attributes"]["http.response.status_code"], 200);
    assert_eq!(upstream["attributes"]["server.address"], "127.0.0.1");
    assert_eq!(upstream["attributes"]["server.port"], echo.port);
    // Never the token, nor the query that could carry one.
    assert!(!collector.received(&token[token.len() - 40..]).await);
    assert!(!collector.received("access_token").await);

    // Again with the same token: verified from the cache. A new trace (no traceparent).
    let r = get(&gw.url("/orders/8"), Some(&token)).await;
    assert_eq!(r.status, 200);
    let seen = r.json();
    let second = seen["headers"]["traceparent"][0]
        .as_str()
        .expect("traceparent");
    let trace = second.split('-').nth(1).expect("trace id");
    assert_ne!(trace, CLIENT_TRACE);
    let spans = collector.trace(trace, 5).await;
    assert!(named(&spans, "GET /orders")["parent_span_id"] == "");
    assert_eq!(
        named(&spans, "authenticate")["attributes"]["portcullis.token_cache"],
        "hit"
    );

    // The provider rotates its key; the first token signed with the new one makes the
    // request wait for a key fetch, which is a span of its own under authentication.
    idp.put("jwks.json", &fixture_jwks(&["rsa-1", "rsa-2"]));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let rotated = signed_with("rsa-2", "rsa-2", "https://idp.test", &[]);
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let parent = traceparent(trace, true);
    let r = send(
        "GET",
        &gw.url("/orders/9"),
        Some(&rotated),
        &[("traceparent", parent.as_str())],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let spans = collector.trace(trace, 6).await;
    let fetch = named(&spans, "jwks fetch");
    assert_eq!(
        fetch["parent_span_id"],
        named(&spans, "authenticate")["span_id"]
    );
    assert_eq!(fetch["status"]["code"], 0, "the fetch succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_traced_and_sampling_follows_the_ratio_and_the_client() {
    let collector = Collector::start();
    let echo = Echo::start();
    let keys = "jwks_file = \"{fixtures}/rsa-1.jwks.json\"";
    let (gw, _) = gateway(&collector, &echo, keys, "sampling_ratio = 0.0");

    // Ratio 0: a request without trace context is not traced, and nothing is forwarded.
    let token = signed_with("rsa-1", "rsa-1", "https://idp.test", &[]);
    let r = get(&gw.url("/orders/1"), Some(&token)).await;
    assert_eq!(r.status, 200);
    assert!(r.json()["headers"].get("traceparent").is_none());
    // A client that did not sample: its context is passed on untouched, nothing recorded.
    let unsampled = traceparent("11111111111111111111111111111111", false);
    let r = send(
        "GET",
        &gw.url("/orders/1"),
        Some(&token),
        &[("traceparent", unsampled.as_str())],
    )
    .await;
    assert_eq!(r.json()["headers"]["traceparent"][0], unsampled.as_str());

    // A client that sampled is followed, refusals included: a 401 has no upstream span.
    let trace = "22222222222222222222222222222222";
    let parent = traceparent(trace, true);
    let r = send(
        "GET",
        &gw.url("/orders/1"),
        Some("not.a.jwt"),
        &[("traceparent", parent.as_str())],
    )
    .await;
    assert_eq!(r.status, 401);
    let spans = collector.trace(trace, 2).await;
    let server = named(&spans, "GET /orders");
    assert_eq!(server["attributes"]["http.response.status_code"], 401);
    assert_eq!(server["status"]["code"], 0, "a 4xx is not a server error");
    assert_eq!(
        named(&spans, "authenticate")["attributes"]["portcullis.auth.outcome"],
        "malformed"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let spans = collector.trace(trace, 2).await;
    assert_eq!(
        spans.len(),
        2,
        "no authorization or upstream span: {spans:#?}"
    );
    assert!(collector
        .spans()
        .await
        .iter()
        .all(|s| s["trace_id"] == trace));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_fails_costs_no_request_and_the_queue_stays_bounded() {
    let collector = Collector::start();
    let echo = Echo::start();
    let keys = "jwks_file = \"{fixtures}/rsa-1.jwks.json\"";
    let settings = "max_queue = 20\nmax_batch = 10\ntimeout = \"300ms\"";
    let (gw, admin) = gateway(&collector, &echo, keys, settings);
    let token = signed_with("rsa-1", "rsa-1", "https://idp.test", &[]);

    // The collector takes 2 s to refuse each export, past the 300 ms timeout. 200 requests at
    // once make 1,000 spans for a queue of 20: every request is answered, the spans beyond
    // the queue are dropped, and the exports that time out are dropped too.
    collector.answer_with(0).await;
    let requests = (0..200).map(|i| {
        let url = gw.url(&format!("/orders/{i}"));
        let token = token.clone();
        async move { get(&url, Some(&token)).await.status }
    });
    let statuses = common::join_all(requests).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let full = "portcullis_trace_spans_dropped_total{reason=\"queue_full\"}";
    let failed = "portcullis_trace_spans_dropped_total{reason=\"export_failed\"}";
    assert!(
        metric(admin, full).await >= 900.0,
        "{}",
        metric(admin, full).await
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(admin, full).await + metric(admin, failed).await < 1000.0 {
        assert!(Instant::now() < deadline, "spans unaccounted for");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(collector.spans().await.is_empty());

    // The collector is back: exports are accepted again.
    collector.answer_with(200).await;
    let r = get(&gw.url("/orders/x"), Some(&token)).await;
    assert_eq!(r.status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(admin, "portcullis_trace_spans_exported_total").await < 5.0 {
        assert!(Instant::now() < deadline, "nothing exported after recovery");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(collector.spans().await.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opaque_token_is_introspected_in_a_span_of_its_own() {
    const OPAQUE: &str = "https://opaque.portcullis.test";
    let collector = Collector::start();
    let idp = Provider::start();
    let echo = Echo::start();
    let secret = (
        "PORTCULLIS_TEST_INTROSPECTION_SECRET",
        "portcullis-gateway-secret-0123456789",
    );
    let config = format!(
        r#"
[tracing]
endpoint = "{endpoint}"
interval = "100ms"

[issuers.provider]
issuer = "{issuer}"
audiences = ["{OPAQUE}"]
discovery = true

[issuers.provider.introspection]
client_id = "portcullis-gateway"
client_secret_env = "{env}"

[upstreams.backend]
targets = ["127.0.0.1:{echo}"]

[[routes]]
path = "/reports"
upstream = "backend"
access = "authenticated"
callers = "services"

[[routes.allow]]
scopes = ["reports:read"]
"#,
        endpoint = collector.endpoint(),
        issuer = idp.issuer,
        env = secret.0,
        echo = echo.port,
    );
    let gw = Gateway::start_with("", &config, &[secret]);
    let token = idp.token(OPAQUE, "reports:read").await;
    let trace = "33333333333333333333333333333333";
    let parent = traceparent(trace, true);
    let r = send(
        "GET",
        &gw.url("/reports"),
        Some(&token),
        &[("traceparent", parent.as_str())],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let spans = collector.trace(trace, 5).await;
    let introspection = named(&spans, "introspection");
    assert_eq!(
        introspection["parent_span_id"],
        named(&spans, "authenticate")["span_id"]
    );
    assert_eq!(
        introspection["attributes"]["portcullis.introspection.result"],
        "active"
    );
    assert!(!collector.received(&token).await);
}

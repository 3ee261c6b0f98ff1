//! Retries, retry budgets, circuit breaking and the in-flight cap, through the running
//! gateway against a backend that fails on purpose and counts what reached it.

mod common;

use std::time::{Duration, Instant};

use common::{free_port, get, metric, send, Flaky, Gateway};

/// The config of these tests: every path to the flaky backend, with `upstream` lines added.
fn config(flaky: &Flaky, admin: u16, upstream: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:{admin}"

[upstreams.backend]
targets = ["127.0.0.1:{port}"]
passive_ejection = "0s"
{upstream}

[[routes]]
path_prefix = "/"
upstream = "backend"
access = "public"
"#,
        port = flaky.port
    )
}

fn gateway(flaky: &Flaky, admin: u16, upstream: &str) -> Gateway {
    Gateway::start(&config(flaky, admin, upstream))
}

#[tokio::test]
async fn failed_answers_are_retried_only_when_the_request_is_safe_to_resend() {
    let flaky = Flaky::start();
    let admin = free_port();
    let gw = gateway(
        &flaky,
        admin,
        "retries = 2\nretry_on_status = [502, 503]\nretry_backoff = \"5ms\"\n\
         retry_budget = { ratio = 1.0, min_retries = 100 }",
    );

    // Two 503s, then the third attempt answers.
    let r = get(&gw.url("/a?fail_times=2"), None).await;
    assert_eq!((r.status, r.body.as_str()), (200, "attempt 3"));
    assert_eq!(flaky.hits("/a").await, 3);

    // POST is not idempotent: its 503 goes to the client, sent once.
    let r = send("POST", &gw.url("/b?fail_times=1"), None, &[]).await;
    assert_eq!((r.status, r.body.as_str()), (503, "not yet"));
    assert_eq!(flaky.hits("/b").await, 1);

    // With an Idempotency-Key, a POST (and its body) is sent again.
    let client = common::client();
    let r = client
        .post(gw.url("/c?fail_times=1"))
        .header("idempotency-key", "k-1")
        .body("{\"amount\": 3}")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 200);
    assert_eq!(flaky.hits("/c").await, 2);

    // When every attempt fails, the last answer is the upstream's own.
    let r = get(&gw.url("/d?status=503"), None).await;
    assert_eq!((r.status, r.body.as_str()), (503, "as asked"));
    assert_eq!(flaky.hits("/d").await, 3);
    // A status not listed is not retried.
    let r = get(&gw.url("/e?status=504"), None).await;
    assert_eq!(r.status, 504);
    assert_eq!(flaky.hits("/e").await, 1);

    let retried = metric(
        admin,
        "portcullis_upstream_retries_total{reason=\"status\",upstream=\"backend\"}",
    )
    .await;
    assert_eq!(retried, 2.0 + 1.0 + 2.0);
}

#[tokio::test]
async fn read_timeouts_are_retried_within_the_overall_timeout() {
    let flaky = Flaky::start();
    let admin = free_port();
    let gw = gateway(
        &flaky,
        admin,
        "retries = 2\nretry_on_timeout = true\nread_timeout = \"300ms\"\ntimeout = \"2s\"\n\
         retry_budget = { ratio = 1.0, min_retries = 100 }",
    );
    let started = Instant::now();
    let r = get(&gw.url("/slow?delay_ms=1000"), None).await;
    assert_eq!(r.status, 504, "{}", r.body);
    assert_eq!(flaky.hits("/slow").await, 3);
    assert!(started.elapsed() < Duration::from_millis(1900));

    let r = send("DELETE", &gw.url("/slow-delete?delay_ms=1000"), None, &[]).await;
    assert_eq!(r.status, 504);
    assert_eq!(flaky.hits("/slow-delete").await, 3);
    let r = send("POST", &gw.url("/slow-post?delay_ms=1000"), None, &[]).await;
    assert_eq!(r.status, 504);
    assert_eq!(flaky.hits("/slow-post").await, 1, "a POST is never resent");

    // The overall timeout bounds the retries: 4 attempts of 300 ms do not fit in 700 ms.
    gw.reload(&config(
        &flaky,
        admin,
        "retries = 3\nretry_on_timeout = true\nread_timeout = \"300ms\"\ntimeout = \"700ms\"\n\
         retry_budget = { ratio = 1.0, min_retries = 100 }",
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let r = get(&gw.url("/bounded?delay_ms=1000"), None).await;
    assert_eq!(r.status, 504);
    assert!(flaky.hits("/bounded").await <= 3);
    assert!(
        started.elapsed() < Duration::from_millis(1100),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_retry_budget_caps_retries_during_an_outage() {
    let flaky = Flaky::start();
    let admin = free_port();
    let gw = gateway(
        &flaky,
        admin,
        "retries = 1\nretry_on_status = [503]\nretry_backoff = \"1ms\"\n\
         retry_budget = { ratio = 0.1, min_retries = 2, window = \"30s\" }",
    );
    for _ in 0..20 {
        let r = get(&gw.url("/down?status=503"), None).await;
        assert_eq!(r.status, 503);
    }
    // 20 requests, and retries up to max(2, 10 % of 20).
    assert_eq!(flaky.hits("/down").await, 22);
    let exhausted = metric(
        admin,
        "portcullis_upstream_retry_budget_exhausted_total{upstream=\"backend\"}",
    )
    .await;
    assert_eq!(exhausted, 18.0);
}

#[tokio::test]
async fn the_circuit_opens_on_failures_and_a_probe_closes_it() {
    let flaky = Flaky::start();
    let admin = free_port();
    let gw = gateway(
        &flaky,
        admin,
        "retries = 0\n[upstreams.backend.circuit_breaker]\nconsecutive_failures = 3\nopen_for = \"1s\"",
    );
    let sample = format!(
        "portcullis_upstream_circuit_state{{target=\"127.0.0.1:{}\",upstream=\"backend\"}}",
        flaky.port
    );
    let state = || metric(admin, &sample);
    assert_eq!(get(&gw.url("/x"), None).await.status, 200);
    assert_eq!(state().await, 0.0);

    flaky.set_failing(true).await;
    for _ in 0..3 {
        assert_eq!(get(&gw.url("/x"), None).await.body, "failing");
    }
    assert_eq!(state().await, 2.0);
    // Open: the gateway answers at once, the backend sees nothing.
    let r = get(&gw.url("/x"), None).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "service_unavailable");
    assert_eq!(flaky.hits("/x").await, 4);
    let ready = get(&format!("http://127.0.0.1:{admin}/readyz"), None).await;
    assert_eq!(ready.status, 503);
    assert!(ready.body.contains("circuit is open"), "{}", ready.body);

    // After open_for, one probe: it fails, and the circuit opens again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(&gw.url("/x"), None).await.body, "failing");
    assert_eq!(state().await, 2.0);
    assert_eq!(get(&gw.url("/x"), None).await.status, 503);
    assert_eq!(flaky.hits("/x").await, 5);

    // The backend recovers; the next probe closes the circuit.
    flaky.set_failing(false).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(&gw.url("/x"), None).await.status, 200);
    assert_eq!(state().await, 0.0);
    assert_eq!(get(&gw.url("/x"), None).await.status, 200);
    let ready = get(&format!("http://127.0.0.1:{admin}/readyz"), None).await;
    assert_eq!(ready.status, 200, "{}", ready.body);
}

#[tokio::test]
async fn requests_past_max_requests_are_refused_at_once() {
    let flaky = Flaky::start();
    let admin = free_port();
    let gw = gateway(&flaky, admin, "max_requests = 2");
    let url = gw.url("/busy?delay_ms=800");
    let started = Instant::now();
    let replies = common::join_all((0..3).map(|i| {
        let url = url.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(100 * i)).await;
            let r = get(&url, None).await;
            (
                r.status,
                started.elapsed(),
                r.header("retry-after").map(str::to_owned),
            )
        }
    }))
    .await;
    let refused: Vec<_> = replies.iter().filter(|(s, _, _)| *s == 503).collect();
    assert_eq!(refused.len(), 1, "{replies:?}");
    assert_eq!(
        refused[0].2.as_deref(),
        Some("1"),
        "busy, not down: retry soon"
    );
    assert!(
        refused[0].1 < Duration::from_millis(600),
        "refused at once: {replies:?}"
    );
    assert_eq!(flaky.hits("/busy").await, 2);
    let overflow = metric(
        admin,
        "portcullis_upstream_overflow_total{upstream=\"backend\"}",
    )
    .await;
    assert_eq!(overflow, 1.0);
    // The places are given back.
    assert_eq!(get(&gw.url("/after"), None).await.status, 200);
}

/// The name server of the DNS test: answers from `records.json` in `dir`.
fn name_server(dir: &std::path::Path) -> (u16, common::Proc) {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp port");
    let port = socket.local_addr().expect("addr").port();
    drop(socket);
    let child = std::process::Command::new("python3")
        .arg(common::repo_path("tests/support/dns_fixture.py"))
        .arg(port.to_string())
        .arg(dir.join("records.json"))
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("python3 is needed for the test servers");
    (port, common::Proc(child))
}

fn set_records(dir: &std::path::Path, ips: &[&str]) {
    let tmp = dir.join("records.tmp");
    std::fs::write(&tmp, serde_json::json!({ "api.test": ips }).to_string()).expect("write");
    std::fs::rename(tmp, dir.join("records.json")).expect("rename");
}

/// Sends `n` requests and says which backends got them.
async fn spread(gw: &Gateway, path: &str, backends: &[&Flaky], n: usize) -> Vec<u64> {
    for _ in 0..n {
        assert_eq!(get(&gw.url(path), None).await.status, 200);
    }
    let mut hits = Vec::new();
    for b in backends {
        hits.push(b.hits(path).await);
    }
    hits
}

#[tokio::test]
async fn host_names_are_resolved_again_and_every_address_is_a_target() {
    let dir = tempfile::tempdir().expect("tempdir");
    set_records(dir.path(), &["127.0.0.1"]);
    let (dns_port, dns) = name_server(dir.path());
    std::thread::sleep(Duration::from_millis(300));
    let port = free_port();
    let a = Flaky::start_at("127.0.0.1", port);
    let b = Flaky::start_at("127.0.0.2", port);
    let admin = free_port();
    let gw = Gateway::start(&format!(
        r#"
[admin]
listen = "127.0.0.1:{admin}"

[dns]
servers = ["127.0.0.1:{dns_port}"]
timeout = "300ms"

[upstreams.backend]
targets = ["api.test:{port}"]

[[routes]]
path_prefix = "/"
upstream = "backend"
access = "public"
"#
    ));
    assert_eq!(spread(&gw, "/one", &[&a, &b], 4).await, [4, 0]);

    // The name moves: within a few TTLs, traffic follows without a reload.
    set_records(dir.path(), &["127.0.0.2"]);
    let moved = async {
        loop {
            get(&gw.url("/probe"), None).await;
            if b.hits("/probe").await > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), moved)
        .await
        .expect("traffic moved to the new address");
    assert_eq!(spread(&gw, "/two", &[&a, &b], 4).await, [0, 4]);

    // Two addresses: both are targets.
    set_records(dir.path(), &["127.0.0.1", "127.0.0.2"]);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(spread(&gw, "/three", &[&a, &b], 6).await, [3, 3]);
    let up = |host: &str| {
        let sample = format!(
            "portcullis_upstream_target_up{{target=\"{host}:{port}\",upstream=\"backend\"}}"
        );
        async move { metric(admin, &sample).await }
    };
    assert_eq!((up("127.0.0.1").await, up("127.0.0.2").await), (1.0, 1.0));

    // The name server goes away: the last answer is kept.
    drop(dns);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(spread(&gw, "/four", &[&a, &b], 6).await, [3, 3]);
    assert!(metric(admin, "portcullis_dns_lookups_total{result=\"failed\"}").await >= 1.0);
    assert!(gw.log().contains("keeping"), "the failed lookup is logged");
}

#[tokio::test]
async fn clients_that_leave_do_not_open_the_circuit() {
    let flaky = Flaky::start();
    let admin = free_port();
    let gw = gateway(
        &flaky,
        admin,
        "[upstreams.backend.circuit_breaker]\nconsecutive_failures = 2",
    );
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(100))
        .build()
        .expect("client");
    for _ in 0..4 {
        let r = impatient.get(gw.url("/slow?delay_ms=500")).send().await;
        assert!(r.is_err(), "the client gives up first");
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(get(&gw.url("/x"), None).await.status, 200);
    assert!(
        !gw.log().contains("opened"),
        "a client leaving is not the target failing"
    );
}

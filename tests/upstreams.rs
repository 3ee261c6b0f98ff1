//! Upstream failures through the running gateway: JSON errors, connection retries, ejection
//! of failing targets, timeouts.

mod common;

use std::time::Duration;

use common::{free_port, get, send, CountingUpstream, Echo, FileServer, Gateway};

#[tokio::test]
async fn upstream_failures_are_json_and_connection_failures_are_retried() {
    let echo = Echo::start();
    // A port nobody listens on, and one that accepts but never answers.
    let closed = free_port();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in silent.incoming() {
            held.push(conn);
        }
    });
    // Answers at once, then sends its 30-byte body a byte every 100 ms: no single read
    // waits long, the whole takes 3 s.
    let trickle = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let trickle_port = trickle.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in trickle.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 30\r\n\r\n");
                for _ in 0..30 {
                    std::thread::sleep(Duration::from_millis(100));
                    if conn.write_all(b"x").is_err() {
                        return;
                    }
                }
            });
        }
    });
    let gw = Gateway::start(&format!(
        r#"
[upstreams.down]
targets = ["127.0.0.1:{closed}"]
retries = 0

[upstreams.lone]
targets = ["127.0.0.1:{closed}"]

[upstreams.half]
targets = ["127.0.0.1:{closed}", "127.0.0.1:{echo}"]
retries = 1

[upstreams.eject]
targets = ["127.0.0.1:{closed}", "127.0.0.1:{echo}"]
retries = 0
passive_ejection = "1s"

[upstreams.slow]
targets = ["127.0.0.1:{silent_port}"]
read_timeout = "300ms"

[upstreams.bounded]
targets = ["127.0.0.1:{silent_port}"]
read_timeout = "10s"
timeout = "400ms"

[upstreams.trickle]
targets = ["127.0.0.1:{trickle_port}"]
read_timeout = "1s"
timeout = "600ms"

[[routes]]
path = "/down"
access = "public"
upstream = "down"

[[routes]]
path = "/lone"
access = "public"
upstream = "lone"

[[routes]]
path = "/half"
access = "public"
upstream = "half"

[[routes]]
path = "/eject"
access = "public"
upstream = "eject"

[[routes]]
path = "/slow"
access = "public"
upstream = "slow"

[[routes]]
path = "/bounded"
access = "public"
upstream = "bounded"

[[routes]]
path = "/trickle"
access = "public"
upstream = "trickle"
"#,
        echo = echo.port
    ));

    let r = get(&gw.url("/down"), None).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json()["error"], "bad_gateway");
    // Its only target is now ejected: a prompt 503, no connection attempt.
    let started = std::time::Instant::now();
    let r = get(&gw.url("/down"), None).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "service_unavailable");
    assert!(started.elapsed() < Duration::from_millis(500));

    // With the default retry, a lone target that refuses is still what the client hears
    // of: the retry finds it ejected, and the answer is the failure, not an outage.
    let r = get(&gw.url("/lone"), None).await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.json()["error"], "bad_gateway");
    assert!(
        !r.body.contains("127.0.0.1"),
        "no internal detail: {}",
        r.body
    );
    assert!(gw.log().contains("trying another target"), "{}", gw.log());

    // Without retries, one request finds the dead target; after that it gets no traffic
    // until the ejection ends, when one request tries it again.
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(get(&gw.url("/eject"), None).await.status);
    }
    assert_eq!(
        statuses.iter().filter(|&&s| s == 502).count(),
        1,
        "{statuses:?}\n{}",
        gw.log()
    );
    assert!(
        statuses.iter().all(|&s| s == 200 || s == 502),
        "{statuses:?}"
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let mut after = Vec::new();
    for _ in 0..4 {
        after.push(get(&gw.url("/eject"), None).await.status);
    }
    assert_eq!(
        after.iter().filter(|&&s| s == 502).count(),
        1,
        "probed again: {after:?}"
    );

    // Every other attempt lands on the closed target first; the retry saves each of them.
    for i in 0..6 {
        let r = send("POST", &gw.url("/half"), None, &[]).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
    }

    let started = std::time::Instant::now();
    let r = get(&gw.url("/slow"), None).await;
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["error"], "gateway_timeout");
    assert!(started.elapsed() < Duration::from_secs(3));

    // The upstream's `timeout` bounds the exchange even where read_timeout would wait longer.
    let started = std::time::Instant::now();
    let r = get(&gw.url("/bounded"), None).await;
    let took = started.elapsed();
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["error"], "gateway_timeout");
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_millis(1_500),
        "{took:?}"
    );

    // A response that started in time is cut when the deadline passes mid-body.
    let started = std::time::Instant::now();
    let cut = reqwest::Client::new()
        .get(gw.url("/trickle"))
        .send()
        .await
        .unwrap();
    assert_eq!(cut.status(), 200);
    let body = cut.bytes().await;
    let took = started.elapsed();
    assert!(body.is_err(), "the body must be cut short: {body:?}");
    assert!(took < Duration::from_millis(2_000), "{took:?}");
}

#[tokio::test]
async fn health_checks_take_a_failing_target_out_and_bring_it_back() {
    let echo = Echo::start();
    let files = FileServer::start();
    files.put("health", "ok");
    files.put("who", "files");
    let gw = Gateway::start(&format!(
        r#"
[upstreams.pool]
targets = ["127.0.0.1:{echo}", "127.0.0.1:{files}"]

[upstreams.pool.health_check]
kind = "http"
path = "/health"
interval = "100ms"
timeout = "500ms"
rise = 2
fall = 2

[[routes]]
path = "/who"
access = "public"
upstream = "pool"
"#,
        echo = echo.port,
        files = files.port
    ));
    let who = || async {
        let mut served = Vec::new();
        for _ in 0..6 {
            let r = get(&gw.url("/who"), None).await;
            assert_eq!(r.status, 200, "{}", r.body);
            served.push(if r.body == "files" { "files" } else { "echo" });
        }
        served
    };
    assert!(
        who().await.contains(&"files"),
        "both targets serve while healthy"
    );

    // The health endpoint starts failing (404): after two failed probes, no more traffic.
    std::fs::remove_file(files.root.path().join("health")).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!who().await.contains(&"files"), "{}", gw.log());
    assert!(gw.log().contains("is down (status 404)"), "{}", gw.log());

    // It recovers: two good probes bring it back.
    files.put("health", "ok");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(who().await.contains(&"files"), "{}", gw.log());
    assert!(gw.log().contains("is up"), "{}", gw.log());
}

#[tokio::test]
async fn weights_and_consistent_hashing_choose_targets() {
    let a = FileServer::start();
    let b = FileServer::start();
    for (server, name) in [(&a, "a"), (&b, "b")] {
        server.put("who", name);
        server.put("sticky/who", name);
    }
    let gw = Gateway::start(&format!(
        r#"
[issuers.idp]
issuer = "https://idp.test"
audiences = ["api"]
jwks_file = "{{fixtures}}/rsa-1.jwks.json"

[upstreams.weighted]
targets = [{{ address = "127.0.0.1:{a}", weight = 3 }}, "127.0.0.1:{b}"]

[upstreams.sticky]
targets = ["127.0.0.1:{a}", "127.0.0.1:{b}"]
balance = "consistent_hash"

[[routes]]
path = "/who"
access = "public"
upstream = "weighted"

[[routes]]
path_prefix = "/sticky"
access = "authenticated"
upstream = "sticky"
"#,
        a = a.port,
        b = b.port
    ));
    let mut served = Vec::new();
    for _ in 0..8 {
        served.push(get(&gw.url("/who"), None).await.body);
    }
    assert_eq!(
        served.iter().filter(|s| *s == "a").count(),
        6,
        "3:1 → {served:?}"
    );

    // Each consumer always lands on the same target; consumers spread over both.
    let mut seen = std::collections::BTreeSet::new();
    for user in 0..16 {
        let token = common::rsa_token(&format!("user-{user}"), "agent", &[]);
        let first = get(&gw.url("/sticky/who"), Some(&token)).await.body;
        for _ in 0..3 {
            assert_eq!(get(&gw.url("/sticky/who"), Some(&token)).await.body, first);
        }
        seen.insert(first);
    }
    assert_eq!(seen.len(), 2, "{seen:?}");

    // The upstream's own errors pass through untouched.
    let token = common::rsa_token("user-1", "agent", &[]);
    let r = get(&gw.url("/sticky/missing"), Some(&token)).await;
    assert_eq!((r.status, r.body.as_str()), (404, "{}"));
}

#[tokio::test]
async fn upstream_connections_are_reused_under_concurrent_load() {
    // An upstream that counts the connections it accepts and keeps each one alive.
    let upstream = CountingUpstream::start().await;
    let port = upstream.port;
    // Two worker threads share one pool: a connection released by one is taken by the other.
    let gw = Gateway::start_with(
        "threads = 2",
        &format!(
            "[upstreams.pooled]\ntargets = [\"127.0.0.1:{port}\"]\n\n[[routes]]\npath = \"/p\"\naccess = \"public\"\nupstream = \"pooled\"\n"
        ),
        &[],
    );
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(8)
        .build()
        .unwrap();
    let url = gw.url("/p");
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                for _ in 0..300 {
                    let r = client.get(&url).send().await.unwrap();
                    assert_eq!(r.status(), 200);
                    r.bytes().await.unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    // 2,400 requests from 8 client connections: a working pool opens about as many upstream
    // connections; losing pooled connections opened hundreds (cloudflare/pingora#998).
    let opened = upstream.connections();
    assert!(opened <= 16, "{opened} upstream connections for 8 clients");
    assert!(
        !gw.log().contains("failed to acquire reusable stream"),
        "{}",
        gw.log()
    );
}

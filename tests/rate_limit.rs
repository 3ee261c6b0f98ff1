//! Consumer tiers and local rate limits, through the running gateway.

mod common;

use std::time::Duration;

use common::{free_port, get, metric, rsa_token, send, send_from, Echo, Gateway, Reply};

const ISSUER: &str = r#"
[issuers.idp]
issuer = "https://idp.test"
audiences = ["api"]
jwks_file = "{fixtures}/rsa-1.jwks.json"
allow_non_expiring = true
"#;

fn remaining(r: &Reply) -> u64 {
    let v = r
        .header("ratelimit")
        .unwrap_or_else(|| panic!("no RateLimit in {r:?}", r = r.headers));
    v.split(';')
        .find_map(|p| p.strip_prefix("r="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no r= in {v}"))
}

#[tokio::test]
async fn a_tier_admits_exactly_n_then_429_until_the_window_has_passed() {
    let echo = Echo::start();
    let gw = Gateway::start(&format!(
        r#"{ISSUER}
[upstreams.backend]
targets = ["127.0.0.1:{port}"]

[[rate_limit.tiers]]
name = "users"
limits = ["5/3s"]

[[routes]]
path = "/orders"
upstream = "backend"
access = "authenticated"
"#,
        port = echo.port
    ));
    let alice = rsa_token("alice", "agent", &[]);
    let bob = rsa_token("bob", "agent", &[]);
    let url = gw.url("/orders");

    for round in 0..2 {
        for i in 0..5 {
            let r = get(&url, Some(&alice)).await;
            assert_eq!(r.status, 200, "round {round}, request {i}: {}", r.body);
            // Quota headers ride on the upstream's own response.
            assert_eq!(r.header("ratelimit-policy"), Some(r#""users.3s";q=5;w=3"#));
            assert_eq!(remaining(&r), 4 - i);
            assert_eq!(r.json()["path"], "/orders", "the upstream answered");
        }
        let refused = get(&url, Some(&alice)).await;
        assert_eq!(refused.status, 429);
        assert_eq!(refused.json()["error"], "rate_limited");
        assert_eq!(refused.header("content-type"), Some("application/json"));
        let retry: u64 = refused
            .header("retry-after")
            .expect("Retry-After")
            .parse()
            .unwrap();
        assert!((1..=3).contains(&retry), "Retry-After {retry}");
        assert_eq!(remaining(&refused), 0);
        // Another consumer of the same tier has its own quota.
        assert_eq!(get(&url, Some(&bob)).await.status, 200);
        // After the whole window, the whole quota is back.
        tokio::time::sleep(Duration::from_millis(3_100)).await;
    }
}

#[tokio::test]
async fn anonymous_callers_are_limited_per_client_ip() {
    let gw = Gateway::start(
        r#"
[[rate_limit.tiers]]
name = "anonymous"
callers = "anonymous"
limits = ["3/minute"]

[[routes]]
path = "/status"
access = "public"
respond = { body = "up" }
"#,
    );
    let url = gw.url("/status");
    for source in ["127.0.0.1", "127.0.0.2"] {
        for i in 0..3 {
            let r = send_from(source, &url, None, &[]).await;
            assert_eq!(r.status, 200, "{source} request {i}");
            assert_eq!(r.body, "up");
            assert_eq!(remaining(&r), 2 - i);
        }
        assert_eq!(
            send_from(source, &url, None, &[]).await.status,
            429,
            "{source}"
        );
    }
}

#[tokio::test]
async fn forwarded_for_counts_only_from_trusted_proxies() {
    let gw = Gateway::start(
        r#"
[client_ip]
trusted_proxies = ["127.0.0.2"]

[[rate_limit.tiers]]
name = "anonymous"
callers = "anonymous"
limits = ["2/minute"]

[[routes]]
path = "/status"
access = "public"
respond = { body = "up" }
"#,
    );
    let url = gw.url("/status");
    let statuses = |results: Vec<Reply>| results.iter().map(|r| r.status).collect::<Vec<_>>();

    // Through the trusted proxy, each client named in X-Forwarded-For has its own quota.
    for client in ["198.51.100.1", "198.51.100.2"] {
        let mut results = Vec::new();
        for _ in 0..3 {
            results.push(send_from("127.0.0.2", &url, None, &[("x-forwarded-for", client)]).await);
        }
        assert_eq!(statuses(results), [200, 200, 429], "client {client}");
    }
    // A client cannot pick its address by prepending entries: the proxy's entry counts.
    let forged = send_from(
        "127.0.0.2",
        &url,
        None,
        &[("x-forwarded-for", "203.0.113.50, 198.51.100.1")],
    )
    .await;
    assert_eq!(forged.status, 429);

    // From an untrusted peer the header is ignored: every request counts against the peer.
    let mut results = Vec::new();
    for i in 0..3 {
        let xff = format!("203.0.113.{i}");
        results.push(send_from("127.0.0.3", &url, None, &[("x-forwarded-for", &xff)]).await);
    }
    assert_eq!(statuses(results), [200, 200, 429]);
}

#[tokio::test]
async fn tiers_are_chosen_from_the_verified_token() {
    let admin_port = free_port();
    let gw = Gateway::start(&format!(
        r#"{ISSUER}
[admin]
listen = "127.0.0.1:{admin_port}"

[[rate_limit.tiers]]
name = "apps"
client_ids = ["portal", "mobile"]
consumer = "client_id"
limits = ["3/minute"]

[[rate_limit.tiers]]
name = "gold"
claim = {{ name = "plan", values = ["gold"] }}
limits = ["20/second", "50/minute"]

[[rate_limit.tiers]]
name = "users"
limits = ["10/minute"]
group_limits = {{ reports = ["2/minute"] }}

[[routes]]
path = "/orders"
access = "authenticated"
respond = {{ body = "orders" }}

[[routes]]
path = "/reports"
access = "authenticated"
limit_group = "reports"
respond = {{ body = "reports" }}
"#
    ));
    let orders = gw.url("/orders");

    // The portal's users share the portal's quota: the consumer is the client.
    let via_portal: Vec<String> = ["u1", "u2", "u3", "u4"]
        .iter()
        .map(|u| rsa_token(u, "agent", &["--azp", "portal"]))
        .collect();
    let mut statuses = Vec::new();
    for t in &via_portal {
        let r = get(&orders, Some(t)).await;
        if r.status == 200 {
            assert_eq!(r.header("ratelimit-policy"), Some(r#""apps.60s";q=3;w=60"#));
        }
        statuses.push(r.status);
    }
    assert_eq!(statuses, [200, 200, 200, 429]);

    // A claim picks a tier; the binding limit of several is the one reported.
    let gold = rsa_token("g1", "agent", &["--claim", "plan=gold"]);
    let r = get(&orders, Some(&gold)).await;
    assert_eq!(
        r.header("ratelimit-policy"),
        Some(r#""gold.1s";q=20;w=1, "gold.60s";q=50;w=60"#)
    );
    assert_eq!(r.header("ratelimit"), Some(r#""gold.1s";r=19;t=1"#));

    // Everyone else: the users tier, with a tighter limit on the reports group, counted
    // separately from (and on top of) the tier-wide one.
    let carol = rsa_token("carol", "agent", &[]);
    let reports = gw.url("/reports");
    let mut seen = Vec::new();
    for _ in 0..3 {
        let r = get(&reports, Some(&carol)).await;
        seen.push((r.status, r.header("ratelimit").map(str::to_string)));
    }
    assert_eq!(seen[0].0, 200);
    assert_eq!(
        seen[0].1.as_deref(),
        Some(r#""users.reports.60s";r=1;t=30"#)
    );
    assert_eq!(seen[1].0, 200);
    assert_eq!(seen[2].0, 429);
    let r = get(&orders, Some(&carol)).await;
    assert_eq!(
        r.status, 200,
        "the reports limit does not block other routes"
    );
    assert_eq!(remaining(&r), 7, "10 minus two reports minus this one");

    let limited = metric(
        admin_port,
        r#"portcullis_rate_limit_decisions_total{outcome="limited",tier="apps"}"#,
    )
    .await;
    assert_eq!(limited, 1.0);
}

#[tokio::test]
async fn service_tokens_reach_only_system_routes() {
    let gw = Gateway::start(&format!(
        r#"{ISSUER}
[[rate_limit.tiers]]
name = "jobs"
callers = "services"
limits = ["3/minute"]

[[rate_limit.tiers]]
name = "users"
limits = ["100/minute"]

[[routes]]
path = "/agents"
access = "authenticated"
respond = {{ body = "agents" }}
[[routes.allow]]
roles = ["admin"]

[[routes]]
path = "/system/metadata"
access = "authenticated"
callers = "services"
respond = {{ body = "metadata" }}
[[routes.allow]]
roles = ["admin"]
"#
    ));
    let agents = gw.url("/agents");
    let metadata = gw.url("/system/metadata");
    // Client credentials: the subject is the client itself (RFC 9068 §2.2). No expiry, as the
    // issuer allows for backend jobs.
    let job = rsa_token(
        "reports-job",
        "admin",
        &["--azp", "reports-job", "--no-exp"],
    );
    // A user who signed in through the same client, with the same role.
    let user = rsa_token("alice", "admin", &["--azp", "reports-job"]);

    let r = get(&agents, Some(&job)).await;
    assert_eq!(
        r.status, 403,
        "a service token on a user route, roles notwithstanding"
    );
    assert_eq!(get(&agents, Some(&user)).await.status, 200);

    let r = get(&metadata, Some(&user)).await;
    assert_eq!(r.status, 403, "a user token is never a service token");
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let r = get(&metadata, Some(&job)).await;
        if r.status == 200 {
            assert_eq!(r.body, "metadata");
            assert_eq!(r.header("ratelimit-policy"), Some(r#""jobs.60s";q=3;w=60"#));
        }
        statuses.push(r.status);
    }
    assert_eq!(statuses, [200, 200, 200, 429]);

    // Only service tokens may be non-expiring, whatever the issuer allows.
    let forever_user = rsa_token("bob", "admin", &["--azp", "portal", "--no-exp"]);
    let r = get(&agents, Some(&forever_user)).await;
    assert_eq!(r.status, 401);
    assert!(r
        .header("www-authenticate")
        .is_some_and(|h| h.contains("token has no expiry")));
}

#[tokio::test]
async fn a_flood_of_new_addresses_does_not_free_a_limited_consumer() {
    let admin_port = free_port();
    let gw = Gateway::start(&format!(
        r#"
[admin]
listen = "127.0.0.1:{admin_port}"

[client_ip]
trusted_proxies = ["127.0.0.0/8"]

[rate_limit]
local_max_keys = 640

[[rate_limit.tiers]]
name = "anonymous"
callers = "anonymous"
limits = ["2/hour"]

[[routes]]
path = "/status"
access = "public"
respond = {{ body = "up" }}
"#
    ));
    let url = gw.url("/status");
    let heavy = [("x-forwarded-for", "198.51.100.7")];
    assert_eq!(send_from("127.0.0.1", &url, None, &heavy).await.status, 200);
    assert_eq!(send_from("127.0.0.1", &url, None, &heavy).await.status, 200);
    assert_eq!(send_from("127.0.0.1", &url, None, &heavy).await.status, 429);

    let client = common::client();
    for i in 0..4_000u32 {
        let ip = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255);
        let r = client
            .get(&url)
            .header("x-forwarded-for", ip)
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 200, "request {i}");
    }
    let evicted = metric(
        admin_port,
        r#"portcullis_rate_limit_evictions_total{table="counters"}"#,
    )
    .await;
    assert!(
        evicted >= 3_000.0,
        "the table stayed bounded: {evicted} evicted"
    );
    assert_eq!(
        send_from("127.0.0.1", &url, None, &heavy).await.status,
        429,
        "the limited consumer kept its state through the flood"
    );
}

#[tokio::test]
async fn a_reload_hands_out_no_fresh_quota() {
    let config = |extra_route: &str| {
        format!(
            r#"{ISSUER}
[[rate_limit.tiers]]
name = "users"
limits = ["2/minute"]

[[routes]]
path = "/orders"
access = "authenticated"
respond = {{ body = "orders" }}
{extra_route}
"#
        )
    };
    let gw = Gateway::start(&config(""));
    let alice = rsa_token("alice", "agent", &[]);
    let url = gw.url("/orders");
    for expected in [200, 200, 429] {
        assert_eq!(get(&url, Some(&alice)).await.status, expected);
    }
    gw.reload(&config(
        "[[routes]]\npath = \"/new\"\naccess = \"public\"\nrespond = { body = \"new\" }\n",
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while get(&gw.url("/new"), None).await.status != 200 {
        assert!(std::time::Instant::now() < deadline, "{}", gw.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = get(&url, Some(&alice)).await;
    assert_eq!(
        r.status, 429,
        "the counters survived the reload: {}",
        r.body
    );
}

#[tokio::test]
async fn the_heaviest_consumers_are_exported_per_tier_in_bounded_numbers() {
    let admin_port = free_port();
    let gw = Gateway::start(&format!(
        r#"
[admin]
listen = "127.0.0.1:{admin_port}"

[client_ip]
trusted_proxies = ["127.0.0.0/8"]

[rate_limit]
top_consumers = 2

[[rate_limit.tiers]]
name = "anonymous"
callers = "anonymous"
limits = ["3/hour"]

[[routes]]
path = "/status"
access = "public"
respond = {{ body = "up" }}
"#
    ));
    let url = gw.url("/status");
    for (address, requests) in [
        ("198.51.100.7", 6),
        ("198.51.100.8", 2),
        ("198.51.100.9", 1),
    ] {
        for _ in 0..requests {
            send("GET", &url, None, &[("x-forwarded-for", address)]).await;
        }
    }
    let sample = |name: &str, consumer: &str| {
        let sample =
            format!("portcullis_top_consumer_{name}{{consumer=\"{consumer}\",tier=\"anonymous\"}}");
        async move { metric(admin_port, &sample).await }
    };
    assert_eq!(sample("requests", "198.51.100.7").await, 6.0);
    assert_eq!(sample("requests", "198.51.100.8").await, 2.0);
    // Only the top two are exported.
    assert_eq!(sample("requests", "198.51.100.9").await, 0.0);
    let text = get(&format!("http://127.0.0.1:{admin_port}/metrics"), None)
        .await
        .body;
    assert!(
        !text.contains("198.51.100.9"),
        "a third consumer was exported"
    );
    // Refusals: only the heavy one was refused (3 of its 6).
    assert_eq!(sample("limited", "198.51.100.7").await, 3.0);
    assert_eq!(sample("limited", "198.51.100.8").await, 0.0);
}

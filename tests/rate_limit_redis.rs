//! Limits shared by several gateway instances through a real Redis, and what happens when
//! Redis goes away.

mod common;

use std::time::{Duration, Instant};

use common::{exchange, free_port, get, join_all, metric, rsa_token, Gateway, Redis, Reply};

fn config(redis: &Redis, admin_port: u16, tiers: &str) -> String {
    format!(
        r#"
[issuers.idp]
issuer = "https://idp.test"
audiences = ["api"]
jwks_file = "{{fixtures}}/rsa-1.jwks.json"

[admin]
listen = "127.0.0.1:{admin_port}"

[rate_limit.redis]
url = "{url}"
timeout = "50ms"
retry_interval = "300ms"

{tiers}

[[routes]]
path = "/orders"
access = "authenticated"
respond = {{ body = "orders" }}
"#,
        url = redis.url()
    )
}

fn ratelimit_param(r: &Reply, param: &str) -> Option<u64> {
    r.header("ratelimit")?
        .split(';')
        .find_map(|p| p.strip_prefix(param)?.strip_prefix('='))
        .and_then(|n| n.parse().ok())
}

#[tokio::test]
async fn three_instances_share_one_limit() {
    let redis = Redis::start();
    let tiers = r#"
[[rate_limit.tiers]]
name = "users"
limits = ["100/minute"]
backend = "redis"
"#;
    let gateways: Vec<Gateway> = (0..3)
        .map(|_| Gateway::start(&config(&redis, free_port(), tiers)))
        .collect();
    let token = rsa_token("alice", "agent", &[]);
    let urls: Vec<String> = gateways.iter().map(|g| g.url("/orders")).collect();

    // 300 requests, round robin over the three instances, 30 in flight at a time.
    let client = common::client();
    let started = Instant::now();
    let mut replies = Vec::new();
    for batch in 0..10 {
        let futures = (0..30).map(|i| {
            let url = urls[(batch * 30 + i) % 3].clone();
            let token = token.clone();
            let client = client.clone();
            async move { exchange(&client, "GET", &url, Some(&token), &[]).await }
        });
        replies.extend(join_all(futures).await);
    }
    let elapsed = started.elapsed();

    let admitted: Vec<&Reply> = replies.iter().filter(|r| r.status == 200).collect();
    let refused: Vec<&Reply> = replies.iter().filter(|r| r.status == 429).collect();
    println!(
        "admitted {} of 300 across 3 instances in {elapsed:?}",
        admitted.len()
    );
    assert_eq!(admitted.len() + refused.len(), 300, "only 200s and 429s");
    // The bucket refills one request per 600 ms while the run lasts; nothing more may pass.
    let refilled = elapsed.as_millis().div_ceil(600) as usize;
    assert!(
        (100..=100 + refilled).contains(&admitted.len()),
        "admitted {} in {elapsed:?}",
        admitted.len()
    );
    // The headers agree with what happened: each admitted request saw the quota one lower.
    let mut remaining: Vec<u64> = admitted
        .iter()
        .map(|r| ratelimit_param(r, "r").expect("RateLimit r="))
        .collect();
    remaining.sort_unstable();
    remaining.dedup();
    assert!(
        remaining.len() >= 98,
        "{} distinct remaining values",
        remaining.len()
    );
    assert_eq!(remaining.first(), Some(&0));
    assert_eq!(remaining.last(), Some(&99));
    for r in &refused {
        assert_eq!(ratelimit_param(r, "r"), Some(0));
        let retry: u64 = r
            .header("retry-after")
            .expect("Retry-After")
            .parse()
            .unwrap();
        assert!((1..=60).contains(&retry), "Retry-After {retry}");
    }
    // Every instance refused some: the limit is one, not three.
    for url in &urls {
        assert_eq!(get(url, Some(&token)).await.status, 429, "{url}");
    }
}

#[tokio::test]
async fn refusals_are_remembered_without_asking_redis_again() {
    let redis = Redis::start();
    let gw = Gateway::start(&config(
        &redis,
        free_port(),
        r#"
[[rate_limit.tiers]]
name = "users"
limits = ["3/minute"]
backend = "redis"
"#,
    ));
    let token = rsa_token("alice", "agent", &[]);
    let mut statuses = Vec::new();
    for _ in 0..23 {
        statuses.push(get(&gw.url("/orders"), Some(&token)).await.status);
    }
    assert_eq!(&statuses[..4], [200, 200, 200, 429]);
    assert!(statuses[3..].iter().all(|&s| s == 429));
    let stats = redis.cli(&["info", "commandstats"]);
    let calls = |cmd: &str| -> u64 {
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
            .and_then(|rest| rest.split(',').next()?.parse().ok())
            .unwrap_or(0)
    };
    let scripts = calls("evalsha") + calls("eval");
    println!("{scripts} script calls for 23 requests");
    // 3 admissions and the first refusal; the NOSCRIPT retry of a fresh server may add one.
    assert!(
        (4..=5).contains(&scripts),
        "{scripts} script calls:\n{stats}"
    );
}

#[tokio::test]
async fn redis_outage_fails_open_or_closed_per_tier_and_heals() {
    let mut redis = Redis::start();
    let admin_port = free_port();
    let gw = Gateway::start(&config(
        &redis,
        admin_port,
        r#"
[[rate_limit.tiers]]
name = "open"
client_ids = ["portal"]
limits = ["1000/minute"]
backend = "redis"
on_redis_error = "fail_open"

[[rate_limit.tiers]]
name = "closed"
client_ids = ["billing"]
limits = ["1000/minute"]
backend = "redis"
on_redis_error = "fail_closed"
"#,
    ));
    let url = gw.url("/orders");
    let open = rsa_token("alice", "agent", &["--azp", "portal"]);
    let closed = rsa_token("bob", "agent", &["--azp", "billing"]);
    let round = || async {
        let a = get(&url, Some(&open)).await;
        let b = get(&url, Some(&closed)).await;
        (a, b)
    };

    // Healthy: both counted in Redis.
    for _ in 0..5 {
        let (a, b) = round().await;
        assert_eq!((a.status, b.status), (200, 200));
    }
    assert!(
        !redis
            .cli(&["get", "portcullis:rl:{open:alice}:*:60000000"])
            .is_empty(),
        "counted in redis"
    );

    // Gone: the open tier keeps serving from the local limiter, the closed one answers 503.
    for (outage, how) in [("killed", 0), ("frozen", 1)] {
        if how == 0 {
            redis.kill();
        } else {
            redis.signal("-STOP");
        }
        let mut slowest = Duration::ZERO;
        for _ in 0..40 {
            let started = Instant::now();
            let (a, b) = round().await;
            slowest = slowest.max(started.elapsed());
            assert_eq!(
                a.status, 200,
                "fail_open tier with redis {outage}: {}",
                a.body
            );
            assert!(a.header("ratelimit").is_some(), "still limited, locally");
            assert_eq!(b.status, 503, "fail_closed tier with redis {outage}");
            assert_eq!(b.json()["error"], "temporarily_unavailable");
            assert!(b.header("retry-after").is_some());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Each round is two requests; a Redis timeout costs at most 50 ms of one of them.
        assert!(
            slowest < Duration::from_millis(500),
            "redis {outage}: {slowest:?}"
        );

        if how == 0 {
            redis.restart();
        } else {
            redis.signal("-CONT");
        }
        // Back without restarting the gateway: within the retry interval both tiers are
        // counted in Redis again.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (a, b) = round().await;
            assert_eq!(a.status, 200);
            if b.status == 200 {
                break;
            }
            assert_eq!(b.status, 503);
            assert!(Instant::now() < deadline, "redis {outage}: never recovered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        round().await;
        assert!(
            !redis
                .cli(&["get", "portcullis:rl:{closed:bob}:*:60000000"])
                .is_empty(),
            "counted in redis again after it was {outage}"
        );
    }

    let fallbacks = metric(
        admin_port,
        r#"portcullis_rate_limit_redis_fallbacks_total{mode="fail_closed"}"#,
    )
    .await;
    assert!(
        fallbacks >= 80.0,
        "{fallbacks} fail_closed decisions counted"
    );
    assert!(metric(admin_port, "portcullis_rate_limit_redis_errors_total").await >= 2.0);
    let log = gw.log();
    assert!(
        log.contains("rate limits of redis tiers follow their on_redis_error"),
        "{log}"
    );
    assert!(log.contains("reachable again"), "{log}");
}

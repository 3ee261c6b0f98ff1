//! Browser sessions (`[sessions]`) against the real `oidc-provider`: login through its form,
//! session use, refresh, refresh failure, the three logouts, forged and replayed logout
//! tokens, open redirects, CSRF, and two instances sharing one Redis.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Echo, Gateway, Provider, Redis};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A cookie-keeping HTTP client that follows no redirect by itself. Cookies are kept by
/// name alone: the provider and the gateways all live on 127.0.0.1.
struct Browser {
    client: reqwest::Client,
    jar: BTreeMap<String, String>,
}

struct Answer {
    status: u16,
    location: Option<String>,
    body: String,
    headers: reqwest::header::HeaderMap,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

impl Browser {
    fn new() -> Browser {
        Browser {
            client: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            jar: BTreeMap::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.jar
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn send(
        &mut self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        form: Option<&[(&str, &str)]>,
    ) -> Answer {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.client.request(method, url);
        if !self.jar.is_empty() {
            req = req.header("cookie", self.cookie_header());
        }
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        if let Some(form) = form {
            req = req.form(form);
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
        for set in resp.headers().get_all("set-cookie") {
            let set = set.to_str().expect("set-cookie");
            let pair = set.split(';').next().unwrap_or_default();
            let (name, value) = pair.split_once('=').expect("cookie pair");
            let expired = set.to_ascii_lowercase().contains("max-age=0") || value.is_empty();
            if expired {
                self.jar.remove(name);
            } else {
                self.jar.insert(name.to_string(), value.to_string());
            }
        }
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let location = headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(|l| absolute(url, l));
        Answer {
            status,
            location,
            headers,
            body: resp.text().await.expect("body"),
        }
    }

    /// A page navigation, as a browser sends it.
    async fn navigate(&mut self, url: &str) -> Answer {
        let headers = [
            ("accept", "text/html,application/xhtml+xml"),
            ("sec-fetch-mode", "navigate"),
            ("sec-fetch-site", "none"),
        ];
        self.send("GET", url, &headers, None).await
    }

    /// A script's call.
    async fn fetch(&mut self, method: &str, url: &str, origin: Option<&str>) -> Answer {
        let mut headers = vec![("accept", "application/json"), ("sec-fetch-mode", "cors")];
        headers.push((
            "sec-fetch-site",
            if origin.is_some() {
                "cross-site"
            } else {
                "same-origin"
            },
        ));
        if let Some(o) = origin {
            headers.push(("origin", o));
        }
        self.send(method, url, &headers, None).await
    }

    /// Logs `user` in from a navigation to `page`: through the provider's form, back to the
    /// gateway's callback, and to the page.
    async fn log_in(&mut self, page: &str, user: &str) -> Answer {
        let start = self.navigate(page).await;
        assert_eq!(
            start.status, 302,
            "navigation without a session: {}",
            start.body
        );
        let mut url = start.location.expect("to the provider");
        // The provider: its login form, then back to the gateway's callback.
        for _ in 0..6 {
            let answer = if url.contains("/interaction/") {
                self.send("POST", &url, &[], Some(&[("login", user)])).await
            } else {
                self.navigate(&url).await
            };
            assert!(
                (300..400).contains(&answer.status),
                "{url}: {} {}",
                answer.status,
                answer.body
            );
            let next = answer.location.expect("redirect");
            if next.contains("/auth/callback") {
                let back = self.navigate(&next).await;
                assert_eq!(back.status, 302, "callback: {}", back.body);
                let page = back.location.expect("back to the page");
                return self.navigate(&page).await;
            }
            url = next;
        }
        panic!("the login never came back to the gateway");
    }

    fn session_cookie(&self) -> Option<&String> {
        self.jar.get("__Host-portcullis-session")
    }
}

fn absolute(base: &str, location: &str) -> String {
    if location.starts_with("http") {
        return location.to_string();
    }
    let origin: String = base.splitn(4, '/').take(3).collect::<Vec<_>>().join("/");
    format!("{origin}{location}")
}

/// A client of the provider, registered for a gateway on `port` (RFC 7591).
struct Client {
    id: String,
    secret: String,
}

async fn register(provider: &Provider, port: u16, backchannel: &str, ttl: u64) -> Client {
    let body = serde_json::json!({
        "redirect_uris": [format!("http://127.0.0.1:{port}/auth/callback")],
        "post_logout_redirect_uris": [format!("http://127.0.0.1:{port}/bye")],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "client_secret_basic",
        "backchannel_logout_uri": backchannel,
        "backchannel_logout_session_required": true,
        "test_access_token_ttl": ttl,
    });
    let reg = provider.register(&body).await;
    Client {
        id: reg["client_id"].as_str().expect("client_id").into(),
        secret: reg["client_secret"].as_str().expect("client_secret").into(),
    }
}

fn config(provider: &Provider, echo: &Echo, client: &Client, port: u16, extra: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:{admin}"

[issuers.idp]
issuer = "{iss}"
audiences = ["https://api.portcullis.test"]
discovery = true
clock_skew = "1s"

[sessions]
issuer = "idp"
client_id = "{id}"
client_secret_env = "SESSION_CLIENT_SECRET"
redirect_uri = "http://127.0.0.1:{port}/auth/callback"
post_logout_redirect_uri = "http://127.0.0.1:{port}/bye"
scopes = ["openid", "offline_access"]
refresh_before = "2s"
pass_access_token = true
allowed_origins = ["https://admin.portcullis.test"]
encryption_keys_env = "SESSION_KEYS"
{extra}

[upstreams.app]
targets = ["127.0.0.1:{echo}"]

[[routes]]
path_prefix = "/app"
access = "authenticated"
browser = true
upstream = "app"
[[routes.allow]]
roles = ["agent"]

[[routes]]
path_prefix = "/api"
access = "authenticated"
upstream = "app"

[[routes]]
path = "/bye"
access = "public"
respond = {{ body = "signed out" }}
"#,
        admin = port + 1,
        iss = provider.issuer,
        id = client.id,
        echo = echo.port,
    )
}

/// A port for a gateway, and its admin listener's, apart from any other test's.
fn port_pair() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    // Ports handed out by the kernel come close together; these pairs are taken below its
    // ephemeral range (32768 and up), two apart, so no test's admin port is another's
    // gateway port and no provider or upstream is given one of them.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        20000 + (std::process::id() % 500) as u16 * 20,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let port = NEXT.fetch_add(2, Ordering::SeqCst);
        if common::bindable(port) && common::bindable(port + 1) {
            return port;
        }
    }
}

fn start(port: u16, text: &str, client: &Client) -> Gateway {
    let env = [
        ("SESSION_CLIENT_SECRET", client.secret.as_str()),
        ("SESSION_KEYS", KEY),
    ];
    Gateway::start_on(
        port,
        &format!("listen = [\"127.0.0.1:{port}\"]"),
        text,
        &env,
    )
}

async fn metric(port: u16, sample: &str) -> f64 {
    common::metric(port + 1, sample).await
}

/// The access token the upstream was given, and whose `sub` it carries.
fn upstream_token(answer: &Answer) -> String {
    let seen = answer.json();
    let auth = seen["headers"]["authorization"][0]
        .as_str()
        .unwrap_or_else(|| panic!("no Authorization upstream: {seen}"));
    auth.strip_prefix("Bearer ").expect("bearer").to_string()
}

/// A provider, an echo upstream, and a gateway with `[sessions]` (and `extra` in it) for a
/// client whose users' access tokens live `ttl` seconds.
struct Setup {
    provider: Provider,
    _echo: Echo,
    port: u16,
    gw: Gateway,
}

async fn setup(ttl: u64, extra: &str) -> Setup {
    let provider = Provider::start();
    let echo = Echo::start();
    let port = port_pair();
    let client = register(&provider, port, "http://127.0.0.1:9/unused", ttl).await;
    let gw = start(
        port,
        &config(&provider, &echo, &client, port, extra),
        &client,
    );
    Setup {
        provider,
        _echo: echo,
        port,
        gw,
    }
}

#[tokio::test]
async fn login_session_refresh_and_logout_at_the_gateway() {
    let s = setup(6, "").await;
    let (Setup { provider, gw, .. }, port) = (&s, s.port);
    let page = gw.url("/app/desk?tab=2");
    let mut browser = Browser::new();

    // Without a session: a script gets 401, a page navigation goes to the provider.
    assert_eq!(browser.fetch("GET", &page, None).await.status, 401);
    let start_login = browser.navigate(&page).await;
    assert_eq!(start_login.status, 302);
    let to = start_login.location.clone().expect("location");
    assert!(
        to.starts_with(&format!("{}/auth?", provider.issuer)),
        "{to}"
    );
    for part in [
        "code_challenge_method=S256",
        "code_challenge=",
        "state=",
        "nonce=",
        "response_type=code",
    ] {
        assert!(to.contains(part), "{part} missing in {to}");
    }
    let set = start_login.headers.get("set-cookie").expect("login cookie");
    let set = set.to_str().expect("text");
    for attribute in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/"] {
        assert!(set.contains(attribute), "{attribute} missing in {set}");
    }
    browser.jar.clear();

    // The whole login, back to the page asked for, with its query.
    let landed = browser.log_in(&page, "alice").await;
    assert_eq!(landed.status, 200, "{}", landed.body);
    let auth = common::get(&format!("{}/test/token-auth/last", provider.issuer), None).await;
    assert_eq!(auth.json()["basic"], true, "client_secret_basic");
    let seen = landed.json();
    assert_eq!(seen["path"], "/app/desk?tab=2");
    assert_eq!(seen["headers"]["x-user-id"][0], "alice", "{seen}");
    // The upstream gets the access token, never the gateway's cookies.
    let first_token = upstream_token(&landed);
    let cookies = seen["headers"]["cookie"].to_string();
    assert!(
        cookies.contains("_session="),
        "other cookies go on: {cookies}"
    );
    assert!(!cookies.contains("__Host-portcullis"), "{cookies}");
    let session_id = browser.session_cookie().expect("session cookie").clone();
    assert!(session_id.len() >= 43, "an id of 256 bits: {session_id}");
    assert!(!session_id.contains('.'), "the cookie carries no token");

    // Refresh: the token lives 6 s and is refreshed 2 s before; ten requests at once make
    // one refresh.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let before = metric(
        port,
        "portcullis_browser_sessions_total{event=\"refresh\",result=\"ok\"}",
    )
    .await;
    let calls = (0..10).map(|_| {
        let cookie = browser.cookie_header();
        let url = gw.url("/app/x");
        async move {
            let resp = common::client()
                .get(url)
                .header("cookie", cookie)
                .header("accept", "application/json")
                .send()
                .await
                .expect("request");
            let status = resp.status().as_u16();
            let body: serde_json::Value = resp.json().await.unwrap_or_default();
            (
                status,
                body["headers"]["authorization"][0]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        }
    });
    let answers = common::join_all(calls).await;
    let after = metric(
        port,
        "portcullis_browser_sessions_total{event=\"refresh\",result=\"ok\"}",
    )
    .await;
    assert_eq!(after - before, 1.0, "one refresh for ten requests");
    for (status, auth) in &answers {
        assert_eq!(*status, 200);
        assert_ne!(
            auth.trim_start_matches("Bearer "),
            first_token,
            "refreshed token upstream"
        );
    }
    let refreshed = answers[0].1.trim_start_matches("Bearer ").to_string();

    // Cross-site state changes are refused; the allowed origin and same-origin pass.
    let post = gw.url("/app/orders");
    assert_eq!(
        browser
            .fetch("POST", &post, Some("https://evil.test"))
            .await
            .status,
        403
    );
    assert_eq!(
        browser
            .fetch("POST", &post, Some("https://admin.portcullis.test"))
            .await
            .status,
        200
    );
    assert_eq!(browser.fetch("POST", &post, None).await.status, 200);

    // A tampered or unknown cookie is no session: a login again, never an error.
    let mut stranger = Browser::new();
    stranger.jar.insert(
        "__Host-portcullis-session".into(),
        format!("{}x", &session_id[1..]),
    );
    assert_eq!(stranger.fetch("GET", &page, None).await.status, 401);
    assert_eq!(stranger.navigate(&page).await.status, 302);

    // Open redirects are refused at the login path.
    for target in ["https://evil.test/", "//evil.test/x", "/\\evil.test"] {
        let url = format!("{}?return_to={}", gw.url("/auth/login"), percent(target));
        let answer = browser.navigate(&url).await;
        assert_eq!(answer.status, 400, "{target}: {}", answer.body);
    }
    let ok = browser
        .navigate(&format!(
            "{}?return_to=%2Fapp%2Fhome",
            gw.url("/auth/login")
        ))
        .await;
    assert_eq!(ok.status, 302);

    // RP-initiated logout: the session ends, the cookie is cleared, the browser goes to the
    // provider's end-session endpoint with the ID token as hint.
    let out = browser.navigate(&gw.url("/auth/logout")).await;
    assert_eq!(out.status, 302, "{}", out.body);
    let to = out.location.clone().expect("to the provider");
    assert!(
        to.starts_with(&format!("{}/session/end", provider.issuer)),
        "{to}"
    );
    assert!(to.contains("id_token_hint="), "{to}");
    assert!(to.contains("post_logout_redirect_uri="), "{to}");
    assert!(browser.session_cookie().is_none(), "cookie cleared");
    // The old cookie, and the session's access token as a bearer token, are refused.
    let mut old = Browser::new();
    old.jar
        .insert("__Host-portcullis-session".into(), session_id.clone());
    assert_eq!(old.fetch("GET", &page, None).await.status, 401);
    let bearer = common::get(&gw.url("/api/x"), Some(&refreshed)).await;
    assert_eq!(
        bearer.status, 401,
        "an ended session's token: {}",
        bearer.body
    );
    // The provider's confirmation, and back to the gateway's page.
    let confirm = browser.navigate(&to).await;
    assert_eq!(confirm.status, 200, "{}", confirm.body);
    let done = confirm_logout(&mut browser, provider, &confirm).await;
    assert_eq!(done.status, 303, "{}", done.body);
    assert_eq!(done.location.as_deref(), Some(gw.url("/bye").as_str()));
}

fn percent(s: &str) -> String {
    form_urlencoded_byte_serialize(s)
}

fn form_urlencoded_byte_serialize(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn a_refused_refresh_ends_the_session() {
    let s = setup(4, "").await;
    let (Setup { provider, gw, .. }, port) = (&s, s.port);
    let page = gw.url("/app/desk");
    let mut browser = Browser::new();
    assert_eq!(browser.log_in(&page, "bob").await.status, 200);

    common::send(
        "POST",
        &format!("{}/test/refresh/refuse", provider.issuer),
        None,
        &[],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(browser.fetch("GET", &page, None).await.status, 401);
    assert_eq!(
        browser.navigate(&page).await.status,
        302,
        "to the login again"
    );
    let ended = metric(
        port,
        "portcullis_browser_sessions_total{event=\"end\",result=\"refresh_refused\"}",
    )
    .await;
    assert_eq!(ended, 1.0);
}

/// Logs out at the provider itself: its end-session page, confirmed.
async fn log_out_at_provider(browser: &mut Browser, provider: &Provider) {
    let page = browser
        .navigate(&format!("{}/session/end", provider.issuer))
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    let done = confirm_logout(browser, provider, &page).await;
    assert!(
        (300..400).contains(&done.status),
        "{} {}",
        done.status,
        done.body
    );
}

/// Answers "yes" on the provider's logout page `page`.
async fn confirm_logout(browser: &mut Browser, provider: &Provider, page: &Answer) -> Answer {
    let xsrf = page
        .body
        .split("name=\"xsrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("xsrf field")
        .to_string();
    browser
        .send(
            "POST",
            &format!("{}/session/end/confirm", provider.issuer),
            &[],
            Some(&[("xsrf", &xsrf), ("logout", "yes")]),
        )
        .await
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open_websocket(port: u16, browser: &Browser) -> Socket {
    let mut req = format!("ws://127.0.0.1:{port}/live")
        .into_client_request()
        .expect("request");
    let headers = req.headers_mut();
    headers.insert("cookie", browser.cookie_header().parse().expect("cookie"));
    headers.insert(
        "origin",
        format!("http://127.0.0.1:{port}").parse().expect("origin"),
    );
    let (ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("websocket");
    ws
}

/// The close code the gateway sends, and how long it took to come.
async fn closed_with(ws: &mut Socket, limit: Duration) -> Option<(u16, Duration)> {
    let started = Instant::now();
    let wait = async {
        while let Some(Ok(message)) = ws.next().await {
            if let Message::Close(frame) = message {
                return frame.map(|f| u16::from(f.code));
            }
        }
        None
    };
    let code = tokio::time::timeout(limit, wait).await.ok()??;
    Some((code, started.elapsed()))
}

#[tokio::test]
async fn two_instances_share_sessions_and_a_backchannel_logout_ends_them_everywhere() {
    let provider = Provider::start();
    let echo = Echo::start();
    let redis = Redis::start();
    let ws_backend = common::websocket_echo().await;
    let (a, b) = (port_pair(), port_pair());
    // Logout tokens come to instance A, through the provider's tap (kept for the replay).
    let backchannel = format!(
        "{}/test/tap?to=http://127.0.0.1:{a}/auth/backchannel-logout",
        provider.issuer
    );
    let client = register(&provider, a, &backchannel, 6).await;
    let shared = format!(
        r#"store = "redis"
instances = 2

[rate_limit.redis]
url = "{}"

[upstreams.live]
targets = ["127.0.0.1:{ws_backend}"]

[[routes]]
path = "/live"
access = "authenticated"
browser = true
upstream = "live"
[routes.websocket]
"#,
        redis.url()
    );
    // Both name A's callback: the provider knows one.
    let text_a = config(&provider, &echo, &client, a, &shared);
    let text_b = text_a.replace(
        &format!("127.0.0.1:{}\"\n\n[issuers", a + 1),
        &format!("127.0.0.1:{}\"\n\n[issuers", b + 1),
    );
    let gw_a = start(a, &text_a, &client);
    let gw_b = start(b, &text_b, &client);

    let mut browser = Browser::new();
    assert_eq!(
        browser.log_in(&gw_a.url("/app/desk"), "carol").await.status,
        200
    );
    // The session made on A is used on B.
    let on_b = browser.fetch("GET", &gw_b.url("/app/desk"), None).await;
    assert_eq!(on_b.status, 200, "{}", on_b.body);
    assert_eq!(on_b.json()["headers"]["x-user-id"][0], "carol");
    let token = upstream_token(&on_b);
    // Nothing in Redis a browser could present: keys hold hashes, values are sealed.
    let id = browser.session_cookie().expect("cookie").clone();
    let keys = redis.cli(&["--scan", "--pattern", "*session:*"]);
    assert!(!keys.contains(&id), "{keys}");
    let stored = redis.cli(&["--scan", "--pattern", "portcullis:rl:session:[0-9a-f]*"]);
    let first = stored.lines().next().expect("a stored session").to_string();
    let value = redis.cli(&["GET", &first]);
    assert!(
        !value.contains("carol") && !value.contains(&token[..20]),
        "sealed: {value}"
    );

    // Once the token is due, requests to both instances at once make one refresh between
    // them: the instance that takes Redis's lock refreshes, the other waits for its result.
    tokio::time::sleep(Duration::from_millis(4200)).await;
    let sample = "portcullis_browser_sessions_total{event=\"refresh\",result=\"ok\"}";
    let calls = (0..10).map(|i| {
        let url = [&gw_a, &gw_b][i % 2].url("/app/desk");
        let cookie = browser.cookie_header();
        async move {
            common::client()
                .get(url)
                .header("cookie", cookie)
                .send()
                .await
                .expect("request")
                .status()
                .as_u16()
        }
    });
    let statuses = common::join_all(calls).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let refreshes = metric(a, sample).await + metric(b, sample).await;
    assert_eq!(refreshes, 1.0, "one refresh across both instances");

    // A WebSocket from the session on B, opened with the cookie: it outlives the access
    // token (6 s), renewed by the gateway's refresh.
    let mut ws = open_websocket(b, &browser).await;
    ws.send(Message::text("hello")).await.expect("send");
    let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
    assert!(matches!(echoed, Ok(Some(Ok(Message::Text(ref t)))) if t.as_str() == "hello"));
    let early = closed_with(&mut ws, Duration::from_secs(9)).await;
    assert_eq!(early, None, "closed before logout: {early:?}");

    // The user logs out at the provider: its back-channel logout reaches A, which ends the
    // session everywhere; B closes the WebSocket within a second.
    log_out_at_provider(&mut browser, &provider).await;
    let closed = closed_with(&mut ws, Duration::from_secs(5))
        .await
        .expect("closed");
    assert_eq!(closed.0, 4003);
    assert!(
        closed.1 < Duration::from_secs(1),
        "closed after {:?}",
        closed.1
    );
    let delivered = common::get(
        &format!("{}/test/backchannel-logouts", provider.issuer),
        None,
    )
    .await;
    assert_eq!(delivered.json()["count"], 1);
    for gw in [&gw_a, &gw_b] {
        assert_eq!(
            browser
                .fetch("GET", &gw.url("/app/desk"), None)
                .await
                .status,
            401
        );
        let bearer = common::get(&gw.url("/api/x"), Some(&token)).await;
        assert_eq!(
            bearer.status, 401,
            "the ended session's token on {}",
            gw.port
        );
    }

    // The same logout token again is refused, and so is a forged one.
    let tapped = common::get(&format!("{}/test/tap/last", provider.issuer), None).await;
    let form = tapped.json()["body"].as_str().expect("tapped").to_string();
    let logout_url = gw_a.url("/auth/backchannel-logout");
    let post = |body: String| {
        let url = logout_url.clone();
        async move {
            common::client()
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await
                .expect("post")
                .status()
                .as_u16()
        }
    };
    assert_eq!(post(form.clone()).await, 400, "replayed");
    let forged = {
        let token = form.trim_start_matches("logout_token=");
        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        use base64::Engine;
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let claims = engine.decode(&parts[1]).expect("claims");
        let claims = String::from_utf8(claims)
            .expect("utf8")
            .replace("carol", "dave");
        parts[1] = engine.encode(claims);
        format!("logout_token={}", parts.join("."))
    };
    assert_eq!(post(forged).await, 400, "forged");
    assert_eq!(post("logout_token=not-a-jwt".into()).await, 400);
}

#[tokio::test]
async fn an_instance_started_after_a_logout_refuses_the_ended_sessions_token() {
    let provider = Provider::start();
    let echo = Echo::start();
    let redis = Redis::start();
    let (a, c) = (port_pair(), port_pair());
    let client = register(&provider, a, "http://127.0.0.1:9/unused", 120).await;
    let shared = format!(
        "store = \"redis\"\ninstances = 2\n\n[rate_limit.redis]\nurl = \"{}\"\n",
        redis.url()
    );
    let text_a = config(&provider, &echo, &client, a, &shared);
    let gw_a = start(a, &text_a, &client);

    // Two sessions; the first one's access token (valid for two minutes) is used as a
    // bearer token too.
    let mut ended = Browser::new();
    assert_eq!(
        ended.log_in(&gw_a.url("/app/desk"), "ivan").await.status,
        200
    );
    let token = upstream_token(&ended.fetch("GET", &gw_a.url("/app/desk"), None).await);
    let mut kept = Browser::new();
    assert_eq!(
        kept.log_in(&gw_a.url("/app/desk"), "judy").await.status,
        200
    );
    let other = upstream_token(&kept.fetch("GET", &gw_a.url("/app/desk"), None).await);
    assert_eq!(
        common::get(&gw_a.url("/api/x"), Some(&token)).await.status,
        200
    );

    assert_eq!(ended.navigate(&gw_a.url("/auth/logout")).await.status, 302);
    assert_eq!(
        common::get(&gw_a.url("/api/x"), Some(&token)).await.status,
        401
    );
    // Stored by its digest until it would expire, never as the token itself.
    let stored = redis.cli(&["--scan", "--pattern", "*ended-token:*"]);
    let key = stored
        .lines()
        .next()
        .expect("the ended token stored")
        .to_string();
    assert!(!stored.contains(&token[..20]), "{stored}");
    let ttl: u64 = redis.cli(&["TTL", &key]).trim().parse().expect("a TTL");
    assert!((100..=131).contains(&ttl), "TTL {ttl}");

    // An instance started after the logout, which heard no announcement, refuses the token
    // and still takes the other session's.
    let text_c = text_a.replace(
        &format!("127.0.0.1:{}\"\n\n[issuers", a + 1),
        &format!("127.0.0.1:{}\"\n\n[issuers", c + 1),
    );
    let gw_c = start(c, &text_c, &client);
    // Once it takes the other session's token (its keys are loaded)...
    let until = |status: u16, bearer: &str| {
        let url = gw_c.url("/api/x");
        let bearer = bearer.to_string();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let r = common::get(&url, Some(&bearer)).await;
                if r.status == status || Instant::now() > deadline {
                    return r;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let taken = until(200, &other).await;
    assert_eq!(taken.status, 200, "{}", taken.body);
    // ... it refuses the ended one: read from Redis as it subscribed, a moment after start.
    let refused = until(401, &token).await;
    assert_eq!(refused.status, 401, "{}", refused.body);
}

#[tokio::test]
async fn the_admin_eviction_of_a_subject_ends_its_sessions() {
    let s = setup(60, "hosts = [\"desk.portcullis.test\"]").await;
    let (gw, port) = (&s.gw, s.port);
    let mut browser = Browser::new();
    // Every authenticated route of a `hosts` host is a browser route: /api is one there only.
    let page = [("accept", "text/html"), ("sec-fetch-mode", "navigate")];
    let api = gw.url("/api/x");
    let elsewhere = browser.send("GET", &api, &page, None).await;
    assert_eq!(elsewhere.status, 401);
    let host = [page[0], page[1], ("host", "Desk.Portcullis.Test:443")];
    let on_desk = browser.send("GET", &api, &host, None).await;
    assert_eq!(on_desk.status, 302, "{}", on_desk.body);
    browser.jar.clear();
    assert_eq!(
        browser.log_in(&gw.url("/app/desk"), "erin").await.status,
        200
    );
    // A reload keeps the sessions (and their store) of an unchanged table.
    gw.signal("HUP");
    assert!(gw
        .log_with("applied as generation")
        .contains("applied as generation"));
    let reloaded = browser.fetch("GET", &gw.url("/app/desk"), None).await;
    assert_eq!(reloaded.status, 200, "after a reload: {}", reloaded.body);
    let evicted = common::client()
        .post(format!("http://127.0.0.1:{}/websockets/evict", port + 1))
        .body(r#"{"subject": "erin"}"#)
        .send()
        .await
        .expect("evict");
    let body: serde_json::Value = evicted.json().await.expect("json");
    assert_eq!(body["sessions_ended"], 1, "{body}");
    assert_eq!(
        browser
            .fetch("GET", &gw.url("/app/desk"), None)
            .await
            .status,
        401
    );
}

/// `portcullis check` on a `[sessions]` table: each mistake named by file, line and key.
#[test]
fn check_names_each_mistake_of_the_sessions_table() {
    let short_key = tempfile::NamedTempFile::new().expect("key file");
    std::fs::write(short_key.path(), "0123456789abcdef").expect("write key");
    let base = |sessions: &str, routes: &str| {
        format!(
            r#"[server]
listen = ["127.0.0.1:1"]

[issuers.idp]
issuer = "https://idp.test"
audiences = ["api"]
discovery = true

[issuers.static]
issuer = "https://static.test"
audiences = ["api"]
jwks_file = "{jwks}"

[upstreams.app]
targets = ["127.0.0.1:9"]

{sessions}

[[routes]]
path = "/app"
access = "authenticated"
upstream = "app"
{routes}
"#,
            jwks = common::fixture("rsa-1.jwks.json").display()
        )
    };
    let table = |extra: &str| {
        format!(
            "[sessions]\nissuer = \"idp\"\nclient_id = \"gw\"\nclient_secret_env = \"PATH\"\n\
             redirect_uri = \"https://desk.test/auth/callback\"\n{extra}"
        )
    };
    let cases = [
        (
            table("").replace("https://desk.test/auth/callback", "desk.test/callback"),
            "browser = true",
            "sessions.redirect_uri: not a URL",
        ),
        (
            table("[sessions.cookie]\nname = \"bad name\""),
            "browser = true",
            "sessions.cookie.name: \"bad name\" is not a cookie name",
        ),
        (
            table(&format!(
                "store = \"redis\"\nencryption_key_files = [\"{}\"]",
                short_key.path().display()
            )),
            "browser = true",
            "sessions.store: store = \"redis\" uses the [rate_limit.redis] server",
        ),
        (
            table(&format!(
                "encryption_key_files = [\"{}\"]",
                short_key.path().display()
            )),
            "browser = true",
            "sessions.encryption_key_files[0]: must be 32 bytes (256 bits); this one has 12",
        ),
        (
            table("instances = 3"),
            "browser = true",
            "sessions.store: more than one instance needs store = \"redis\"",
        ),
        (
            table("").replace("issuer = \"idp\"", "issuer = \"static\""),
            "browser = true",
            "sessions.issuer: the issuer needs discovery = true or a discovery_url",
        ),
        (
            table("scopes = [\"profile\"]"),
            "browser = true",
            "sessions.scopes: must include openid",
        ),
        (
            table("logout_path = \"/auth/callback\""),
            "browser = true",
            "sessions.logout_path: must differ from the other session paths",
        ),
        (
            String::new(),
            "browser = true",
            "routes[0].browser: browser routes need a [sessions] table",
        ),
    ];
    for (sessions, routes, expected) in cases {
        let (code, stderr) = common::check_config(&base(&sessions, routes));
        assert_eq!(code, Some(1), "{expected}: {stderr}");
        assert!(
            stderr.contains(expected),
            "expected {expected:?} in:\n{stderr}"
        );
        assert!(stderr.contains("gateway.toml:"), "file and line: {stderr}");
    }
    let (code, stderr) = common::check_config(&base(&table(""), "browser = true"));
    assert_eq!(code, Some(0), "{stderr}");
}

#[tokio::test]
async fn a_client_authenticating_with_private_key_jwt_logs_in() {
    let provider = Provider::start();
    let echo = Echo::start();
    let port = port_pair();
    let jwks: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::repo_path("conf/dev/jwks.json")).expect("jwks"),
    )
    .expect("jwks json");
    let body = serde_json::json!({
        "redirect_uris": [format!("http://127.0.0.1:{port}/auth/callback")],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "private_key_jwt",
        "token_endpoint_auth_signing_alg": "RS256",
        "jwks": jwks,
    });
    let reg = provider.register(&body).await;
    let client = Client {
        id: reg["client_id"].as_str().expect("client_id").into(),
        secret: String::new(),
    };
    let key = common::repo_path("conf/dev/private-key.pem");
    let text = config(&provider, &echo, &client, port, "")
        .replace(
            "client_secret_env = \"SESSION_CLIENT_SECRET\"",
            &format!(
                "auth_method = \"private_key_jwt\"\nprivate_key_file = \"{}\"\nprivate_key_id = \"dev-1\"",
                key.display()
            ),
        );
    let gw = start(port, &text, &client);
    let mut browser = Browser::new();
    let landed = browser.log_in(&gw.url("/app/desk"), "grace").await;
    assert_eq!(landed.status, 200, "{}", landed.body);
    assert_eq!(landed.json()["headers"]["x-user-id"][0], "grace");
}

#[tokio::test]
async fn a_client_authenticating_with_client_secret_post_logs_in() {
    let provider = Provider::start();
    let echo = Echo::start();
    let port = port_pair();
    let body = serde_json::json!({
        "redirect_uris": [format!("http://127.0.0.1:{port}/auth/callback")],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "client_secret_post",
    });
    let reg = provider.register(&body).await;
    let client = Client {
        id: reg["client_id"].as_str().expect("client_id").into(),
        secret: reg["client_secret"].as_str().expect("client_secret").into(),
    };
    // The provider takes the secret in the form or in Basic alike: it tells which it got.
    let text = config(
        &provider,
        &echo,
        &client,
        port,
        "auth_method = \"client_secret_post\"",
    );
    let gw = start(port, &text, &client);
    let mut browser = Browser::new();
    let landed = browser.log_in(&gw.url("/app/desk"), "heidi").await;
    assert_eq!(landed.status, 200, "{}", landed.body);
    assert_eq!(landed.json()["headers"]["x-user-id"][0], "heidi");
    let auth = common::get(&format!("{}/test/token-auth/last", provider.issuer), None).await;
    assert_eq!(auth.json()["basic"], false, "the secret went in the form");
}

//! A browser session in a real browser: headless Chromium (Debian's `chromium`) driven by
//! `chromedriver` over WebDriver. It logs in through the provider's page, loads a page
//! behind the gateway that opens a WebSocket, logs out at the provider in another tab, and
//! sees the page's WebSocket closed (4003) and the next navigation sent to the login.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, wait_for_port, FileServer, Gateway, Proc, Provider};
use serde_json::{json, Value};

/// A WebDriver session (W3C WebDriver, as chromedriver speaks it).
struct Driver {
    http: reqwest::Client,
    base: String,
    _proc: Proc,
}

impl Driver {
    async fn start() -> Driver {
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "chromedriver is needed for the browser tests (Debian package chromium-driver)",
            );
        let proc = Proc(child);
        wait_for_port(port, "chromedriver");
        let http = common::client();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
            },
        }}});
        let answer: Value = http
            .post(format!("http://127.0.0.1:{port}/session"))
            .json(&caps)
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("session answer");
        let id = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {answer}"));
        Driver {
            base: format!("http://127.0.0.1:{port}/session/{id}"),
            http,
            _proc: proc,
        }
    }

    async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.base);
        let req = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body),
        };
        let answer: Value = req
            .send()
            .await
            .expect("webdriver")
            .json()
            .await
            .expect("json");
        if answer["value"].get("error").is_some() {
            panic!("webdriver {path}: {answer}");
        }
        answer["value"].clone()
    }

    async fn go(&self, url: &str) {
        self.call("POST", "/url", json!({"url": url})).await;
    }

    async fn url(&self) -> String {
        self.call("GET", "/url", Value::Null)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    async fn script(&self, source: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            json!({"script": source, "args": []}),
        )
        .await
    }

    async fn element(&self, css: &str) -> String {
        let found = self
            .call(
                "POST",
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .expect("element id")
            .to_string()
    }

    async fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.call(
            "POST",
            &format!("/element/{id}/value"),
            json!({"text": text}),
        )
        .await;
    }

    async fn click(&self, css: &str) {
        let id = self.element(css).await;
        self.call("POST", &format!("/element/{id}/click"), json!({}))
            .await;
    }

    /// Waits until `script` returns true.
    async fn wait_for(&self, script: &str, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if self.script(script).await == Value::Bool(true) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The browser goes with its session; chromedriver goes with its process.
        let url = self.base.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async { common::client().delete(url).send().await.ok() });
            }
        })
        .join();
    }
}

const PAGE: &str = r#"<!DOCTYPE html><html><head><title>desk</title></head><body>
<p id="state">connecting</p>
<script>
const ws = new WebSocket(location.origin.replace('http', 'ws') + '/live');
ws.onopen = () => { ws.send('hello'); };
ws.onmessage = (e) => { document.getElementById('state').textContent = 'echo:' + e.data; };
ws.onclose = (e) => { document.getElementById('state').textContent = 'closed:' + e.code; };
</script></body></html>"#;

#[tokio::test]
async fn logging_out_at_the_provider_closes_the_pages_websocket_in_chromium() {
    let provider = Provider::start();
    let files = FileServer::start();
    files.put("index.html", PAGE);
    let ws_backend = common::websocket_echo().await;
    let port = free_port();
    // The page is served as http://localhost: a secure context, where Chromium keeps
    // `Secure` and `__Host-` cookies as it would over HTTPS.
    let site = format!("http://localhost:{port}");
    let registration = json!({
        "redirect_uris": [format!("{site}/auth/callback")],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "backchannel_logout_uri": format!("http://127.0.0.1:{port}/auth/backchannel-logout"),
        "backchannel_logout_session_required": true,
    });
    let reg = provider.register(&registration).await;
    let client_id = reg["client_id"].as_str().expect("client_id");
    let secret = reg["client_secret"].as_str().expect("client_secret");
    let text = format!(
        r#"
[issuers.idp]
issuer = "{iss}"
audiences = ["https://api.portcullis.test"]
discovery = true

[sessions]
issuer = "idp"
client_id = "{client_id}"
client_secret_env = "SESSION_CLIENT_SECRET"
redirect_uri = "{site}/auth/callback"
scopes = ["openid", "offline_access"]

[upstreams.pages]
targets = ["127.0.0.1:{files}"]

[upstreams.live]
targets = ["127.0.0.1:{ws_backend}"]

[[routes]]
path_prefix = "/app"
access = "authenticated"
browser = true
upstream = "pages"
strip_prefix = "/app"

[[routes]]
path = "/live"
access = "authenticated"
browser = true
upstream = "live"
[routes.websocket]
"#,
        iss = provider.issuer,
        files = files.port,
    );
    let _gw = Gateway::start_on(
        port,
        &format!("listen = [\"127.0.0.1:{port}\"]"),
        &text,
        &[("SESSION_CLIENT_SECRET", secret)],
    );

    let browser = Driver::start().await;
    // The page, without a session: the provider's sign-in form.
    browser.go(&format!("{site}/app/index.html")).await;
    let at = browser.url().await;
    assert!(
        at.starts_with(&format!("{}/interaction/", provider.issuer)),
        "at {at}"
    );
    browser.type_into("#username", "frank").await;
    browser.click("#submit").await;
    // Back on the page, whose WebSocket opened with the session's cookie.
    let opened = browser
        .wait_for(
            "return document.getElementById('state') && \
             document.getElementById('state').textContent === 'echo:hello'",
            Duration::from_secs(10),
        )
        .await;
    assert!(
        opened,
        "the page's WebSocket did not echo; at {}",
        browser.url().await
    );
    assert_eq!(browser.url().await, format!("{site}/app/index.html"));
    let cookie = browser.script("return document.cookie").await;
    assert_eq!(cookie, json!(""), "the session cookie is HttpOnly");

    // Log out at the provider, in another tab.
    let page_tab = browser.call("GET", "/window", Value::Null).await;
    let tab = browser
        .call("POST", "/window/new", json!({"type": "tab"}))
        .await;
    browser
        .call("POST", "/window", json!({"handle": tab["handle"]}))
        .await;
    browser
        .go(&format!("{}/session/end", provider.issuer))
        .await;
    browser.click("#logout").await;

    // The page's WebSocket was closed by the gateway, as evicted.
    browser
        .call("POST", "/window", json!({"handle": page_tab}))
        .await;
    let closed = browser
        .wait_for(
            "return document.getElementById('state').textContent === 'closed:4003'",
            Duration::from_secs(5),
        )
        .await;
    let state = browser
        .script("return document.getElementById('state').textContent")
        .await;
    assert!(closed, "the page's WebSocket: {state}");

    // The next navigation goes to the login.
    browser.go(&format!("{site}/app/index.html")).await;
    let at = browser.url().await;
    assert!(
        at.starts_with(&format!("{}/interaction/", provider.issuer)),
        "at {at}"
    );
}

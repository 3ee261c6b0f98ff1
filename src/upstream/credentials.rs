//! Tokens for upstreams that require one of their own (`[upstreams.NAME.credentials]`).
//!
//! With `client_credentials` the gateway holds one token, shared by every request. It is
//! renewed in the background once it enters its refresh window, while it is still served;
//! only a request that finds no usable token at all waits, for the one call in flight.
//! With `token_exchange` each caller token is exchanged once (single flight per token) and
//! the answer remembered by the caller token's SHA-256 until shortly before it expires.
//!
//! A token is never handed out in the last quarter of its lifetime (at most its last 5 s) and
//! one second more, so it does not expire on its way to, or inside, the upstream. When no token can be had, the
//! request is refused with 503: an upstream never gets a request with a token it would reject.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use http::header::{ACCEPT, AUTHORIZATION};
use http::HeaderValue;
use quick_cache::sync::Cache;
use serde::Deserialize;
use sha2::Digest;

use crate::authenticate::fetch;
use crate::clock;
use crate::config::secret::client_secret;
use crate::config::{ClientAuthMethod, CredentialGrant, CredentialsConf, Invalid, KeyPath};
use crate::metrics;

const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// After a failed call the endpoint is left alone this long; requests meanwhile get 503.
const BACKOFF: Duration = Duration::from_secs(1);
/// How long a refused exchange is remembered, so a caller retrying costs no call.
const REFUSAL_TTL: Duration = Duration::from_secs(10);
/// The lifetime assumed for a token whose answer tells none (no `expires_in`, not a JWT).
const UNKNOWN_LIFETIME: Duration = Duration::from_secs(300);

/// Why a request gets no token for its upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialError {
    /// The token endpoint failed, timed out or is being left alone after a failure: 503.
    Unavailable { retry_after_secs: u32 },
    /// The provider will not exchange this caller's token for one for the upstream, or the
    /// request carried none to exchange: 403.
    Refused,
}

/// A token and when to stop using it.
#[derive(Clone)]
struct Held {
    header: HeaderValue,
    /// From here on it is renewed (in the background, for the gateway's own token).
    refresh_at: Instant,
    /// From here on it is not sent.
    usable_until: Instant,
}

impl Held {
    /// A token of `lifetime` asked for at `asked`: the lifetime counts from before the call,
    /// so the gateway's idea of its expiry is never later than the provider's.
    fn new(
        header: HeaderValue,
        lifetime: Duration,
        refresh_before: Duration,
        asked: Instant,
    ) -> Self {
        // A second more, as `exp` and `expires_in` are whole seconds: a token said to live
        // 4 s may have been issued nearly a second before it was stamped.
        let margin =
            ((lifetime / 4).min(Duration::from_secs(5)) + Duration::from_secs(1)).min(lifetime / 2);
        let ahead = refresh_before.max(margin * 2).min(lifetime * 3 / 4);
        Self {
            header,
            refresh_at: asked + (lifetime - ahead),
            usable_until: asked + (lifetime - margin),
        }
    }
}

/// An exchanged token, or why there is none, as remembered.
#[derive(Clone)]
struct Exchanged {
    answer: Result<Held, CredentialError>,
    answered_at: Instant,
}

impl Exchanged {
    fn fresh(&self, now: Instant) -> bool {
        match &self.answer {
            Ok(held) => now < held.refresh_at,
            Err(CredentialError::Refused) => now < self.answered_at + REFUSAL_TTL,
            Err(CredentialError::Unavailable { .. }) => now < self.answered_at + BACKOFF,
        }
    }

    fn header(&self) -> Result<HeaderValue, CredentialError> {
        self.answer
            .as_ref()
            .map(|h| h.header.clone())
            .map_err(|e| *e)
    }
}

/// The token endpoint's answer on success (RFC 6749 §5.1, RFC 8693 §2.2.1).
#[derive(Deserialize)]
struct Issued {
    access_token: String,
    token_type: String,
    expires_in: Option<u64>,
}

/// Why one call to the token endpoint gave no token.
#[derive(Debug, thiserror::Error)]
enum CallError {
    /// The provider refused this caller's token (`invalid_grant` and the like).
    #[error("refused: {0}")]
    Refused(String),
    #[error("{0}")]
    Failed(String),
}

/// The credentials of one upstream, compiled from its `credentials` table.
pub struct Credentials {
    conf: CredentialsConf,
    secret: String,
    upstream: Arc<str>,
    /// With `client_credentials`: the gateway's token.
    own: ArcSwapOption<Held>,
    /// Held while the gateway's own token is being fetched: one call at a time.
    fetching: Arc<tokio::sync::Mutex<()>>,
    /// Process-clock milliseconds of the last failed call, 0 for none.
    failed_at: AtomicU64,
    /// With `token_exchange`: by the caller token's SHA-256.
    exchanged: Cache<[u8; 32], Exchanged>,
}

impl std::fmt::Debug for Credentials {
    // Not derived: the secret stays out of every log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("upstream", &self.upstream)
            .field("grant", &self.conf.grant)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Compiles `[upstreams.NAME.credentials]`, found at `at`; reads the secret now.
    pub fn compile(
        upstream: &str,
        conf: &CredentialsConf,
        at: &KeyPath,
        relative: &dyn Fn(&std::path::Path) -> std::path::PathBuf,
    ) -> Result<Self, Invalid> {
        let err = |field: &str, m: &str| Invalid::new(at.key(field), m);
        let endpoint = &conf.token_endpoint;
        if !(endpoint.starts_with("https://") || endpoint.starts_with("http://"))
            || reqwest::Url::parse(endpoint).is_err()
        {
            return Err(err("token_endpoint", "must be an http:// or https:// URL"));
        }
        if conf.client_id.is_empty() {
            return Err(err("client_id", "must not be empty"));
        }
        let secret = client_secret(
            conf.client_secret_file.as_deref(),
            conf.client_secret_env.as_deref(),
            at,
            relative,
        )?;
        for (field, value) in [("timeout", conf.timeout), ("retry_after", conf.retry_after)] {
            if value.is_zero() {
                return Err(err(field, "must be more than 0s"));
            }
        }
        if conf.cache_max_entries == 0 {
            return Err(err("cache_max_entries", "must be at least 1"));
        }
        if conf.audience.is_some() && conf.grant != CredentialGrant::TokenExchange {
            return Err(err(
                "audience",
                "is a token exchange parameter: use resource or scope",
            ));
        }
        Ok(Self {
            exchanged: Cache::new(match conf.grant {
                CredentialGrant::TokenExchange => conf.cache_max_entries,
                CredentialGrant::ClientCredentials => 1,
            }),
            conf: conf.clone(),
            secret,
            upstream: upstream.into(),
            own: ArcSwapOption::empty(),
            fetching: Arc::new(tokio::sync::Mutex::new(())),
            failed_at: AtomicU64::new(0),
        })
    }

    /// Whether `other` was made from the same settings, so that a reload keeps this one and
    /// the tokens it holds.
    pub fn same_as(&self, other: &Credentials) -> bool {
        self.conf == other.conf && self.secret == other.secret
    }

    pub fn grant(&self) -> CredentialGrant {
        self.conf.grant
    }

    /// The `Authorization` for a request to the upstream, from the caller's token where the
    /// grant exchanges it.
    pub async fn authorization(
        self: &Arc<Self>,
        caller_token: Option<&str>,
    ) -> Result<HeaderValue, CredentialError> {
        match (self.conf.grant, caller_token) {
            (CredentialGrant::ClientCredentials, _) => self.own().await,
            (CredentialGrant::TokenExchange, Some(token)) => self.exchange(token).await,
            (CredentialGrant::TokenExchange, None) => Err(CredentialError::Refused),
        }
    }

    async fn own(self: &Arc<Self>) -> Result<HeaderValue, CredentialError> {
        let now = Instant::now();
        if let Some(held) = &*self.own.load() {
            if now < held.refresh_at {
                return Ok(held.header.clone());
            }
            if now < held.usable_until {
                self.renew_in_background();
                return Ok(held.header.clone());
            }
        }
        let _turn = self.fetching.lock().await;
        // The call this request waited for may have brought a token.
        if let Some(held) = &*self.own.load() {
            if Instant::now() < held.usable_until {
                return Ok(held.header.clone());
            }
        }
        self.renew().await
    }

    /// Fetches the gateway's token; the caller holds `fetching`.
    async fn renew(&self) -> Result<HeaderValue, CredentialError> {
        if self.failed_recently() {
            return Err(self.unavailable());
        }
        match self.call(None).await {
            Ok(held) => {
                let header = held.header.clone();
                self.own.store(Some(Arc::new(held)));
                self.failed_at.store(0, Ordering::Relaxed);
                Ok(header)
            }
            Err(_) => {
                self.failed_at
                    .store(clock::process_millis().max(1), Ordering::Relaxed);
                Err(self.unavailable())
            }
        }
    }

    /// Starts a renewal unless one is running (or the endpoint just failed): the requests
    /// go on with the token that is still usable.
    fn renew_in_background(self: &Arc<Self>) {
        if self.failed_recently() {
            return;
        }
        let Ok(turn) = self.fetching.clone().try_lock_owned() else {
            return;
        };
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let _turn = turn;
            let _ = this.renew().await;
        });
    }

    fn failed_recently(&self) -> bool {
        let at = self.failed_at.load(Ordering::Relaxed);
        at != 0 && clock::process_millis().saturating_sub(at) < BACKOFF.as_millis() as u64
    }

    fn unavailable(&self) -> CredentialError {
        CredentialError::Unavailable {
            retry_after_secs: self.conf.retry_after.as_secs().clamp(1, 3600) as u32,
        }
    }

    async fn exchange(&self, token: &str) -> Result<HeaderValue, CredentialError> {
        let key: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let started = Instant::now();
        if let Some(entry) = self.exchanged.get(&key).filter(|e| e.fresh(started)) {
            return entry.header();
        }
        // Twice at most: a stale entry is dropped once, then a call is made or joined.
        for _ in 0..2 {
            match self.exchanged.get_value_or_guard_async(&key).await {
                Ok(entry) if entry.fresh(Instant::now()) || entry.answered_at >= started => {
                    return entry.header();
                }
                Ok(_) => {
                    self.exchanged.remove_if(&key, |e| !e.fresh(Instant::now()));
                }
                Err(guard) => {
                    let entry = self.ask_exchange(token).await;
                    let answer = entry.header();
                    // Failures too, for a moment: the requests waiting get them, and the
                    // endpoint is not asked again at once.
                    let _ = guard.insert(entry);
                    return answer;
                }
            }
        }
        self.ask_exchange(token).await.header()
    }

    async fn ask_exchange(&self, token: &str) -> Exchanged {
        let answer = match self.call(Some(token)).await {
            Ok(held) => Ok(held),
            Err(CallError::Refused(_)) => Err(CredentialError::Refused),
            Err(CallError::Failed(_)) => Err(self.unavailable()),
        };
        Exchanged {
            answer,
            answered_at: Instant::now(),
        }
    }

    /// One call to the token endpoint, within the timeout.
    async fn call(&self, subject_token: Option<&str>) -> Result<Held, CallError> {
        let grant = self.conf.grant.as_str();
        let asked = Instant::now();
        let result = self.request(subject_token).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(CallError::Refused(_)) => "refused",
            Err(CallError::Failed(_)) => "error",
        };
        metrics::upstream_credentials(&self.upstream, grant, outcome, asked.elapsed());
        match result {
            Ok(issued) => {
                let held = self.hold(issued, asked);
                if let Err(e) = &held {
                    log::warn!("upstream {}: {grant} token unusable: {e}", self.upstream);
                }
                held
            }
            Err(e) => {
                log::warn!(
                    "upstream {}: {grant} at the token endpoint: {e}",
                    self.upstream
                );
                Err(e)
            }
        }
    }

    async fn request(&self, subject_token: Option<&str>) -> Result<Issued, CallError> {
        let failed = |e: &dyn std::fmt::Display| CallError::Failed(e.to_string());
        let mut form: Vec<(&str, &str)> = Vec::with_capacity(8);
        match subject_token {
            None => form.push(("grant_type", "client_credentials")),
            Some(token) => form.extend([
                ("grant_type", TOKEN_EXCHANGE),
                ("subject_token", token),
                ("subject_token_type", ACCESS_TOKEN_TYPE),
                ("requested_token_type", ACCESS_TOKEN_TYPE),
            ]),
        }
        let params = [
            ("scope", &self.conf.scope),
            ("resource", &self.conf.resource),
            ("audience", &self.conf.audience),
        ];
        for (name, value) in params {
            if let Some(value) = value {
                form.push((name, value));
            }
        }
        let mut request = fetch::credentials_client()
            .map_err(|e| failed(&e))?
            .post(&self.conf.token_endpoint)
            .header(ACCEPT, "application/json")
            .timeout(self.conf.timeout);
        match self.conf.auth_method {
            ClientAuthMethod::ClientSecretBasic => {
                let basic = fetch::basic_credentials(&self.conf.client_id, &self.secret);
                request = request.header(AUTHORIZATION, basic);
            }
            ClientAuthMethod::ClientSecretPost => {
                form.push(("client_id", &self.conf.client_id));
                form.push(("client_secret", &self.secret));
            }
        }
        let (status, body) = fetch::answer_of(request.form(&form))
            .await
            .map_err(|e| failed(&e))?;
        if status.is_success() {
            return serde_json::from_slice(&body).map_err(|e| failed(&format!("answer: {e}")));
        }
        let error = fetch::oauth_error(&body);
        let refused = subject_token.is_some()
            && status == http::StatusCode::BAD_REQUEST
            && matches!(
                error.as_deref(),
                Some("invalid_grant" | "invalid_target" | "access_denied")
            );
        let why = format!("HTTP {status}, error {}", error.as_deref().unwrap_or("-"));
        Err(if refused {
            CallError::Refused(why)
        } else {
            CallError::Failed(why)
        })
    }

    /// What the gateway keeps of an issued token: a `Bearer` one, until when.
    fn hold(&self, issued: Issued, asked: Instant) -> Result<Held, CallError> {
        if !issued.token_type.eq_ignore_ascii_case("bearer") {
            return Err(CallError::Failed(format!(
                "token_type {:?} is not Bearer",
                issued.token_type
            )));
        }
        // The shorter of what the answer and the token say, should they differ.
        let lifetime = [
            issued.expires_in.map(Duration::from_secs),
            jwt_lifetime(&issued.access_token),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(UNKNOWN_LIFETIME);
        if lifetime.is_zero() {
            return Err(CallError::Failed("the token has already expired".into()));
        }
        let mut header = HeaderValue::try_from(format!("Bearer {}", issued.access_token))
            .ok()
            .filter(|_| !issued.access_token.is_empty())
            .ok_or_else(|| CallError::Failed("access_token is not a header value".into()))?;
        header.set_sensitive(true);
        Ok(Held::new(header, lifetime, self.conf.refresh_before, asked))
    }
}

/// How long a JWT has left by its `exp`, read without verification: only to know when to
/// renew it; the upstream verifies it.
fn jwt_lifetime(token: &str) -> Option<Duration> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let exp = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()?
        .get("exp")?
        .as_u64()?;
    Some(clock::until_unix(Some(exp)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> HeaderValue {
        HeaderValue::from_static("Bearer t")
    }

    #[test]
    fn a_token_is_renewed_ahead_and_never_sent_in_its_last_quarter() {
        let at = Instant::now();
        let secs = Duration::from_secs;
        // A short token: renewed after a quarter of its life, dropped at half.
        let held = Held::new(header(), secs(4), secs(60), at);
        assert_eq!(held.refresh_at - at, secs(1));
        assert_eq!(held.usable_until - at, secs(2));
        // A long one: renewed `refresh_before` ahead, dropped 6 s before it expires.
        let held = Held::new(header(), secs(3600), secs(60), at);
        assert_eq!(held.refresh_at - at, secs(3540));
        assert_eq!(held.usable_until - at, secs(3594));
        // Without a refresh window, it is still renewed before it is dropped.
        let held = Held::new(header(), secs(3600), Duration::ZERO, at);
        assert_eq!(held.refresh_at - at, secs(3588));
        // However short, it is usable for a while and renewed before.
        let held = Held::new(header(), secs(1), secs(60), at);
        assert!(at < held.refresh_at && held.refresh_at < held.usable_until);
    }

    #[test]
    fn a_jwt_tells_its_lifetime_and_anything_else_does_not() {
        use base64::Engine;
        let exp = clock::unix_secs() + 120;
        let payload =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{{\"exp\":{exp}}}"));
        let left = jwt_lifetime(&format!("e30.{payload}.sig")).expect("lifetime");
        assert!(left <= Duration::from_secs(120) && left >= Duration::from_secs(118));
        assert_eq!(jwt_lifetime("opaque-token"), None);
        assert_eq!(jwt_lifetime("a.!!!.c"), None);
    }

    fn conf(grant: &str) -> CredentialsConf {
        toml::from_str(&format!(
            "grant = \"{grant}\"\ntoken_endpoint = \"http://127.0.0.1:1/token\"\n\
             client_id = \"gw\"\nclient_secret_env = \"PATH\"\ntimeout = \"200ms\""
        ))
        .expect("conf")
    }

    fn compile(conf: &CredentialsConf) -> Result<Credentials, Invalid> {
        let at = KeyPath::root().key("upstreams").key("b").key("credentials");
        Credentials::compile("b", conf, &at, &|p| p.to_path_buf())
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_is_unavailable_then_left_alone() {
        let creds = Arc::new(compile(&conf("client_credentials")).expect("compiles"));
        let first = creds.authorization(None).await;
        assert!(matches!(first, Err(CredentialError::Unavailable { .. })));
        assert!(creds.failed_recently());
        let second = creds.authorization(None).await;
        assert!(matches!(second, Err(CredentialError::Unavailable { .. })));
        let exchange = Arc::new(compile(&conf("token_exchange")).expect("compiles"));
        assert_eq!(
            exchange.authorization(None).await,
            Err(CredentialError::Refused)
        );
    }

    #[test]
    fn bad_settings_are_named() {
        let mut c = conf("client_credentials");
        c.token_endpoint = "idp/token".into();
        let e = compile(&c).expect_err("not a URL");
        assert!(e.to_string().contains("token_endpoint"), "{e}");
        let mut c = conf("client_credentials");
        c.audience = Some("api".into());
        let e = compile(&c).expect_err("audience without exchange");
        assert!(e.to_string().contains("audience"), "{e}");
        let mut c = conf("client_credentials");
        c.client_secret_env = None;
        let e = compile(&c).expect_err("no secret");
        assert!(e.to_string().contains("client_secret_file"), "{e}");
    }
}

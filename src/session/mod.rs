//! Browser sessions (`[sessions]`): OpenID Connect login at the gateway, sessions kept by the
//! gateway, refresh, and logout that reaches every instance.
//!
//! The browser holds a cookie with an unguessable id and nothing else; the store holds the
//! tokens under the id's SHA-256. A request on a browser route is authenticated with the
//! session's access token, verified as a bearer token would be, so everything after
//! authentication is the same for sessions and bearer callers.
//!
//! Logging out removes the session from the store (so no instance finds it again), refuses
//! its access token from then on (it may be in the verified-token cache, or in an upstream's
//! hands), and names the session's WebSockets to close; with Redis, the same is published to
//! the other instances.

mod login;
mod logout;
pub mod provider;
mod refresh;
pub mod seal;
pub mod store;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method};
use serde::{Deserialize, Serialize};

use crate::authenticate::{AuthError, Authenticator, IssuerId};
use crate::clock;
use crate::config::{Invalid, KeyPath, RedisConf, SessionStoreKind, SessionsConf};
use crate::metrics;
use crate::token_service::Revoked;
pub use login::{LoginError, Redirect};
use provider::{CallError, ClientAuth, Provider};
use seal::Sealer;
pub use store::Handle;
use store::{Record, Store};

/// How long a login may take at the provider.
const LOGIN_TTL: Duration = Duration::from_secs(600);
/// Beyond a token's `exp`, for other instances' clocks.
const LEEWAY_SECS: u64 = 10;
/// Most ended sessions' access tokens refused at once.
const MAX_ENDED_TOKENS: usize = 100_000;
/// How long an instance that did not get the refresh waits for the one that did.
const REFRESH_WAIT: Duration = Duration::from_secs(5);

/// The gateway's session paths, answered before any route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Login,
    Callback,
    Logout,
    BackchannelLogout,
}

/// What lives on across reloads while the store's settings stay: the sessions themselves.
struct State {
    store: Store,
    sealer: Arc<Sealer>,
    /// Access tokens of ended sessions (SHA-256, hex), refused until they expire.
    ended_tokens: Revoked,
    /// Refreshes under way on this instance, by session.
    refreshing: Mutex<HashMap<Handle, Arc<tokio::sync::Mutex<()>>>>,
    /// Where the store is, to tell whether a reload moved it.
    place: (SessionStoreKind, Option<(String, String)>),
}

pub struct Sessions {
    conf: SessionsConf,
    provider: Provider,
    iss: String,
    callback_path: String,
    state: Arc<State>,
    /// Lower-cased hosts all of whose routes are browser routes.
    hosts: Vec<String>,
    /// `Origin` values allowed to change state besides the page's own.
    allowed_origins: Vec<String>,
    /// `[rate_limit.redis]` key prefix, for the logout channel.
    channel: Option<String>,
}

/// What compiling `[sessions]` reads besides its table.
pub struct Context<'a> {
    pub relative: &'a dyn Fn(&Path) -> PathBuf,
    pub authenticator: &'a Authenticator,
    /// The issuer's discovery document URL, if it has one.
    pub discovery_url: Option<String>,
    pub issuer: Option<IssuerId>,
    pub redis: Option<&'a RedisConf>,
    pub previous: Option<&'a Sessions>,
}

/// A session found, with a usable access token.
#[derive(Clone)]
pub struct Active {
    pub handle: Handle,
    record: Arc<Record>,
}

impl Active {
    pub fn access_token(&self) -> &str {
        &self.record.access_token
    }
}

/// Shows no token: `Facts` are printed in debugging.
impl std::fmt::Debug for Active {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Active")
            .field("handle", &self.handle)
            .finish_non_exhaustive()
    }
}

/// Why a request's session cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Lapsed {
    #[error("no session")]
    Gone,
    #[error("{0}")]
    Unavailable(String),
}

impl Lapsed {
    /// As authentication reports it: no session is no token; a store or provider that
    /// cannot answer is a 503.
    pub fn auth_error(&self) -> AuthError {
        match self {
            Lapsed::Gone => AuthError::Missing,
            Lapsed::Unavailable(_) => AuthError::Undecided {
                retry_after_secs: 1,
            },
        }
    }
}

/// Sessions ended: the keys of their WebSockets in the registry, to close.
#[derive(Debug, Default)]
pub struct Ended {
    pub websockets: Vec<String>,
    /// The last ended session's ID token, for the end-session request.
    pub id_token: Option<String>,
}

/// What instances tell each other when sessions end.
#[derive(Serialize, Deserialize)]
struct EndedMessage {
    sessions: Vec<String>,
    /// (access token SHA-256 hex, refused until).
    tokens: Vec<(String, u64)>,
}

impl Sessions {
    pub fn compile(
        conf: &SessionsConf,
        at: &KeyPath,
        cx: &Context<'_>,
    ) -> Result<Sessions, Invalid> {
        let err = |field: &str, m: &str| Invalid::new(at.key(field), m);
        let issuer = cx
            .issuer
            .ok_or_else(|| err("issuer", &format!("no [issuers.{}]", conf.issuer)))?;
        let discovery_url = cx.discovery_url.clone().ok_or_else(|| {
            err(
                "issuer",
                "the issuer needs discovery = true or a discovery_url: the login endpoints come \
                 from its discovery document",
            )
        })?;
        if conf.client_id.is_empty() {
            return Err(err("client_id", "must not be empty"));
        }
        let callback = url::Url::parse(&conf.redirect_uri)
            .map_err(|e| err("redirect_uri", &format!("not a URL: {e}")))?;
        if !matches!(callback.scheme(), "https" | "http") || callback.host().is_none() {
            return Err(err("redirect_uri", "must be an absolute http(s) URL"));
        }
        if callback.query().is_some() || callback.fragment().is_some() {
            return Err(err("redirect_uri", "must have no query or fragment"));
        }
        if let Some(uri) = &conf.post_logout_redirect_uri {
            url::Url::parse(uri)
                .map_err(|e| err("post_logout_redirect_uri", &format!("not a URL: {e}")))?;
        }
        if !conf.scopes.iter().any(|s| s == "openid") {
            return Err(err("scopes", "must include openid"));
        }
        let paths = [
            ("login_path", &conf.login_path),
            ("logout_path", &conf.logout_path),
            ("backchannel_logout_path", &conf.backchannel_logout_path),
        ];
        let callback_path = callback.path().to_owned();
        for (i, (field, path)) in paths.iter().enumerate() {
            if !path.starts_with('/') {
                return Err(err(field, "must be a path starting with /"));
            }
            if **path == callback_path || paths[..i].iter().any(|(_, p)| p == path) {
                return Err(err(field, "must differ from the other session paths"));
            }
        }
        login::check_cookie(&conf.cookie)
            .map_err(|(field, m)| Invalid::new(at.key("cookie").key(field), m))?;
        if conf.cookie.idle_timeout.is_zero() || conf.cookie.absolute_timeout.is_zero() {
            return Err(Invalid::new(
                at.key("cookie").key("idle_timeout"),
                "timeouts must be more than 0s",
            ));
        }
        if conf.instances > 1 && conf.store == SessionStoreKind::Memory {
            return Err(err(
                "store",
                "more than one instance needs store = \"redis\": a session made on one must be \
                 found on the others",
            ));
        }
        if conf.max_sessions == 0 {
            return Err(err("max_sessions", "must be at least 1"));
        }
        if conf.timeout.is_zero() {
            return Err(err("timeout", "must be more than 0s"));
        }
        let redis = match (conf.store, cx.redis) {
            (SessionStoreKind::Redis, None) => {
                return Err(err(
                    "store",
                    "store = \"redis\" uses the [rate_limit.redis] server: configure it",
                ))
            }
            (SessionStoreKind::Redis, Some(r)) => Some((r.url.clone(), r.key_prefix.clone())),
            (SessionStoreKind::Memory, _) => None,
        };
        let keys = read_keys(conf, at, cx.relative)?;
        if keys.is_empty() && conf.store == SessionStoreKind::Redis {
            return Err(err(
                "encryption_key_files",
                "sessions in Redis are encrypted: set encryption_key_files or encryption_keys_env",
            ));
        }
        let secret = match conf.auth_method {
            crate::config::SessionAuthMethod::PrivateKeyJwt => None,
            _ => Some(crate::config::secret::client_secret(
                conf.client_secret_file.as_deref(),
                conf.client_secret_env.as_deref(),
                at,
                cx.relative,
            )?),
        };
        let key_pem =
            match (&conf.private_key_file, conf.auth_method) {
                (None, crate::config::SessionAuthMethod::PrivateKeyJwt) => {
                    return Err(err(
                        "private_key_file",
                        "private_key_jwt needs the client's key",
                    ))
                }
                (Some(file), _) => {
                    let path = (cx.relative)(file);
                    Some(std::fs::read(&path).map_err(|e| {
                        err("private_key_file", &format!("{}: {e}", path.display()))
                    })?)
                }
                (None, _) => None,
            };
        let auth = ClientAuth::new(
            conf.auth_method,
            secret,
            key_pem.as_deref(),
            conf.private_key_algorithm,
            conf.private_key_id.clone(),
        )
        .map_err(|m| err("private_key_file", &m))?;
        let place = (conf.store, redis.clone());
        let state = match cx.previous.map(|p| &p.state) {
            Some(s) if s.place == place && (keys.is_empty() || s.sealer.same_keys(&keys)) => {
                s.clone()
            }
            _ => Arc::new(State::new(conf, place, keys).map_err(|m| err("store", &m))?),
        };
        let (iss, _) = cx.authenticator.issuer_of(issuer);
        Ok(Sessions {
            provider: Provider::new(
                issuer,
                conf.client_id.clone(),
                auth,
                discovery_url,
                conf.timeout,
            ),
            iss: iss.to_owned(),
            callback_path,
            state,
            hosts: conf.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            allowed_origins: conf
                .allowed_origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
            channel: redis.map(|(_, prefix)| format!("{prefix}sessions-ended")),
            conf: conf.clone(),
        })
    }

    /// The session path `path` is, if it is one.
    pub fn endpoint(&self, path: &str) -> Option<Endpoint> {
        let c = &self.conf;
        if path == self.callback_path {
            Some(Endpoint::Callback)
        } else if path == c.login_path {
            Some(Endpoint::Login)
        } else if path == c.logout_path {
            Some(Endpoint::Logout)
        } else if path == c.backchannel_logout_path {
            Some(Endpoint::BackchannelLogout)
        } else {
            None
        }
    }

    /// Whether every authenticated route of `host` (a `Host` header: any case, a port) is a
    /// browser route.
    pub fn covers_host(&self, host: &str) -> bool {
        let name = match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        };
        self.hosts.iter().any(|h| h.eq_ignore_ascii_case(name))
    }

    /// The hosts of `[sessions] hosts`, lower case.
    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }

    /// The session id the request's cookie carries.
    pub fn session_id<'h>(&self, headers: &'h HeaderMap) -> Option<&'h str> {
        login::cookie(headers, &self.conf.cookie.name)
    }

    /// Whether a state-changing request from `Origin: origin` is allowed besides same-origin
    /// ones.
    pub fn allows_origin(&self, headers: &HeaderMap) -> bool {
        let origin = headers
            .get(http::header::ORIGIN)
            .and_then(|v| v.to_str().ok());
        origin.is_some_and(|o| {
            let o = o.trim_end_matches('/').to_ascii_lowercase();
            self.allowed_origins.contains(&o)
        })
    }

    /// Whether the access token should go to the upstream.
    pub fn passes_access_token(&self) -> bool {
        self.conf.pass_access_token
    }

    /// The `Cookie` header for the upstream: without the gateway's own cookies. `None` when
    /// nothing needs removing.
    pub fn upstream_cookie(&self, value: &HeaderValue) -> Option<String> {
        login::without_own(value, &self.conf.cookie.name)
    }

    /// The session of cookie `id`, with an access token refreshed if it was due.
    pub async fn resume(&self, id: &str) -> Result<Active, Lapsed> {
        self.resume_handle(Handle::of(id)).await
    }

    pub async fn resume_handle(&self, handle: Handle) -> Result<Active, Lapsed> {
        let idle = self.conf.cookie.idle_timeout;
        let record = self
            .state
            .store
            .get(&handle, idle)
            .await
            .map_err(|e| Lapsed::Unavailable(e.to_string()))?
            .ok_or(Lapsed::Gone)?;
        let record = if self.refresh_due(&record) {
            self.refreshed(&handle, record).await?
        } else {
            record
        };
        Ok(Active { handle, record })
    }

    /// Starts a login that comes back to `return_to`.
    pub async fn start_login(&self, return_to: &str) -> Result<Redirect, LoginError> {
        let endpoints = self
            .provider
            .endpoints(&self.iss)
            .await
            .map_err(|e| LoginError::Unavailable(e.to_string()))?;
        login::start(&self.conf, &self.state.sealer, &endpoints, return_to)
    }

    /// The provider's answer at the callback: a new session, and where the browser goes.
    pub async fn finish_login(
        &self,
        authenticator: &Authenticator,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<Redirect, LoginError> {
        let pending = login::pending(&self.conf, &self.state.sealer, headers, query)?;
        let endpoints = self
            .provider
            .endpoints(&self.iss)
            .await
            .map_err(|e| LoginError::Unavailable(e.to_string()))?;
        let tokens = self
            .provider
            .redeem(
                &endpoints.token,
                &pending.code,
                &self.conf.redirect_uri,
                &pending.verifier,
            )
            .await
            .map_err(|e| match e {
                CallError::Refused(why) => LoginError::Provider(why),
                CallError::Failed(why) => LoginError::Unavailable(why),
            })?;
        let id_token = tokens
            .id_token
            .clone()
            .ok_or(LoginError::Request("no id_token"))?;
        let claims = self
            .provider
            .check_id_token(authenticator, &id_token, &pending.nonce)
            .await
            .map_err(LoginError::Token)?;
        let subject = claims
            .get("sub")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned();
        // The access token must be one the routes take, and about the same user.
        let principal = authenticator
            .authenticate(&tokens.access_token, None, None)
            .await
            .map_err(LoginError::AccessToken)?;
        if principal.subject != subject {
            return Err(LoginError::Request(
                "the access token is for another subject",
            ));
        }
        let now = clock::unix_secs();
        let record = Record {
            subject,
            provider_sid: claims
                .get("sid")
                .and_then(|v| v.as_str())
                .map(str::to_owned),
            access_issued: now,
            access_expires: access_expiry(&tokens),
            refresh_token: tokens.refresh_token,
            access_token: tokens.access_token,
            id_token,
            ends: now + self.conf.cookie.absolute_timeout.as_secs(),
        };
        let id = seal::random_id().map_err(|e| LoginError::Unavailable(e.into()))?;
        self.state
            .store
            .put(&Handle::of(&id), &record, self.conf.cookie.idle_timeout)
            .await
            .map_err(|e| LoginError::Unavailable(e.to_string()))?;
        metrics::session_event("login", "ok");
        Ok(login::established(&self.conf, &id, &pending))
    }

    /// Sessions held by this instance (memory store only).
    pub fn held(&self) -> Option<usize> {
        self.state.store.len()
    }
}

impl State {
    fn new(
        conf: &SessionsConf,
        place: (SessionStoreKind, Option<(String, String)>),
        keys: Vec<[u8; seal::KEY_BYTES]>,
    ) -> Result<State, String> {
        let sealer = Arc::new(if keys.is_empty() {
            Sealer::random()?
        } else {
            Sealer::new(keys)?
        });
        let store = match &place.1 {
            None => Store::Memory(store::Memory::new(conf.max_sessions)),
            Some((url, prefix)) => Store::Redis(store::Shared::new(url, prefix, sealer.clone())?),
        };
        Ok(State {
            store,
            sealer,
            ended_tokens: Revoked::new(MAX_ENDED_TOKENS),
            refreshing: Mutex::new(HashMap::new()),
            place,
        })
    }
}

/// A session's WebSockets in the registry.
pub fn websocket_key(handle: &str) -> String {
    format!("session:{handle}")
}

/// Until when an access token is used: the shorter of `expires_in` and its own `exp`.
fn access_expiry(tokens: &provider::Tokens) -> u64 {
    let now = clock::unix_secs();
    [
        tokens.expires_in.map(|s| now + s),
        provider::unverified_exp(&tokens.access_token),
    ]
    .into_iter()
    .flatten()
    .min()
    .unwrap_or(now + 300)
}

/// Whether a request is a page navigation, which a login redirect suits, rather than a
/// script's call, which gets 401: `Sec-Fetch-Mode`, else an `Accept` of HTML.
pub fn is_navigation(method: &Method, headers: &HeaderMap) -> bool {
    if !matches!(*method, Method::GET | Method::HEAD) {
        return false;
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    match header("sec-fetch-mode") {
        Some(mode) => mode.eq_ignore_ascii_case("navigate"),
        None => {
            header("x-requested-with").is_none()
                && header("accept").is_some_and(|a| a.contains("text/html"))
        }
    }
}

fn read_keys(
    conf: &SessionsConf,
    at: &KeyPath,
    relative: &dyn Fn(&Path) -> PathBuf,
) -> Result<Vec<[u8; seal::KEY_BYTES]>, Invalid> {
    let mut keys = Vec::new();
    for (i, file) in conf.encryption_key_files.iter().enumerate() {
        let key = at.key("encryption_key_files").index(i);
        let path = relative(file);
        let text = std::fs::read(&path)
            .map_err(|e| Invalid::new(key.clone(), format!("{}: {e}", path.display())))?;
        keys.push(seal::parse_key(&text).map_err(|m| Invalid::new(key, m))?);
    }
    if let Some(var) = &conf.encryption_keys_env {
        let key = at.key("encryption_keys_env");
        let text = std::env::var(var).map_err(|_| {
            Invalid::new(
                key.clone(),
                format!("environment variable {var} is not set"),
            )
        })?;
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            keys.push(seal::parse_key(part.as_bytes()).map_err(|m| Invalid::new(key.clone(), m))?);
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn navigations_are_told_from_script_calls() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (n, v) in pairs {
                h.insert(*n, HeaderValue::from_static(v));
            }
            h
        };
        let get = Method::GET;
        assert!(is_navigation(
            &get,
            &headers(&[("sec-fetch-mode", "navigate")])
        ));
        assert!(!is_navigation(
            &get,
            &headers(&[("sec-fetch-mode", "cors")])
        ));
        assert!(is_navigation(
            &get,
            &headers(&[("accept", "text/html,*/*")])
        ));
        assert!(!is_navigation(
            &get,
            &headers(&[("accept", "application/json")])
        ));
        assert!(!is_navigation(
            &get,
            &headers(&[
                ("accept", "text/html"),
                ("x-requested-with", "XMLHttpRequest")
            ])
        ));
        assert!(!is_navigation(
            &Method::POST,
            &headers(&[("sec-fetch-mode", "navigate")])
        ));
    }
}

//! `[sessions]`: browser logins at the gateway (OpenID Connect authorization code flow).

use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

/// `[sessions]`: users of browser routes log in at an OpenID provider through the gateway and
/// keep a session: a cookie that carries only an unguessable id, while the tokens stay with
/// the gateway (in memory, or encrypted in Redis). A browser route then sees what a bearer
/// route sees: the session's access token is verified as a bearer token would be, and routes,
/// roles, scopes, tiers and the audit log apply unchanged.
///
/// The gateway refreshes the access token shortly before it expires, once per session even
/// across instances, and ends the session when the provider refuses. Logging out (at
/// `logout_path`, by the provider's back-channel logout, or by the admin eviction of the
/// subject) ends the session on every instance and closes its WebSockets.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionsConf {
    /// The `[issuers.NAME]` users log in at. Its discovery document gives the authorization,
    /// token and end-session endpoints; its keys verify ID and logout tokens; its rules verify
    /// the access tokens.
    pub issuer: String,
    /// The gateway's client id at the provider.
    pub client_id: String,
    /// The client secret, read from this file (trailing newline ignored).
    pub client_secret_file: Option<PathBuf>,
    /// The client secret, read from this environment variable.
    pub client_secret_env: Option<String>,
    /// How the gateway authenticates at the token endpoint: `client_secret_basic` (default),
    /// `client_secret_post`, or `private_key_jwt` (a signed assertion, RFC 7523, with
    /// `private_key_file`).
    #[serde(default)]
    pub auth_method: SessionAuthMethod,
    /// With `private_key_jwt`: the client's private key, PEM (RSA for RS256, EC P-256 for
    /// ES256).
    pub private_key_file: Option<PathBuf>,
    /// With `private_key_jwt`: `RS256` (default) or `ES256`.
    #[serde(default)]
    pub private_key_algorithm: AssertionAlgorithm,
    /// With `private_key_jwt`: the key's `kid`, when the provider needs one.
    pub private_key_id: Option<String>,
    /// The callback URL registered at the provider, e.g.
    /// `https://desk.example.com/auth/callback`. Its path is where the gateway takes the
    /// provider's answer.
    pub redirect_uri: String,
    /// Scopes asked for; `openid` must be one. Add `offline_access` where the provider issues
    /// refresh tokens only for it. Default: `["openid"]`.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// The `resource` asked for (RFC 8707), where the provider issues access tokens per API.
    pub resource: Option<String>,
    /// Every route of these hosts is a browser route, as if it had `browser = true`.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Starts a login (`?return_to=/path`): for a page's "sign in" link. Default:
    /// `/auth/login`.
    #[serde(default = "default_login_path")]
    pub login_path: String,
    /// Ends the session and sends the browser to the provider's end-session endpoint.
    /// Default: `/auth/logout`.
    #[serde(default = "default_logout_path")]
    pub logout_path: String,
    /// Where the provider delivers back-channel logout tokens (OpenID Connect Back-Channel
    /// Logout 1.0). Default: `/auth/backchannel-logout`.
    #[serde(default = "default_backchannel_path")]
    pub backchannel_logout_path: String,
    /// Where the provider sends the browser after logout (registered there). Default: none,
    /// the provider's own page.
    pub post_logout_redirect_uri: Option<String>,
    /// `[sessions.cookie]`: the session cookie.
    #[serde(default)]
    pub cookie: SessionCookieConf,
    /// The access token is refreshed this long before it expires, but not before a quarter
    /// of its lifetime has passed. Default: 30s.
    #[serde(default = "default_refresh_before", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub refresh_before: Duration,
    /// Set `Authorization: Bearer <access token>` on requests to the upstream (the identity
    /// headers are always set). Default: false.
    #[serde(default)]
    pub pass_access_token: bool,
    /// Where sessions are kept: `memory` (one instance; lost on restart, kept across reloads)
    /// or `redis` (the `[rate_limit.redis]` server, shared by every instance; encrypted).
    /// Default: `memory`.
    #[serde(default)]
    pub store: SessionStoreKind,
    /// Files with the keys that encrypt sessions in Redis and the login cookie: 32 bytes
    /// each, raw, hex or base64. The first encrypts; all decrypt, for rotation. Without keys,
    /// a memory store uses a random key per process.
    #[serde(default)]
    pub encryption_key_files: Vec<PathBuf>,
    /// The same, from an environment variable: keys separated by commas.
    pub encryption_keys_env: Option<String>,
    /// Origins besides the route's own that may send state-changing requests (POST, PUT,
    /// PATCH, DELETE, WebSocket upgrades) on browser routes, e.g. `https://admin.example.com`.
    /// Other cross-site ones get 403.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// How many gateway instances serve these sessions. More than one needs
    /// `store = "redis"`: a session made on one must be found on the others. Default: 1.
    #[serde(default = "default_instances")]
    pub instances: u32,
    /// With the memory store: most sessions held; past it, new logins get 503. Default:
    /// 100000.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// Time limit of one call to the provider. Default: 5s.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
}

/// `[sessions.cookie]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SessionCookieConf {
    /// The cookie's name. A `__Host-` name is bound to this host and path `/`, and cannot be
    /// set by a subdomain. Default: `__Host-portcullis-session`.
    pub name: String,
    /// A session unused this long ends. Default: 30m.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub idle_timeout: Duration,
    /// A session ends this long after login, however it is used. Default: 12h.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub absolute_timeout: Duration,
}

impl Default for SessionCookieConf {
    fn default() -> Self {
        Self {
            name: "__Host-portcullis-session".into(),
            idle_timeout: Duration::from_secs(30 * 60),
            absolute_timeout: Duration::from_secs(12 * 3600),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SessionAuthMethod {
    #[default]
    ClientSecretBasic,
    ClientSecretPost,
    PrivateKeyJwt,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
pub enum AssertionAlgorithm {
    #[default]
    RS256,
    ES256,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SessionStoreKind {
    #[default]
    Memory,
    Redis,
}

fn default_scopes() -> Vec<String> {
    vec!["openid".into()]
}
fn default_login_path() -> String {
    "/auth/login".into()
}
fn default_logout_path() -> String {
    "/auth/logout".into()
}
fn default_backchannel_path() -> String {
    "/auth/backchannel-logout".into()
}
fn default_refresh_before() -> Duration {
    Duration::from_secs(30)
}
fn default_instances() -> u32 {
    1
}
fn default_max_sessions() -> usize {
    100_000
}
fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

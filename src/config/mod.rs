//! The TOML schema. Each struct is one table of `gateway.toml`; field docs are the reference.
//!
//! These structs only describe the file. Each part of the gateway compiles its own table
//! (validating it, and reporting an [`Invalid`] with the key path) into the immutable form the
//! request path reads.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

mod credentials;
pub mod secret;
mod sessions;
mod source;
mod token_service;
mod tracing;

pub use credentials::{CredentialGrant, CredentialsConf};
pub use sessions::{
    AssertionAlgorithm, SessionAuthMethod, SessionCookieConf, SessionStoreKind, SessionsConf,
};
pub use source::{load, ConfigError, Invalid, KeyPath, Source};
pub use token_service::{CaptchaConf, IssuanceConf, SigningAlgorithm, TokenServiceConf};
pub use tracing::TracingConf;

/// The JSON Schema of the config file, from the structs below and their doc comments: for
/// editors with a TOML language server (taplo, Even Better TOML) to complete and check keys.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(Config);
    serde_json::to_string_pretty(&schema).unwrap_or_default() + "\n"
}

/// The whole file.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Portcullis gateway configuration")]
pub struct Config {
    /// `[server]`: listeners and process settings.
    pub server: ServerConf,
    /// `[responses]`: bodies of the gateway's own denials.
    #[serde(default)]
    pub responses: ResponsesConf,
    /// `[identity_headers]`: verified identity forwarded to upstreams.
    #[serde(default)]
    pub identity_headers: IdentityHeadersConf,
    /// `[issuers.NAME]`: identity providers whose tokens are accepted.
    #[serde(default)]
    pub issuers: BTreeMap<String, IssuerConf>,
    /// `[upstreams.NAME]`: backends that routes forward to.
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamConf>,
    /// `[dns]`: how upstream targets given by host name are resolved and kept fresh.
    #[serde(default)]
    pub dns: DnsConf,
    /// `[[routes]]`: what is reachable, and who may reach it.
    #[serde(default)]
    pub routes: Vec<RouteConf>,
    /// `[client_ip]`: where the caller's address comes from.
    #[serde(default)]
    pub client_ip: ClientIpConf,
    /// `[rate_limit]`: consumer tiers and their limits.
    #[serde(default)]
    pub rate_limit: RateLimitConf,
    /// `[admin]`: the operator listener (metrics, health probes).
    #[serde(default)]
    pub admin: AdminConf,
    /// `[logging]`: the access log and the audit log.
    #[serde(default)]
    pub logging: LoggingConf,
    /// `[websocket]`: how WebSocket connections are renewed, closed and evicted.
    #[serde(default)]
    pub websocket: WebSocketConf,
    /// `[token_cache]`: verified tokens remembered between requests.
    #[serde(default)]
    pub token_cache: TokenCacheConf,
    /// `[tracing]`: OpenTelemetry spans per request, exported over OTLP.
    pub tracing: Option<TracingConf>,
    /// `[token_service]`: anonymous session tokens issued by the gateway.
    pub token_service: Option<TokenServiceConf>,
    /// `[sessions]`: browser logins, with sessions kept by the gateway.
    pub sessions: Option<SessionsConf>,
}

/// `[token_cache]`: a token is verified once (signature, issuer, audience, claims) and then
/// remembered until it expires, so the requests after the first skip the signature check.
///
/// Entries are keyed by the token's SHA-256 and never outlive the token's `exp` (plus the
/// issuer's `clock_skew`). A change of the issuer's keys voids them, and so does a reload.
/// What depends on the request is checked on every use: the route's accepted issuers and the
/// client certificate a token is bound to.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TokenCacheConf {
    /// Most tokens remembered; the least used are dropped first when it is full. Each takes
    /// a few hundred bytes. 0 verifies every token on every request. Default: 65536.
    pub max_entries: usize,
}

impl Default for TokenCacheConf {
    fn default() -> Self {
        Self { max_entries: 65536 }
    }
}

/// `[websocket]`: settings shared by every route that takes WebSockets (`[routes.websocket]`).
///
/// An open WebSocket lives as long as the token it was opened with (its `exp` plus the
/// issuer's `clock_skew`). Before that, the client may send a text message
/// `{"type": "access_token", "token": "<new token>"}` (field names and type configurable):
/// the gateway validates it like a request's token, requires the same subject and tenant,
/// moves the deadline and does not forward the message.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketConf {
    /// Query parameter a route with `token_from = ["query"]` reads the token from; removed
    /// before forwarding. Default: `access_token`.
    pub query_parameter: String,
    /// Subprotocol that announces a token in `Sec-WebSocket-Protocol`, for routes with
    /// `token_from = ["subprotocol"]`: the client offers `<marker>, <token>`. Default:
    /// `access_token`.
    pub subprotocol: String,
    /// Member of a renewal message that says what it is. Default: `type`.
    pub renewal_type_field: String,
    /// Its value. Default: `access_token`.
    pub renewal_type: String,
    /// Member holding the new token. Default: `token`.
    pub renewal_token_field: String,
    /// Longest renewal message in bytes (after decompression); longer text messages are
    /// forwarded untouched. Default: 16384.
    pub renewal_max_bytes: usize,
    /// How long the gateway waits for the closing handshake after it closes a connection.
    /// Default: 2s.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub close_timeout: Duration,
    /// Redis that carries evictions to every gateway instance (`POST /websockets/evict` on
    /// the admin listener). Default: `[rate_limit.redis]`'s `url` when set; otherwise
    /// evictions stay local.
    pub redis_url: Option<String>,
    /// Pub/sub channel for evictions. Default: `portcullis:websocket:evict`.
    pub eviction_channel: String,
}

impl Default for WebSocketConf {
    fn default() -> Self {
        Self {
            query_parameter: "access_token".into(),
            subprotocol: "access_token".into(),
            renewal_type_field: "type".into(),
            renewal_type: "access_token".into(),
            renewal_token_field: "token".into(),
            renewal_max_bytes: 16 * 1024,
            close_timeout: Duration::from_secs(2),
            redis_url: None,
            eviction_channel: "portcullis:websocket:evict".into(),
        }
    }
}

/// `[routes.websocket]`: the route takes WebSocket upgrades. Without it, an `Upgrade` header
/// is removed and the backend answers a plain HTTP request.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteWebSocketConf {
    /// Where the upgrade request's token may come from, tried in this order: `header`
    /// (`Authorization: Bearer`), `query` (`?access_token=`, for browsers, which cannot set
    /// headers on a WebSocket), `subprotocol`, and the sources of a route's `token_from`
    /// (`header:NAME`, `cookie:NAME`, `query:NAME`). Default: `["header"]`.
    #[serde(default = "default_token_from")]
    #[schemars(with = "Vec<String>")]
    pub token_from: Vec<TokenSource>,
}

fn default_token_from() -> Vec<TokenSource> {
    vec![TokenSource::Header]
}

/// Where a token may be: `header` (`Authorization: Bearer`), `header:NAME` (the value of
/// another header), `cookie:NAME`, `query` (`[websocket] query_parameter`) or `query:NAME`,
/// and, for WebSocket upgrades only, `subprotocol`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum TokenSource {
    Header,
    NamedHeader(String),
    Cookie(String),
    /// `None`: `[websocket] query_parameter`.
    Query(Option<String>),
    Subprotocol,
}

impl TryFrom<String> for TokenSource {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        let named = |kind: &str, name: &str| {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_graphic() && !"=;,\"".contains(c))
            {
                Err(format!("{s:?}: {kind} needs a name, e.g. {kind}:NAME"))
            } else {
                Ok(name.to_string())
            }
        };
        match s.split_once(':') {
            None => match s.as_str() {
                "header" => Ok(Self::Header),
                "query" => Ok(Self::Query(None)),
                "subprotocol" => Ok(Self::Subprotocol),
                "cookie" => Err(format!("{s:?}: cookie needs a name, e.g. cookie:NAME")),
                _ => Err(format!(
                    "{s:?}: expected header, header:NAME, cookie:NAME, query, query:NAME or \
                     subprotocol"
                )),
            },
            Some(("header", name)) => {
                let name = named("header", name)?.to_ascii_lowercase();
                if name == "authorization" {
                    return Ok(Self::Header);
                }
                http::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("{s:?}: not a header name"))?;
                Ok(Self::NamedHeader(name))
            }
            Some(("cookie", name)) => Ok(Self::Cookie(named("cookie", name)?)),
            Some(("query", name)) => Ok(Self::Query(Some(named("query", name)?))),
            Some(_) => Err(format!(
                "{s:?}: expected header, header:NAME, cookie:NAME, query, query:NAME or \
                 subprotocol"
            )),
        }
    }
}

/// `[logging]`: where the JSON-lines logs go: `"stdout"`, `"stderr"`, `"off"`, or a file path
/// (appended to, reopened on SIGHUP for log rotation). Operational messages always go to
/// stderr, filtered by `RUST_LOG`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConf {
    /// One line per request: time, request id, client, route, status, timings. Default: stdout.
    pub access_log: String,
    /// One line per authentication or authorization decision: every refusal, and every
    /// admission on an authenticated route. Default: stdout.
    pub audit_log: String,
}

impl Default for LoggingConf {
    fn default() -> Self {
        Self {
            access_log: "stdout".into(),
            audit_log: "stdout".into(),
        }
    }
}

/// `[admin]`: a listener for operators, never for clients. Read at start only.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminConf {
    /// Address serving `GET /metrics` (Prometheus text format), `GET /healthz` and
    /// `GET /readyz`, e.g. `127.0.0.1:9091`. Default: none.
    pub listen: Option<String>,
}

/// `[client_ip]`: the caller's address, as anonymous rate limits key on it.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ClientIpConf {
    /// Load balancers and proxies in front of the gateway, as addresses or CIDR blocks. Only
    /// when the socket peer is one of them is the forwarding header read. Default: none.
    pub trusted_proxies: Vec<String>,
    /// `x-forwarded-for` (default) or `forwarded` (RFC 7239).
    pub header: ForwardedHeader,
}

/// The header trusted proxies name the client in.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedHeader {
    #[default]
    XForwardedFor,
    Forwarded,
}

/// `[rate_limit]`
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConf {
    /// Headers that tell clients their quota: `ietf` (default: `RateLimit-Policy` and
    /// `RateLimit`, draft-ietf-httpapi-ratelimit-headers), `x-ratelimit`
    /// (`X-RateLimit-Limit/Remaining/Reset`), `both`, or `none`. `Retry-After` is always sent
    /// with a 429.
    pub headers: RateLimitHeaders,
    /// Most counters kept in memory (local tiers, and Redis tiers while Redis is away). When
    /// full, the counters closest to a fresh quota are dropped first. Default: 1,000,000
    /// (about 32 MiB).
    pub local_max_keys: usize,
    /// Per tier, the consumers with the most requests and the most refusals (429) exported
    /// as `portcullis_top_consumer_requests` / `_limited{tier,consumer}`: this many of each,
    /// counted in a fixed-size sketch (about 64 KiB per tier and ranking), so memory and
    /// label cardinality stay bounded however many consumers there are. 0 turns it off.
    /// Default: 10.
    pub top_consumers: usize,
    /// `[rate_limit.redis]`: the shared store for tiers with `backend = "redis"`.
    pub redis: Option<RedisConf>,
    /// `[[rate_limit.tiers]]`: tried in order; a caller gets the first tier that matches it.
    /// A caller no tier matches is not limited.
    pub tiers: Vec<TierConf>,
}

impl Default for RateLimitConf {
    fn default() -> Self {
        Self {
            headers: RateLimitHeaders::Ietf,
            local_max_keys: 1_000_000,
            top_consumers: 10,
            redis: None,
            tiers: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RateLimitHeaders {
    Ietf,
    XRatelimit,
    Both,
    None,
}

/// `[rate_limit.redis]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisConf {
    /// `redis://[user:password@]host:port[/db]`. (TLS to Redis is not supported yet.)
    pub url: String,
    /// Longest wait for one decision; past it, the tier's `on_redis_error` applies.
    /// Default: 50ms.
    #[serde(default = "default_redis_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// After a failure, Redis is not asked again for this long. Default: 1s.
    #[serde(default = "default_redis_retry", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub retry_interval: Duration,
    /// Prefix of every key the gateway writes. Default: `portcullis:rl:`.
    #[serde(default = "default_redis_prefix")]
    pub key_prefix: String,
}

fn default_redis_timeout() -> Duration {
    Duration::from_millis(50)
}
fn default_redis_retry() -> Duration {
    Duration::from_secs(1)
}
fn default_redis_prefix() -> String {
    "portcullis:rl:".into()
}

/// The kind of caller a tier or a route is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CallerKind {
    /// No token (public routes).
    Anonymous,
    /// A token with a user behind it.
    Users,
    /// A service token: client credentials, no user (see `issuers.NAME.service_tokens`).
    Services,
}

/// `[[rate_limit.tiers]]`: a class of consumers and its limits. Every condition given must
/// hold for a caller to fall in the tier.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TierConf {
    /// Name, in headers, logs, metrics and Redis keys.
    pub name: String,
    /// `users` (default), `services` or `anonymous`. A user token never falls in a
    /// `services` tier, nor a service token in a `users` tier.
    #[serde(default = "default_tier_callers")]
    pub callers: CallerKind,
    /// Only tokens of these issuers.
    pub issuers: Option<Vec<String>>,
    /// Only tokens issued to these clients (`azp` / `client_id`), e.g. the portal and mobile apps.
    pub client_ids: Option<Vec<String>>,
    /// Only tokens whose claim has one of the values: `{ name = "plan", values = ["gold"] }`.
    pub claim: Option<ClaimMatchConf>,
    /// What one consumer is: `sub`, `client_id`, `client_ip` or `claim:PATH`. Default: `sub`
    /// for users, `client_id` for services, `client_ip` for anonymous callers.
    pub consumer: Option<ConsumerConf>,
    /// Limits, all enforced: `["20/second", "500/hour"]`; also `"100/10s"`.
    pub limits: Vec<String>,
    /// More limits on routes of a `limit_group`, counted separately per group:
    /// `{ reports = ["10/minute"] }`.
    #[serde(default)]
    pub group_limits: BTreeMap<String, Vec<String>>,
    /// `local` (default: this process only) or `redis` (shared by every gateway instance).
    #[serde(default)]
    pub backend: LimitBackend,
    /// When Redis does not answer in time: `fail_open` (default: the local limiter decides)
    /// or `fail_closed` (503).
    #[serde(default)]
    pub on_redis_error: FailMode,
}

fn default_tier_callers() -> CallerKind {
    CallerKind::Users
}

/// `claim = { name = "plan", values = ["gold", "platinum"] }`
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimMatchConf {
    /// Dot-separated claim path.
    pub name: String,
    pub values: Vec<String>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LimitBackend {
    #[default]
    Local,
    Redis,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    #[default]
    FailOpen,
    FailClosed,
}

/// `[server]`
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerConf {
    /// Plain-HTTP listen addresses, e.g. `["0.0.0.0:8080"]`.
    pub listen: Vec<String>,
    /// Worker threads for the proxy service. Default: 1.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// Whether idle threads take over connections queued on busy ones. Off, each thread runs
    /// the connections it accepted to their end, as nginx's workers do: less coordination
    /// per request. On helps when a few connections carry most of the traffic. Default: false.
    #[serde(default)]
    pub work_stealing: bool,
    /// After SIGTERM, how long `/readyz` fails while the gateway still serves, so load
    /// balancers stop sending new connections before the listeners close. Default: 5s.
    #[serde(default = "default_drain_delay", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub drain_delay: Duration,
    /// Once the listeners close, how long in-flight requests (and WebSockets) may run before
    /// the process exits; it exits as soon as none is left. Default: 30s.
    #[serde(default = "default_grace_period", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub grace_period: Duration,
    /// How long an HTTP/1.1 keep-alive connection may wait, idle, for its next request before
    /// the gateway closes it (nginx's `keepalive_timeout`). Idle sockets hold descriptors and
    /// memory; a client that wants the connection sends another request in time. Whole seconds,
    /// at least 1s. Applies to connections from their next request after a reload.
    /// Default: 60s.
    #[serde(default = "default_keepalive_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub keepalive_timeout: Duration,
    /// Most client connections open at once on each listener (Envoy's per-listener
    /// `connection_limit`). A connection beyond it is closed as soon as it is accepted, counted
    /// in `portcullis_client_connections_refused_total`, so that idle or slow clients cannot
    /// take every descriptor. Every proxied connection also holds one to its upstream: keep
    /// the sum over listeners well under half the process's open-file limit. Takes effect for
    /// new connections on reload. Default: 16384.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Largest request head, in bytes: the request line and every header (names, values and
    /// their separators). A larger one is answered 431. Default: 61440 (60 KiB, Envoy's).
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Most request headers. More is answered 431. Default: 100 (Envoy's).
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// Longest request target (path and query), in bytes. Longer is answered 414.
    /// Default: 8192 (nginx's request line buffer).
    #[serde(default = "default_max_uri_length")]
    pub max_uri_length: usize,
    /// Largest request body in bytes, for routes that set none (nginx's
    /// `client_max_body_size`): a larger one is answered 413, before the upstream is
    /// contacted when its `Content-Length` says so. Default: 1048576 (1 MiB).
    #[serde(default = "default_max_body_size")]
    pub max_body_size: u64,
    /// How long a buffered request body may take to arrive, all of it, before the gateway
    /// answers 408 (see `request_buffering` on routes). Default: 10s.
    #[serde(default = "default_body_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub body_timeout: Duration,
    /// PID file, used by the binary upgrade (`-u`). Default: `/tmp/portcullis.pid`.
    #[serde(default = "default_pid_file")]
    pub pid_file: String,
    /// Socket over which listeners are handed to a new process on upgrade.
    /// Default: `/tmp/portcullis_upgrade.sock`.
    #[serde(default = "default_upgrade_sock")]
    pub upgrade_sock: String,
    /// Take HTTP/2 without TLS on the plain listeners, by prior knowledge (h2c): what gRPC
    /// clients speak to a plaintext address. HTTP/1.1 clients are unaffected. Read at start
    /// only. Default: true.
    #[serde(default = "default_true")]
    pub h2c: bool,
    /// `[server.tls]`: HTTPS listeners. Read at start only.
    pub tls: Option<EdgeTlsConf>,
}

/// `[server.tls]`: TLS at the edge. TLS 1.2 and 1.3 only; HTTP/2 by ALPN.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EdgeTlsConf {
    /// HTTPS listen addresses, e.g. `["0.0.0.0:8443"]`.
    pub listen: Vec<String>,
    /// Certificate chains with their keys. The first is served when the client sends no
    /// known server name; the others are chosen by SNI from the DNS names in their
    /// certificates (`*.example.com` included).
    pub certificates: Vec<CertificateConf>,
    /// Offer HTTP/2 by ALPN. Default: true.
    #[serde(default = "default_true")]
    pub http2: bool,
    /// Client certificates: `none` (default), `optional` (verified when sent) or `required`.
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// CAs that client certificates must chain to; needed unless `client_auth = "none"`.
    pub client_ca_file: Option<PathBuf>,
}

fn default_true() -> bool {
    true
}

/// `{ cert_file = "…", key_file = "…" }`: PEM chain (leaf first) and its private key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CertificateConf {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    #[default]
    None,
    Optional,
    Required,
}

fn default_threads() -> usize {
    1
}
fn default_grace_period() -> Duration {
    Duration::from_secs(30)
}
fn default_drain_delay() -> Duration {
    Duration::from_secs(5)
}
fn default_keepalive_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_max_header_bytes() -> usize {
    60 * 1024
}
fn default_max_headers() -> usize {
    100
}
fn default_max_uri_length() -> usize {
    8192
}
fn default_max_connections() -> usize {
    16384
}
fn default_max_body_size() -> u64 {
    1024 * 1024
}
fn default_body_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_pid_file() -> String {
    "/tmp/portcullis.pid".into()
}
fn default_upgrade_sock() -> String {
    "/tmp/portcullis_upgrade.sock".into()
}

/// `[responses]`: what the gateway answers when it refuses a request.
///
/// The defaults reproduce an APISIX + Keycloak edge, so clients written against it see no change.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ResponsesConf {
    /// `realm` in `WWW-Authenticate: Bearer realm="…"`.
    pub realm: String,
    /// Body of a 401.
    pub unauthorized_body: String,
    /// Content type of a 401.
    pub unauthorized_content_type: String,
    /// Body of a 403.
    pub forbidden_body: String,
    /// Content type of a 403.
    pub forbidden_content_type: String,
}

impl Default for ResponsesConf {
    fn default() -> Self {
        Self {
            realm: "portcullis".into(),
            unauthorized_body: "401 Authorization Required".into(),
            unauthorized_content_type: "text/plain; charset=utf-8".into(),
            forbidden_body: r#"{"error":"access_denied","error_description":"not_authorized"}"#
                .into(),
            forbidden_content_type: "application/json".into(),
        }
    }
}

/// `[identity_headers]`: request headers that carry the verified identity upstream.
///
/// Every header named here is removed from the client's request before the gateway sets it, on
/// every route (public ones too), so a client can never forge one. An empty name turns that
/// header off.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityHeadersConf {
    /// The token's subject (`sub`).
    pub subject: String,
    /// Roles, comma-separated.
    pub roles: String,
    /// Scopes, space-separated.
    pub scopes: String,
    /// Tenant / agency, from the issuer's `claims.tenant`.
    pub tenant: String,
    /// The OAuth client the token was issued to (`azp`, or `client_id`).
    pub client_id: String,
    /// The configured name of the issuer that vouched for the token.
    pub issuer: String,
    /// SHA-256 of the verified TLS client certificate, hex (only with `[server.tls]`
    /// client certificates).
    pub client_cert_sha256: String,
    /// Subject of the verified TLS client certificate, RFC 4514 (`CN=agent-7,O=Example`).
    pub client_cert_subject: String,
    /// More headers to remove from every client request (e.g. `X-Userinfo`).
    pub strip: Vec<String>,
    /// Pass the client's `Authorization` header upstream. Default: true, as APISIX and Kong do.
    pub forward_authorization: bool,
}

impl Default for IdentityHeadersConf {
    fn default() -> Self {
        Self {
            subject: "X-User-Id".into(),
            roles: "X-User-Roles".into(),
            scopes: "X-User-Scopes".into(),
            tenant: "X-Tenant-Id".into(),
            client_id: "X-Client-Id".into(),
            issuer: "X-Auth-Issuer".into(),
            client_cert_sha256: "X-Client-Cert-Sha256".into(),
            client_cert_subject: "X-Client-Cert-Subject".into(),
            strip: Vec::new(),
            forward_authorization: true,
        }
    }
}

/// Signature algorithms a token may use. `none` does not exist here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, JsonSchema)]
pub enum Algorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
    HS256,
    HS384,
    HS512,
}

impl From<Algorithm> for jsonwebtoken::Algorithm {
    fn from(a: Algorithm) -> Self {
        use jsonwebtoken::Algorithm as J;
        match a {
            Algorithm::RS256 => J::RS256,
            Algorithm::RS384 => J::RS384,
            Algorithm::RS512 => J::RS512,
            Algorithm::PS256 => J::PS256,
            Algorithm::PS384 => J::PS384,
            Algorithm::PS512 => J::PS512,
            Algorithm::ES256 => J::ES256,
            Algorithm::ES384 => J::ES384,
            Algorithm::EdDSA => J::EdDSA,
            Algorithm::HS256 => J::HS256,
            Algorithm::HS384 => J::HS384,
            Algorithm::HS512 => J::HS512,
        }
    }
}

/// `[issuers.NAME]`: one identity provider.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IssuerConf {
    /// Exact value of the tokens' `iss` claim; selects this issuer.
    pub issuer: String,
    /// Accepted `aud` values; a token must carry at least one of them.
    pub audiences: Vec<String>,
    /// Accepted signature algorithms. Default: `["RS256"]`.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<Algorithm>,
    /// Tolerance applied to `exp` and `nbf`. Default: 30s.
    #[serde(default = "default_clock_skew", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub clock_skew: Duration,
    /// Accept service tokens without `exp` (user tokens always need one). Default: false.
    #[serde(default)]
    pub allow_non_expiring: bool,
    /// How a service token (client credentials, no user behind it) is told apart:
    /// `sub_is_client` (default: `sub` equals the client id, RFC 9068 §2.2), `claim:NAME`
    /// (the claim is present; Keycloak's service accounts carry `client_id`), or `none`.
    #[serde(default)]
    pub service_tokens: ServiceTokens,
    /// Accept only certificate-bound tokens (RFC 8705 `cnf.x5t#S256`). Bound tokens are
    /// checked against the TLS client certificate whatever this says. Default: false.
    #[serde(default)]
    pub require_bound_tokens: bool,
    /// Keys from a local JWKS file, read at load.
    pub jwks_file: Option<PathBuf>,
    /// Keys from a JWKS URL, fetched in the background.
    pub jwks_url: Option<String>,
    /// Find `jwks_uri` through OIDC discovery at `issuer` + `/.well-known/openid-configuration`.
    #[serde(default)]
    pub discovery: bool,
    /// Discovery document URL, when the provider is reached under another name than `issuer`.
    pub discovery_url: Option<String>,
    /// Shared secret for HS* algorithms, read from this file (trailing newline ignored).
    pub hmac_secret_file: Option<PathBuf>,
    /// Shared secret for HS* algorithms, read from this environment variable.
    pub hmac_secret_env: Option<String>,
    /// `[issuers.NAME.keys]`: how remote keys are refreshed.
    #[serde(default)]
    pub keys: KeyRefreshConf,
    /// `[issuers.NAME.claims]`: where identity is found in this issuer's tokens.
    #[serde(default)]
    pub claims: ClaimsConf,
    /// `[issuers.NAME.token_type]`: what tells this issuer's access tokens from its ID and
    /// refresh tokens. Without it, any token type with the right audience passes.
    pub token_type: Option<TokenTypeConf>,
    /// `[issuers.NAME.introspection]`: ask the provider whether tokens are active (RFC 7662).
    pub introspection: Option<IntrospectionConf>,
}

/// `[issuers.NAME.token_type]`: explicit typing (RFC 8725 §3.11), so that an ID token or a
/// refresh token whose `aud` happens to be accepted is not taken for an access token. Every
/// rule given must hold; a token that fails one is 401 `not an access token`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TokenTypeConf {
    /// Accepted values of the JOSE header `typ`, compared without case and without an
    /// `application/` prefix: `["at+jwt"]` for RFC 9068 providers. Empty: not checked.
    pub header: Vec<String>,
    /// A claim and its accepted values: Keycloak marks its access tokens
    /// `{ name = "typ", values = ["Bearer"] }` (ID tokens `ID`, refresh tokens `Refresh`).
    pub claim: Option<ClaimMatchConf>,
}

/// Which tokens of an issuer are introspected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum IntrospectionMode {
    /// Tokens that are not JWTs (reference tokens); JWTs are verified locally.
    #[default]
    Opaque,
    /// Every token: a JWT is verified locally and must also be active at the provider, so a
    /// logout or a revocation takes effect before its `exp`.
    Always,
    Off,
}

/// How the gateway authenticates itself to the introspection endpoint (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMethod {
    /// HTTP Basic with the URL-encoded client id and secret.
    #[default]
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
}

/// `[issuers.NAME.introspection]`: token introspection (RFC 7662).
///
/// A token that is not a JWT carries no `iss`, so at most one issuer may introspect.
/// Answers are remembered by the token's SHA-256, never the token; concurrent requests with
/// the same unremembered token wait for one call.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionConf {
    /// `opaque` (default), `always` or `off` (the rest of the table is then ignored).
    #[serde(default)]
    pub mode: IntrospectionMode,
    /// The introspection endpoint. Default: `introspection_endpoint` from the issuer's OIDC
    /// discovery document (`discovery_url`, or `issuer` + `/.well-known/openid-configuration`).
    pub endpoint: Option<String>,
    /// The gateway's client id at the provider.
    pub client_id: String,
    /// The client secret, read from this file (trailing newline ignored).
    pub client_secret_file: Option<PathBuf>,
    /// The client secret, read from this environment variable.
    pub client_secret_env: Option<String>,
    /// `client_secret_basic` (default) or `client_secret_post`.
    #[serde(default)]
    pub auth_method: ClientAuthMethod,
    /// Whether an answer must carry an `aud` among the issuer's `audiences`. RFC 7662 makes
    /// `aud` optional, and some providers leave it out. With `false`, an answer without `aud`
    /// is taken on the provider's word: any token it calls active passes, whichever service it
    /// was issued for, so turn it off only for a provider whose tokens are all meant for the
    /// services behind this gateway. An `aud` that is present must match either way.
    /// Default: true.
    #[serde(default = "default_true")]
    pub require_audience: bool,
    /// Time limit of one introspection, waiting for a free slot included. Default: 2s.
    #[serde(default = "default_introspection_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// At most this many introspections in flight at once. Default: 64.
    #[serde(default = "default_introspection_concurrency")]
    pub max_concurrent: usize,
    /// Longest an `active` answer is remembered; never past the token's `exp`. 0 asks on
    /// every request. Default: 60s.
    #[serde(default = "default_introspection_cache_ttl", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub cache_ttl: Duration,
    /// How long a refusal (`active: false`, or claims the route cannot accept) is remembered.
    /// Default: 10s.
    #[serde(
        default = "default_introspection_negative_ttl",
        with = "humantime_serde"
    )]
    #[schemars(with = "String")]
    pub negative_cache_ttl: Duration,
    /// Most answers remembered. Default: 65536.
    #[serde(default = "default_introspection_entries")]
    pub cache_max_entries: usize,
    /// The `Retry-After` of the 503 given when the provider cannot be asked. Default: 5s.
    #[serde(
        default = "default_introspection_retry_after",
        with = "humantime_serde"
    )]
    #[schemars(with = "String")]
    pub retry_after: Duration,
    /// The token of every open WebSocket is checked again this often (an introspected one
    /// asked about), and the connection closed (4004) once the token is refused. 0 never
    /// checks. Default: 60s.
    #[serde(default = "default_introspection_recheck", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub websocket_recheck: Duration,
}

fn default_introspection_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_introspection_concurrency() -> usize {
    64
}
fn default_introspection_cache_ttl() -> Duration {
    Duration::from_secs(60)
}
fn default_introspection_negative_ttl() -> Duration {
    Duration::from_secs(10)
}
fn default_introspection_entries() -> usize {
    65536
}
fn default_introspection_retry_after() -> Duration {
    Duration::from_secs(5)
}
fn default_introspection_recheck() -> Duration {
    Duration::from_secs(60)
}

/// `service_tokens`: how an issuer's service tokens are told apart from user tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(try_from = "String")]
pub enum ServiceTokens {
    /// `sub_is_client`: `sub` equals the client id (RFC 9068 §2.2).
    #[default]
    SubIsClient,
    /// `claim:NAME`: the claim (a dotted path) is present and not empty.
    Claim(String),
    /// `none`: this issuer issues no service tokens.
    None,
}

impl TryFrom<String> for ServiceTokens {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "sub_is_client" => Ok(Self::SubIsClient),
            "none" => Ok(Self::None),
            _ => match s.strip_prefix("claim:") {
                Some(path) => Ok(Self::Claim(path.to_string())),
                None => Err(format!(
                    "{s:?}: expected \"sub_is_client\", \"claim:NAME\" or \"none\""
                )),
            },
        }
    }
}

/// `consumer`: what one consumer of a tier is.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(try_from = "String")]
pub enum ConsumerConf {
    /// `sub`: the token's subject.
    Subject,
    /// `client_id`: the calling client.
    ClientId,
    /// `client_ip`: the caller's address.
    ClientIp,
    /// `claim:PATH`: the value of a claim.
    Claim(String),
}

impl TryFrom<String> for ConsumerConf {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "sub" => Ok(Self::Subject),
            "client_id" => Ok(Self::ClientId),
            "client_ip" => Ok(Self::ClientIp),
            _ => match s.strip_prefix("claim:") {
                Some(path) => Ok(Self::Claim(path.to_string())),
                None => Err(format!(
                    "{s:?}: expected sub, client_id, client_ip or claim:PATH"
                )),
            },
        }
    }
}
fn default_algorithms() -> Vec<Algorithm> {
    vec![Algorithm::RS256]
}
fn default_clock_skew() -> Duration {
    Duration::from_secs(30)
}

/// `[issuers.NAME.keys]`: the JWKS lifecycle of a remote key source.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct KeyRefreshConf {
    /// Refresh period when the provider sends no `Cache-Control: max-age`. Default: 5m.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub refresh_interval: Duration,
    /// Lower bound on a provider's `max-age`, and the retry delay after a failed fetch.
    /// Default: 30s.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub min_refresh_interval: Duration,
    /// Upper bound on a provider's `max-age`. Default: 1h.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_refresh_interval: Duration,
    /// A token with an unknown `kid` triggers at most one refetch per this period. Default: 30s.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub unknown_kid_cooldown: Duration,
    /// Time limit of one fetch. Default: 5s.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub fetch_timeout: Duration,
}

impl Default for KeyRefreshConf {
    fn default() -> Self {
        Self {
            refresh_interval: Duration::from_secs(300),
            min_refresh_interval: Duration::from_secs(30),
            max_refresh_interval: Duration::from_secs(3600),
            unknown_kid_cooldown: Duration::from_secs(30),
            fetch_timeout: Duration::from_secs(5),
        }
    }
}

/// How a token's roles claims hold role names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RolesFormat {
    /// A JSON array of strings.
    #[default]
    Array,
    /// One string of names separated by spaces.
    SpaceSeparated,
}

/// `[issuers.NAME.claims]`: claim paths are dot-separated (`realm_access.roles`).
/// The defaults follow Keycloak.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ClaimsConf {
    /// The user id.
    pub subject: String,
    /// Claims holding role names; all are merged.
    pub roles: Vec<String>,
    /// How those claims hold them: `array` (default: a JSON array of strings) or
    /// `space_separated` (one string, like `scope`). A roles claim of another shape is refused
    /// (401 `invalid_claim`) rather than guessed at.
    pub roles_format: RolesFormat,
    /// Client ids whose `resource_access.<client>.roles` are merged into the roles.
    pub client_roles: Vec<String>,
    /// Scopes: a space-separated string or an array.
    pub scope: String,
    /// Tenant / agency, if any.
    pub tenant: Option<String>,
    /// Client id claims, first present wins.
    pub client_id: Vec<String>,
}

impl Default for ClaimsConf {
    fn default() -> Self {
        Self {
            subject: "sub".into(),
            roles: vec!["realm_access.roles".into(), "groups".into()],
            roles_format: RolesFormat::Array,
            client_roles: Vec::new(),
            scope: "scope".into(),
            tenant: None,
            client_id: vec!["azp".into(), "client_id".into()],
        }
    }
}

/// `[upstreams.NAME]`: a backend service.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConf {
    /// Targets: `"host:port"`, or `{ address = "host:port", weight = 3 }` (weight 1 to 100,
    /// default 1). Host names are resolved when the config is loaded.
    pub targets: Vec<TargetConf>,
    /// `round_robin` (default; weighted, smooth) or `consistent_hash` (by consumer: the
    /// token's subject, or the client address on public routes; a consumer keeps its target
    /// while that target is up).
    #[serde(default)]
    pub balance: Balance,
    /// Default: 2s.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub connect_timeout: Duration,
    /// Longest wait for the upstream between reads. Default: 60s.
    #[serde(default = "default_read_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub read_timeout: Duration,
    /// Longest wait for the upstream to take more of a request. Default: 60s.
    #[serde(default = "default_read_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub write_timeout: Duration,
    /// Longest time for the whole exchange with the upstream, retries included, from the
    /// first connection attempt to the last byte of the response: 504 if the response has
    /// not started by then, a cut connection if it has. WebSockets are bound by it only until
    /// the upgrade. Default: none (long polls and downloads are bound by `read_timeout`).
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Duration>,
    /// A connection that fails (refused, unreachable, TLS handshake, connect timeout) is
    /// retried on the next target this many times. Nothing was sent, so any method is safe to
    /// retry. Default: 1.
    #[serde(default = "default_retries")]
    pub retries: usize,
    /// A target that refuses or fails a connection gets no traffic for this long; then one
    /// request tries it again. `"0s"` turns ejection off. Default: 10s.
    #[serde(default = "default_ejection", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub passive_ejection: Duration,
    /// `[upstreams.NAME.tls]`: speak TLS to the targets.
    pub tls: Option<UpstreamTlsConf>,
    /// `[upstreams.NAME.health_check]`: probe each target; one found down gets no traffic.
    pub health_check: Option<HealthCheckConf>,
    /// `http1` (default) or `http2`: HTTP/2 by ALPN with `tls`, else by prior knowledge
    /// (h2c). gRPC backends need `http2`. Requests of many clients share an HTTP/2
    /// connection, up to `max_streams` at once.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// With `protocol = "http2"`: concurrent requests per connection. Default: 100.
    #[serde(default = "default_max_streams")]
    pub max_streams: usize,
    /// Responses with these statuses (500 to 599, typically `[502, 503, 504]`) are retried,
    /// within `retries`, when the request is safe to send again: an idempotent method (GET,
    /// HEAD, OPTIONS, PUT, DELETE) or an `Idempotency-Key` header, and a body that was empty
    /// or is still held whole (up to 64 KiB). The last attempt's answer goes to the client.
    /// Default: none.
    #[serde(default)]
    pub retry_on_status: Vec<u16>,
    /// An upstream that does not answer within `read_timeout` is retried, on the same
    /// terms as `retry_on_status`, while nothing of its response reached the client.
    /// Default: false.
    #[serde(default)]
    pub retry_on_timeout: bool,
    /// First wait before a retry of a request the upstream received; each next one waits up
    /// to twice as long, at most ten times this, with full jitter. Default: 25ms.
    #[serde(default = "default_retry_backoff", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub retry_backoff: Duration,
    /// `[upstreams.NAME.retry_budget]`: how many retries the upstream may get.
    #[serde(default)]
    pub retry_budget: RetryBudgetConf,
    /// `[upstreams.NAME.circuit_breaker]`: stop sending to a target that keeps failing.
    pub circuit_breaker: Option<CircuitBreakerConf>,
    /// Most requests in flight to this upstream at once; beyond it, 503 at once (counted in
    /// `portcullis_upstream_overflow_total`). WebSockets are not counted. Default: no cap.
    pub max_requests: Option<usize>,
    /// `[upstreams.NAME.credentials]`: the upstream gets a token of the gateway's own in
    /// `Authorization`, in place of the caller's.
    pub credentials: Option<CredentialsConf>,
}

/// `[dns]`. A target given as `host:port` stands for every address of the host. Names are
/// resolved when the config loads (a name that does not resolve fails the check), then again
/// in the background: when the answer changes, the upstream's targets change with it, without
/// a reload; when resolution fails, the last answer is kept.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DnsConf {
    /// Name servers (`ip:port`) asked directly; each answer is asked again when its TTL runs
    /// out, within `min_ttl` and `max_ttl`. Default: none, the system resolver
    /// (`/etc/hosts`, then `/etc/resolv.conf`), which tells no TTL: asked every `refresh`.
    #[serde(default)]
    pub servers: Vec<String>,
    /// With the system resolver: how often names are resolved again. Default: 30s.
    #[serde(default = "default_dns_refresh", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub refresh: Duration,
    /// Shortest time an answer is kept. Default: 1s.
    #[serde(default = "default_dns_min_ttl", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub min_ttl: Duration,
    /// Longest time an answer is kept, whatever its TTL. Default: 5m.
    #[serde(default = "default_dns_max_ttl", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_ttl: Duration,
    /// How long one lookup may take. Default: 2s.
    #[serde(default = "default_dns_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
}

impl Default for DnsConf {
    fn default() -> Self {
        Self {
            servers: Vec::new(),
            refresh: default_dns_refresh(),
            min_ttl: default_dns_min_ttl(),
            max_ttl: default_dns_max_ttl(),
            timeout: default_dns_timeout(),
        }
    }
}

fn default_dns_refresh() -> Duration {
    Duration::from_secs(30)
}
fn default_dns_min_ttl() -> Duration {
    Duration::from_secs(1)
}
fn default_dns_max_ttl() -> Duration {
    Duration::from_secs(300)
}
fn default_dns_timeout() -> Duration {
    Duration::from_secs(2)
}

/// How the gateway speaks to an upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    Http2,
}

fn default_max_streams() -> usize {
    100
}

/// `[upstreams.NAME.retry_budget]`, as Envoy's retry budgets: retries of requests the upstream
/// received (5xx and timeouts) may add at most `ratio` to the requests of the last `window`,
/// or `min_retries`, whichever is more, so that retries cannot multiply an outage.
/// Connection failures are not counted: nothing reached the backend.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryBudgetConf {
    /// Default: 0.2.
    #[serde(default = "default_budget_ratio")]
    pub ratio: f64,
    /// Default: 3.
    #[serde(default = "default_budget_min")]
    pub min_retries: u32,
    /// Default: 10s.
    #[serde(default = "default_budget_window", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub window: Duration,
}

impl Default for RetryBudgetConf {
    fn default() -> Self {
        Self {
            ratio: default_budget_ratio(),
            min_retries: default_budget_min(),
            window: default_budget_window(),
        }
    }
}

fn default_retry_backoff() -> Duration {
    Duration::from_millis(25)
}
fn default_budget_ratio() -> f64 {
    0.2
}
fn default_budget_min() -> u32 {
    3
}
fn default_budget_window() -> Duration {
    Duration::from_secs(10)
}

/// `[upstreams.NAME.circuit_breaker]`, per target. A failure is a 5xx answer, a timeout or a
/// failed connection. After `consecutive_failures` in a row, or a `failure_ratio` of at least
/// `min_requests` in the last `window`, the target is open (no traffic) for `open_for`; then
/// `half_open_probes` requests try it: one success closes it, one failure opens it again.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerConf {
    /// Default: 5.
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: u32,
    /// 0 to 1. Default: 0.5.
    #[serde(default = "default_failure_ratio")]
    pub failure_ratio: f64,
    /// Default: 20.
    #[serde(default = "default_min_requests")]
    pub min_requests: u32,
    /// Default: 10s.
    #[serde(default = "default_budget_window", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub window: Duration,
    /// Default: 10s.
    #[serde(default = "default_budget_window", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub open_for: Duration,
    /// Default: 1.
    #[serde(default = "default_probes")]
    pub half_open_probes: u32,
}

fn default_consecutive_failures() -> u32 {
    5
}
fn default_failure_ratio() -> f64 {
    0.5
}
fn default_min_requests() -> u32 {
    20
}
fn default_probes() -> u32 {
    1
}

/// `[upstreams.NAME.health_check]`. Targets count as up until probes say otherwise.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConf {
    /// `tcp` (a connection opens) or `http` (`GET path` answers `expect_status`; plain-HTTP
    /// upstreams only).
    pub kind: HealthCheckKind,
    /// Default: `/`.
    #[serde(default = "default_health_path")]
    pub path: String,
    /// Default: 200.
    #[serde(default = "default_status")]
    pub expect_status: u16,
    /// Default: 5s.
    #[serde(default = "default_health_interval", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub interval: Duration,
    /// Default: 1s.
    #[serde(default = "default_health_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// Successes in a row that bring a down target back. Default: 2.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Failures in a row that take a target down. Default: 3.
    #[serde(default = "default_fall")]
    pub fall: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheckKind {
    Tcp,
    Http,
}

fn default_health_path() -> String {
    "/".into()
}
fn default_health_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_health_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    3
}

fn default_ejection() -> Duration {
    Duration::from_secs(10)
}

/// One target of an upstream.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum TargetConf {
    Address(String),
    Weighted {
        address: String,
        #[serde(default = "default_weight")]
        weight: u32,
    },
}

fn default_weight() -> u32 {
    1
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    RoundRobin,
    ConsistentHash,
}

fn default_retries() -> usize {
    1
}

/// `[upstreams.NAME.tls]`: TLS, and optionally mutual TLS, to a backend.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConf {
    /// Server name sent in SNI and checked against the backend's certificate. Required: an
    /// empty SNI would turn certificate verification off.
    pub sni: String,
    /// CAs the backend's certificate must chain to. Default: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Certificate chain the gateway presents to the backend (mutual TLS).
    pub client_cert_file: Option<PathBuf>,
    /// Private key of `client_cert_file`.
    pub client_key_file: Option<PathBuf>,
    /// Check that the certificate names `sni`. Default: true.
    #[serde(default = "default_true")]
    pub verify_hostname: bool,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_read_timeout() -> Duration {
    Duration::from_secs(60)
}

/// Who may use a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// No token needed; any token sent is ignored and no identity is forwarded.
    Public,
    /// A valid token is needed, and one of the route's `allow` rules must admit it.
    Authenticated,
}

/// `[[routes]]`: one entry of the routing table.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteConf {
    /// Name used in logs. Default: the path.
    pub name: Option<String>,
    /// Match only this `Host` (case-insensitive, port ignored).
    pub host: Option<String>,
    /// Exact path or template: `/ccm/channels/service-identifier/{id}`.
    pub path: Option<String>,
    /// Path prefix, matched on whole segments: `/public` matches `/public` and `/public/x`,
    /// not `/publicity`. May contain `{param}` segments.
    pub path_prefix: Option<String>,
    /// Methods this route matches. Default: all.
    pub methods: Option<Vec<String>>,
    /// Name of the `[upstreams.NAME]` to forward to.
    pub upstream: Option<String>,
    /// Answer directly instead of forwarding.
    pub respond: Option<RespondConf>,
    /// `public` or `authenticated`. Required: nothing is public by accident.
    pub access: Access,
    /// Accept tokens only from these issuers. Default: every configured issuer.
    pub issuers: Option<Vec<String>>,
    /// `[[routes.allow]]`: who may call this route. Without rules, any valid token may.
    #[serde(default)]
    pub allow: Vec<RuleConf>,
    /// `[[routes.deny]]`: exceptions, checked before the `allow` rules. A request that meets
    /// every condition of a deny rule is refused (403), whatever the allow rules say.
    #[serde(default)]
    pub deny: Vec<RuleConf>,
    /// `false` runs this route in shadow mode: every decision is made and logged (audit log,
    /// `"enforced": false`; `portcullis_shadow_refusals_total`) but a refusal (401, 403, 429)
    /// is not carried out: the request is forwarded anyway, without identity headers when its
    /// token was not accepted. For checking a policy against real traffic before it enforces.
    /// Default: true.
    #[serde(default = "default_true")]
    pub enforce: bool,
    /// `[routes.ext_authz]`: an external decision point asked after the local rules allow.
    pub ext_authz: Option<ExtAuthzConf>,
    /// Leading segments of the route's path removed from the path sent upstream:
    /// `strip_prefix = "/api"` sends `/api/agents/7` as `/agents/7`. The query is kept.
    pub strip_prefix: Option<String>,
    /// The path sent upstream instead of the matched one, with the route's `{param}`s:
    /// `rewrite = "/v2/reports/{agency}"`. On a `path_prefix` route, what follows the prefix
    /// is appended. The query is kept. Not with `strip_prefix`.
    pub rewrite: Option<String>,
    /// `[routes.request_headers]`: headers removed from and set on the request sent upstream
    /// (the identity headers are set after, and win).
    pub request_headers: Option<HeaderEditsConf>,
    /// `[routes.response_headers]`: headers removed from and set on the upstream's response.
    pub response_headers: Option<HeaderEditsConf>,
    /// Where an authenticated route's token may be, tried in this order: `header`
    /// (`Authorization: Bearer`), `header:NAME` (another header's value, `Bearer ` optional),
    /// `cookie:NAME`, `query` / `query:NAME` (removed from the query the upstream gets).
    /// A token from a cookie is refused (403) on a cross-site request with a method other
    /// than GET, HEAD or OPTIONS. Values are never logged. Default: `["header"]`.
    #[schemars(with = "Option<Vec<String>>")]
    pub token_from: Option<Vec<TokenSource>>,
    /// Which tokens an authenticated route takes: `users` (default), `services` (system and
    /// metadata APIs for backend jobs), or `any`.
    pub callers: Option<RouteCallers>,
    /// Tiers' `group_limits` for this name apply to this route.
    pub limit_group: Option<String>,
    /// Largest request body in bytes. Default: `[server] max_body_size`.
    pub max_body_size: Option<u64>,
    /// Read a request body of up to 64 KiB whole, and check its framing, before anything is
    /// sent upstream (nginx's `proxy_request_buffering`): a malformed body (400), one too
    /// large (413) or one arriving too slowly (408, `[server] body_timeout`) never reaches
    /// the backend. A chunked body that grows past 64 KiB is refused (413); a larger body
    /// announced by `Content-Length` is streamed. `false` streams every body, for uploads.
    /// Default: true.
    #[serde(default = "default_true")]
    pub request_buffering: bool,
    /// `[routes.websocket]`: take WebSocket upgrades on this route.
    pub websocket: Option<RouteWebSocketConf>,
    /// `[routes.cors]`: let pages on other origins call this route from a browser.
    pub cors: Option<CorsConf>,
    /// A browser route (`[sessions]`): the caller is the session's user. Without a session, a
    /// page navigation is sent to log in (302) and any other request gets 401;
    /// state-changing requests from other sites get 403. A bearer token is taken as on any
    /// route. Default: false.
    #[serde(default)]
    pub browser: bool,
}

/// `[routes.cors]`: cross-origin calls from browsers. A preflight (`OPTIONS` with `Origin`
/// and `Access-Control-Request-Method`) for a method the route takes is answered by the
/// gateway, without a token: 204 when the origin, the method and the headers are allowed,
/// 403 otherwise. Every other answer to an allowed origin, the gateway's own 401, 403 and
/// 429 included, carries `Access-Control-Allow-Origin`, so the page can read it.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CorsConf {
    /// Origins that may call: exact (`https://desk.example.com`), every subdomain of a
    /// domain (`https://*.example.com`), or `"*"` (any origin, not with
    /// `allow_credentials`).
    pub allow_origins: Vec<String>,
    /// Methods a preflight may ask for. Default: the route's methods.
    pub allow_methods: Option<Vec<String>>,
    /// Request headers a preflight may ask for. Default: `authorization`, `content-type`.
    pub allow_headers: Option<Vec<String>>,
    /// Response headers a page may read besides the safelisted ones. Default: those the
    /// gateway sets (`www-authenticate`, `retry-after`, `x-request-id`, the rate-limit
    /// headers).
    pub expose_headers: Option<Vec<String>>,
    /// Calls may carry cookies or a client certificate (`Access-Control-Allow-Credentials`).
    /// Default: false.
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long a browser may keep a preflight's answer. Default: 10m (Chromium keeps at
    /// most 2h).
    #[serde(default = "default_cors_max_age", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_age: Duration,
}

fn default_cors_max_age() -> Duration {
    Duration::from_secs(600)
}

/// Headers a route removes and sets.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderEditsConf {
    /// Header names to remove.
    #[serde(default)]
    pub remove: Vec<String>,
    /// Headers to set, replacing any of the same name: `{ "X-Api-Version" = "2" }`.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RouteCallers {
    Users,
    Services,
    Any,
}

/// `respond = { status = 200, body = "…" }`: a response the gateway writes itself.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RespondConf {
    /// Default: 200.
    #[serde(default = "default_status")]
    pub status: u16,
    #[serde(default)]
    pub body: String,
    /// Default: `text/plain; charset=utf-8`.
    #[serde(default = "default_content_type")]
    pub content_type: String,
}

fn default_status() -> u16 {
    200
}
fn default_content_type() -> String {
    "text/plain; charset=utf-8".into()
}

/// `[[routes.allow]]` or `[[routes.deny]]`: a rule. A rule is met when every condition it
/// sets holds (AND); an allow rule admits, a deny rule refuses. Rules are combined with OR.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleConf {
    /// Methods the rule covers. Default: all.
    pub methods: Option<Vec<String>>,
    /// The caller needs at least one of these roles. Empty: no role needed.
    #[serde(default)]
    pub roles: Vec<String>,
    /// The caller needs every one of these scopes.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The calling client (the token's `azp`, or `client_id`) is one of these.
    #[serde(default)]
    pub clients: Vec<String>,
    /// Claims, by dotted path, and what they must be: a value (equal), a list (one of), or a
    /// table of operators `{ equals = V }`, `{ one_of = [..] }`, `{ contains = V }` (an array
    /// claim holds V), `{ present = true|false }`.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, serde_json::Value>")]
    pub claims: BTreeMap<String, toml::Value>,
    /// Equalities for tenant isolation: a path parameter of the route (`agency`) or a request
    /// header (`"header:X-Agency"`) must equal a claim (`"claim:agency_id"`).
    #[serde(default, rename = "match")]
    pub matches: BTreeMap<String, String>,
    /// `users`, `services` or `anonymous` (no token: deny rules of public routes): the kind
    /// of caller.
    pub caller: Option<CallerKind>,
    /// The TLS client certificate's subject (RFC 4514, as in `CN=reports-job,O=Acme`) is one
    /// of these. Only on mutual-TLS listeners; without a certificate the condition fails.
    #[serde(default)]
    pub client_cert_subject: Vec<String>,
    /// The client address is in one of these networks (CIDR or a single address).
    #[serde(default)]
    pub from: Vec<String>,
    /// The client address is in none of these networks.
    #[serde(default)]
    pub not_from: Vec<String>,
}

/// `[routes.ext_authz]`: a decision point the gateway asks, after the local rules allow,
/// whether a request may pass.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtAuthzConf {
    /// `http`: an authorization service in the shape of Envoy's ext_authz HTTP service, nginx
    /// `auth_request` or Traefik `forwardAuth`: the request's method and path (appended to
    /// `url`'s path) with the selected headers and the verified identity; 2xx allows, 401 and
    /// 403 go to the client with their body. `opa`: Open Policy Agent's data API, `POST url`
    /// with `{"input": …}`, answered `{"result": true|false}` or
    /// `{"result": {"allow": …, "headers": {…}}}`.
    pub kind: ExtAuthzKind,
    /// `http://` or `https://` URL of the service, or of the OPA rule
    /// (`http://opa:8181/v1/data/portcullis/allow`).
    pub url: String,
    /// How long a decision may take, waiting for a free connection included. Default: 1s.
    #[serde(default = "default_ext_authz_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// Request headers sent along (and part of the cache key). `Authorization` only if listed.
    #[serde(default)]
    pub send_headers: Vec<String>,
    /// Headers of an allowing answer that are set on the upstream request.
    #[serde(default)]
    pub upstream_headers: Vec<String>,
    /// How long a decision is reused for the same token, route, method, path and sent
    /// headers; 0s asks every time. Default: 10s.
    #[serde(default = "default_ext_authz_cache_ttl", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub cache_ttl: Duration,
    /// Most decisions remembered. Default: 10000.
    #[serde(default = "default_ext_authz_cache_entries")]
    pub cache_max_entries: usize,
    /// Most calls in flight at once. Default: 64.
    #[serde(default = "default_ext_authz_concurrency")]
    pub max_concurrent: usize,
    /// When the decision point fails (timeout, connection error, another status, a malformed
    /// answer): `deny` answers 403, `allow` lets the request pass. Default: deny.
    #[serde(default)]
    pub on_error: OnError,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExtAuthzKind {
    Http,
    Opa,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    #[default]
    Deny,
    Allow,
}

fn default_ext_authz_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_ext_authz_cache_ttl() -> Duration {
    Duration::from_secs(10)
}
fn default_ext_authz_cache_entries() -> usize {
    10_000
}
fn default_ext_authz_concurrency() -> usize {
    64
}

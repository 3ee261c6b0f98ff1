//! `[token_service]`: the gateway as the issuer of anonymous session tokens.

use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use super::{FailMode, LimitBackend};

/// `[token_service]`: anonymous visitors of a public app get a short-lived signed token from
/// the gateway (`POST path`), so that they can be rate-limited per session rather than per
/// shared address, and an abusive session can be cut off. The gateway publishes the public key
/// (`jwks_path`) and a minimal discovery document, and trusts these tokens itself as the
/// issuer `name`: routes and tiers name it as any other issuer (`issuers = ["anonymous"]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenServiceConf {
    /// The issuer's name in this config (in routes' and tiers' `issuers`, logs, metrics). It
    /// must not be the name of an `[issuers.NAME]` table. Default: `anonymous`.
    #[serde(default = "default_name")]
    pub name: String,
    /// The tokens' `iss`: the public URL the gateway is reached at, under which `jwks_path` and
    /// `discovery_path` are served, e.g. `https://portal.example.com`.
    pub issuer: String,
    /// The tokens' `aud`, and what the gateway accepts in it.
    pub audiences: Vec<String>,
    /// The signing key, a PEM file: an EC P-256 key for `ES256`, an Ed25519 key for `EdDSA`.
    pub key_file: PathBuf,
    /// `ES256` (default) or `EdDSA`.
    #[serde(default = "default_algorithm")]
    pub algorithm: SigningAlgorithm,
    /// The key's `kid`. Default: its RFC 7638 thumbprint.
    pub kid: Option<String>,
    /// `[[token_service.previous_keys]]`: keys that signed before `key_file`. They sign
    /// nothing, but stay published and trusted, so that changing the key (move the old one
    /// here, reload) ends no session early. Remove each once `ttl` has passed since.
    #[serde(default)]
    pub previous_keys: Vec<PreviousKeyConf>,
    /// Lifetime of a token. Default: 15m.
    #[serde(default = "default_ttl", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub ttl: Duration,
    /// Where tokens are issued, by `POST`. Default: `/auth/anonymous`.
    #[serde(default = "default_path")]
    pub path: String,
    /// Where the public key set is served. Default: `/.well-known/jwks.json`.
    #[serde(default = "default_jwks_path")]
    pub jwks_path: String,
    /// Where the discovery document is served. Default:
    /// `/.well-known/openid-configuration`.
    #[serde(default = "default_discovery_path")]
    pub discovery_path: String,
    /// The claim that names the tokens' rate-limit tier, for a tier's
    /// `claim = { name = "tier", values = ["anonymous"] }`. Default: `tier`.
    #[serde(default = "default_tier_claim")]
    pub tier_claim: String,
    /// Its value. Default: `anonymous`.
    #[serde(default = "default_tier")]
    pub tier: String,
    /// `[token_service.issuance]`: how many tokens an address may get.
    #[serde(default)]
    pub issuance: IssuanceConf,
    /// `[token_service.captcha]`: a human check before a token is issued.
    pub captcha: Option<CaptchaConf>,
    /// Most revoked sessions remembered at once; each is forgotten when the last token it
    /// could have had expires. Default: 100000.
    #[serde(default = "default_max_revoked")]
    pub max_revoked: usize,
}

/// A key the token service signed with before its current one.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PreviousKeyConf {
    /// The key's PEM file, as `key_file` was.
    pub key_file: PathBuf,
    /// Its algorithm. Default: the service's `algorithm`.
    pub algorithm: Option<SigningAlgorithm>,
    /// Its `kid`, as it was configured. Default: its RFC 7638 thumbprint.
    pub kid: Option<String>,
}

/// The token service's signing algorithms: compact signatures, keys that are quick to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
pub enum SigningAlgorithm {
    ES256,
    EdDSA,
}

impl From<SigningAlgorithm> for jsonwebtoken::Algorithm {
    fn from(a: SigningAlgorithm) -> Self {
        match a {
            SigningAlgorithm::ES256 => jsonwebtoken::Algorithm::ES256,
            SigningAlgorithm::EdDSA => jsonwebtoken::Algorithm::EdDSA,
        }
    }
}

/// `[token_service.issuance]`: issuance limits per client address (as `[client_ip]` finds it
/// behind trusted proxies) and per network (its /24, or /64 for IPv6), in the rate limiter's
/// stores. Over either: 429 with `Retry-After`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IssuanceConf {
    /// Per address, as tier limits: `["5/minute", "50/day"]`. Default: `["10/minute"]`.
    #[serde(default = "default_per_address")]
    pub per_address: Vec<String>,
    /// Per /24 or /64. Default: `["100/minute"]`.
    #[serde(default = "default_per_network")]
    pub per_network: Vec<String>,
    /// `local` (default) or `redis` (shared by every instance, needs `[rate_limit.redis]`).
    #[serde(default)]
    pub backend: LimitBackend,
    /// When Redis does not answer in time: `fail_open` (default) or `fail_closed` (503).
    #[serde(default)]
    pub on_redis_error: FailMode,
}

impl Default for IssuanceConf {
    fn default() -> Self {
        Self {
            per_address: default_per_address(),
            per_network: default_per_network(),
            backend: LimitBackend::default(),
            on_redis_error: FailMode::default(),
        }
    }
}

/// `[token_service.captcha]`: the token request must carry a captcha response, which the
/// gateway verifies with the provider's server-side API. reCAPTCHA, hCaptcha and Turnstile
/// share its shape: a form POST of `secret`, `response` and `remoteip`, answered
/// `{"success": true|false, …}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CaptchaConf {
    /// The verify endpoint, e.g. `https://challenges.cloudflare.com/turnstile/v0/siteverify`,
    /// `https://hcaptcha.com/siteverify`, `https://www.google.com/recaptcha/api/siteverify`.
    pub verify_url: String,
    /// The site secret, read from this file (trailing newline ignored).
    pub secret_file: Option<PathBuf>,
    /// The site secret, read from this environment variable.
    pub secret_env: Option<String>,
    /// The form field of the token request that holds the captcha response; the header
    /// `X-Captcha-Response` is read too. Default: `captcha_response`.
    #[serde(default = "default_response_field")]
    pub response_field: String,
    /// Time limit of one verification. Default: 3s.
    #[serde(default = "default_captcha_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// When the provider fails or does not answer in time: `fail_closed` (default: 503, no
    /// token) or `fail_open` (issue the token).
    #[serde(default = "default_captcha_fail")]
    pub on_error: FailMode,
}

fn default_name() -> String {
    "anonymous".into()
}

fn default_algorithm() -> SigningAlgorithm {
    SigningAlgorithm::ES256
}

fn default_ttl() -> Duration {
    Duration::from_secs(15 * 60)
}

fn default_path() -> String {
    "/auth/anonymous".into()
}

fn default_jwks_path() -> String {
    "/.well-known/jwks.json".into()
}

fn default_discovery_path() -> String {
    "/.well-known/openid-configuration".into()
}

fn default_tier_claim() -> String {
    "tier".into()
}

fn default_tier() -> String {
    "anonymous".into()
}

fn default_max_revoked() -> usize {
    100_000
}

fn default_per_address() -> Vec<String> {
    vec!["10/minute".into()]
}

fn default_per_network() -> Vec<String> {
    vec!["100/minute".into()]
}

fn default_response_field() -> String {
    "captcha_response".into()
}

fn default_captcha_timeout() -> Duration {
    Duration::from_secs(3)
}

fn default_captcha_fail() -> FailMode {
    FailMode::FailClosed
}

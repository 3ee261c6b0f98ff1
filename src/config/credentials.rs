//! `[upstreams.NAME.credentials]`: tokens the gateway obtains for an upstream.

use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use super::ClientAuthMethod;

/// `[upstreams.NAME.credentials]`: the upstream requires a token of its own, which the gateway
/// obtains from a token endpoint and sets as `Authorization: Bearer …` on every request to it,
/// replacing the caller's. A token is never sent in the last quarter of its lifetime (at most
/// its last 5 s) and one second more; when none can be had, the request gets 503 and the
/// upstream nothing.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialsConf {
    /// `client_credentials`: one token of the gateway's own (RFC 6749 §4.4), shared by every
    /// request and refreshed in the background before it expires. `token_exchange`: the
    /// caller's access token exchanged for one meant for this upstream (RFC 8693), remembered
    /// per caller token until shortly before it expires; authenticated routes only.
    pub grant: CredentialGrant,
    /// The provider's token endpoint.
    pub token_endpoint: String,
    /// The gateway's client id at the provider.
    pub client_id: String,
    /// The client secret, read from this file (trailing newline ignored).
    pub client_secret_file: Option<PathBuf>,
    /// The client secret, read from this environment variable.
    pub client_secret_env: Option<String>,
    /// `client_secret_basic` (default) or `client_secret_post`.
    #[serde(default)]
    pub auth_method: ClientAuthMethod,
    /// The `scope` asked for.
    pub scope: Option<String>,
    /// The `resource` asked for (RFC 8707): the upstream's identifier at the provider.
    pub resource: Option<String>,
    /// With `token_exchange`: the `audience` asked for (RFC 8693 §2.1).
    pub audience: Option<String>,
    /// A token is renewed this long before it expires, but not before a quarter of its
    /// lifetime has passed. Default: 60s.
    #[serde(default = "default_refresh_before", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub refresh_before: Duration,
    /// Time limit of one call to the token endpoint. Default: 5s.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// The `Retry-After` of the 503 given while no token can be had; the endpoint is not
    /// asked again for a second after a failure. Default: 5s.
    #[serde(default = "default_retry_after", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub retry_after: Duration,
    /// With `token_exchange`: most exchanged tokens remembered. Default: 10000.
    #[serde(default = "default_cache_max_entries")]
    pub cache_max_entries: usize,
}

/// How the upstream's token is obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CredentialGrant {
    ClientCredentials,
    TokenExchange,
}

impl CredentialGrant {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialGrant::ClientCredentials => "client_credentials",
            CredentialGrant::TokenExchange => "token_exchange",
        }
    }
}

fn default_refresh_before() -> Duration {
    Duration::from_secs(60)
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_retry_after() -> Duration {
    Duration::from_secs(5)
}

fn default_cache_max_entries() -> usize {
    10_000
}

//! The gateway as the issuer of anonymous session tokens (`[token_service]`).
//!
//! A visitor `POST`s to the token path and gets a short-lived JWT whose `sub` is a fresh random
//! session id: from then on it is rate-limited per session, not per shared address, and a
//! session can be revoked. Issuance itself is limited per address and per network, and may
//! require a captcha. The public key set and a minimal discovery document are served so that
//! backends and other gateways can verify the tokens; this gateway trusts them as the issuer
//! the config names.

pub mod captcha;
pub mod revocation;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;

use crate::authenticate::{ClaimSlot, Principal};
use crate::clock;
use crate::config::{Invalid, KeyPath, RedisConf, TokenServiceConf};
use crate::metrics;
use crate::rate_limit::{Quota, RateLimiter};
use captcha::{Captcha, Checked};
pub use revocation::{Revocation, Revoked};

/// What the token service serves at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST`: a new session token.
    Issue,
    /// `GET`: the public key set.
    Jwks,
    /// `GET`: the discovery document.
    Discovery,
}

/// A token issued.
#[derive(Debug)]
pub struct Issued {
    pub access_token: String,
    pub expires_in: u64,
}

/// Why no token was issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IssueError {
    #[error("too many tokens for this address")]
    AddressLimited { retry_after_secs: u64 },
    #[error("too many tokens for this network")]
    NetworkLimited { retry_after_secs: u64 },
    #[error("the issuance limit store is unavailable")]
    LimiterUnavailable { retry_after_secs: u64 },
    #[error("a captcha response is required")]
    CaptchaMissing,
    #[error("the captcha was not solved")]
    CaptchaFailed,
    #[error("the captcha could not be verified")]
    CaptchaUnavailable,
    #[error("the token could not be signed")]
    Signing,
}

impl IssueError {
    pub fn reason(self) -> &'static str {
        match self {
            IssueError::AddressLimited { .. } => "address_limited",
            IssueError::NetworkLimited { .. } => "network_limited",
            IssueError::LimiterUnavailable { .. } => "limiter_unavailable",
            IssueError::CaptchaMissing => "captcha_missing",
            IssueError::CaptchaFailed => "captcha_failed",
            IssueError::CaptchaUnavailable => "captcha_unavailable",
            IssueError::Signing => "signing_failed",
        }
    }
}

/// `[token_service]`, compiled.
pub struct TokenService {
    /// The issuer's name in the config.
    pub name: Arc<str>,
    iss: String,
    audiences: Vec<String>,
    header: Header,
    key: EncodingKey,
    ttl: Duration,
    tier_claim: String,
    tier: String,
    path: String,
    jwks_path: String,
    discovery_path: String,
    /// The public keys: the signing key's, then the previous keys'.
    jwks: Bytes,
    /// Their algorithms, the signing key's first.
    algorithms: Vec<jsonwebtoken::Algorithm>,
    discovery: Bytes,
    per_address: Quota,
    per_network: Quota,
    captcha: Option<Captcha>,
    /// Revoked sessions; shared with the running config's, so a reload forgets none.
    pub revoked: Arc<Revoked>,
    /// Where the `jti` of a verified token is kept in its principal.
    jti: ClaimSlot,
    /// Where revocations are shared with other instances: Redis's URL, and the key prefix.
    pub redis: Option<(String, String)>,
}

impl std::fmt::Debug for TokenService {
    // Not derived: the signing key stays out of every log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenService")
            .field("name", &self.name)
            .field("iss", &self.iss)
            .finish_non_exhaustive()
    }
}

/// What compiling the token service needs from the rest of the config.
pub struct Context<'a> {
    pub relative: &'a dyn Fn(&Path) -> PathBuf,
    pub limiter: &'a RateLimiter,
    /// Where verified tokens keep their `jti` (see `Authenticator::claim_slot`).
    pub jti: ClaimSlot,
    /// `[rate_limit.redis]`, through which instances share revocations.
    pub redis: Option<&'a RedisConf>,
    pub previous: Option<&'a TokenService>,
}

impl TokenService {
    /// Compiles `[token_service]` (at `at`), reading its key now.
    pub fn compile(
        conf: &TokenServiceConf,
        at: &KeyPath,
        cx: &Context<'_>,
    ) -> Result<Self, Invalid> {
        let err = |field: &str, m: String| Invalid::new(at.key(field), m);
        let iss = conf.issuer.trim_end_matches('/');
        let url = reqwest::Url::parse(iss).map_err(|e| err("issuer", format!("not a URL: {e}")))?;
        if !matches!(url.scheme(), "https" | "http") || url.query().is_some() {
            return Err(err(
                "issuer",
                "must be an http(s) URL without a query".into(),
            ));
        }
        if conf.audiences.is_empty() || conf.audiences.iter().any(String::is_empty) {
            return Err(err("audiences", "name at least one audience".into()));
        }
        let ttl_ok = Duration::from_secs(10)..=Duration::from_secs(24 * 3600);
        if !ttl_ok.contains(&conf.ttl) {
            return Err(err("ttl", "must be between 10s and 24h".into()));
        }
        for (field, path) in [
            ("path", &conf.path),
            ("jwks_path", &conf.jwks_path),
            ("discovery_path", &conf.discovery_path),
        ] {
            if !path.starts_with('/') || path.contains(['?', '#', ' ']) {
                return Err(err(field, "must be a path starting with /".into()));
            }
        }
        if conf.path == conf.jwks_path
            || conf.path == conf.discovery_path
            || conf.jwks_path == conf.discovery_path
        {
            return Err(err(
                "path",
                "path, jwks_path and discovery_path must differ".into(),
            ));
        }
        if conf.tier_claim.is_empty() || conf.tier.is_empty() {
            return Err(err(
                "tier_claim",
                "tier_claim and tier must not be empty".into(),
            ));
        }
        if conf.max_revoked == 0 {
            return Err(err("max_revoked", "must be at least 1".into()));
        }

        let alg = jsonwebtoken::Algorithm::from(conf.algorithm);
        let (key, jwk) = signing_key(&conf.key_file, alg, conf.kid.as_deref(), at, cx.relative)?;
        let kid = jwk.common.key_id.clone().unwrap_or_default();
        let mut keys = vec![jwk];
        let mut algorithms = vec![alg];
        for (i, previous) in conf.previous_keys.iter().enumerate() {
            let at = at.key("previous_keys").index(i);
            let alg = previous
                .algorithm
                .map_or(alg, jsonwebtoken::Algorithm::from);
            let (_, jwk) = signing_key(
                &previous.key_file,
                alg,
                previous.kid.as_deref(),
                &at,
                cx.relative,
            )?;
            // A token names its key by `kid` alone: two keys under one would be ambiguous.
            if keys.iter().any(|k| k.common.key_id == jwk.common.key_id) {
                let m = "the same kid as another key: is a key listed twice?";
                return Err(Invalid::new(at.key("kid"), m));
            }
            keys.push(jwk);
            if !algorithms.contains(&alg) {
                algorithms.push(alg);
            }
        }
        let jwks =
            serde_json::to_vec(&JwkSet { keys }).map_err(|e| err("key_file", e.to_string()))?;
        let discovery = json!({
            "issuer": iss,
            "jwks_uri": format!("{iss}{}", conf.jwks_path),
            "token_endpoint": format!("{iss}{}", conf.path),
            "id_token_signing_alg_values_supported":
                algorithms.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>(),
            "grant_types_supported": [],
            "response_types_supported": [],
            "subject_types_supported": ["public"],
        });

        let issuance = &conf.issuance;
        let quota = |name: &str, field: &str, limits: &[String]| {
            cx.limiter.quota(
                name,
                limits,
                issuance.backend,
                issuance.on_redis_error,
                &at.key("issuance").key(field),
            )
        };
        let per_address = quota("issuance-address", "per_address", &issuance.per_address)?;
        let per_network = quota("issuance-network", "per_network", &issuance.per_network)?;
        let captcha = conf
            .captcha
            .as_ref()
            .map(|c| Captcha::compile(c, &at.key("captcha"), cx.relative))
            .transpose()?;
        let revoked = match cx.previous {
            Some(p) => {
                p.revoked.set_capacity(conf.max_revoked);
                p.revoked.clone()
            }
            None => Arc::new(Revoked::new(conf.max_revoked)),
        };

        let mut header = Header::new(alg);
        header.kid = Some(kid);
        header.typ = Some("at+jwt".into());
        Ok(Self {
            name: conf.name.as_str().into(),
            iss: iss.to_string(),
            audiences: conf.audiences.clone(),
            header,
            key,
            ttl: conf.ttl,
            tier_claim: conf.tier_claim.clone(),
            tier: conf.tier.clone(),
            path: conf.path.clone(),
            jwks_path: conf.jwks_path.clone(),
            discovery_path: conf.discovery_path.clone(),
            jwks: Bytes::from(jwks),
            algorithms,
            discovery: Bytes::from(discovery.to_string()),
            per_address,
            per_network,
            captcha,
            revoked,
            jti: cx.jti,
            redis: cx.redis.map(|r| (r.url.clone(), r.key_prefix.clone())),
        })
    }

    /// The algorithms of the published keys: the signing key's first.
    pub fn algorithms(&self) -> &[jsonwebtoken::Algorithm] {
        &self.algorithms
    }

    /// The `iss` of the tokens.
    pub fn issuer(&self) -> &str {
        &self.iss
    }

    /// How long a token lives: a revocation need not be remembered longer.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// What is served at `path`, if anything.
    pub fn endpoint(&self, path: &str) -> Option<Endpoint> {
        if path == self.path {
            Some(Endpoint::Issue)
        } else if path == self.jwks_path {
            Some(Endpoint::Jwks)
        } else if path == self.discovery_path {
            Some(Endpoint::Discovery)
        } else {
            None
        }
    }

    /// The public key set: served, and what the gateway verifies its own tokens with.
    pub fn jwks(&self) -> &Bytes {
        &self.jwks
    }

    pub fn discovery(&self) -> &Bytes {
        &self.discovery
    }

    /// The form field that carries the captcha response, when a captcha is required.
    pub fn captcha_field(&self) -> Option<&str> {
        self.captcha.as_ref().map(Captcha::field)
    }

    /// Issues a token to a visitor at `ip`, within the issuance limits and after the captcha,
    /// if one is required.
    pub async fn issue(
        &self,
        ip: IpAddr,
        captcha_response: Option<&str>,
        limiter: &RateLimiter,
    ) -> Result<Issued, IssueError> {
        let outcome = self.admit(ip, captcha_response, limiter).await;
        let outcome = outcome.and_then(|()| self.mint());
        metrics::token_issued(outcome.as_ref().map_or_else(|e| e.reason(), |_| "issued"));
        outcome
    }

    async fn admit(
        &self,
        ip: IpAddr,
        captcha_response: Option<&str>,
        limiter: &RateLimiter,
    ) -> Result<(), IssueError> {
        // Limits first: a flood of requests costs no captcha verification.
        let unavailable = |e: crate::rate_limit::StoreUnavailable| IssueError::LimiterUnavailable {
            retry_after_secs: e.retry_after_secs,
        };
        let taken = limiter
            .take(&self.per_address, &ip.to_string())
            .await
            .map_err(unavailable)?;
        if !taken.allowed {
            return Err(IssueError::AddressLimited {
                retry_after_secs: taken.retry_after_secs,
            });
        }
        let taken = limiter
            .take(&self.per_network, &network_of(ip))
            .await
            .map_err(unavailable)?;
        if !taken.allowed {
            return Err(IssueError::NetworkLimited {
                retry_after_secs: taken.retry_after_secs,
            });
        }
        if let Some(captcha) = &self.captcha {
            let response = captcha_response
                .filter(|r| !r.is_empty())
                .ok_or(IssueError::CaptchaMissing)?;
            match captcha.verify(response, ip).await {
                Checked::Human | Checked::Unverified { open: true } => {}
                Checked::NotHuman => return Err(IssueError::CaptchaFailed),
                Checked::Unverified { open: false } => return Err(IssueError::CaptchaUnavailable),
            }
        }
        Ok(())
    }

    fn mint(&self) -> Result<Issued, IssueError> {
        let now = clock::unix_secs();
        let ttl = self.ttl.as_secs();
        let mut claims = serde_json::Map::new();
        claims.insert("iss".into(), self.iss.clone().into());
        claims.insert("sub".into(), random_id().into());
        claims.insert(
            "aud".into(),
            match self.audiences.as_slice() {
                [one] => one.clone().into(),
                many => many.to_vec().into(),
            },
        );
        claims.insert("iat".into(), now.into());
        claims.insert("exp".into(), (now + ttl).into());
        claims.insert("jti".into(), random_id().into());
        claims.insert(self.tier_claim.clone(), self.tier.clone().into());
        let access_token = jsonwebtoken::encode(&self.header, &claims, &self.key).map_err(|e| {
            log::error!("token service: signing failed: {e}");
            IssueError::Signing
        })?;
        Ok(Issued {
            access_token,
            expires_in: ttl,
        })
    }

    /// Whether a verified principal of this service's issuer belongs to a revoked session
    /// (by its `sub`) or is a revoked token (by its `jti`). Checked on every request, cached
    /// tokens included.
    pub fn is_revoked(&self, principal: &Principal) -> bool {
        *principal.issuer == *self.name
            && self
                .revoked
                .contains(principal.claim(self.jti), &principal.subject)
    }
}

/// Reads a signing key (`key_file` under `at`) and makes its public JWK, with its `kid`: the
/// one given, or its RFC 7638 thumbprint.
fn signing_key(
    file: &Path,
    alg: jsonwebtoken::Algorithm,
    kid: Option<&str>,
    at: &KeyPath,
    relative: &dyn Fn(&Path) -> PathBuf,
) -> Result<(EncodingKey, Jwk), Invalid> {
    let err = |field: &str, m: String| Invalid::new(at.key(field), m);
    let path = relative(file);
    let key = crate::token::load_key(&path, alg).map_err(|e| err("key_file", e.to_string()))?;
    let mut jwk = Jwk::from_encoding_key(&key, alg)
        .map_err(|e| err("key_file", format!("{}: {e}", path.display())))?;
    let kid = match kid {
        Some("") => return Err(err("kid", "must not be empty".into())),
        Some(kid) => kid.to_owned(),
        None => jwk
            .thumbprint(ThumbprintHash::SHA256)
            .map_err(|e| err("key_file", e.to_string()))?,
    };
    jwk.common.key_id = Some(kid);
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    Ok((key, jwk))
}

/// 128 random bits, as 32 hex digits: a session id or token id nobody can guess.
fn random_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The network an address counts in for issuance: its /24, or /64 for IPv6.
pub fn network_of(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            format!("{a}.{b}.{c}.0/24")
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => network_of(IpAddr::V4(v4)),
            None => {
                let s = v6.segments();
                let net = std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
                format!("{net}/64")
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_count_in_their_24_or_64() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("address");
        assert_eq!(network_of(ip("203.0.113.77")), "203.0.113.0/24");
        assert_eq!(network_of(ip("::ffff:203.0.113.77")), "203.0.113.0/24");
        assert_eq!(network_of(ip("2001:db8:1:2:3:4:5:6")), "2001:db8:1:2::/64");
    }

    #[test]
    fn ids_are_random_and_long() {
        let (a, b) = (random_id(), random_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
    }
}

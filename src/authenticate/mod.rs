//! Authentication: turning a bearer token into a verified [`Principal`], or an [`AuthError`].
//!
//! The token's `iss` picks the issuer, its `kid` the key; the algorithm must be one the issuer
//! allows and must fit the key. Header fields that point elsewhere for keys (`jku`, `x5u`,
//! `jwk`, `x5c`) are never read.

mod cache;
mod claims;
mod derived;
pub mod fetch;
pub(crate) mod introspect;
mod issuer;
pub(crate) mod jwt;
mod keys;
pub mod source;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::DecodingKey;

use crate::config::IntrospectionMode;

use cache::{Refused, RefusedTokens, Verified, VerifiedTokens};
pub(crate) use claims::{ClaimMap, ClaimPath};
pub use derived::{Derived, Headers};
pub(crate) use issuer::{Context as IssuerContext, Issuer, ServiceTokenRule};
pub(crate) use keys::KeySet;

/// Whether a user stands behind a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalKind {
    User,
    /// A backend job's token (client credentials grant): no user, maybe no expiry.
    Service,
}

impl PrincipalKind {
    /// `user` or `service`, as `explain` and decision points are told.
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::User => "user",
            PrincipalKind::Service => "service",
        }
    }
}

/// A caller whose token was verified.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Configured name of the issuer that vouched for the token.
    pub issuer: Arc<str>,
    pub kind: PrincipalKind,
    pub subject: String,
    pub client_id: Option<String>,
    pub tenant: Option<String>,
    pub roles: Vec<String>,
    pub scopes: Vec<String>,
    /// Until when the token is accepted, seconds since the epoch: its `exp` plus the issuer's
    /// clock skew. `None` for a non-expiring token.
    pub valid_until: Option<u64>,
    /// Values of the claims registered with [`Authenticator::claim_slot`], by slot.
    pub extra: Vec<ClaimValue>,
    /// What is worked out from the principal once, for all the requests its token makes
    /// while it is remembered.
    pub derived: Derived,
}

/// A claim other parts of the config read, as the token carried it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ClaimValue {
    /// Absent, null, empty, or of a shape nothing reads (an object).
    #[default]
    Absent,
    /// A string, or a number as written in the token.
    Text(Box<str>),
    Bool(bool),
    /// An array; its strings and numbers.
    List(Vec<Box<str>>),
}

impl Principal {
    /// The text value of a claim registered with [`Authenticator::claim_slot`].
    pub fn claim(&self, slot: ClaimSlot) -> Option<&str> {
        match self.claim_value(slot) {
            ClaimValue::Text(t) => Some(t),
            _ => None,
        }
    }

    /// The value of a claim registered with [`Authenticator::claim_slot`], whatever its shape.
    pub fn claim_value(&self, slot: ClaimSlot) -> &ClaimValue {
        const ABSENT: ClaimValue = ClaimValue::Absent;
        self.extra.get(slot.0).unwrap_or(&ABSENT)
    }

    /// The SHA-256 of `token`, which must be the token this principal was verified from.
    pub fn token_sha256(&self, token: &str) -> &[u8; 32] {
        self.derived.token_sha256(|| token_digest(token))
    }

    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

/// Why a request is not authenticated. Every variant is a 401 but [`AuthError::Undecided`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error, strum::EnumIter)]
pub enum AuthError {
    #[error("no bearer token")]
    Missing,
    #[error("malformed token")]
    Malformed,
    #[error("unknown issuer")]
    UnknownIssuer,
    #[error("issuer not accepted on this route")]
    IssuerNotAccepted,
    #[error("algorithm not allowed")]
    AlgorithmNotAllowed,
    #[error("signing keys not available")]
    KeysUnavailable,
    #[error("unknown signing key")]
    UnknownKey,
    #[error("signing key does not fit the algorithm")]
    KeyMismatch,
    #[error("bad signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token issued in the future")]
    IssuedInFuture,
    #[error("unsupported critical header")]
    CriticalHeader,
    #[error("not an access token")]
    NotAnAccessToken,
    #[error("token has no expiry")]
    MissingExpiry,
    #[error("wrong audience")]
    WrongAudience,
    #[error("token not bound to the client certificate")]
    CertificateMismatch,
    #[error("token not bound to a client certificate")]
    UnboundToken,
    #[error("invalid claim: {0}")]
    InvalidClaim(&'static str),
    #[error("token not active")]
    Inactive,
    /// The provider could not be asked whether the token is active: a 503, not a 401.
    #[error("token could not be checked")]
    Undecided { retry_after_secs: u32 },
}

impl AuthError {
    /// Every refusal whose answer never varies: all but [`AuthError::InvalidClaim`], whose
    /// texts vary, and [`AuthError::Undecided`], a 503. Their answers are built in advance.
    pub fn fixed() -> impl Iterator<Item = AuthError> {
        use strum::IntoEnumIterator;
        AuthError::iter()
            .filter(|e| !matches!(e, AuthError::InvalidClaim(_) | AuthError::Undecided { .. }))
    }

    /// Whether the same token would be refused the same way until the issuer's keys change:
    /// true for refusals made at or after the signature check, which is what is costly to
    /// repeat, except `nbf` (time cures it).
    fn holds_while_keys_do(self) -> bool {
        matches!(
            self,
            AuthError::BadSignature
                | AuthError::NotAnAccessToken
                | AuthError::Expired
                | AuthError::WrongAudience
                | AuthError::MissingExpiry
                | AuthError::UnboundToken
                | AuthError::InvalidClaim(_)
        )
    }

    /// A stable, short label for logs and metrics.
    pub fn reason(self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed => "malformed",
            AuthError::UnknownIssuer => "unknown_issuer",
            AuthError::IssuerNotAccepted => "issuer_not_accepted",
            AuthError::AlgorithmNotAllowed => "algorithm_not_allowed",
            AuthError::KeysUnavailable => "keys_unavailable",
            AuthError::UnknownKey => "unknown_kid",
            AuthError::KeyMismatch => "key_mismatch",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::IssuedInFuture => "issued_in_future",
            AuthError::CriticalHeader => "critical_header",
            AuthError::NotAnAccessToken => "not_an_access_token",
            AuthError::MissingExpiry => "missing_exp",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::CertificateMismatch => "certificate_mismatch",
            AuthError::UnboundToken => "unbound_token",
            AuthError::InvalidClaim(_) => "invalid_claim",
            AuthError::Inactive => "inactive",
            AuthError::Undecided { .. } => "introspection_unavailable",
        }
    }
}

/// The SHA-256 of a token, as instances name a token to each other.
pub fn token_digest(token: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// Takes the bearer token from `Authorization` (RFC 6750 §2.1).
pub fn bearer_token_of(headers: &http::HeaderMap) -> Result<&str, AuthError> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let value = values.next().ok_or(AuthError::Missing)?;
    if values.next().is_some() {
        return Err(AuthError::Malformed);
    }
    let value = value.to_str().map_err(|_| AuthError::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        // Another scheme (Basic …) carries no bearer token.
        return Err(AuthError::Missing);
    }
    let token = token.trim_matches(' ');
    if token.is_empty() {
        return Err(AuthError::Malformed);
    }
    Ok(token)
}

/// Who vouched for a token's claims.
#[derive(Debug, Clone, Copy)]
enum Vouched {
    /// Its signature, checked with keys of this generation.
    Signature { key_generation: u64 },
    /// The provider's introspection answer.
    Introspection { audience_required: bool },
}

/// Why an issuer cannot be added.
#[derive(Debug, thiserror::Error)]
pub enum AddError {
    #[error("issuer {0} has the same `issuer`")]
    SameIss(Arc<str>),
    #[error("issuer {0} introspects tokens too; a token that is not a JWT names no issuer, so only one may")]
    SecondIntrospector(Arc<str>),
}

/// An issuer of one [`Authenticator`]; routes refer to issuers this way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IssuerId(usize);

/// A claim other parts of the config read from principals (see [`Principal::claim`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimSlot(usize);

/// All issuers of a config.
#[derive(Default)]
pub struct Authenticator {
    issuers: Vec<Issuer>,
    by_iss: HashMap<Box<str>, IssuerId>,
    extra_claims: Vec<ClaimPath>,
    verified: VerifiedTokens,
    /// Kept apart, so that a flood of bad tokens cannot push good ones out.
    refused: RefusedTokens,
    /// The issuer asked about tokens that are not JWTs.
    opaque: Option<IssuerId>,
}

impl Authenticator {
    /// Remembers up to `max_entries` verified tokens (none for 0).
    /// Refusals that hold while the keys do are remembered too, in an eighth of that.
    pub fn cache_verified(&mut self, max_entries: usize) {
        self.verified = VerifiedTokens::new(max_entries);
        self.refused = RefusedTokens::new(max_entries.div_ceil(8));
    }

    /// How often an open WebSocket's token is checked again, when an issuer introspects:
    /// whatever the token, since a renewal may bring an introspected one.
    pub fn websocket_recheck(&self) -> Option<Duration> {
        let issuer = self.issuer(self.opaque?);
        issuer.introspection.as_deref()?.websocket_recheck()
    }

    /// How many verified tokens are remembered now.
    pub fn cached_tokens(&self) -> usize {
        self.verified.len()
    }

    /// Adds an issuer; fails if another one has the same `iss`, or if both introspect
    /// tokens (a token that is not a JWT names no issuer).
    pub fn add(&mut self, issuer: Issuer) -> Result<IssuerId, AddError> {
        let id = IssuerId(self.issuers.len());
        if let Some(&other) = self.by_iss.get(&issuer.iss) {
            return Err(AddError::SameIss(self.issuer(other).name.clone()));
        }
        let introspects = issuer
            .introspection
            .as_ref()
            .is_some_and(|i| i.mode() != IntrospectionMode::Off);
        if introspects {
            if let Some(other) = self.opaque {
                return Err(AddError::SecondIntrospector(
                    self.issuer(other).name.clone(),
                ));
            }
            self.opaque = Some(id);
        }
        self.by_iss.insert(issuer.iss.clone(), id);
        self.issuers.push(issuer);
        Ok(id)
    }

    pub fn issuers(&self) -> &[Issuer] {
        &self.issuers
    }

    /// The issuer configured as `[issuers.NAME]`.
    pub fn find(&self, name: &str) -> Option<IssuerId> {
        self.issuers
            .iter()
            .position(|i| *i.name == *name)
            .map(IssuerId)
    }

    /// Ids come from this authenticator, so they are always in range.
    fn issuer(&self, id: IssuerId) -> &Issuer {
        &self.issuers[id.0]
    }

    /// Asks for `path` to be read from every verified token into [`Principal::extra`].
    pub fn claim_slot(&mut self, path: ClaimPath) -> ClaimSlot {
        let i = match self.extra_claims.iter().position(|p| *p == path) {
            Some(i) => i,
            None => {
                self.extra_claims.push(path);
                self.extra_claims.len() - 1
            }
        };
        ClaimSlot(i)
    }

    /// Verifies `token`, or finds it verified before. `accepted` restricts which issuers this
    /// route trusts (`None`: all). `client_cert_sha256` is the SHA-256 of the TLS client
    /// certificate of this connection, if one was verified: certificate-bound tokens must match
    /// it (RFC 8705 §3).
    pub async fn authenticate(
        &self,
        token: &str,
        accepted: Option<&[IssuerId]>,
        client_cert_sha256: Option<&[u8]>,
    ) -> Result<Arc<Principal>, AuthError> {
        let opaque = self.opaque.filter(|_| !jwt::is_compact(token));
        let key = (opaque.is_some() || self.verified.enabled()).then(|| cache::digest(token));
        // The calls that may go to the network are boxed: they are large, and a remembered
        // token, the common case, should not carry them in its request's future.
        let verified = match (opaque, &key) {
            // No call to the provider for a route that does not trust it.
            (Some(id), _) if accepted.is_some_and(|ids| !ids.contains(&id)) => {
                return Err(AuthError::IssuerNotAccepted)
            }
            (Some(id), Some(key)) => Box::pin(self.introspect_opaque(id, token, key)).await?,
            _ => self.verify_cached(token, key.as_ref()).await?,
        };
        self.admit_use(
            &verified,
            accepted,
            client_cert_sha256,
            crate::clock::unix_secs(),
        )?;
        // Mode `always`: a JWT good in itself must also still be active at the provider.
        let issuer = self.issuer(verified.issuer);
        if let Some(introspector) = issuer.introspects(IntrospectionMode::Always) {
            if opaque.is_none() {
                let key = key.unwrap_or_else(|| cache::digest(token));
                Box::pin(introspector.check(token, &key, |_| Ok(None))).await?;
            }
        }
        Ok(verified.principal.clone())
    }

    /// A JWT's verification, from the caches when it was made before.
    async fn verify_cached(
        &self,
        token: &str,
        key: Option<&cache::Digest>,
    ) -> Result<Arc<Verified>, AuthError> {
        use crate::metrics::{token_cache, TokenCacheResult};
        let key = key.filter(|_| self.verified.enabled());
        let cached = key.and_then(|k| self.verified.get(k));
        if let Some(v) = cached {
            if self.issuer(v.issuer).keys.generation() == v.key_generation {
                token_cache(TokenCacheResult::Hit);
                crate::trace::annotate("portcullis.token_cache", "hit");
                return Ok(v);
            }
        }
        let epoch = self.key_epoch();
        let refused = key.and_then(|k| self.refused.get(k));
        if let Some(r) = refused.filter(|r| r.key_epoch == epoch) {
            token_cache(TokenCacheResult::Refused);
            crate::trace::annotate("portcullis.token_cache", "refused");
            return Err(r.error);
        }
        let outcome = Box::pin(self.verify(token)).await.map(Arc::new);
        if let Some(&key) = key {
            token_cache(TokenCacheResult::Miss);
            crate::trace::annotate("portcullis.token_cache", "miss");
            match &outcome {
                Ok(v) => self.verified.insert(key, v.clone()),
                Err(e) if e.holds_while_keys_do() => self.refused.insert(
                    key,
                    Refused {
                        error: *e,
                        key_epoch: epoch,
                    },
                ),
                Err(_) => {}
            }
        }
        outcome
    }

    /// A JWT other than an access token (an ID token, a logout token) that `id` signed: its
    /// header `typ` and its claims, once the algorithm is one the issuer allows and the
    /// signature holds with the issuer's keys. Its `iss` must be the issuer's; every other
    /// claim is the caller's to check.
    pub async fn verify_signed(
        &self,
        id: IssuerId,
        token: &str,
    ) -> Result<(Option<String>, serde_json::Map<String, serde_json::Value>), AuthError> {
        let token = jwt::parse(token)?;
        let issuer = self.issuer(id);
        if !issuer.algorithms.contains(&token.header.alg) {
            return Err(AuthError::AlgorithmNotAllowed);
        }
        verify_signature(issuer, &token).await?;
        if token.claims.get("iss").and_then(|v| v.as_str()) != Some(&*issuer.iss) {
            return Err(AuthError::UnknownIssuer);
        }
        Ok((token.header.typ, token.claims))
    }

    /// The `iss` and clock skew of issuer `id`.
    pub fn issuer_of(&self, id: IssuerId) -> (&str, u64) {
        let issuer = self.issuer(id);
        (&issuer.iss, issuer.leeway_secs)
    }

    /// The principal a token carrying `claims` would make if its issuer (by `iss`) signed
    /// it, with every check but the signature and the token type (for `explain`).
    pub fn principal_of_claims(
        &self,
        claims: &serde_json::Map<String, serde_json::Value>,
        accepted: Option<&[IssuerId]>,
    ) -> Result<Arc<Principal>, AuthError> {
        let iss = claims
            .get("iss")
            .and_then(|v| v.as_str())
            .ok_or(AuthError::UnknownIssuer)?;
        let &id = self.by_iss.get(iss).ok_or(AuthError::UnknownIssuer)?;
        let verified = self.admit_claims(id, claims, Vouched::Signature { key_generation: 0 })?;
        self.admit_use(&verified, accepted, None, crate::clock::unix_secs())?;
        Ok(verified.principal)
    }

    /// A token that is not a JWT: the identity is what the provider says of it.
    async fn introspect_opaque(
        &self,
        id: IssuerId,
        token: &str,
        key: &cache::Digest,
    ) -> Result<Arc<Verified>, AuthError> {
        let issuer = self.issuer(id);
        let Some(introspector) = issuer.introspection.as_deref() else {
            return Err(AuthError::Malformed);
        };
        let answer = introspector
            .check(token, key, |claims| {
                // RFC 7662 §2.2: `iss` is optional, but when given it must be this issuer.
                if claims
                    .get("iss")
                    .is_some_and(|v| v.as_str() != Some(&*issuer.iss))
                {
                    return Err(AuthError::UnknownIssuer);
                }
                let mut claims = claims.clone();
                // Every member but `active` is optional (RFC 7662 §2.2), and some providers
                // write an absent one as null (Authlib's client token: `"sub": null`).
                claims.retain(|_, v| !v.is_null());
                // A client credentials token has no user: its client is its subject
                // (RFC 9068 §2.2).
                if !claims.contains_key("sub") {
                    if let Some(client) = claims.get("client_id").cloned() {
                        claims.insert("sub".into(), client);
                    }
                }
                let vouched = Vouched::Introspection {
                    audience_required: introspector.requires_audience(),
                };
                self.admit_claims(id, &claims, vouched)
                    .map(|v| Some(Arc::new(v)))
            })
            .await?;
        answer.ok_or(AuthError::Malformed)
    }

    /// Changes whenever any issuer's keys do.
    fn key_epoch(&self) -> u64 {
        self.issuers
            .iter()
            .fold(0, |sum, i| sum.wrapping_add(i.keys.generation()))
    }

    /// The checks that depend on where and when a verified token is used, made on every use.
    fn admit_use(
        &self,
        verified: &Verified,
        accepted: Option<&[IssuerId]>,
        client_cert_sha256: Option<&[u8]>,
        now: u64,
    ) -> Result<(), AuthError> {
        if accepted.is_some_and(|ids| !ids.contains(&verified.issuer)) {
            return Err(AuthError::IssuerNotAccepted);
        }
        if verified.principal.valid_until.is_some_and(|t| now > t) {
            return Err(AuthError::Expired);
        }
        match (&verified.bound_to, client_cert_sha256) {
            (None, _) => Ok(()),
            (Some(expected), Some(presented)) if constant_time_eq(expected, presented) => Ok(()),
            (Some(_), _) => Err(AuthError::CertificateMismatch),
        }
    }

    /// Everything about a token that depends on its bytes alone: issuer, algorithm,
    /// signature, claims.
    async fn verify(&self, token: &str) -> Result<Verified, AuthError> {
        let token = jwt::parse(token)?;
        let iss = token
            .claims
            .get("iss")
            .and_then(|v| v.as_str())
            .ok_or(AuthError::UnknownIssuer)?;
        let &id = self.by_iss.get(iss).ok_or(AuthError::UnknownIssuer)?;
        let issuer = self.issuer(id);
        let alg = token.header.alg;
        if !issuer.algorithms.contains(&alg) {
            return Err(AuthError::AlgorithmNotAllowed);
        }
        let key_generation = issuer.keys.generation();
        verify_signature(issuer, &token).await?;
        // An ID or refresh token with an accepted audience is still not an access token.
        if let Some(token_type) = &issuer.token_type {
            if !token_type.admits(token.header.typ.as_deref(), &token.claims) {
                return Err(AuthError::NotAnAccessToken);
            }
        }
        self.admit_claims(id, &token.claims, Vouched::Signature { key_generation })
    }

    /// Everything about a token's claims, wherever they came from (a signature checked with
    /// keys of `key_generation`, or an introspection): audience and time, the certificate
    /// binding, the identity.
    fn admit_claims(
        &self,
        id: IssuerId,
        token_claims: &serde_json::Map<String, serde_json::Value>,
        vouched: Vouched,
    ) -> Result<Verified, AuthError> {
        let issuer = self.issuer(id);
        let (key_generation, audience_required) = match vouched {
            Vouched::Signature { key_generation } => (key_generation, true),
            // No key generation: the introspection cache holds it, not the token cache.
            Vouched::Introspection { audience_required } => (0, audience_required),
        };
        let rules = jwt::TimeRules {
            audiences: &issuer.audiences,
            leeway: issuer.leeway_secs,
            allow_non_expiring: issuer.allow_non_expiring,
            audience_required,
        };
        let expires_at = jwt::check_claims(token_claims, &rules, crate::clock::unix_secs())?;
        let bound_to = certificate_binding(token_claims)?;
        if bound_to.is_none() && issuer.require_bound_tokens {
            return Err(AuthError::UnboundToken);
        }
        let identity = issuer
            .claims
            .read(token_claims)
            .map_err(AuthError::InvalidClaim)?;
        let kind = match &issuer.service_tokens {
            ServiceTokenRule::SubIsClient
                if identity.client_id.as_deref() == Some(identity.subject.as_str()) =>
            {
                PrincipalKind::Service
            }
            ServiceTokenRule::Claim(path) if claims::scalar(path.get(token_claims)).is_some() => {
                PrincipalKind::Service
            }
            _ => PrincipalKind::User,
        };
        // A user's token always expires, whatever the issuer allows its backend jobs.
        if expires_at.is_none() && kind == PrincipalKind::User {
            return Err(AuthError::MissingExpiry);
        }
        let extra = self
            .extra_claims
            .iter()
            .map(|p| claims::value(p.get(token_claims)))
            .collect();
        let principal = Principal {
            issuer: issuer.name.clone(),
            kind,
            subject: identity.subject,
            client_id: identity.client_id,
            tenant: identity.tenant,
            roles: identity.roles,
            scopes: identity.scopes,
            valid_until: expires_at.map(|exp| exp.saturating_add(issuer.leeway_secs)),
            extra,
            derived: Derived::default(),
        };
        Ok(Verified {
            principal: Arc::new(principal),
            issuer: id,
            key_generation,
            bound_to,
        })
    }
}

/// RFC 8705 §3.1: a token with `cnf.x5t#S256` is only good on a connection presenting the
/// certificate with that SHA-256 thumbprint.
fn certificate_binding(
    claims: &serde_json::Map<String, serde_json::Value>,
) -> Result<Option<Vec<u8>>, AuthError> {
    use base64::Engine;
    let Some(value) = claims.get("cnf").and_then(|c| c.get("x5t#S256")) else {
        return Ok(None);
    };
    value
        .as_str()
        .and_then(|v| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(v)
                .ok()
        })
        .map(Some)
        .ok_or(AuthError::InvalidClaim("cnf.x5t#S256 is not base64url"))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn verify_signature(issuer: &Issuer, token: &jwt::Unverified<'_>) -> Result<(), AuthError> {
    let alg = token.header.alg;
    if alg.family() == jsonwebtoken::AlgorithmFamily::Hmac {
        // HS* only with the issuer's own secret, never with a key from its JWKS.
        let key = issuer.hmac.as_ref().ok_or(AuthError::KeyMismatch)?;
        verify(token, key)
    } else {
        let kid = token.header.kid.as_deref();
        let set = issuer.keys.current();
        let lookup = |set: &KeySet| match set.find(kid, alg) {
            keys::Lookup::Found(key) => Some(verify(token, key)),
            keys::Lookup::Mismatch => Some(Err(AuthError::KeyMismatch)),
            keys::Lookup::Unknown => None,
        };
        match set.as_deref().and_then(lookup) {
            Some(result) => result,
            None => {
                // Unknown kid (or no keys yet): maybe the provider rotated. One refetch per cooldown.
                let refreshed = match kid {
                    Some(kid) => issuer.keys.refetch_for(kid).await,
                    None => None,
                };
                match refreshed.or(set) {
                    None => Err(AuthError::KeysUnavailable),
                    Some(set) => lookup(&set).unwrap_or(Err(AuthError::UnknownKey)),
                }
            }
        }
    }
}

fn verify(token: &jwt::Unverified<'_>, key: &DecodingKey) -> Result<(), AuthError> {
    match jsonwebtoken::crypto::verify(
        token.signature,
        token.message.as_bytes(),
        key,
        token.header.alg,
    ) {
        Ok(true) => Ok(()),
        _ => Err(AuthError::BadSignature),
    }
}

#[cfg(test)]
mod tests {
    use pingora_http::RequestHeader;

    use super::*;

    fn req(values: &[&str]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        for v in values {
            r.append_header("authorization", *v).unwrap();
        }
        r
    }

    #[test]
    fn bearer_token_extraction() {
        assert_eq!(bearer_token_of(&req(&["Bearer abc"]).headers), Ok("abc"));
        assert_eq!(bearer_token_of(&req(&["bearer  abc "]).headers), Ok("abc"));
        assert_eq!(bearer_token_of(&req(&[]).headers), Err(AuthError::Missing));
        assert_eq!(
            bearer_token_of(&req(&["Basic dXNlcjpwdw=="]).headers),
            Err(AuthError::Missing)
        );
        assert_eq!(
            bearer_token_of(&req(&["Bearer "]).headers),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            bearer_token_of(&req(&["Bearer a", "Bearer b"]).headers),
            Err(AuthError::Malformed)
        );
    }
}

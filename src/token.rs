//! Minting signed tokens from a local private key, for development and tests.

use std::path::Path;
use std::time::Duration;

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{path}: {message}")]
    Key { path: String, message: String },
    #[error("--claim {0:?}: expected name=value")]
    Claim(String),
    #[error("{0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// What goes into a token.
pub struct TokenSpec {
    pub alg: Algorithm,
    pub kid: Option<String>,
    pub typ: String,
    pub issuer: String,
    pub audience: Vec<String>,
    pub subject: String,
    pub roles: Vec<String>,
    pub scope: Option<String>,
    pub azp: Option<String>,
    /// Lifetime from `iat`; `None`: no `exp`.
    pub ttl: Option<Duration>,
    /// How long ago the token was issued (to make expired tokens).
    pub issued_ago: Duration,
    pub not_before_in: Option<Duration>,
    /// Extra claims as `name=value`; the value is JSON if it parses, else a string.
    pub claims: Vec<String>,
}

pub fn load_key(path: &Path, alg: Algorithm) -> Result<EncodingKey, TokenError> {
    let err = |message: String| TokenError::Key {
        path: path.display().to_string(),
        message,
    };
    let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    use jsonwebtoken::AlgorithmFamily::*;
    match alg.family() {
        Rsa => EncodingKey::from_rsa_pem(&pem),
        Ec => EncodingKey::from_ec_pem(&pem),
        Ed => EncodingKey::from_ed_pem(&pem),
        Hmac => Ok(EncodingKey::from_secret(
            pem.strip_suffix(b"\n").unwrap_or(&pem),
        )),
    }
    .map_err(|e| err(format!("not a {alg:?} key: {e}")))
}

pub fn mint(key: &EncodingKey, spec: &TokenSpec) -> Result<String, TokenError> {
    let now = crate::clock::unix_secs();
    let iat = now.saturating_sub(spec.issued_ago.as_secs());
    let mut claims = Map::new();
    claims.insert("iss".into(), spec.issuer.clone().into());
    claims.insert("sub".into(), spec.subject.clone().into());
    claims.insert(
        "aud".into(),
        match spec.audience.as_slice() {
            [one] => one.clone().into(),
            many => many.to_vec().into(),
        },
    );
    claims.insert("iat".into(), iat.into());
    if let Some(ttl) = spec.ttl {
        claims.insert("exp".into(), (iat + ttl.as_secs()).into());
    }
    if let Some(nbf) = spec.not_before_in {
        claims.insert("nbf".into(), (now + nbf.as_secs()).into());
    }
    claims.insert(
        "jti".into(),
        format!("{:x}", crate::clock::unix_nanos()).into(),
    );
    if !spec.roles.is_empty() {
        claims.insert(
            "realm_access".into(),
            serde_json::json!({ "roles": spec.roles }),
        );
    }
    if let Some(scope) = &spec.scope {
        claims.insert("scope".into(), scope.clone().into());
    }
    if let Some(azp) = &spec.azp {
        claims.insert("azp".into(), azp.clone().into());
    }
    for claim in &spec.claims {
        let (name, value) = claim
            .split_once('=')
            .ok_or_else(|| TokenError::Claim(claim.clone()))?;
        let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.into()));
        claims.insert(name.into(), value);
    }
    let mut header = Header::new(spec.alg);
    header.kid = spec.kid.clone();
    header.typ = Some(spec.typ.clone());
    Ok(jsonwebtoken::encode(&header, &claims, key)?)
}

/// The public JWKS for a private key, to serve or to put in a `jwks_file`.
pub fn jwks(key: &EncodingKey, alg: Algorithm, kid: &str) -> Result<String, TokenError> {
    let mut jwk = Jwk::from_encoding_key(key, alg)?;
    jwk.common.key_id = Some(kid.into());
    jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
    let set = JwkSet { keys: vec![jwk] };
    serde_json::to_string_pretty(&set)
        .map_err(|e| TokenError::Sign(jsonwebtoken::errors::Error::from(e)))
}

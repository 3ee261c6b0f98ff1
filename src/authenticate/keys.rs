//! Verification keys of one issuer and their lifecycle.
//!
//! Remote key sets are refreshed in the background (honouring `Cache-Control: max-age` within
//! bounds). A token with an unknown `kid` may trigger one refetch per cooldown, single-flight, so
//! a flood of made-up `kid`s costs the provider at most one request per cooldown. A failed fetch
//! never drops the last good keys.

use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

use super::fetch::{self, FetchError};
use crate::config::KeyRefreshConf;

/// Upper bound on what a provider can make the gateway hold.
const MAX_KEYS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyKind {
    fn accepts(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        matches!(
            (self, alg),
            (KeyKind::Rsa, RS256 | RS384 | RS512 | PS256 | PS384 | PS512)
                | (KeyKind::P256, ES256)
                | (KeyKind::P384, ES384)
                | (KeyKind::Ed25519, EdDSA)
        )
    }
}

struct VerifyKey {
    kid: Option<Box<str>>,
    alg: Option<Algorithm>,
    kind: KeyKind,
    key: DecodingKey,
}

/// Result of looking a key up for a token.
pub enum Lookup<'a> {
    Found(&'a DecodingKey),
    /// A key with this `kid` exists but its type or `alg` disagrees with the token's header.
    Mismatch,
    Unknown,
}

/// An immutable set of public keys.
pub struct KeySet {
    keys: Vec<VerifyKey>,
    /// SHA-256 of the document the keys came from: a refetch that returns the same document
    /// changes nothing, and so invalidates no verified token.
    digest: [u8; 32],
}

impl KeySet {
    /// Parses a JWKS document. Keys that cannot verify signatures (encryption keys, symmetric
    /// keys, unsupported curves) are skipped; symmetric keys are only ever taken from a secret.
    pub fn parse(document: &[u8]) -> Result<KeySet, String> {
        let doc: Value = serde_json::from_slice(document).map_err(|e| format!("not JSON: {e}"))?;
        let entries = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("no \"keys\" array")?;
        let mut keys = Vec::new();
        for entry in entries.iter().take(MAX_KEYS) {
            match parse_key(entry) {
                Ok(Some(key)) => keys.push(key),
                Ok(None) => {}
                Err(e) => log::warn!("skipping a JWKS key: {e}"),
            }
        }
        if keys.is_empty() {
            return Err("no usable signature keys".into());
        }
        use sha2::Digest;
        let digest = sha2::Sha256::digest(document).into();
        Ok(KeySet { keys, digest })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn find(&self, kid: Option<&str>, alg: Algorithm) -> Lookup<'_> {
        let fits = |k: &VerifyKey| k.kind.accepts(alg) && k.alg.is_none_or(|a| a == alg);
        match kid {
            Some(kid) => match self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)) {
                Some(k) if fits(k) => Lookup::Found(&k.key),
                Some(_) => Lookup::Mismatch,
                None => Lookup::Unknown,
            },
            // Without a `kid`, only an unambiguous key is acceptable.
            None => {
                let mut candidates = self.keys.iter().filter(|k| fits(k));
                match (candidates.next(), candidates.next()) {
                    (Some(k), None) => Lookup::Found(&k.key),
                    _ => Lookup::Unknown,
                }
            }
        }
    }

    fn contains_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

fn parse_key(entry: &Value) -> Result<Option<VerifyKey>, String> {
    let jwk: Jwk = serde_json::from_value(entry.clone()).map_err(|e| e.to_string())?;
    if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
        return Ok(None);
    }
    let alg = match jwk.common.key_algorithm {
        // An `alg` we cannot verify with (e.g. RSA-OAEP) marks an encryption key.
        Some(a) => match Algorithm::from_str(&a.to_string()) {
            Ok(a) => Some(a),
            Err(_) => return Ok(None),
        },
        None => None,
    };
    let kind = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => KeyKind::Rsa,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => KeyKind::P256,
            EllipticCurve::P384 => KeyKind::P384,
            _ => return Ok(None),
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            KeyKind::Ed25519
        }
        _ => return Ok(None),
    };
    if alg.is_some_and(|a| !kind.accepts(a)) {
        return Err(format!(
            "key {:?}: alg does not fit its key type",
            jwk.common.key_id
        ));
    }
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string())?;
    Ok(Some(VerifyKey {
        kid: jwk.common.key_id.map(Into::into),
        alg,
        kind,
        key,
    }))
}

/// Where an issuer's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A local JWKS file, read at load (and on reload).
    File,
    Url(String),
    /// An OIDC discovery document, whose `issuer` must equal the configured one.
    Discovery {
        url: String,
        issuer: String,
    },
}

/// Counters of one store, for metrics and tests.
#[derive(Debug, Default)]
pub struct KeyStats {
    pub fetches: AtomicU64,
    pub fetch_failures: AtomicU64,
    /// When keys were last loaded, Unix milliseconds; 0 until they are.
    pub loaded_at_unix_ms: AtomicU64,
}

struct Schedule {
    next_refresh: Instant,
    last_attempt: Option<Instant>,
    jwks_uri: Option<String>,
}

/// The keys of one issuer.
pub struct KeyStore {
    source: KeySource,
    refresh: KeyRefreshConf,
    keys: ArcSwapOption<KeySet>,
    /// Bumped each time the keys change; tokens verified under another generation are
    /// verified again.
    generation: AtomicU64,
    schedule: Mutex<Schedule>,
    fetch_lock: tokio::sync::Mutex<()>,
    pub stats: KeyStats,
}

impl KeyStore {
    /// A store for a local file, loaded now.
    pub fn from_file(path: &Path) -> Result<KeyStore, String> {
        let document = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::from_document(&document).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// A store holding the keys of a JWKS document, never fetched.
    pub fn from_document(document: &[u8]) -> Result<KeyStore, String> {
        let set = KeySet::parse(document).map_err(|e| e.to_string())?;
        let store = Self::remote(KeySource::File, KeyRefreshConf::default());
        store.install(set);
        store
            .stats
            .loaded_at_unix_ms
            .store(crate::clock::unix_millis(), Ordering::Relaxed);
        Ok(store)
    }

    /// A store for a remote source; it holds no keys until the first fetch.
    pub fn remote(source: KeySource, refresh: KeyRefreshConf) -> KeyStore {
        KeyStore {
            source,
            refresh,
            keys: ArcSwapOption::empty(),
            generation: AtomicU64::new(0),
            schedule: Mutex::new(Schedule {
                next_refresh: Instant::now(),
                last_attempt: None,
                jwks_uri: None,
            }),
            fetch_lock: tokio::sync::Mutex::new(()),
            stats: KeyStats::default(),
        }
    }

    pub fn source(&self) -> &KeySource {
        &self.source
    }

    pub fn refresh_conf(&self) -> &KeyRefreshConf {
        &self.refresh
    }

    /// The current keys; `None` until they were loaded once.
    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.keys.load_full()
    }

    /// Which keys are current. Read before the keys themselves, so that a token verified
    /// during a change is recorded under the older generation and verified again.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn install(&self, set: KeySet) {
        if self.current().is_some_and(|c| c.digest == set.digest) {
            return;
        }
        self.keys.store(Some(Arc::new(set)));
        self.generation.fetch_add(1, Ordering::Release);
    }

    fn is_remote(&self) -> bool {
        self.source != KeySource::File
    }

    fn schedule(&self) -> std::sync::MutexGuard<'_, Schedule> {
        // The lock guards plain data; a panic elsewhere cannot leave it inconsistent.
        self.schedule.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Called periodically by the background refresher.
    pub async fn refresh_if_due(&self) {
        if !self.is_remote() || Instant::now() < self.schedule().next_refresh {
            return;
        }
        let _guard = self.fetch_lock.lock().await;
        if Instant::now() >= self.schedule().next_refresh {
            self.fetch().await;
        }
    }

    /// A token names a `kid` this store does not have: refetch, at most once per cooldown.
    /// Concurrent callers wait for the one fetch in flight instead of starting their own.
    pub async fn refetch_for(&self, kid: &str) -> Option<Arc<KeySet>> {
        if !self.is_remote() || self.in_cooldown() {
            return None;
        }
        let _guard = self.fetch_lock.lock().await;
        if let Some(set) = self.current().filter(|s| s.contains_kid(kid)) {
            return Some(set);
        }
        if self.in_cooldown() {
            return None;
        }
        self.fetch().await;
        self.current()
    }

    fn in_cooldown(&self) -> bool {
        let cooldown = self.refresh.unknown_kid_cooldown;
        self.schedule()
            .last_attempt
            .is_some_and(|t| t.elapsed() < cooldown)
    }

    /// One fetch; the caller holds `fetch_lock`.
    async fn fetch(&self) {
        // A span only when a request waits for it (an unknown `kid`), not in the background.
        let span = crate::trace::child("jwks fetch");
        self.schedule().last_attempt = Some(Instant::now());
        self.stats.fetches.fetch_add(1, Ordering::Relaxed);
        let next = match self.fetch_keys().await {
            Ok((set, max_age)) => {
                log::info!("loaded {} keys from {}", set.len(), self.describe());
                self.install(set);
                self.stats
                    .loaded_at_unix_ms
                    .store(crate::clock::unix_millis(), Ordering::Relaxed);
                max_age.unwrap_or(self.refresh.refresh_interval).clamp(
                    self.refresh.min_refresh_interval,
                    self.refresh.max_refresh_interval,
                )
            }
            Err(e) => {
                span.fail(e.to_string());
                self.stats.fetch_failures.fetch_add(1, Ordering::Relaxed);
                let kept = if self.current().is_some() {
                    "keeping the last good keys"
                } else {
                    "no keys loaded yet"
                };
                log::warn!("fetching keys from {} failed: {e}; {kept}", self.describe());
                // Rediscover next time: the provider may have moved its JWKS.
                self.schedule().jwks_uri = None;
                self.refresh.min_refresh_interval
            }
        };
        self.schedule().next_refresh = Instant::now() + next;
    }

    fn describe(&self) -> &str {
        match &self.source {
            KeySource::File => "file",
            KeySource::Url(u) => u,
            KeySource::Discovery { url, .. } => url,
        }
    }

    async fn fetch_keys(&self) -> Result<(KeySet, Option<Duration>), FetchError> {
        let timeout = self.refresh.fetch_timeout;
        let jwks_uri = match &self.source {
            KeySource::File => return Err(FetchError::Jwks("file sources are not fetched".into())),
            KeySource::Url(url) => url.clone(),
            KeySource::Discovery { url, issuer } => {
                let cached = self.schedule().jwks_uri.clone();
                match cached {
                    Some(uri) => uri,
                    None => {
                        let uri = fetch::discover(url, issuer, "jwks_uri", timeout).await?;
                        self.schedule().jwks_uri = Some(uri.clone());
                        uri
                    }
                }
            }
        };
        let (body, max_age) = fetch::get(&jwks_uri, timeout).await?;
        let set = KeySet::parse(&body).map_err(FetchError::Jwks)?;
        Ok((set, max_age))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA_JWK: &str = r#"{"kty":"RSA","kid":"r1","alg":"RS256","use":"sig","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"}"#;
    const ENC_JWK: &str =
        r#"{"kty":"RSA","kid":"e1","alg":"RSA-OAEP","use":"enc","n":"sXch","e":"AQAB"}"#;
    const OCT_JWK: &str = r#"{"kty":"oct","kid":"h1","k":"c2VjcmV0"}"#;

    fn set(keys: &[&str]) -> Result<KeySet, String> {
        KeySet::parse(format!(r#"{{"keys":[{}]}}"#, keys.join(",")).as_bytes())
    }

    #[test]
    fn signature_keys_are_kept_and_others_skipped() {
        let s = set(&[RSA_JWK, ENC_JWK, OCT_JWK]).unwrap();
        assert_eq!(s.len(), 1);
        assert!(matches!(
            s.find(Some("r1"), Algorithm::RS256),
            Lookup::Found(_)
        ));
        assert!(matches!(s.find(None, Algorithm::RS256), Lookup::Found(_)));
        assert!(matches!(
            s.find(Some("h1"), Algorithm::HS256),
            Lookup::Unknown
        ));
    }

    #[test]
    fn key_must_agree_with_the_token_algorithm() {
        let s = set(&[RSA_JWK]).unwrap();
        assert!(matches!(
            s.find(Some("r1"), Algorithm::HS256),
            Lookup::Mismatch
        ));
        assert!(matches!(
            s.find(Some("r1"), Algorithm::RS384),
            Lookup::Mismatch
        ));
        assert!(matches!(
            s.find(Some("r1"), Algorithm::ES256),
            Lookup::Mismatch
        ));
        assert!(matches!(
            s.find(Some("zz"), Algorithm::RS256),
            Lookup::Unknown
        ));
    }

    #[test]
    fn documents_without_usable_keys_are_errors() {
        assert!(set(&[ENC_JWK]).is_err());
        assert!(KeySet::parse(b"[]").is_err());
        assert!(KeySet::parse(b"not json").is_err());
    }
}

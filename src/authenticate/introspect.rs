//! Token introspection (RFC 7662): asking the provider whether a token is active.
//!
//! Answers are remembered by the token's SHA-256: an `active` one until the token's `exp` or
//! the configured limit, whichever comes first, a refusal for a short while, an undecided one
//! (provider slow or down) not at all. Requests arriving while the same token is being asked
//! about wait for that one call (single flight) instead of making their own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use quick_cache::sync::Cache;
use serde_json::{Map, Value};

use super::cache::{Digest, Verified};
use super::fetch::{self, FetchError};
use super::AuthError;
use crate::config::{ClientAuthMethod, IntrospectionConf, IntrospectionMode};
use crate::metrics::{self, IntrospectionLookup};

/// Where the endpoint is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Fixed(String),
    /// `introspection_endpoint` of this discovery document, which must name `issuer`.
    Discovered {
        url: String,
        issuer: String,
    },
}

/// What is known of a token: it is active (with the identity read from the answer, for a
/// token that is not a JWT), or why it is refused.
pub type Answer = Result<Option<Arc<Verified>>, AuthError>;

#[derive(Clone)]
struct Entry {
    answer: Answer,
    answered_at: Instant,
    until: Instant,
}

/// The introspection client and answer cache of one issuer.
pub struct Introspector {
    conf: IntrospectionConf,
    secret: String,
    issuer_name: Arc<str>,
    endpoint: Endpoint,
    /// The discovered endpoint, once known.
    discovered: tokio::sync::Mutex<Option<String>>,
    answers: Cache<Digest, Entry>,
    slots: tokio::sync::Semaphore,
}

impl Introspector {
    pub fn new(
        conf: IntrospectionConf,
        secret: String,
        issuer_name: Arc<str>,
        endpoint: Endpoint,
    ) -> Self {
        Self {
            answers: Cache::new(conf.cache_max_entries.max(1)),
            slots: tokio::sync::Semaphore::new(conf.max_concurrent.max(1)),
            conf,
            secret,
            issuer_name,
            endpoint,
            discovered: tokio::sync::Mutex::new(None),
        }
    }

    /// Whether this introspector was made from the same settings, so a reload can keep it
    /// and what it remembers.
    pub fn same_as(&self, conf: &IntrospectionConf, secret: &str, endpoint: &Endpoint) -> bool {
        self.conf == *conf && self.secret == secret && self.endpoint == *endpoint
    }

    pub fn mode(&self) -> IntrospectionMode {
        self.conf.mode
    }

    /// Whether answers must carry an `aud` the issuer accepts.
    pub fn requires_audience(&self) -> bool {
        self.conf.require_audience
    }

    /// How often an open WebSocket's token is asked about again.
    pub fn websocket_recheck(&self) -> Option<Duration> {
        Some(self.conf.websocket_recheck).filter(|d| !d.is_zero())
    }

    pub fn cached(&self) -> usize {
        self.answers.len()
    }

    /// Whether `token` is active. `admit` turns an active answer into what the gateway
    /// accepts (or refuses) for this issuer.
    pub async fn check(
        &self,
        token: &str,
        key: &Digest,
        admit: impl FnOnce(&Map<String, Value>) -> Answer,
    ) -> Answer {
        let started = Instant::now();
        let issuer = &*self.issuer_name;
        if let Some(entry) = self.answers.get(key).filter(|e| e.until > started) {
            metrics::introspection_lookup(issuer, IntrospectionLookup::Hit);
            return entry.answer;
        }
        // Twice at most: a stale entry is dropped once, then a call is made or joined.
        for _ in 0..2 {
            match self.answers.get_value_or_guard_async(key).await {
                Ok(entry) if entry.until > Instant::now() || entry.answered_at >= started => {
                    metrics::introspection_lookup(issuer, IntrospectionLookup::Shared);
                    return entry.answer;
                }
                Ok(_) => {
                    self.answers.remove_if(key, |e| e.until <= Instant::now());
                }
                Err(guard) => {
                    metrics::introspection_lookup(issuer, IntrospectionLookup::Miss);
                    let entry = self.ask(token, admit).await;
                    let answer = entry.answer.clone();
                    let remembered = entry.until > entry.answered_at;
                    // Waiting requests get the answer even when it is not remembered.
                    let _ = guard.insert(entry);
                    if !remembered {
                        self.answers.remove(key);
                    }
                    return answer;
                }
            }
        }
        metrics::introspection_lookup(issuer, IntrospectionLookup::Miss);
        self.ask(token, admit).await.answer
    }

    /// One call to the provider, within the timeout, and how long its answer holds.
    async fn ask(&self, token: &str, admit: impl FnOnce(&Map<String, Value>) -> Answer) -> Entry {
        let span = crate::trace::child("introspection");
        let started = tokio::time::Instant::now();
        let deadline = started + self.conf.timeout;
        let slot = tokio::time::timeout_at(deadline, self.slots.acquire()).await;
        let response = match slot {
            Ok(Ok(_slot)) => Some(tokio::time::timeout_at(deadline, self.call(token)).await),
            _ => None,
        };
        let issuer = &*self.issuer_name;
        metrics::introspection_duration(issuer, started.elapsed());
        let answered_at = Instant::now();
        let undecided = |result: &'static str, reason: &dyn std::fmt::Display| {
            span.set("portcullis.introspection.result", result);
            span.fail(reason.to_string());
            metrics::introspection_call(issuer, result);
            log::warn!("introspection at issuer {issuer} failed: {reason}");
            Entry {
                answer: Err(AuthError::Undecided {
                    retry_after_secs: self.conf.retry_after.as_secs().clamp(1, 3600) as u32,
                }),
                answered_at,
                until: answered_at,
            }
        };
        let claims = match response {
            None => return undecided("busy", &"no free slot: max_concurrent calls in flight"),
            Some(Err(_)) => return undecided("timeout", &"no answer in time"),
            Some(Ok(Err(e))) => return undecided("error", &e),
            Some(Ok(Ok(claims))) => claims,
        };
        let active = claims.get("active") == Some(&Value::Bool(true));
        let answer = judge(&claims).and_then(|()| admit(&claims));
        let result = if active { "active" } else { "inactive" };
        span.set("portcullis.introspection.result", result);
        metrics::introspection_call(issuer, result);
        let until = match &answer {
            Ok(_) => {
                let exp = claims.get("exp").and_then(Value::as_u64);
                self.conf.cache_ttl.min(crate::clock::until_unix(exp))
            }
            Err(_) => self.conf.negative_cache_ttl,
        };
        let until = answered_at.checked_add(until).unwrap_or(answered_at);
        Entry {
            answer,
            answered_at,
            until,
        }
    }

    async fn call(&self, token: &str) -> Result<Map<String, Value>, FetchError> {
        let endpoint = self.endpoint().await?;
        let mut form = vec![("token", token), ("token_type_hint", "access_token")];
        let mut request = fetch::credentials_client()?
            .post(endpoint)
            .header(http::header::ACCEPT, "application/json");
        match self.conf.auth_method {
            ClientAuthMethod::ClientSecretBasic => {
                request = request.header(
                    http::header::AUTHORIZATION,
                    fetch::basic_credentials(&self.conf.client_id, &self.secret),
                );
            }
            ClientAuthMethod::ClientSecretPost => {
                form.push(("client_id", self.conf.client_id.as_str()));
                form.push(("client_secret", self.secret.as_str()));
            }
        }
        let response = request.form(&form).send().await?;
        let body = fetch::read_body(response).await?;
        serde_json::from_slice(&body).map_err(|e| FetchError::NotJson(e.to_string()))
    }

    async fn endpoint(&self) -> Result<String, FetchError> {
        match &self.endpoint {
            Endpoint::Fixed(url) => Ok(url.clone()),
            Endpoint::Discovered { url, issuer } => {
                let mut known = self.discovered.lock().await;
                if let Some(endpoint) = &*known {
                    return Ok(endpoint.clone());
                }
                let found =
                    fetch::discover(url, issuer, "introspection_endpoint", self.conf.timeout)
                        .await?;
                *known = Some(found.clone());
                Ok(found)
            }
        }
    }
}

/// Whether an answer vouches for an access token: active, and not a refresh or ID token.
pub(crate) fn judge(claims: &Map<String, Value>) -> Result<(), AuthError> {
    if claims.get("active") != Some(&Value::Bool(true)) {
        Err(AuthError::Inactive)
    } else if !is_access_token(claims) {
        Err(AuthError::InvalidClaim("not an access token"))
    } else {
        Ok(())
    }
}

/// A refresh or ID token is active too, but is no bearer token for an API. `token_type` is
/// optional (RFC 7662 §2.2); Keycloak writes `typ` instead.
fn is_access_token(claims: &Map<String, Value>) -> bool {
    let bearer = |field: &str| {
        claims
            .get(field)
            .and_then(Value::as_str)
            .is_none_or(|t| t.eq_ignore_ascii_case("bearer") || t == "access_token")
    };
    bearer("token_type") && bearer("typ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn only_access_tokens_pass() {
        assert!(is_access_token(&claims(json!({"active": true}))));
        assert!(is_access_token(&claims(
            json!({"active": true, "token_type": "Bearer"})
        )));
        assert!(!is_access_token(&claims(
            json!({"active": true, "token_type": "refresh_token"})
        )));
        assert!(!is_access_token(&claims(
            json!({"active": true, "typ": "Refresh"})
        )));
        assert!(!is_access_token(&claims(
            json!({"active": true, "token_type": "DPoP"})
        )));
    }
}

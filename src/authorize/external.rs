//! An external decision point (`[routes.ext_authz]`), asked after the local rules allow: an
//! HTTP authorization service in the shape of Envoy's ext_authz / nginx `auth_request` /
//! Traefik `forwardAuth`, or Open Policy Agent's data API.
//!
//! Calls are bounded (a timeout that includes waiting for one of `max_concurrent` slots, a
//! 64 KiB answer, no redirects); decisions are remembered for `cache_ttl` by the SHA-256 of
//! what they depend on, and identical questions in flight share one call.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderMap, Method};
use quick_cache::sync::Cache;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::authenticate::Principal;
use crate::config::{ExtAuthzConf, ExtAuthzKind, Invalid, KeyPath, OnError};
use crate::metrics;

/// Largest answer read from the decision point.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Headers set on the upstream request by an allowing decision.
pub type Headers = Arc<[(HeaderName, HeaderValue)]>;

/// A refusal the decision point wrote, relayed to the client as it is.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

/// What the decision point decided.
#[derive(Debug, Clone)]
pub enum Verdict {
    Allow(Headers),
    /// Refused, with the answer to relay (an HTTP service's 401 or 403).
    Deny(Arc<Answer>),
    /// Refused without an answer of its own (OPA): the gateway's 403.
    Forbid,
    /// No decision: a timeout, an error, an unexpected answer. `on_error` says what follows.
    Failed,
}

impl Verdict {
    /// `allow`, `deny` or `error`, for logs and metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            Verdict::Allow(_) => "allow",
            Verdict::Deny(_) | Verdict::Forbid => "deny",
            Verdict::Failed => "error",
        }
    }
}

/// What the decision depends on.
pub struct Question<'a> {
    pub route: &'a str,
    pub method: &'a Method,
    /// The path and query as the client sent them.
    pub path_and_query: &'a str,
    pub headers: &'a HeaderMap,
    /// The identity headers the upstream will get.
    pub identity: &'a [(HeaderName, HeaderValue)],
    pub principal: Option<&'a Principal>,
    /// The caller's token, if it has one: part of the cache key, never sent.
    pub token: Option<&'a str>,
    pub client_ip: IpAddr,
}

#[derive(Clone)]
struct Entry {
    verdict: Verdict,
    answered_at: Instant,
    until: Instant,
}

/// The decision point of one route.
pub struct ExtAuthz {
    kind: ExtAuthzKind,
    url: reqwest::Url,
    timeout: Duration,
    cache_ttl: Duration,
    on_error: OnError,
    send_headers: Vec<HeaderName>,
    upstream_headers: Vec<HeaderName>,
    client: reqwest::Client,
    slots: tokio::sync::Semaphore,
    decisions: Option<Cache<[u8; 32], Entry>>,
}

impl std::fmt::Debug for ExtAuthz {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExtAuthz")
            .field("url", &self.url.as_str())
            .finish()
    }
}

fn header_names(list: &[String], at: &KeyPath) -> Result<Vec<HeaderName>, Invalid> {
    list.iter()
        .enumerate()
        .map(|(i, n)| {
            HeaderName::try_from(n.as_str())
                .map_err(|_| Invalid::new(at.index(i), format!("{n:?} is not a header name")))
        })
        .collect()
}

impl ExtAuthz {
    pub fn compile(conf: &ExtAuthzConf, at: &KeyPath) -> Result<ExtAuthz, Invalid> {
        let url = reqwest::Url::parse(&conf.url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| Invalid::new(at.key("url"), "must be an http:// or https:// URL"))?;
        if conf.timeout.is_zero() {
            return Err(Invalid::new(at.key("timeout"), "must be above zero"));
        }
        if conf.max_concurrent == 0 {
            return Err(Invalid::new(at.key("max_concurrent"), "must be at least 1"));
        }
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(conf.max_concurrent)
            .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Invalid::new(at.key("url"), format!("cannot build a client: {e}")))?;
        let decisions = (!conf.cache_ttl.is_zero() && conf.cache_max_entries > 0)
            .then(|| Cache::new(conf.cache_max_entries));
        Ok(ExtAuthz {
            kind: conf.kind,
            url,
            timeout: conf.timeout,
            cache_ttl: conf.cache_ttl,
            on_error: conf.on_error,
            send_headers: header_names(&conf.send_headers, &at.key("send_headers"))?,
            upstream_headers: header_names(&conf.upstream_headers, &at.key("upstream_headers"))?,
            client,
            slots: tokio::sync::Semaphore::new(conf.max_concurrent),
            decisions,
        })
    }

    pub fn on_error(&self) -> OnError {
        self.on_error
    }

    /// The decision for `q`: remembered, shared with an identical question in flight, or
    /// asked.
    pub async fn decide(&self, q: &Question<'_>) -> Verdict {
        let Some(cache) = &self.decisions else {
            metrics::ext_authz_lookup(q.route, "uncached");
            return self.ask(q).await.verdict;
        };
        let key = self.key(q);
        let started = Instant::now();
        if let Some(entry) = cache.get(&key).filter(|e| e.until > started) {
            metrics::ext_authz_lookup(q.route, "hit");
            return entry.verdict;
        }
        // Twice at most: a stale entry is dropped once, then a call is made or joined.
        for _ in 0..2 {
            match cache.get_value_or_guard_async(&key).await {
                Ok(entry) if entry.until > Instant::now() || entry.answered_at >= started => {
                    metrics::ext_authz_lookup(q.route, "shared");
                    return entry.verdict;
                }
                Ok(_) => {
                    cache.remove_if(&key, |e| e.until <= Instant::now());
                }
                Err(guard) => {
                    metrics::ext_authz_lookup(q.route, "miss");
                    let entry = self.ask(q).await;
                    let verdict = entry.verdict.clone();
                    let remembered = entry.until > entry.answered_at;
                    // Waiting requests get the verdict even when it is not remembered.
                    let _ = guard.insert(entry);
                    if !remembered {
                        cache.remove(&key);
                    }
                    return verdict;
                }
            }
        }
        metrics::ext_authz_lookup(q.route, "miss");
        self.ask(q).await.verdict
    }

    /// What a decision depends on, hashed in one pass: the caller (its token, or its address
    /// without one), the route, the request line and the headers sent along. The token is
    /// hashed with the rest rather than first on its own: it is most of the bytes.
    fn key(&self, q: &Question<'_>) -> [u8; 32] {
        let mut h = Sha256::new();
        match q.token {
            Some(t) => h.update(t),
            None => h.update(q.client_ip.to_string()),
        }
        for part in [q.route, q.method.as_str(), q.path_and_query] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        for name in &self.send_headers {
            for v in q.headers.get_all(name) {
                h.update((v.len() as u64).to_be_bytes());
                h.update(v.as_bytes());
            }
            h.update([0xff]);
        }
        h.finalize().into()
    }

    async fn ask(&self, q: &Question<'_>) -> Entry {
        let started = tokio::time::Instant::now();
        let deadline = started + self.timeout;
        let slot = tokio::time::timeout_at(deadline, self.slots.acquire()).await;
        let verdict = match slot {
            Ok(Ok(_slot)) => match tokio::time::timeout_at(deadline, self.call(q)).await {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => {
                    log::warn!("ext_authz of route {} at {}: {e}", q.route, self.url);
                    Verdict::Failed
                }
                Err(_) => {
                    log::warn!(
                        "ext_authz of route {} at {}: no answer in time",
                        q.route,
                        self.url
                    );
                    Verdict::Failed
                }
            },
            _ => {
                log::warn!("ext_authz of route {}: no free slot in time", q.route);
                Verdict::Failed
            }
        };
        metrics::ext_authz_call(q.route, verdict.outcome(), started.elapsed());
        let answered_at = Instant::now();
        let until = match verdict {
            Verdict::Failed => answered_at,
            _ => answered_at
                .checked_add(self.cache_ttl)
                .unwrap_or(answered_at),
        };
        Entry {
            verdict,
            answered_at,
            until,
        }
    }

    async fn call(&self, q: &Question<'_>) -> Result<Verdict, String> {
        match self.kind {
            ExtAuthzKind::Http => self.ask_service(q).await,
            ExtAuthzKind::Opa => self.ask_opa(q).await,
        }
    }

    /// Envoy's ext_authz HTTP service: the request line and chosen headers, no body.
    async fn ask_service(&self, q: &Question<'_>) -> Result<Verdict, String> {
        let mut url = self.url.clone();
        let (path, query) = q
            .path_and_query
            .split_once('?')
            .map_or((q.path_and_query, None), |(p, q)| (p, Some(q)));
        let base = url.path().trim_end_matches('/').to_string();
        url.set_path(&format!("{base}{path}"));
        url.set_query(query);
        let mut request = self.client.request(q.method.clone(), url);
        for name in &self.send_headers {
            for v in q.headers.get_all(name) {
                request = request.header(name, v);
            }
        }
        for (name, value) in q.identity {
            request = request.header(name, value);
        }
        request = request
            .header("x-forwarded-method", q.method.as_str())
            .header("x-forwarded-uri", q.path_and_query)
            .header("x-forwarded-for", q.client_ip.to_string());
        let response = request.send().await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = read(response).await?;
        match status {
            200..=299 => Ok(Verdict::Allow(self.pick(&headers))),
            401 | 403 => {
                let mut relayed = Vec::new();
                for name in [CONTENT_TYPE, WWW_AUTHENTICATE] {
                    if let Some(v) = headers.get(&name) {
                        relayed.push((name, v.clone()));
                    }
                }
                Ok(Verdict::Deny(Arc::new(Answer {
                    status,
                    headers: relayed,
                    body,
                })))
            }
            s => Err(format!("answered HTTP {s}")),
        }
    }

    /// OPA's data API: `{"input": …}` in, `{"result": …}` out.
    async fn ask_opa(&self, q: &Question<'_>) -> Result<Verdict, String> {
        let mut headers = serde_json::Map::new();
        for name in &self.send_headers {
            if let Some(v) = q.headers.get(name).and_then(|v| v.to_str().ok()) {
                headers.insert(name.as_str().into(), v.into());
            }
        }
        let (path, query) = q
            .path_and_query
            .split_once('?')
            .map_or((q.path_and_query, ""), |(p, q)| (p, q));
        let p = q.principal;
        let input = json!({
            "route": q.route,
            "method": q.method.as_str(),
            "path": path,
            "segments": path.split('/').filter(|s| !s.is_empty()).collect::<Vec<_>>(),
            "query": query,
            "headers": headers,
            "client_ip": q.client_ip.to_string(),
            "caller": p.map(|p| json!({
                "issuer": &*p.issuer,
                "subject": p.subject,
                "kind": p.kind.as_str(),
                "client_id": p.client_id,
                "tenant": p.tenant,
                "roles": p.roles,
                "scopes": p.scopes,
            })),
        });
        let body = serde_json::to_vec(&json!({ "input": input })).map_err(|e| e.to_string())?;
        let response = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        if !(200..=299).contains(&status) {
            return Err(format!("answered HTTP {status}"));
        }
        let answer: Value =
            serde_json::from_slice(&read(response).await?).map_err(|e| format!("not JSON: {e}"))?;
        // An undefined rule answers `{}`: no decision to allow, so a refusal.
        match answer.get("result") {
            None | Some(Value::Bool(false)) => Ok(Verdict::Forbid),
            Some(Value::Bool(true)) => Ok(Verdict::Allow(Arc::from([]))),
            Some(Value::Object(result)) => match result.get("allow") {
                Some(Value::Bool(true)) => {
                    let mut headers = HeaderMap::new();
                    if let Some(Value::Object(h)) = result.get("headers") {
                        for (k, v) in h {
                            let (Ok(k), Some(v)) = (HeaderName::try_from(k.as_str()), v.as_str())
                            else {
                                return Err(format!("result.headers.{k} is not a header"));
                            };
                            let v = HeaderValue::from_str(v)
                                .map_err(|_| format!("result.headers.{k} is not a header value"))?;
                            headers.insert(k, v);
                        }
                    }
                    Ok(Verdict::Allow(self.pick(&headers)))
                }
                Some(Value::Bool(false)) | None => Ok(Verdict::Forbid),
                Some(_) => Err("result.allow is not a boolean".into()),
            },
            Some(_) => Err("result is neither a boolean nor an object".into()),
        }
    }

    /// The headers of an allowing answer that go upstream: those named in `upstream_headers`.
    fn pick(&self, headers: &HeaderMap) -> Headers {
        self.upstream_headers
            .iter()
            .filter_map(|n| Some((n.clone(), headers.get(n)?.clone())))
            .collect()
    }
}

/// An answer's body, refused past [`MAX_ANSWER_BYTES`].
async fn read(mut response: reqwest::Response) -> Result<Bytes, String> {
    if response
        .content_length()
        .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
    {
        return Err("answer too large".into());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err("answer too large".into());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.into())
}

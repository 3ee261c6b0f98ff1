//! The admin listener: what operators and load balancers ask, never reachable through the
//! proxy listeners.
//!
//! * `GET /metrics`: Prometheus text format.
//! * `GET /healthz`: 200 while the process serves at all.
//! * `GET /readyz`: 200 when the gateway should take traffic; 503 with the reasons while an
//!   issuer's keys were never loaded, an upstream's health checks find no target up, or the
//!   process is draining to stop.
//! * `GET /websockets`: how many WebSockets are open.
//! * `POST /websockets/evict` with `{"subject": "…"}`: ends that subject's WebSockets (Close
//!   4003) and browser sessions here and, when Redis is configured, on every other instance.
//! * `POST /sessions/revoke` with `{"jti": "…"}` or `{"sub": "…"}`: refuses that token, or
//!   every token of that anonymous session (`[token_service]`), here and, when Redis is
//!   configured, on every other instance; a session's WebSockets are closed (4003).
//! * `POST /explain` with `{"method", "url", "headers": ["Name: value"], "token" | "claims",
//!   "client_ip"}`: what the running config would do with that request, as JSON.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;

use super::eviction::Eviction;
use super::lifecycle::Lifecycle;
use super::revocations::{Revocations, RevokeError};
use crate::metrics;
use crate::snapshot::explain::QuestionText;
use crate::snapshot::SharedSnapshot;

/// Largest request body the admin listener reads: room for a token and its headers.
const MAX_BODY: usize = 16 * 1024;

pub struct Admin {
    config: SharedSnapshot,
    lifecycle: Arc<Lifecycle>,
    eviction: Eviction,
    revocations: Revocations,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EvictRequest {
    subject: String,
}

fn json(status: StatusCode, body: serde_json::Value) -> (StatusCode, Vec<u8>) {
    (status, body.to_string().into_bytes())
}

impl Admin {
    pub fn new(
        config: SharedSnapshot,
        lifecycle: Arc<Lifecycle>,
        eviction: Eviction,
        revocations: Revocations,
    ) -> Self {
        Self {
            config,
            lifecycle,
            eviction,
            revocations,
        }
    }

    async fn revoke(&self, session: &mut ServerSession) -> (StatusCode, Vec<u8>) {
        let body = match read_post(session).await {
            Ok(b) => b,
            Err(answer) => return answer,
        };
        let what = match serde_json::from_slice::<crate::token_service::Revocation>(&body) {
            Ok(w) => w,
            Err(e) => {
                let detail = format!("expected {{\"jti\": \"…\"}} or {{\"sub\": \"…\"}}: {e}");
                let e = serde_json::json!({"error": "invalid_body", "detail": detail});
                return json(StatusCode::BAD_REQUEST, e);
            }
        };
        let (kind, value) = (what.kind(), what.value().to_string());
        match self.revocations.revoke(what).await {
            Ok(done) => {
                log::info!(
                    "session revocation of {kind} {value:?}: {} WebSockets closed here, \
                     published: {:?}",
                    done.websockets_closed,
                    done.published
                );
                let body = serde_json::json!({
                    kind: value,
                    "websockets_closed": done.websockets_closed,
                    "published": done.published,
                });
                json(StatusCode::OK, body)
            }
            Err(e) => {
                let status = match e {
                    RevokeError::NoService => StatusCode::NOT_FOUND,
                    RevokeError::BadValue => StatusCode::BAD_REQUEST,
                    RevokeError::Full(_) => StatusCode::INSUFFICIENT_STORAGE,
                };
                let e = serde_json::json!({"error": "not_revoked", "detail": e.to_string()});
                json(status, e)
            }
        }
    }

    async fn evict(&self, session: &mut ServerSession) -> (StatusCode, Vec<u8>) {
        let body = match read_post(session).await {
            Ok(b) => b,
            Err(answer) => return answer,
        };
        let request = match serde_json::from_slice::<EvictRequest>(&body) {
            Ok(r) if !r.subject.is_empty() => r,
            Ok(_) => {
                let e = serde_json::json!({"error": "invalid_body", "detail": "subject is empty"});
                return json(StatusCode::BAD_REQUEST, e);
            }
            Err(e) => {
                let detail = format!("expected {{\"subject\": \"…\"}}: {e}");
                let e = serde_json::json!({"error": "invalid_body", "detail": detail});
                return json(StatusCode::BAD_REQUEST, e);
            }
        };
        let evicted = self.eviction.evict(&request.subject).await;
        log::info!(
            "websocket eviction of {:?}: {} closed here, published: {:?}",
            request.subject,
            evicted.closed,
            evicted.published
        );
        let body = serde_json::json!({
            "subject": request.subject,
            "closed": evicted.closed,
            "published": evicted.published,
            "sessions_ended": evicted.sessions_ended,
        });
        json(StatusCode::OK, body)
    }

    async fn explain(&self, session: &mut ServerSession) -> (StatusCode, Vec<u8>) {
        let body = match read_post(session).await {
            Ok(b) => b,
            Err(answer) => return answer,
        };
        let question = serde_json::from_slice::<QuestionText>(&body)
            .map_err(|e| e.to_string())
            .and_then(QuestionText::parse);
        let question = match question {
            Ok(q) => q,
            Err(detail) => {
                let e = serde_json::json!({"error": "invalid_body", "detail": detail});
                return json(StatusCode::BAD_REQUEST, e);
            }
        };
        let snapshot = self.config.load_full();
        let explanation = snapshot.explain(&question).await;
        match serde_json::to_value(&explanation) {
            Ok(v) => json(StatusCode::OK, v),
            Err(e) => json(
                StatusCode::INTERNAL_SERVER_ERROR,
                serde_json::json!({"error": e.to_string()}),
            ),
        }
    }

    fn readiness(&self) -> (StatusCode, Vec<u8>) {
        let mut reasons = Vec::new();
        if self.lifecycle.is_draining() {
            reasons.push("draining".to_string());
        }
        reasons.extend(self.config.load().unready_reasons());
        if reasons.is_empty() {
            (StatusCode::OK, br#"{"status":"ready"}"#.to_vec())
        } else {
            let body = serde_json::json!({ "status": "not_ready", "reasons": reasons });
            (
                StatusCode::SERVICE_UNAVAILABLE,
                body.to_string().into_bytes(),
            )
        }
    }
}

const JSON: &str = "application/json";

/// The body of a POST, bounded; otherwise the answer to give.
async fn read_post(session: &mut ServerSession) -> Result<Vec<u8>, (StatusCode, Vec<u8>)> {
    if session.req_header().method != http::Method::POST {
        let e = serde_json::json!({"error": "method_not_allowed", "allowed": "POST"});
        return Err(json(StatusCode::METHOD_NOT_ALLOWED, e));
    }
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) if body.len() + chunk.len() <= MAX_BODY => {
                body.extend_from_slice(&chunk);
            }
            Ok(Some(_)) => {
                let e = serde_json::json!({"error": "body_too_large", "limit": MAX_BODY});
                return Err(json(StatusCode::PAYLOAD_TOO_LARGE, e));
            }
            Ok(None) => return Ok(body),
            Err(e) => {
                let e = serde_json::json!({"error": "unreadable_body", "detail": e.to_string()});
                return Err(json(StatusCode::BAD_REQUEST, e));
            }
        }
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path();
        let (status, content_type, body) = match path {
            "/metrics" => (
                StatusCode::OK,
                "text/plain; version=0.0.4",
                metrics::render().into_bytes(),
            ),
            "/healthz" => (StatusCode::OK, JSON, br#"{"status":"ok"}"#.to_vec()),
            "/readyz" => {
                let (status, body) = self.readiness();
                (status, JSON, body)
            }
            "/websockets" => {
                let open = self.eviction.registry().len();
                (
                    StatusCode::OK,
                    JSON,
                    serde_json::json!({ "open": open }).to_string().into_bytes(),
                )
            }
            "/websockets/evict" => {
                let (status, body) = self.evict(session).await;
                (status, JSON, body)
            }
            "/explain" => {
                let (status, body) = self.explain(session).await;
                (status, JSON, body)
            }
            "/sessions/revoke" => {
                let (status, body) = self.revoke(session).await;
                (status, JSON, body)
            }
            _ => (StatusCode::NOT_FOUND, "text/plain", b"not found\n".to_vec()),
        };
        let built = Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, content_type)
            .header(http::header::CONTENT_LENGTH, body.len())
            .header(http::header::CACHE_CONTROL, "no-store")
            .body(body);
        built.unwrap_or_else(|_| Response::new(Vec::new()))
    }
}

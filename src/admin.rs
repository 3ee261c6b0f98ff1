//! The admin listener: what operators and load balancers ask, never reachable through the
//! proxy listeners.
//!
//! * `GET /metrics`: Prometheus text format.
//! * `GET /healthz`: 200 while the process serves at all.
//! * `GET /readyz`: 200 when the gateway should take traffic; 503 with the reasons while an
//!   issuer's keys were never loaded, an upstream's health checks find no target up, or the
//!   process is draining to stop.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;

use crate::lifecycle::Lifecycle;
use crate::metrics;
use crate::snapshot::SharedSnapshot;

pub struct Admin {
    config: SharedSnapshot,
    lifecycle: Arc<Lifecycle>,
}

impl Admin {
    pub fn new(config: SharedSnapshot, lifecycle: Arc<Lifecycle>) -> Self {
        Self { config, lifecycle }
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

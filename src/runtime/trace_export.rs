//! Sends finished spans to the OTLP collector in batches, off the request path. A batch the
//! collector refuses or does not take in time is dropped and counted, not retried: the queue
//! stays bounded whatever the collector does.

use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use crate::metrics;
use crate::snapshot::SharedSnapshot;
use crate::trace::Tracer;

/// How often a config without `[tracing]` is looked at again.
const IDLE: Duration = Duration::from_secs(1);
/// Once shutdown began, how often spans of the requests still draining are sent.
const DRAINING: Duration = Duration::from_millis(100);

pub struct TraceExporter {
    config: SharedSnapshot,
}

impl TraceExporter {
    pub fn new(config: SharedSnapshot) -> Self {
        Self { config }
    }
}

async fn export(client: &reqwest::Client, tracer: &Tracer) {
    let (endpoint, timeout) = tracer.endpoint();
    while let Some((body, count)) = tracer.batch() {
        let sent = client
            .post(endpoint)
            .timeout(timeout)
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .body(body)
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => metrics::trace_spans_exported(count),
            Ok(r) => {
                log::warn!("trace export to {endpoint}: {}", r.status());
                metrics::trace_spans_dropped("export_failed", count);
            }
            Err(e) => {
                log::warn!("trace export to {endpoint}: {e}");
                metrics::trace_spans_dropped("export_failed", count);
            }
        }
    }
}

#[async_trait]
impl BackgroundService for TraceExporter {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let client = match reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                log::error!("tracing: no HTTP client for the exporter: {e}");
                return;
            }
        };
        let mut draining = false;
        loop {
            // The current snapshot each time: a reload may add, move or remove the collector.
            let snapshot = self.config.load_full();
            let Some(tracer) = snapshot.tracer.as_ref() else {
                tokio::time::sleep(IDLE).await;
                continue;
            };
            if draining {
                tokio::time::sleep(DRAINING).await;
            } else {
                tokio::select! {
                    _ = shutdown.changed() => draining = true,
                    _ = tracer.wait() => {}
                }
            }
            export(&client, tracer).await;
        }
    }
}

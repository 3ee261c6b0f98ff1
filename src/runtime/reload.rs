//! Configuration reload on SIGHUP: validate everything, then swap atomically, or keep the old.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::signal::unix::{signal, SignalKind};

use sd_notify::NotifyState;

use super::config_metrics;
use super::lifecycle::notify;
use crate::metrics;
use crate::snapshot::{SharedSnapshot, Snapshot};

/// Installs a SIGHUP handler at once, before anything else starts: the default action of
/// SIGHUP would end the process. Signals that arrive before the reloader runs are remembered.
pub fn catch_sighup() -> std::io::Result<Arc<AtomicBool>> {
    let pending = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, pending.clone())?;
    Ok(pending)
}

pub struct Reloader {
    path: PathBuf,
    config: SharedSnapshot,
    early: Arc<AtomicBool>,
}

impl Reloader {
    pub fn new(path: PathBuf, config: SharedSnapshot, early: Arc<AtomicBool>) -> Self {
        Self {
            path,
            config,
            early,
        }
    }

    /// Loads the file and swaps it in; a bad file leaves the running config untouched.
    /// Requests already running keep the snapshot they started with.
    pub fn reload(&self) -> bool {
        let started = Instant::now();
        notify(&[NotifyState::Reloading]);
        let current = self.config.load_full();
        let loaded = Snapshot::load(&self.path, Some(&current)).and_then(|mut next| {
            next.open_logs(Some(&current))?;
            Ok(next)
        });
        let applied = match loaded {
            Ok(next) => {
                for setting in current.server.restart_only_changes(&next.server) {
                    log::warn!("reload: {setting} changed; it takes effect only after a restart");
                }
                self.config.store(Arc::new(next));
                let generation = config_metrics::next_generation();
                log::info!(
                    "reload: {} applied as generation {generation} in {:.1} ms",
                    self.path.display(),
                    started.elapsed().as_secs_f64() * 1000.0
                );
                true
            }
            Err(e) => {
                log::error!("reload: keeping the running config: {e}");
                false
            }
        };
        metrics::reload(applied, started.elapsed());
        notify(&[NotifyState::Ready]);
        applied
    }
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot listen for SIGHUP, reload is off: {e}");
                return;
            }
        };
        if self.early.swap(false, Ordering::Relaxed) {
            self.reload();
        }
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = hangups.recv() => {
                    self.early.store(false, Ordering::Relaxed);
                    self.reload();
                }
            }
        }
    }
}

//! Target health: what probes found, and the probe itself. The runtime decides when to probe.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{HealthCheckConf, HealthCheckKind};

/// Health of one target, as probes have found it.
#[derive(Debug)]
pub struct TargetHealth {
    up: AtomicBool,
    /// Probes in a row that disagreed with `up`.
    streak: AtomicU32,
}

impl Default for TargetHealth {
    fn default() -> Self {
        Self {
            up: AtomicBool::new(true),
            streak: AtomicU32::new(0),
        }
    }
}

impl TargetHealth {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Records one probe; returns the new state when it changed.
    pub fn record(&self, ok: bool, conf: &HealthCheckConf) -> Option<bool> {
        if ok == self.is_up() {
            self.streak.store(0, Ordering::Relaxed);
            return None;
        }
        let streak = self.streak.fetch_add(1, Ordering::Relaxed) + 1;
        let needed = if ok { conf.rise } else { conf.fall };
        if streak >= needed.max(1) {
            self.up.store(ok, Ordering::Relaxed);
            self.streak.store(0, Ordering::Relaxed);
            Some(ok)
        } else {
            None
        }
    }

    pub fn copy_from(&self, other: &TargetHealth) {
        self.up.store(other.is_up(), Ordering::Relaxed);
    }
}

/// One probe of `addr`: `Err` says why it failed. HTTP probes are plain HTTP/1.1 with the
/// target's address as `Host`.
pub async fn probe(addr: SocketAddr, conf: &HealthCheckConf) -> Result<(), String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    if conf.kind == HealthCheckKind::Tcp {
        return Ok(());
    }
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: portcullis-health-check\r\nConnection: close\r\n\r\n",
        conf.path
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    // The status line is all that matters; read a bounded amount.
    let mut buf = [0u8; 512];
    let mut len = 0;
    while len < buf.len() && !buf[..len].windows(2).any(|w| w == b"\r\n") {
        let n = stream
            .read(&mut buf[len..])
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        len += n;
    }
    let line = String::from_utf8_lossy(&buf[..len]);
    let status: Option<u16> = line.split(' ').nth(1).and_then(|s| s.parse().ok());
    match status {
        Some(s) if s == conf.expect_status => Ok(()),
        Some(s) => Err(format!("status {s}")),
        None => Err("no HTTP status line".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rise_and_fall_need_streaks() {
        let conf = HealthCheckConf {
            kind: HealthCheckKind::Tcp,
            path: "/".into(),
            expect_status: 200,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
        };
        let h = TargetHealth::default();
        assert_eq!(h.record(false, &conf), None);
        assert_eq!(h.record(false, &conf), None);
        assert_eq!(h.record(true, &conf), None, "a success breaks the streak");
        assert_eq!(h.record(false, &conf), None);
        assert_eq!(h.record(false, &conf), None);
        assert_eq!(h.record(false, &conf), Some(false));
        assert!(!h.is_up());
        assert_eq!(h.record(true, &conf), None);
        assert_eq!(h.record(true, &conf), Some(true));
        assert!(h.is_up());
    }
}

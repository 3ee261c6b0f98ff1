//! `[server]` and `[admin]`: settings read only when the process starts.

use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{Config, EdgeTlsConf, Invalid, KeyPath};
use crate::tls::EdgeTls;

/// Settings that take effect only at start.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: Vec<SocketAddr>,
    pub threads: usize,
    pub work_stealing: bool,
    pub grace_period: Duration,
    pub drain_delay: Duration,
    /// Longest idle wait of a keep-alive connection for its next request, in seconds.
    pub keepalive_timeout_secs: u64,
    /// Most client connections open at once on each listener.
    pub max_connections: usize,
    /// Request head limits: bytes, headers, and the target's length.
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_uri_length: usize,
    /// Largest request body, for routes that set none.
    pub max_body_size: u64,
    /// How long a buffered request body may take to arrive.
    pub body_timeout: Duration,
    pub pid_file: String,
    pub upgrade_sock: String,
    /// The admin listener (`/metrics`).
    pub admin_listen: Option<SocketAddr>,
    /// HTTPS listeners and their TLS setup.
    pub tls_listen: Vec<SocketAddr>,
    pub tls: Option<EdgeTls>,
    /// HTTP/2 by prior knowledge on the plain listeners.
    pub h2c: bool,
    /// The `[server.tls]` table as written, to tell whether a reload changed it.
    pub tls_conf: Option<EdgeTlsConf>,
}

fn addresses(list: &[String], at: &KeyPath) -> Result<Vec<SocketAddr>, Invalid> {
    if list.is_empty() {
        return Err(Invalid::new(at.clone(), "at least one address is needed"));
    }
    list.iter()
        .map(|a| {
            a.parse::<SocketAddr>()
                .map_err(|_| Invalid::new(at.clone(), format!("{a:?} is not an ip:port address")))
        })
        .collect()
}

impl ServerSettings {
    pub fn compile(config: &Config, relative: impl Fn(&Path) -> PathBuf) -> Result<Self, Invalid> {
        let s = &config.server;
        let at = KeyPath::root().key("server");
        let listen = addresses(&s.listen, &at.key("listen"))?;
        if s.threads == 0 {
            return Err(Invalid::new(at.key("threads"), "must be at least 1"));
        }
        if s.body_timeout.is_zero() {
            return Err(Invalid::new(at.key("body_timeout"), "must be above zero"));
        }
        let keepalive_timeout_secs = s.keepalive_timeout.as_secs();
        if keepalive_timeout_secs == 0 || s.keepalive_timeout.subsec_nanos() != 0 {
            return Err(Invalid::new(
                at.key("keepalive_timeout"),
                "must be whole seconds, at least 1s",
            ));
        }
        for (key, value) in [
            ("max_header_bytes", s.max_header_bytes),
            ("max_headers", s.max_headers),
            ("max_uri_length", s.max_uri_length),
        ] {
            if value == 0 {
                return Err(Invalid::new(at.key(key), "must be at least 1"));
            }
        }
        if s.max_connections == 0 {
            return Err(Invalid::new(
                at.key("max_connections"),
                "must be at least 1",
            ));
        }
        let (tls_listen, tls) = match &s.tls {
            None => (Vec::new(), None),
            Some(t) => {
                let at = at.key("tls");
                let listen = addresses(&t.listen, &at.key("listen"))?;
                (listen, Some(EdgeTls::compile(t, &at, relative)?))
            }
        };
        let admin_listen = match &config.admin.listen {
            None => None,
            Some(a) => Some(a.parse::<SocketAddr>().map_err(|_| {
                let at = KeyPath::root().key("admin").key("listen");
                Invalid::new(at, format!("{a:?} is not an ip:port address"))
            })?),
        };
        Ok(ServerSettings {
            listen,
            threads: s.threads,
            work_stealing: s.work_stealing,
            grace_period: s.grace_period,
            drain_delay: s.drain_delay,
            keepalive_timeout_secs,
            max_connections: s.max_connections,
            max_header_bytes: s.max_header_bytes,
            max_headers: s.max_headers,
            max_uri_length: s.max_uri_length,
            max_body_size: s.max_body_size,
            body_timeout: s.body_timeout,
            pid_file: s.pid_file.clone(),
            upgrade_sock: s.upgrade_sock.clone(),
            admin_listen,
            tls_listen,
            tls,
            h2c: s.h2c,
            tls_conf: s.tls.clone(),
        })
    }

    /// Settings read only at start that differ in `next`, by their keys.
    pub fn restart_only_changes(&self, next: &ServerSettings) -> Vec<&'static str> {
        let mut changed = Vec::new();
        if self.listen != next.listen {
            changed.push("server.listen");
        }
        if self.threads != next.threads {
            changed.push("server.threads");
        }
        if self.work_stealing != next.work_stealing {
            changed.push("server.work_stealing");
        }
        if self.grace_period != next.grace_period || self.drain_delay != next.drain_delay {
            changed.push("server.grace_period / server.drain_delay");
        }
        if self.pid_file != next.pid_file || self.upgrade_sock != next.upgrade_sock {
            changed.push("server.pid_file / server.upgrade_sock");
        }
        if self.admin_listen != next.admin_listen {
            changed.push("admin.listen");
        }
        if self.h2c != next.h2c {
            changed.push("server.h2c");
        }
        if self.tls_listen != next.tls_listen || self.tls_conf != next.tls_conf {
            changed.push("server.tls");
        }
        changed
    }
}

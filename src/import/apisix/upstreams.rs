//! Upstreams: inline, by id, or a service's; each distinct one written once.

use serde_yaml::Value;

use super::{number, slug, text, Output, Source};
use crate::import::toml_out::{seconds, string, strings, Doc};

impl Output {
    /// The name of the route's upstream, written once per distinct definition.
    pub(super) fn upstream_of(
        &mut self,
        id: &str,
        name: &str,
        r: &Value,
        service: Option<&Value>,
        source: &Source,
        notes: &mut Vec<String>,
    ) -> String {
        let by_id = |holder: &Value| {
            text(holder, "upstream_id").and_then(|u| source.upstreams.get(&u).map(|v| (u, *v)))
        };
        let (base, conf) = match (r.get("upstream"), by_id(r), service) {
            (Some(u), _, _) => (target_name(u).unwrap_or_else(|| name.to_string()), Some(u)),
            (None, Some((uid, u)), _) => (slug(&uid), Some(u)),
            (None, None, Some(s)) => match (s.get("upstream"), by_id(s)) {
                (Some(u), _) => (
                    target_name(u).unwrap_or_else(|| {
                        slug(&text(s, "name").or(text(s, "id")).unwrap_or_default())
                    }),
                    Some(u),
                ),
                (None, Some((uid, u))) => (slug(&uid), Some(u)),
                (None, None) => (name.to_string(), None),
            },
            (None, None, None) => (name.to_string(), None),
        };
        let Some(conf) = conf else {
            self.not_translated(
                notes,
                format!("route {id}: no upstream; a placeholder upstream is written"),
            );
            return self.add_upstream(
                name,
                "placeholder".into(),
                Doc(format!(
                    "targets = {}  # REPLACE-ME\n",
                    strings(&["127.0.0.1:80"])
                )),
            );
        };
        let doc = self.upstream_body(id, conf, notes);
        let signature = doc.0.clone();
        self.add_upstream(&base, signature, doc)
    }

    fn add_upstream(&mut self, base: &str, signature: String, doc: Doc) -> String {
        if let Some((name, _, _)) = self.upstreams.iter().find(|(_, s, _)| *s == signature) {
            return name.clone();
        }
        let mut name = base.to_string();
        let mut n = 1;
        while self.upstreams.iter().any(|(u, _, _)| *u == name) {
            n += 1;
            name = format!("{base}-{n}");
        }
        self.upstreams.push((name.clone(), signature, doc));
        name
    }

    fn upstream_body(&mut self, id: &str, u: &Value, notes: &mut Vec<String>) -> Doc {
        let scheme = text(u, "scheme").unwrap_or_else(|| "http".into());
        let default_port = if matches!(scheme.as_str(), "https" | "grpcs") {
            443
        } else {
            80
        };
        let mut targets: Vec<(String, u64)> = Vec::new();
        match u.get("nodes") {
            Some(Value::Mapping(m)) => {
                for (addr, weight) in m {
                    if let Some(addr) = addr.as_str() {
                        let weight = weight.as_f64().unwrap_or(1.0) as u64;
                        targets.push((with_port(addr, default_port), weight));
                    }
                }
            }
            Some(Value::Sequence(nodes)) => {
                for node in nodes {
                    let Some(host) = text(node, "host") else {
                        continue;
                    };
                    let port = number(node, "port").map_or(default_port, |p| p as u64);
                    let weight = number(node, "weight").unwrap_or(1.0) as u64;
                    targets.push((with_port(&format!("{host}:{port}"), port), weight));
                }
            }
            _ => {}
        }
        let mut doc = Doc::default();
        // APISIX takes weight 0 as "no traffic".
        targets.retain(|(_, w)| *w > 0);
        if targets.is_empty() {
            self.not_translated(
                notes,
                format!("route {id}: upstream without nodes (service discovery?): placeholder"),
            );
            targets.push(("127.0.0.1:80".into(), 1));
        }
        let max = targets.iter().map(|(_, w)| *w).max().unwrap_or(1);
        let scaled = max > 100;
        let same = targets.iter().all(|(_, w)| *w == targets[0].1);
        let rendered: Vec<String> = targets
            .iter()
            .map(|(a, w)| {
                if same {
                    string(a)
                } else {
                    let w = if scaled {
                        w.saturating_mul(100).div_ceil(max)
                    } else {
                        *w
                    };
                    format!(
                        "{{ address = {}, weight = {} }}",
                        string(a),
                        w.clamp(1, 100)
                    )
                }
            })
            .collect();
        doc.line(format!("targets = [{}]", rendered.join(", ")));
        if scaled && !same {
            notes.push(format!(
                "CHECK: route {id}: upstream weights scaled to 1-100"
            ));
        }
        match text(u, "type").as_deref() {
            None | Some("roundrobin") => {}
            Some("chash") => {
                doc.set("balance", string("consistent_hash"));
                notes.push(format!(
                    "CHECK: route {id}: chash on {:?}: targets are picked by the caller's \
                     subject (or address)",
                    text(u, "key").unwrap_or_default()
                ));
            }
            Some(other) => self.not_translated(
                notes,
                format!("route {id}: balancing {other:?}: round robin"),
            ),
        }
        match scheme.as_str() {
            "grpc" => doc.set("protocol", string("http2")),
            "grpcs" => doc.set("protocol", string("http2")),
            _ => {}
        }
        if let Some(t) = u.get("timeout") {
            for (from, to) in [
                ("connect", "connect_timeout"),
                ("send", "write_timeout"),
                ("read", "read_timeout"),
            ] {
                if let Some(s) = number(t, from) {
                    doc.set(to, seconds(s));
                }
            }
        }
        if let Some(n) = number(u, "retries") {
            doc.set("retries", (n as u64).to_string());
        }
        if let Some(t) = number(u, "retry_timeout").filter(|t| *t > 0.0) {
            doc.set("timeout", seconds(t));
        }
        if matches!(text(u, "pass_host").as_deref(), Some("node" | "rewrite")) {
            self.not_translated(
                notes,
                format!("route {id}: pass_host: the client's Host is passed on"),
            );
        }
        if matches!(scheme.as_str(), "https" | "grpcs") {
            let sni = text(u, "upstream_host").unwrap_or_else(|| {
                targets[0]
                    .0
                    .rsplit_once(':')
                    .map_or("", |(h, _)| h)
                    .to_string()
            });
            doc.blank();
            doc.line("[upstreams.TABLE.tls]");
            doc.set("sni", string(&sni));
        }
        if let Some(active) = u.get("checks").and_then(|c| c.get("active")) {
            doc.blank();
            doc.line("[upstreams.TABLE.health_check]");
            let kind = text(active, "type").unwrap_or_else(|| "http".into());
            doc.set("kind", string(if kind == "tcp" { "tcp" } else { "http" }));
            if kind != "tcp" {
                doc.set(
                    "path",
                    string(&text(active, "http_path").unwrap_or_else(|| "/".into())),
                );
            }
            if let Some(t) = number(active, "timeout") {
                doc.set("timeout", seconds(t));
            }
            if let Some(h) = active.get("healthy") {
                if let Some(i) = number(h, "interval") {
                    doc.set("interval", seconds(i));
                }
                if let Some(s) = number(h, "successes") {
                    doc.set("rise", (s as u64).to_string());
                }
            }
            if let Some(f) = active
                .get("unhealthy")
                .and_then(|h| number(h, "http_failures").or(number(h, "tcp_failures")))
            {
                doc.set("fall", (f as u64).to_string());
            }
        }
        if u.get("checks").and_then(|c| c.get("passive")).is_some() {
            notes.push(format!(
                "CHECK: route {id}: passive health checks: see [upstreams.NAME] passive_ejection"
            ));
        }
        if let Some(d) = text(u, "discovery_type") {
            self.not_translated(notes, format!("route {id}: service discovery {d:?}"));
        }
        doc
    }
}

/// An inline upstream's name: its first node's host.
fn target_name(u: &Value) -> Option<String> {
    let host = match u.get("nodes")? {
        Value::Mapping(m) => m.keys().next()?.as_str()?.rsplit_once(':').map_or_else(
            || m.keys().next().and_then(Value::as_str).map(str::to_string),
            |(h, _)| Some(h.to_string()),
        )?,
        Value::Sequence(nodes) => text(nodes.first()?, "host")?,
        _ => return None,
    };
    Some(slug(&host))
}

/// `host` or `host:port` with a port.
fn with_port(addr: &str, default_port: u64) -> String {
    let has_port = addr
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.ends_with(':') && p.parse::<u16>().is_ok());
    if has_port {
        addr.to_string()
    } else {
        format!("{addr}:{default_port}")
    }
}

//! `portcullis import apisix FILE`: Apache APISIX routes to a Portcullis config.
//!
//! Reads what APISIX users have at hand: a standalone `apisix.yaml` (`routes`, `services`,
//! `upstreams`, `consumers`), an ADC file (`services` with their `routes`), an Admin API
//! export (`{"list": [{"key": "/apisix/routes/1", "value": {…}}]}`, or API v2's `node.nodes`),
//! or one route object as sent to `PUT /apisix/admin/routes`. JSON is read as YAML.
//!
//! Translated: `uri`/`uris` (exact, `/*` prefixes, `:param` segments), `methods`,
//! `host`/`hosts`, upstreams (inline, `upstream_id`, or a service's: nodes and weights,
//! `chash`, `scheme`, `timeout`, `retries`, active health checks), and the plugins
//! `jwt-auth`, `openid-connect`, `authz-keycloak`, `limit-count`, `cors` and
//! `proxy-rewrite`'s `uri`. Everything else is named in a `NOT TRANSLATED` comment. Secrets
//! (client secrets, consumer keys' secrets, Redis passwords) are never copied.

mod plugins;
mod upstreams;

use std::collections::BTreeMap;

use serde_yaml::Value;

use super::toml_out::{key, string, strings, Doc};
use super::{ImportError, Imported};

/// Reads an APISIX configuration and writes the equivalent Portcullis config.
pub fn translate(text: &str) -> Result<Imported, ImportError> {
    let doc: Value = serde_yaml::from_str(text).map_err(|e| {
        let at = e
            .location()
            .map(|l| format!("line {}, column {}: ", l.line(), l.column()))
            .unwrap_or_default();
        ImportError::Syntax(format!("{at}not YAML or JSON: {e}"))
    })?;
    let source = Source::gather(&doc)?;
    if source.routes.is_empty() {
        return Err(ImportError::Shape(
            "no routes found: expected an apisix.yaml or ADC file (`routes`, `services`), an \
             Admin API export (`list`), or one route object (`uri` or `uris`)"
                .into(),
        ));
    }
    let mut out = Output::default();
    let mut routes: Vec<&RouteIn> = source.routes.iter().collect();
    // Higher `priority` first, as APISIX tries them; the file's order otherwise.
    routes.sort_by_key(|r| {
        std::cmp::Reverse(r.route.get("priority").and_then(Value::as_i64).unwrap_or(0))
    });
    for route in routes {
        out.route(route, &source);
    }
    Ok(out.finish(&source))
}

/// One APISIX route, with the service it belongs to.
struct RouteIn<'a> {
    route: &'a Value,
    service: Option<&'a Value>,
}

#[derive(Default)]
struct Source<'a> {
    routes: Vec<RouteIn<'a>>,
    upstreams: BTreeMap<String, &'a Value>,
    services: BTreeMap<String, &'a Value>,
    consumers: Vec<&'a Value>,
}

impl<'a> Source<'a> {
    fn gather(doc: &'a Value) -> Result<Self, ImportError> {
        let mut s = Source::default();
        if !doc.is_mapping() {
            return Err(ImportError::Shape(
                "expected a mapping (YAML) or an object (JSON) at the top".into(),
            ));
        }
        // Admin API exports: v3 `list`, v2 `node.nodes`; each item is `{key, value}`.
        let exported = doc
            .get("list")
            .or_else(|| doc.get("node").and_then(|n| n.get("nodes")));
        for item in exported.and_then(Value::as_sequence).into_iter().flatten() {
            let value = item.get("value").unwrap_or(item);
            let kind = item.get("key").and_then(Value::as_str).unwrap_or("");
            s.add(kind_of(kind, value), value);
        }
        for (field, kind) in [
            ("routes", Kind::Route),
            ("upstreams", Kind::Upstream),
            ("services", Kind::Service),
            ("consumers", Kind::Consumer),
        ] {
            for value in doc
                .get(field)
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
            {
                s.add(kind, value);
            }
        }
        if doc.get("uri").is_some() || doc.get("uris").is_some() {
            s.add(Kind::Route, doc);
        }
        Ok(s)
    }

    fn add(&mut self, kind: Kind, value: &'a Value) {
        let id = text(value, "id").or_else(|| text(value, "name"));
        match kind {
            Kind::Route => self.routes.push(RouteIn {
                route: value,
                service: None,
            }),
            Kind::Upstream => {
                if let Some(id) = id {
                    self.upstreams.insert(id, value);
                }
            }
            Kind::Service => {
                // ADC: a service holds its routes.
                for route in value
                    .get("routes")
                    .and_then(Value::as_sequence)
                    .into_iter()
                    .flatten()
                {
                    self.routes.push(RouteIn {
                        route,
                        service: Some(value),
                    });
                }
                if let Some(id) = id {
                    self.services.insert(id, value);
                }
            }
            Kind::Consumer => self.consumers.push(value),
            Kind::Other => {}
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Route,
    Upstream,
    Service,
    Consumer,
    Other,
}

fn kind_of(key: &str, value: &Value) -> Kind {
    let part = key.trim_start_matches('/').split('/').nth(1).unwrap_or("");
    match part {
        "routes" => Kind::Route,
        "upstreams" => Kind::Upstream,
        "services" => Kind::Service,
        "consumers" | "credentials" => Kind::Consumer,
        "" if value.get("uri").is_some() || value.get("uris").is_some() => Kind::Route,
        _ => Kind::Other,
    }
}

/// A scalar as text: strings, and numbers written as APISIX users write them.
fn text(v: &Value, field: &str) -> Option<String> {
    match v.get(field)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn number(v: &Value, field: &str) -> Option<f64> {
    match v.get(field)? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A list given as a sequence or as one comma-separated string (`"GET,POST"`).
fn list(v: &Value, field: &str) -> Vec<String> {
    match v.get(field) {
        Some(Value::Sequence(items)) => items
            .iter()
            .filter_map(|i| i.as_str().map(str::to_string))
            .collect(),
        Some(Value::String(s)) => s
            .split(',')
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect(),
        _ => Vec::new(),
    }
}

/// A name usable as a table key and in metrics: lowercase letters, digits, `-`.
fn slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let out = out.trim_matches('-').to_string();
    if out.is_empty() {
        "imported".into()
    } else {
        out
    }
}

/// Rate limits per caller kind, gathered from the routes' `limit-count`.
#[derive(Default)]
struct Tier {
    /// `client_ip` or `sub`.
    consumer: Option<&'static str>,
    groups: BTreeMap<String, String>,
    /// Groups counted in Redis.
    redis: std::collections::BTreeSet<String>,
}

#[derive(Default)]
struct Output {
    issuers: BTreeMap<String, Doc>,
    /// By name, with what it was made from: routes with the same upstream share it.
    upstreams: Vec<(String, String, Doc)>,
    routes: Vec<Doc>,
    anonymous: Tier,
    authenticated: Tier,
    redis: Option<(String, Vec<String>)>,
    untranslated: Vec<String>,
    route_names: BTreeMap<String, usize>,
    /// What each written route matches: host, path field, path, methods (empty: all).
    matches: Vec<Match>,
    /// Limit groups of the routes written (not of those left out).
    used_groups: std::collections::BTreeSet<String>,
}

/// What a written route matches, to find a later one that would match the same requests.
struct Match {
    host: Option<String>,
    field: &'static str,
    path: String,
    /// Empty: all.
    methods: Vec<String>,
    route: String,
}

/// What a route's plugins make of it.
#[derive(Default)]
struct Plan {
    authenticated: bool,
    /// Where the token may be, when not only `Authorization: Bearer`.
    token_from: Vec<String>,
    issuers: Vec<String>,
    scopes: Vec<String>,
    limit_group: Option<String>,
    rewrite: Option<String>,
    cors: Option<Doc>,
    notes: Vec<String>,
}

impl Output {
    fn not_translated(&mut self, notes: &mut Vec<String>, what: String) {
        self.untranslated.push(what.clone());
        notes.push(format!("NOT TRANSLATED: {what}"));
    }

    fn route(&mut self, input: &RouteIn, source: &Source) {
        let r = input.route;
        let id = text(r, "name")
            .or_else(|| text(r, "id"))
            .unwrap_or_else(|| format!("route-{}", self.routes.len() + 1));
        let name = slug(&id);
        let service = input
            .service
            .or_else(|| text(r, "service_id").and_then(|sid| source.services.get(&sid).copied()));
        let mut notes = Vec::new();
        if r.get("status").and_then(Value::as_i64) == Some(0) {
            self.not_translated(
                &mut notes,
                format!("route {id}: disabled in APISIX (status 0), left out"),
            );
            let mut doc = Doc::default();
            doc.comment(notes.join("\n"));
            self.routes.push(doc);
            return;
        }

        // Plugins of the service, then the route's own, which win.
        let mut plugins: BTreeMap<String, &Value> = BTreeMap::new();
        for holder in [service, Some(r)].into_iter().flatten() {
            if let Some(map) = holder.get("plugins").and_then(Value::as_mapping) {
                for (k, v) in map {
                    if let Some(k) = k.as_str() {
                        plugins.insert(k.to_string(), v);
                    }
                }
            }
        }
        let mut plan = Plan::default();
        for (plugin, conf) in &plugins {
            self.plugin(&id, &name, plugin, conf, &mut plan, source);
        }
        notes.append(&mut plan.notes);

        let upstream = self.upstream_of(&id, &name, r, service, source, &mut notes);
        for (field, what) in [
            ("vars", "`vars` conditions"),
            ("filter_func", "`filter_func`"),
            (
                "remote_addrs",
                "`remote_addrs` matching (use `from` in an allow rule)",
            ),
            ("plugin_config_id", "`plugin_config_id` (its plugins)"),
        ] {
            if r.get(field).is_some() {
                self.not_translated(&mut notes, format!("route {id}: {what}"));
            }
        }
        if r.get("enable_websocket").and_then(Value::as_bool) == Some(true) {
            self.not_translated(
                &mut notes,
                format!(
                    "route {id}: enable_websocket: add [routes.websocket] (the gateway relays \
                     WebSockets of authenticated routes and closes them when the token expires)"
                ),
            );
        }

        let mut uris: Vec<String> = list(r, "uris");
        uris.extend(text(r, "uri"));
        if uris.is_empty() {
            uris.push("/*".into());
        }
        let mut hosts: Vec<Option<String>> = list(r, "hosts").into_iter().map(Some).collect();
        hosts.extend(text(r, "host").map(Some));
        if hosts.is_empty() {
            hosts.push(None);
        }
        let methods = list(r, "methods");

        let mut doc = Doc::default();
        if !notes.is_empty() {
            doc.comment(notes.join("\n"));
        }
        for uri in &uris {
            for host in &hosts {
                self.write_route(
                    &mut doc,
                    &name,
                    uri,
                    host.as_deref(),
                    &methods,
                    &upstream,
                    &plan,
                );
            }
        }
        self.routes.push(doc);
    }

    #[allow(clippy::too_many_arguments)]
    fn write_route(
        &mut self,
        doc: &mut Doc,
        name: &str,
        uri: &str,
        host: Option<&str>,
        methods: &[String],
        upstream: &str,
        plan: &Plan,
    ) {
        let n = self.route_names.entry(name.to_string()).or_insert(0);
        *n += 1;
        let unique = if *n == 1 {
            name.to_string()
        } else {
            format!("{name}-{n}")
        };
        let (field, path, _) = path_of(uri);
        // APISIX picks one of two routes that match the same requests by `priority`; here
        // they would be ambiguous. The first (highest priority) is kept.
        let host_key = host.map(str::to_ascii_lowercase);
        let overlapping = self.matches.iter().find(|m| {
            m.host == host_key
                && m.field == field
                && m.path == path
                && (m.methods.is_empty()
                    || methods.is_empty()
                    || m.methods.iter().any(|x| methods.contains(x)))
        });
        if let Some(Match { route: other, .. }) = overlapping {
            let what = format!(
                "route {unique}: matches the same requests as route {other} ({uri:?}), \
                 which APISIX preferred by priority or order: left out"
            );
            self.untranslated.push(what.clone());
            let mut left_out = Doc::default();
            self.render(&mut left_out, &unique, uri, host, methods, upstream, plan);
            doc.blank();
            doc.comment(format!("NOT TRANSLATED: {what}"));
            doc.comment(left_out.0.trim());
            return;
        }
        self.matches.push(Match {
            host: host_key,
            field,
            path,
            methods: methods.to_vec(),
            route: unique.clone(),
        });
        self.used_groups.extend(plan.limit_group.clone());
        self.render(doc, &unique, uri, host, methods, upstream, plan);
    }

    /// Writes one `[[routes]]` table.
    #[allow(clippy::too_many_arguments)]
    fn render(
        &mut self,
        doc: &mut Doc,
        unique: &str,
        uri: &str,
        host: Option<&str>,
        methods: &[String],
        upstream: &str,
        plan: &Plan,
    ) {
        let name = unique;
        let (field, path, approx) = path_of(uri);
        doc.blank();
        doc.line("[[routes]]");
        doc.set("name", string(unique));
        if let Some(host) = host {
            if host.contains('*') {
                doc.comment(format!(
                    "NOT TRANSLATED: wildcard host {host:?}: routes match one exact host"
                ));
                self.untranslated
                    .push(format!("route {name}: wildcard host {host:?}"));
            } else {
                doc.set("host", string(host));
            }
        }
        if approx {
            doc.comment(format!(
                "CHECK: APISIX matched {uri:?} as a string prefix; path_prefix matches whole \
                 segments"
            ));
        }
        doc.set(field, string(&path));
        if !methods.is_empty() {
            doc.set("methods", strings(methods));
        }
        doc.set("upstream", string(upstream));
        if plan.authenticated {
            doc.set("access", string("authenticated"));
            // APISIX's authentication plugins take any valid token, user or service.
            doc.set("callers", string("any"));
            if !plan.issuers.is_empty() {
                doc.set("issuers", strings(&plan.issuers));
            }
            if !plan.token_from.is_empty() {
                doc.set("token_from", strings(&plan.token_from));
            }
        } else {
            doc.set("access", string("public"));
        }
        if let Some(rewrite) = &plan.rewrite {
            doc.set("rewrite", string(rewrite));
        }
        if let Some(group) = &plan.limit_group {
            doc.set("limit_group", string(group));
        }
        if !plan.scopes.is_empty() {
            doc.blank();
            doc.line("[[routes.allow]]");
            doc.set("scopes", strings(&plan.scopes));
        }
        if let Some(cors) = &plan.cors {
            doc.blank();
            doc.line("[routes.cors]");
            doc.0.push_str(&cors.0);
        }
    }

    fn finish(mut self, source: &Source) -> Imported {
        let used = std::mem::take(&mut self.used_groups);
        for tier in [&mut self.anonymous, &mut self.authenticated] {
            tier.groups.retain(|g, _| used.contains(g));
        }
        let mut doc = Doc::default();
        doc.comment(format!(
            "Translated from Apache APISIX by `portcullis import apisix` ({} routes).\n\
             Lines marked NOT TRANSLATED name what APISIX did that this file does not; lines\n\
             marked CHECK are translated with a difference worth a look. Validate with\n\
             `portcullis check -c FILE` before use.",
            source.routes.len()
        ));
        doc.blank();
        doc.line("[server]");
        doc.comment("APISIX's default proxy port.");
        doc.set("listen", strings(&["0.0.0.0:9080"]));
        for (_, issuer) in std::mem::take(&mut self.issuers) {
            doc.blank();
            doc.0.push_str(&issuer.0);
        }
        for (name, _, body) in std::mem::take(&mut self.upstreams) {
            doc.blank();
            doc.line(format!("[upstreams.{}]", key(&name)));
            doc.0.push_str(
                &body
                    .0
                    .replace("[upstreams.TABLE.", &format!("[upstreams.{}.", key(&name))),
            );
        }
        let redis_used = [&self.anonymous, &self.authenticated]
            .iter()
            .any(|t| t.groups.keys().any(|g| t.redis.contains(g)));
        if let Some((url, notes)) = self.redis.as_ref().filter(|_| redis_used) {
            doc.blank();
            for n in notes {
                doc.comment(format!("CHECK: {n}"));
            }
            doc.line("[rate_limit.redis]");
            doc.set("url", string(url));
        }
        for (tier, callers) in [
            (&self.anonymous, &["anonymous"][..]),
            (&self.authenticated, &["users", "services"][..]),
        ] {
            if tier.groups.is_empty() {
                continue;
            }
            for callers in callers {
                doc.blank();
                doc.line("[[rate_limit.tiers]]");
                doc.set("name", string(&format!("imported-{callers}")));
                doc.set("callers", string(callers));
                doc.set("consumer", string(tier.consumer.unwrap_or("client_ip")));
                doc.set("limits", "[]");
                if tier.groups.keys().any(|g| tier.redis.contains(g)) {
                    doc.set("backend", string("redis"));
                }
                let groups: Vec<String> = tier
                    .groups
                    .iter()
                    .map(|(g, l)| format!("{} = {}", key(g), strings(&[l])))
                    .collect();
                doc.set("group_limits", format!("{{ {} }}", groups.join(", ")));
            }
        }
        for route in std::mem::take(&mut self.routes) {
            doc.blank();
            doc.0.push_str(&route.0);
        }
        Imported {
            toml: doc.0,
            untranslated: self.untranslated,
        }
    }
}

/// The route field and path for an APISIX `uri`, and whether the match is approximate.
fn path_of(uri: &str) -> (&'static str, String, bool) {
    // `:name` segments are parameters, `{name}` here.
    let convert = |p: &str| {
        p.split('/')
            .map(|s| match s.strip_prefix(':') {
                Some(param) if !param.is_empty() => format!("{{{param}}}"),
                _ => s.to_string(),
            })
            .collect::<Vec<_>>()
            .join("/")
    };
    match uri.strip_suffix('*') {
        None => ("path", convert(uri), false),
        Some(prefix) => {
            let whole_segments = prefix.ends_with('/');
            let prefix = prefix.trim_end_matches('/');
            let prefix = if prefix.is_empty() { "/" } else { prefix };
            ("path_prefix", convert(prefix), !whole_segments)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> toml::Table {
        let out = translate(text).expect("translates");
        toml::from_str(&out.toml).unwrap_or_else(|e| panic!("{e}\n{}", out.toml))
    }

    #[test]
    fn paths_follow_apisix_matching() {
        assert_eq!(path_of("/get"), ("path", "/get".into(), false));
        assert_eq!(
            path_of("/api/v1/*"),
            ("path_prefix", "/api/v1".into(), false)
        );
        assert_eq!(path_of("/*"), ("path_prefix", "/".into(), false));
        assert_eq!(path_of("/foo*"), ("path_prefix", "/foo".into(), true));
        assert_eq!(
            path_of("/user/:name/orders"),
            ("path", "/user/{name}/orders".into(), false)
        );
    }

    #[test]
    fn a_route_object_becomes_a_route_with_its_upstream() {
        let c = config(
            r#"{"uri": "/get", "methods": ["GET"], "hosts": ["a.test", "b.test"],
                "upstream": {"type": "roundrobin", "nodes": {"127.0.0.1:1980": 1, "10.0.0.2": 3},
                             "timeout": {"connect": 1.5, "read": 30}, "retries": 2}}"#,
        );
        let routes = c["routes"].as_array().expect("routes");
        assert_eq!(routes.len(), 2, "one per host");
        assert_eq!(routes[0]["host"].as_str(), Some("a.test"));
        assert_eq!(routes[1]["name"].as_str(), Some("route-1-2"));
        assert_eq!(routes[0]["access"].as_str(), Some("public"));
        let upstream = &c["upstreams"]["127-0-0-1"];
        assert_eq!(upstream["connect_timeout"].as_str(), Some("1500ms"));
        assert_eq!(upstream["read_timeout"].as_str(), Some("30s"));
        assert_eq!(upstream["retries"].as_integer(), Some(2));
        let targets = upstream["targets"].as_array().expect("targets");
        assert_eq!(targets[1]["address"].as_str(), Some("10.0.0.2:80"));
        assert_eq!(targets[1]["weight"].as_integer(), Some(3));
    }

    #[test]
    fn secrets_are_never_copied() {
        let out = translate(
            r#"
routes:
  - uri: /a
    plugins:
      openid-connect: {client_id: c, client_secret: s3cr3t-value, discovery: "https://kc/realms/r/.well-known/openid-configuration"}
      limit-count: {count: 5, time_window: 60, policy: redis, redis_host: r, redis_password: p4ssw0rd-value}
    upstream: {nodes: {"127.0.0.1:1": 1}}
consumers:
  - username: jack
    plugins:
      jwt-auth: {key: jack-key, secret: hs-s3cr3t-value}
"#,
        )
        .expect("translates");
        for secret in ["s3cr3t-value", "p4ssw0rd-value", "hs-s3cr3t-value"] {
            assert!(!out.toml.contains(secret), "{secret} in\n{}", out.toml);
        }
    }

    #[test]
    fn malformed_input_is_a_clear_error() {
        let e = translate("routes: [\n  {uri: /a,\n").expect_err("malformed");
        assert!(e.to_string().contains("line"), "{e}");
        let e = translate("{\"upstreams\": []}").expect_err("no routes");
        assert!(e.to_string().contains("no routes"), "{e}");
        assert!(translate("- a\n- b\n").is_err());
    }
}

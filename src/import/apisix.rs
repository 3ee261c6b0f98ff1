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

use std::collections::BTreeMap;

use serde_yaml::Value;

use super::toml_out::{key, seconds, string, strings, Doc};
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

    fn plugin(
        &mut self,
        id: &str,
        name: &str,
        plugin: &str,
        conf: &Value,
        plan: &mut Plan,
        source: &Source,
    ) {
        match plugin {
            "jwt-auth" => {
                plan.authenticated = true;
                let issuer = self.jwt_auth_issuer(source);
                plan.issuers.push(issuer);
                // jwt-auth reads the header, then the query, then a cookie.
                let header = text(conf, "header").unwrap_or_else(|| "authorization".into());
                let query = text(conf, "query").unwrap_or_else(|| "jwt".into());
                let cookie = text(conf, "cookie").unwrap_or_else(|| "jwt".into());
                plan.token_from = vec![
                    if header.eq_ignore_ascii_case("authorization") {
                        "header".into()
                    } else {
                        format!("header:{header}")
                    },
                    format!("query:{query}"),
                    format!("cookie:{cookie}"),
                ];
                plan.notes.push(format!(
                    "CHECK: route {id}: jwt-auth also took the token from the query ({query:?}) \
                     and a cookie ({cookie:?}): keep in token_from only what clients use"
                ));
                if conf.get("anonymous_consumer").is_some() {
                    self.not_translated(
                        &mut plan.notes,
                        format!(
                            "route {id}: jwt-auth anonymous_consumer: the route requires a token \
                             (make it `access = \"public\"` to let everyone in)"
                        ),
                    );
                }
            }
            "openid-connect" => {
                plan.authenticated = true;
                let client_id = text(conf, "client_id").unwrap_or_default();
                let discovery = text(conf, "discovery").unwrap_or_default();
                match self.discovered_issuer(&discovery, &client_id, "openid-connect") {
                    Some(issuer) => plan.issuers.push(issuer),
                    None => self.not_translated(
                        &mut plan.notes,
                        format!("route {id}: openid-connect discovery {discovery:?} is not a URL"),
                    ),
                }
                plan.scopes.extend(list(conf, "required_scopes"));
                if conf.get("bearer_only").and_then(Value::as_bool) != Some(true) {
                    self.not_translated(
                        &mut plan.notes,
                        format!(
                            "route {id}: openid-connect browser login (redirect to the \
                             provider, session cookie, redirect_uri, logout): the route takes \
                             bearer tokens only"
                        ),
                    );
                }
                if conf.get("introspection_endpoint").is_some()
                    && conf.get("use_jwks").and_then(Value::as_bool) != Some(true)
                {
                    plan.notes.push(format!(
                        "CHECK: route {id}: APISIX introspected tokens; JWTs are verified here \
                         with the provider's keys. For opaque tokens add \
                         [issuers.NAME.introspection] with client_secret_env"
                    ));
                }
                if conf.get("ssl_verify").and_then(Value::as_bool) == Some(false) {
                    plan.notes.push(format!(
                        "CHECK: route {id}: ssl_verify false: the gateway always verifies the \
                         provider's certificate"
                    ));
                }
            }
            "authz-keycloak" => {
                plan.authenticated = true;
                let discovery = text(conf, "discovery").or_else(|| {
                    text(conf, "token_endpoint").map(|t| {
                        t.trim_end_matches("/protocol/openid-connect/token")
                            .to_string()
                            + "/.well-known/openid-configuration"
                    })
                });
                let client_id = text(conf, "client_id").unwrap_or_default();
                match discovery
                    .and_then(|d| self.discovered_issuer(&d, &client_id, "authz-keycloak"))
                {
                    Some(issuer) => plan.issuers.push(issuer),
                    None => self.not_translated(
                        &mut plan.notes,
                        format!("route {id}: authz-keycloak has no usable discovery URL"),
                    ),
                }
                let permissions = list(conf, "permissions");
                let what = if permissions.is_empty() {
                    String::new()
                } else {
                    format!(" (permissions {permissions:?})")
                };
                self.not_translated(
                    &mut plan.notes,
                    format!(
                        "route {id}: authz-keycloak's per-request decisions by Keycloak \
                         Authorization Services{what}: the route requires a valid token; \
                         write the permissions as [[routes.allow]] roles or scopes, or ask a \
                         decision point with [routes.ext_authz]"
                    ),
                );
            }
            "limit-count" => self.limit_count(id, name, conf, plan),
            "cors" => self.cors(id, conf, plan),
            "proxy-rewrite" => {
                if let Some(uri) = text(conf, "uri") {
                    plan.rewrite = Some(uri);
                }
                let other: Vec<String> = conf
                    .as_mapping()
                    .into_iter()
                    .flatten()
                    .filter_map(|(k, _)| k.as_str())
                    .filter(|k| *k != "uri")
                    .map(str::to_string)
                    .collect();
                if !other.is_empty() {
                    self.not_translated(
                        &mut plan.notes,
                        format!(
                            "route {id}: proxy-rewrite {other:?} (see rewrite, strip_prefix \
                             and [routes.request_headers])"
                        ),
                    );
                }
            }
            "prometheus" => plan.notes.push(format!(
                "route {id}: prometheus: metrics are always on (/metrics on [admin] listen)"
            )),
            "key-auth" | "basic-auth" | "hmac-auth" | "ldap-auth" | "wolf-rbac" => {
                plan.authenticated = true;
                self.not_translated(
                    &mut plan.notes,
                    format!(
                        "route {id}: {plugin}: credentials other than OAuth 2.0 tokens; the \
                         route requires a token from one of the issuers"
                    ),
                );
            }
            other => self.not_translated(&mut plan.notes, format!("route {id}: plugin {other}")),
        }
    }

    /// An issuer from an OIDC or UMA discovery URL, named after the realm or host.
    fn discovered_issuer(
        &mut self,
        discovery: &str,
        client_id: &str,
        plugin: &str,
    ) -> Option<String> {
        let issuer = discovery
            .trim_end_matches("/.well-known/openid-configuration")
            .trim_end_matches("/.well-known/uma2-configuration")
            .trim_end_matches('/')
            .to_string();
        let uri: http::Uri = issuer.parse().ok()?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return None;
        }
        let name = slug(
            uri.path()
                .rsplit('/')
                .find(|s| !s.is_empty())
                .or(uri.host())
                .unwrap_or("idp"),
        );
        let existing = self.issuers.iter().find_map(|(n, d)| {
            d.0.contains(&format!("issuer = {}\n", string(&issuer)))
                .then(|| n.clone())
        });
        if let Some(name) = existing {
            return Some(name);
        }
        let mut doc = Doc::default();
        doc.comment(format!(
            "From {plugin}. CHECK `audiences`: Keycloak names the client in `azp`, and in `aud` \
             only with an audience mapper."
        ));
        doc.line(format!("[issuers.{}]", key(&name)));
        doc.set("issuer", string(&issuer));
        let audience = if client_id.is_empty() {
            "account"
        } else {
            client_id
        };
        doc.set("audiences", strings(&[audience]));
        doc.set("discovery", "true");
        self.issuers.insert(name.clone(), doc);
        Some(name)
    }

    /// jwt-auth's consumers signed their own tokens; the gateway trusts issuers instead.
    fn jwt_auth_issuer(&mut self, source: &Source) -> String {
        let name = "jwt-auth".to_string();
        if self.issuers.contains_key(&name) {
            return name;
        }
        let mut doc = Doc::default();
        doc.comment(
            "NOT TRANSLATED: jwt-auth consumers. APISIX found the consumer by the token's `key`\n\
             claim and checked it with that consumer's secret or public key. Here a token is\n\
             checked against its issuer (`iss`, `aud`, keys from a JWKS). Replace this\n\
             placeholder with your identity provider, or publish the consumers' public keys as\n\
             a JWKS (`portcullis jwks --key KEY.pem --alg RS256 --kid NAME`) and sign tokens\n\
             with `iss` and `aud`. Secrets are not copied.",
        );
        let mut consumers = Vec::new();
        for c in &source.consumers {
            // A consumer's own plugins, or (ADC) its credentials of type jwt-auth.
            let credentials = c.get("credentials").and_then(Value::as_sequence);
            let confs = c
                .get("plugins")
                .and_then(|p| p.get("jwt-auth"))
                .into_iter()
                .chain(
                    credentials
                        .into_iter()
                        .flatten()
                        .filter(|cr| text(cr, "type").as_deref() == Some("jwt-auth"))
                        .filter_map(|cr| cr.get("config")),
                );
            let who = text(c, "username")
                .or_else(|| text(c, "id"))
                .unwrap_or_default();
            for conf in confs {
                let alg = text(conf, "algorithm").unwrap_or_else(|| "HS256".into());
                let k = text(conf, "key").unwrap_or_default();
                consumers.push(format!("consumer {who:?}: key {k:?}, {alg}"));
            }
        }
        for c in &consumers {
            doc.comment(format!("  {c}"));
        }
        self.untranslated.push(format!(
            "jwt-auth consumers ({}): tokens must come from an issuer; a placeholder \
             [issuers.jwt-auth] is written",
            if consumers.is_empty() {
                "none in the file".to_string()
            } else {
                consumers.join("; ")
            }
        ));
        doc.line(format!("[issuers.{name}]"));
        doc.set("issuer", string("https://idp.example.com/REPLACE-ME"));
        doc.set("audiences", strings(&["REPLACE-ME"]));
        doc.set("discovery", "true");
        self.issuers.insert(name.clone(), doc);
        name
    }

    fn limit_count(&mut self, id: &str, name: &str, conf: &Value, plan: &mut Plan) {
        let (Some(count), Some(window)) = (number(conf, "count"), number(conf, "time_window"))
        else {
            self.not_translated(
                &mut plan.notes,
                format!("route {id}: limit-count without count and time_window"),
            );
            return;
        };
        let group = text(conf, "group").map_or_else(|| name.to_string(), |g| slug(&g));
        let limit = format!("{}/{}s", count as u64, window as u64);
        let key = text(conf, "key").unwrap_or_else(|| "remote_addr".into());
        let consumer = match key.as_str() {
            "remote_addr" | "$remote_addr" => Some("client_ip"),
            "consumer_name" | "$consumer_name" => Some("sub"),
            _ => None,
        };
        if consumer.is_none() {
            self.not_translated(
                &mut plan.notes,
                format!(
                    "route {id}: limit-count key {key:?}: consumers are the caller's address \
                     or a token claim (tier `consumer`)"
                ),
            );
        }
        let redis = match text(conf, "policy").as_deref() {
            Some("redis") => {
                let host = text(conf, "redis_host").unwrap_or_else(|| "127.0.0.1".into());
                let port = text(conf, "redis_port").unwrap_or_else(|| "6379".into());
                let db = text(conf, "redis_database").unwrap_or_else(|| "0".into());
                let url = format!("redis://{host}:{port}/{db}");
                let entry = self.redis.get_or_insert_with(|| (url.clone(), Vec::new()));
                if entry.0 != url {
                    entry.1.push(format!("route {id}: another Redis, {url}"));
                }
                if conf.get("redis_password").is_some() {
                    entry.1.push(format!(
                        "route {id}: redis_password not copied: put it in the URL \
                         (redis://:PASSWORD@host)"
                    ));
                }
                true
            }
            Some(p @ ("redis-cluster" | "redis-sentinel")) => {
                self.not_translated(
                    &mut plan.notes,
                    format!("route {id}: limit-count policy {p}: one Redis URL; limited locally"),
                );
                false
            }
            _ => false,
        };
        if let Some(code) = number(conf, "rejected_code").filter(|c| *c != 429.0) {
            self.not_translated(
                &mut plan.notes,
                format!("route {id}: limit-count rejected_code {code}: refusals are 429"),
            );
        }
        plan.notes.push(format!(
            "CHECK: route {id}: limit-count {limit} counted as a smooth rate (GCRA: a burst of \
             {} then one every {:.3}s), not in fixed windows",
            count as u64,
            window / count.max(1.0)
        ));
        let tier = if plan.authenticated {
            &mut self.authenticated
        } else {
            &mut self.anonymous
        };
        let consumer = consumer.unwrap_or("client_ip");
        if tier.consumer.is_some_and(|c| c != consumer) {
            plan.notes.push(format!(
                "CHECK: route {id}: counted per {} like the other routes of its tier, not per \
                 {consumer}",
                tier.consumer.unwrap_or_default()
            ));
        }
        tier.consumer.get_or_insert(consumer);
        tier.groups.insert(group.clone(), limit);
        if redis {
            tier.redis.insert(group.clone());
        }
        plan.limit_group = Some(group);
    }

    fn cors(&mut self, id: &str, conf: &Value, plan: &mut Plan) {
        let mut doc = Doc::default();
        let origins: Vec<String> = list(conf, "allow_origins")
            .into_iter()
            .map(|o| if o == "**" { "*".into() } else { o })
            .collect();
        for (field, what) in [
            ("allow_origins_by_regex", "origins by regular expression"),
            ("allow_origins_by_metadata", "origins from plugin metadata"),
        ] {
            if conf.get(field).is_some() {
                self.not_translated(
                    &mut plan.notes,
                    format!(
                        "route {id}: cors {field} ({what}): list the origins, or \
                         `https://*.domain` for every subdomain"
                    ),
                );
            }
        }
        if origins.is_empty() {
            self.not_translated(
                &mut plan.notes,
                format!("route {id}: cors without allow_origins: no [routes.cors] written"),
            );
            return;
        }
        doc.set("allow_origins", strings(&origins));
        let methods = list(conf, "allow_methods");
        if !methods.is_empty() && methods != ["*"] && methods != ["**"] {
            doc.set("allow_methods", strings(&methods));
        }
        let headers = list(conf, "allow_headers");
        if headers == ["*"] || headers == ["**"] {
            plan.notes.push(format!(
                "CHECK: route {id}: cors allow_headers \"*\": list the request headers pages send"
            ));
        } else if !headers.is_empty() {
            doc.set("allow_headers", strings(&headers));
        }
        let expose = list(conf, "expose_headers");
        if !expose.is_empty() && expose != ["*"] {
            doc.set("expose_headers", strings(&expose));
        }
        if conf.get("allow_credential").and_then(Value::as_bool) == Some(true) {
            if origins.iter().any(|o| o == "*") {
                plan.notes.push(format!(
                    "CHECK: route {id}: cors allow_credential with any origin: credentials are \
                     not allowed with \"*\""
                ));
            } else {
                doc.set("allow_credentials", "true");
            }
        }
        match number(conf, "max_age") {
            Some(age) if age > 0.0 => doc.set("max_age", seconds(age)),
            _ => {}
        }
        plan.cors = Some(doc);
    }

    /// The name of the route's upstream, written once per distinct definition.
    fn upstream_of(
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

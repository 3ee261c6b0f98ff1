//! The plugins a route carries: authentication, limits, CORS, rewrites.

use serde_yaml::Value;

use super::{list, number, slug, text, Output, Plan, Source};
use crate::import::toml_out::{key, seconds, string, strings, Doc};

impl Output {
    pub(super) fn plugin(
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
}

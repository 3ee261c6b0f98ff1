//! The compiled, immutable form of a config: what the request path reads.
//!
//! Compiling validates everything once (references, paths, keys, secrets) and reports the first
//! problem with its file, line and key. A snapshot is shared through one `ArcSwap`; each request
//! takes one `Arc` of it and sees one consistent config from start to end.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::HeaderValue;
use jsonwebtoken::DecodingKey;
use toml::Spanned;

use crate::authenticate::{
    AddError, Authenticator, ClaimMap, IntrospectionEndpoint, Introspector, Issuer, IssuerId,
    KeySource, KeyStore, ServiceTokenRule,
};
use crate::authorize::{Policy, Rule};
use crate::client_ip::ClientIpResolver;
use crate::config::{
    self, Access, Config, ConfigError, IntrospectionConf, IntrospectionMode, IssuerConf,
    RouteCallers, RouteConf, SourceFile, TokenSource,
};
use crate::identity::IdentityHeaders;
use crate::logs::{Destination, Logs};
use crate::rate_limit::{self, GroupId, RateLimiter};
use crate::respond::{Reply, Responses};
use crate::route::{self, MethodSet, PathKind, RouteKey, Router};
use crate::tls::EdgeTls;
use crate::upstream::{Upstream, UpstreamId};
use crate::websocket;

/// The config the gateway currently serves, swapped atomically as a whole.
pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;

/// What a matched route does with an admitted request.
#[derive(Debug)]
pub enum Action {
    Forward(UpstreamId),
    Respond(Reply),
}

/// A compiled route.
#[derive(Debug)]
pub struct Route {
    pub name: Box<str>,
    pub access: Access,
    /// Issuers this route trusts; `None`: all.
    pub issuers: Option<Vec<IssuerId>>,
    pub policy: Policy,
    pub limit_group: Option<GroupId>,
    pub action: Action,
    /// Where a WebSocket upgrade's token may come from; `None`: the route takes no upgrades.
    pub websocket: Option<Vec<TokenSource>>,
}

/// Settings that take effect only at start.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: Vec<SocketAddr>,
    pub threads: usize,
    pub work_stealing: bool,
    pub grace_period: std::time::Duration,
    pub drain_delay: std::time::Duration,
    pub pid_file: String,
    pub upgrade_sock: String,
    /// The admin listener (`/metrics`).
    pub admin_listen: Option<SocketAddr>,
    /// HTTPS listeners and their TLS setup.
    pub tls_listen: Vec<SocketAddr>,
    pub tls: Option<EdgeTls>,
    /// The `[server.tls]` table as written, to tell whether a reload changed it.
    pub tls_fingerprint: Option<String>,
}

pub struct Snapshot {
    pub source: PathBuf,
    pub server: ServerSettings,
    pub router: Router<Route>,
    pub authenticator: Authenticator,
    pub upstreams: Vec<Upstream>,
    pub responses: Responses,
    pub identity: IdentityHeaders,
    pub client_ip: ClientIpResolver,
    pub rate_limiter: RateLimiter,
    pub websocket: websocket::Settings,
    /// Where the logs go, as configured.
    pub logging: (Destination, Destination),
    /// The open logs; empty until [`Snapshot::open_logs`].
    pub logs: Logs,
}

impl Snapshot {
    /// Loads and compiles a config file.
    pub fn load(path: &Path, previous: Option<&Snapshot>) -> Result<Snapshot, ConfigError> {
        let (config, source) = config::load(path)?;
        Self::compile(&config, &source, previous)
    }

    /// Compiles a parsed config. Key stores of unchanged remote issuers are taken over from
    /// `previous`, so a reload neither drops their keys nor refetches them.
    pub fn compile(
        config: &Config,
        source: &SourceFile,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, ConfigError> {
        let c = Compiler { source };
        let server = c.server(config)?;
        let responses =
            Responses::compile(&config.responses).map_err(|e| c.at_key("responses", &e))?;
        let identity = IdentityHeaders::compile(&config.identity_headers)
            .map_err(|e| c.at_key("identity_headers", &e))?;

        let mut authenticator = Authenticator::default();
        authenticator.cache_verified(config.token_cache.max_entries);
        let mut issuer_ids = BTreeMap::new();
        for (name, conf) in &config.issuers {
            let issuer = c.issuer(name, conf, previous)?;
            let id = authenticator.add(issuer).map_err(|e| {
                let (field, message) = match e {
                    AddError::SameIss(other) => {
                        ("issuer", format!("same `issuer` as issuers.{other}"))
                    }
                    AddError::SecondIntrospector(other) => (
                        "introspection",
                        format!(
                            "issuers.{other} introspects tokens too; a token that is not a \
                             JWT names no issuer, so only one issuer may introspect"
                        ),
                    ),
                };
                c.in_table(conf, &format!("issuers.{name}"), field, &message)
            })?;
            issuer_ids.insert(name.as_str(), id);
        }

        let mut upstreams = Vec::new();
        let mut upstream_ids = BTreeMap::new();
        for (name, conf) in &config.upstreams {
            let upstream = Upstream::compile(name, conf.get_ref(), |p| c.relative(p))
                .map_err(|e| c.in_table(conf, &format!("upstreams.{name}"), e.field, &e.message))?;
            if let Some(before) =
                previous.and_then(|p| p.upstreams.iter().find(|u| *u.name == **name))
            {
                upstream.inherit_health(before);
            }
            upstream_ids.insert(name.as_str(), upstreams.len());
            upstreams.push(upstream);
        }

        let client_ip = ClientIpResolver::compile(&config.client_ip)
            .map_err(|e| c.at_key("client_ip", &format!("client_ip.trusted_proxies: {e}")))?;

        // Groups are named by routes and referred to by tiers.
        let mut groups: BTreeMap<&str, GroupId> = BTreeMap::new();
        for (i, route) in config.routes.iter().enumerate() {
            if let Some(group) = &route.get_ref().limit_group {
                if !rate_limit::valid_name(group) {
                    let key = format!("routes[{i}]");
                    return Err(c.in_table(route, &key, "limit_group", rate_limit::NAME_RULE));
                }
                let next = groups.len();
                groups.entry(group.as_str()).or_insert(next);
            }
        }
        let rate_limiter = c.rate_limiter(
            config,
            &groups,
            &mut authenticator,
            previous.map(|p| &p.rate_limiter),
        )?;

        let rate_limit_redis = config.rate_limit.redis.as_ref();
        let websocket = websocket::Settings::compile(
            &config.websocket,
            rate_limit_redis.map(|r| r.get_ref().url.as_str()),
        )
        .map_err(|(field, e)| c.at_key("websocket", &format!("websocket.{field}: {e}")))?;

        let mut router = Router::default();
        for (i, route) in config.routes.iter().enumerate() {
            c.route(i, route, &issuer_ids, &upstream_ids, &groups, &mut router)?;
        }

        Ok(Snapshot {
            source: source.path.clone(),
            server,
            router,
            authenticator,
            upstreams,
            responses,
            identity,
            client_ip,
            rate_limiter,
            websocket,
            logging: (
                Destination::parse(&config.logging.access_log, |p| c.relative(p)),
                Destination::parse(&config.logging.audit_log, |p| c.relative(p)),
            ),
            logs: Logs::default(),
        })
    }

    /// Opens the logs for serving, taking over `previous`'s writers where unchanged. Kept out
    /// of [`Snapshot::load`] so that `portcullis check` creates no files.
    pub fn open_logs(&mut self, previous: Option<&Snapshot>) -> Result<(), ConfigError> {
        let (access, audit) = &self.logging;
        self.logs = Logs::open(access, audit, previous.map(|p| &p.logs)).map_err(|(log, e)| {
            ConfigError::Log {
                path: self.source.display().to_string(),
                log,
                source: e,
            }
        })?;
        Ok(())
    }

    /// Why the gateway should not take traffic yet, if it should not: an issuer whose keys
    /// were never loaded, or an upstream whose health checks find no target up.
    pub fn unready_reasons(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        for issuer in self.authenticator.issuers() {
            if issuer.hmac.is_none() && issuer.keys.current().is_none() {
                reasons.push(format!("issuer {}: keys not loaded", issuer.name));
            }
        }
        for upstream in &self.upstreams {
            if !upstream.has_healthy_target() {
                reasons.push(format!("upstream {}: no healthy target", upstream.name));
            }
        }
        reasons
    }
}

struct Compiler<'a> {
    source: &'a SourceFile,
}

impl Compiler<'_> {
    /// An error about a whole top-level table.
    fn at_key(&self, key: &str, message: &str) -> ConfigError {
        let at = self
            .find_line(0, self.source.text.len(), &format!("[{key}]"))
            .unwrap_or(0);
        self.source.error(at, message.to_string())
    }

    /// An error about `field` of a table: points at the field's line when it is written there,
    /// at the `[key.field]` sub-table if it is one, at the table otherwise.
    fn in_table<T>(
        &self,
        table: &Spanned<T>,
        key: &str,
        field: &str,
        message: &str,
    ) -> ConfigError {
        // A table's span covers only its header; its own keys follow until the next header.
        let start = table.span().start;
        let at = self
            .field_line(table.span().end, field)
            .or_else(|| self.find_line(0, self.source.text.len(), &format!("[{key}.{field}]")))
            .unwrap_or(start);
        self.source.error(at, format!("{key}.{field}: {message}"))
    }

    fn field_line(&self, from: usize, field: &str) -> Option<usize> {
        let text = self.source.text.get(from..)?;
        let mut offset = from;
        for line in text.split_inclusive('\n') {
            let trimmed = line.trim_start();
            if trimmed.starts_with('[') {
                return None;
            }
            if let Some(rest) = trimmed.strip_prefix(field) {
                if rest.trim_start().starts_with('=') {
                    return Some(offset + (line.len() - trimmed.len()));
                }
            }
            offset += line.len();
        }
        None
    }

    fn find_line(&self, start: usize, end: usize, needle: &str) -> Option<usize> {
        self.source
            .text
            .get(start..end)?
            .find(needle)
            .map(|i| start + i)
    }

    fn relative(&self, path: &Path) -> PathBuf {
        // Paths in the config are relative to the config file, not to the working directory.
        match self.source.path.parent() {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_path_buf(),
        }
    }

    fn server(&self, config: &Config) -> Result<ServerSettings, ConfigError> {
        let s = &config.server;
        let err = |field: &str, m: &str| {
            let at = self
                .find_line(0, self.source.text.len(), "[server]")
                .map_or(0, |i| i + "[server]".len());
            let at = self.field_line(at, field).unwrap_or(at);
            self.source.error(at, format!("server.{field}: {m}"))
        };
        if s.listen.is_empty() {
            return Err(err("listen", "at least one address is needed"));
        }
        let listen = s
            .listen
            .iter()
            .map(|a| {
                a.parse::<SocketAddr>()
                    .map_err(|_| err("listen", &format!("{a:?} is not an ip:port address")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if s.threads == 0 {
            return Err(err("threads", "must be at least 1"));
        }
        let (tls_listen, tls) = match &s.tls {
            None => (Vec::new(), None),
            Some(t) => {
                let tls_err = |field: &str, m: &str| {
                    let at = self
                        .find_line(0, self.source.text.len(), "[server.tls]")
                        .unwrap_or(0);
                    let at = self
                        .field_line(at + "[server.tls]".len(), field)
                        .unwrap_or(at);
                    self.source.error(at, format!("server.tls.{field}: {m}"))
                };
                if t.listen.is_empty() {
                    return Err(tls_err("listen", "at least one address is needed"));
                }
                let listen = t
                    .listen
                    .iter()
                    .map(|a| {
                        a.parse::<SocketAddr>().map_err(|_| {
                            tls_err("listen", &format!("{a:?} is not an ip:port address"))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let edge = EdgeTls::compile(t, |p| self.relative(p))
                    .map_err(|e| tls_err(e.field, &e.message))?;
                (listen, Some(edge))
            }
        };
        let admin_listen = match &config.admin.listen {
            None => None,
            Some(a) => Some(a.parse::<SocketAddr>().map_err(|_| {
                self.at_key(
                    "admin",
                    &format!("admin.listen: {a:?} is not an ip:port address"),
                )
            })?),
        };
        Ok(ServerSettings {
            listen,
            threads: s.threads,
            work_stealing: s.work_stealing,
            grace_period: s.grace_period,
            drain_delay: s.drain_delay,
            pid_file: s.pid_file.clone(),
            upgrade_sock: s.upgrade_sock.clone(),
            admin_listen,
            tls_listen,
            tls,
            tls_fingerprint: s.tls.as_ref().map(|t| format!("{t:?}")),
        })
    }

    fn rate_limiter(
        &self,
        config: &Config,
        groups: &BTreeMap<&str, GroupId>,
        authenticator: &mut Authenticator,
        previous: Option<&RateLimiter>,
    ) -> Result<RateLimiter, ConfigError> {
        let conf = &config.rate_limit;
        let mut limiter = RateLimiter::new(conf, previous).map_err(|e| match &conf.redis {
            Some(redis) if e.field == "redis" => self.source.error(
                redis.span().start,
                format!("rate_limit.redis.{}", e.message),
            ),
            _ => self.at_key(
                "rate_limit",
                &format!("rate_limit.{}: {}", e.field, e.message),
            ),
        })?;
        let issuers: Vec<&str> = config.issuers.keys().map(String::as_str).collect();
        for (i, tier) in conf.tiers.iter().enumerate() {
            limiter
                .add_tier(tier.get_ref(), groups, &issuers, authenticator)
                .map_err(|e| {
                    let key = format!("rate_limit.tiers[{i}]");
                    self.in_table(tier, &key, e.field, &e.message)
                })?;
        }
        Ok(limiter)
    }

    fn issuer(
        &self,
        name: &str,
        spanned: &Spanned<IssuerConf>,
        previous: Option<&Snapshot>,
    ) -> Result<Issuer, ConfigError> {
        let conf = spanned.get_ref();
        let key = format!("issuers.{name}");
        let err = |field: &str, m: &str| self.in_table(spanned, &key, field, m);

        if conf.issuer.is_empty() {
            return Err(err("issuer", "must not be empty"));
        }
        if conf.audiences.is_empty() || conf.audiences.iter().any(String::is_empty) {
            return Err(err(
                "audiences",
                "list the accepted `aud` values; a token for another service must not pass",
            ));
        }
        if conf.algorithms.is_empty() {
            return Err(err("algorithms", "at least one algorithm is needed"));
        }
        let algorithms: Vec<jsonwebtoken::Algorithm> = conf
            .algorithms
            .iter()
            .map(|a| format!("{a:?}").parse())
            .collect::<Result<_, _>>()
            .map_err(|_| err("algorithms", "unsupported algorithm"))?;
        let uses_hmac = algorithms
            .iter()
            .any(|a| a.family() == jsonwebtoken::AlgorithmFamily::Hmac);
        let uses_keys = algorithms
            .iter()
            .any(|a| a.family() != jsonwebtoken::AlgorithmFamily::Hmac);

        let secret = self
            .secret(
                conf.hmac_secret_file.as_deref(),
                conf.hmac_secret_env.as_deref(),
                ("hmac_secret_file", "hmac_secret_env"),
            )
            .map_err(|(field, m)| err(field, &m))?;
        let hmac = match secret {
            None if uses_hmac => {
                return Err(err(
                    "algorithms",
                    "HS* algorithms need hmac_secret_file or hmac_secret_env",
                ))
            }
            None => None,
            Some(_) if !uses_hmac => {
                return Err(err(
                    "algorithms",
                    "a shared secret is configured but no HS* algorithm is allowed",
                ))
            }
            Some((field, secret)) => Some(hmac_key(&secret).map_err(|m| err(field, m))?),
        };

        let discovery_url = match (&conf.discovery_url, conf.discovery) {
            (Some(url), _) => Some(url.clone()),
            (None, true) => Some(format!(
                "{}/.well-known/openid-configuration",
                conf.issuer.trim_end_matches('/')
            )),
            (None, false) => None,
        };
        let introspection = match &conf.introspection {
            // Turned off, the table's other settings may stay as they are, unchecked.
            None => None,
            Some(i) if i.mode == IntrospectionMode::Off => None,
            Some(i) => {
                Some(self.introspector(name, spanned, i, discovery_url.as_deref(), previous)?)
            }
        };
        let discovery_key = if conf.discovery_url.is_some() {
            "discovery_url"
        } else {
            "discovery"
        };
        let sources: Vec<&str> = [
            (conf.jwks_file.is_some(), "jwks_file"),
            (conf.jwks_url.is_some(), "jwks_url"),
            (discovery_url.is_some(), discovery_key),
        ]
        .into_iter()
        .filter_map(|(set, key)| set.then_some(key))
        .collect();
        let source_count = sources.len();
        if let [first, second, ..] = sources[..] {
            return Err(err(
                second,
                &format!("choose one key source; {first} is set too"),
            ));
        }
        if uses_keys && source_count == 0 {
            return Err(err(
                "algorithms",
                "asymmetric algorithms need keys: set jwks_file, jwks_url, or discovery",
            ));
        }
        if !uses_keys && source_count > 0 {
            return Err(err(
                "algorithms",
                "a key source is configured but only HS* algorithms are allowed",
            ));
        }
        let k = &conf.keys;
        if k.min_refresh_interval > k.max_refresh_interval {
            return Err(err(
                "keys",
                "min_refresh_interval is above max_refresh_interval",
            ));
        }

        let keys = if let Some(file) = &conf.jwks_file {
            let path = self.relative(file);
            Arc::new(KeyStore::from_file(&path).map_err(|e| err("jwks_file", &e))?)
        } else {
            let source = match (&conf.jwks_url, discovery_url) {
                (Some(url), _) => {
                    check_url(url).map_err(|m| err("jwks_url", m))?;
                    KeySource::Url(url.clone())
                }
                (None, Some(url)) => {
                    check_url(&url).map_err(|m| err("discovery_url", m))?;
                    KeySource::Discovery {
                        url,
                        issuer: conf.issuer.clone(),
                    }
                }
                // HS*-only issuers keep an empty store that is never fetched.
                (None, None) => KeySource::File,
            };
            let reused = previous.and_then(|p| {
                p.authenticator
                    .issuers()
                    .iter()
                    .find(|i| {
                        &*i.name == name && *i.keys.source() == source && i.keys.refresh_conf() == k
                    })
                    .map(|i| i.keys.clone())
            });
            reused.unwrap_or_else(|| Arc::new(KeyStore::remote(source, k.clone())))
        };

        let claims = ClaimMap::compile(&conf.claims).map_err(|e| err("claims", &e))?;
        let service_tokens =
            ServiceTokenRule::parse(&conf.service_tokens).map_err(|e| err("service_tokens", &e))?;
        Ok(Issuer {
            name: name.into(),
            iss: conf.issuer.as_str().into(),
            audiences: conf.audiences.iter().map(|a| a.as_str().into()).collect(),
            algorithms,
            leeway_secs: conf.clock_skew.as_secs(),
            allow_non_expiring: conf.allow_non_expiring,
            keys,
            hmac,
            claims,
            service_tokens,
            require_bound_tokens: conf.require_bound_tokens,
            introspection,
        })
    }

    /// `[issuers.NAME.introspection]`; the previous config's introspector is kept, with what
    /// it remembers, when nothing about it changed.
    fn introspector(
        &self,
        name: &str,
        spanned: &Spanned<IssuerConf>,
        conf: &IntrospectionConf,
        discovery_url: Option<&str>,
        previous: Option<&Snapshot>,
    ) -> Result<Arc<Introspector>, ConfigError> {
        let issuer = spanned.get_ref();
        let key = format!("issuers.{name}.introspection");
        let header = format!("[{key}]");
        let err = |field: &str, m: &str| {
            let at = self
                .find_line(0, self.source.text.len(), &header)
                .map(|at| self.field_line(at + header.len(), field).unwrap_or(at))
                .unwrap_or(spanned.span().start);
            self.source.error(at, format!("{key}.{field}: {m}"))
        };
        if conf.client_id.is_empty() {
            return Err(err("client_id", "must not be empty"));
        }
        let secret = match self.secret(
            conf.client_secret_file.as_deref(),
            conf.client_secret_env.as_deref(),
            ("client_secret_file", "client_secret_env"),
        ) {
            Err((field, m)) => return Err(err(field, &m)),
            Ok(None) => {
                return Err(err(
                    "client_secret_file",
                    "the gateway authenticates to the endpoint: set client_secret_file or \
                     client_secret_env",
                ))
            }
            Ok(Some((field, secret))) => String::from_utf8(secret)
                .map_err(|_| err(field, "the client secret is not UTF-8"))?,
        };
        for (field, value) in [("timeout", conf.timeout), ("retry_after", conf.retry_after)] {
            if value.is_zero() {
                return Err(err(field, "must be more than 0s"));
            }
        }
        if conf.max_concurrent == 0 || conf.cache_max_entries == 0 {
            let field = if conf.max_concurrent == 0 {
                "max_concurrent"
            } else {
                "cache_max_entries"
            };
            return Err(err(field, "must be at least 1"));
        }
        let endpoint = match (&conf.endpoint, discovery_url) {
            (Some(url), _) => {
                check_url(url).map_err(|m| err("endpoint", m))?;
                IntrospectionEndpoint::Fixed(url.clone())
            }
            (None, Some(url)) => IntrospectionEndpoint::Discovered {
                url: url.to_owned(),
                issuer: issuer.issuer.clone(),
            },
            (None, None) => {
                return Err(err(
                    "endpoint",
                    "set the endpoint, or discovery = true on the issuer to find it",
                ))
            }
        };
        let reused = previous.and_then(|p| {
            p.authenticator
                .issuers()
                .iter()
                .filter(|i| &*i.name == name)
                .find_map(|i| i.introspection.clone())
                .filter(|i| i.same_as(conf, &secret, &endpoint))
        });
        Ok(reused.unwrap_or_else(|| {
            Arc::new(Introspector::new(
                conf.clone(),
                secret,
                name.into(),
                endpoint,
            ))
        }))
    }

    /// A secret kept out of the config file, from a file (a trailing newline dropped) or an
    /// environment variable; with the key it was read through.
    fn secret<'k>(
        &self,
        file: Option<&std::path::Path>,
        env: Option<&str>,
        (file_key, env_key): (&'k str, &'k str),
    ) -> Result<Option<Keyed<'k, Vec<u8>>>, Keyed<'k, String>> {
        match (file, env) {
            (Some(_), Some(_)) => Err((env_key, format!("set {file_key} or {env_key}, not both"))),
            (None, None) => Ok(None),
            (Some(file), None) => {
                let path = self.relative(file);
                let secret = std::fs::read(&path)
                    .map_err(|e| (file_key, format!("{}: {e}", path.display())))?;
                Ok(Some((file_key, trim_newline(&secret).to_vec())))
            }
            (None, Some(var)) => {
                let secret = std::env::var(var)
                    .map_err(|_| (env_key, format!("environment variable {var} is not set")))?;
                Ok(Some((env_key, secret.into_bytes())))
            }
        }
    }

    fn route(
        &self,
        i: usize,
        spanned: &Spanned<RouteConf>,
        issuer_ids: &BTreeMap<&str, IssuerId>,
        upstream_ids: &BTreeMap<&str, UpstreamId>,
        groups: &BTreeMap<&str, GroupId>,
        router: &mut Router<Route>,
    ) -> Result<(), ConfigError> {
        let r = spanned.get_ref();
        let key = format!("routes[{i}]");
        let err = |field: &str, m: &str| self.in_table(spanned, &key, field, m);

        let (raw_path, kind, field) = match (&r.path, &r.path_prefix) {
            (Some(p), None) => (p, PathKind::Exact, "path"),
            (None, Some(p)) => (p, PathKind::Prefix, "path_prefix"),
            _ => return Err(err("path", "set exactly one of path and path_prefix")),
        };
        let path = route::normalize(raw_path).map_err(|e| err(field, &e.to_string()))?;
        let segments = route::parse_pattern(&path, kind).map_err(|e| err(field, &e))?;
        let methods = MethodSet::parse(r.methods.as_deref()).map_err(|e| err("methods", &e))?;
        let host = r.host.as_deref().map(str::to_ascii_lowercase);
        if host.as_deref() == Some("") {
            return Err(err(
                "host",
                "must not be empty (leave it out to match any host)",
            ));
        }

        let action = match (&r.upstream, &r.respond) {
            (Some(name), None) => match upstream_ids.get(name.get_ref().as_str()) {
                Some(&id) => Action::Forward(id),
                None => {
                    let known: Vec<&str> = upstream_ids.keys().copied().collect();
                    let m = format!(
                        "no upstream named {:?} (defined: {})",
                        name.get_ref(),
                        known.join(", ")
                    );
                    return Err(self.source.error_at(name, &format!("{key}.upstream"), &m));
                }
            },
            (None, Some(respond)) => {
                if !(100..=599).contains(&respond.status) {
                    return Err(err("respond", "status must be between 100 and 599"));
                }
                let content_type = HeaderValue::from_str(&respond.content_type)
                    .map_err(|_| err("respond", "content_type is not a valid header value"))?;
                Action::Respond(Reply::new(
                    respond.status,
                    content_type,
                    Bytes::from(respond.body.clone()),
                ))
            }
            _ => return Err(err("upstream", "set exactly one of upstream and respond")),
        };

        let issuers = match &r.issuers {
            None => None,
            Some(names) => Some(
                names
                    .iter()
                    .map(|n| {
                        issuer_ids
                            .get(n.get_ref().as_str())
                            .copied()
                            .ok_or_else(|| {
                                let known: Vec<&str> = issuer_ids.keys().copied().collect();
                                let m = format!(
                                    "no issuer named {:?} (defined: {})",
                                    n.get_ref(),
                                    known.join(", ")
                                );
                                self.source.error_at(n, &format!("{key}.issuers"), &m)
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };

        let policy = match r.access {
            Access::Public => {
                if !r.allow.is_empty() || issuers.is_some() || r.callers.is_some() {
                    return Err(err(
                        "access",
                        "a public route takes no `allow` rules, `issuers` or `callers`",
                    ));
                }
                Policy::default()
            }
            Access::Authenticated => {
                if issuer_ids.is_empty() {
                    return Err(err(
                        "access",
                        "authenticated routes need at least one [issuers.NAME]",
                    ));
                }
                let mut rules = Vec::with_capacity(r.allow.len());
                for rule in &r.allow {
                    rules.push(Rule {
                        methods: MethodSet::parse(rule.methods.as_deref())
                            .map_err(|e| err("methods", &e))?,
                        roles: rule.roles.iter().map(|s| s.as_str().into()).collect(),
                        scopes: rule.scopes.iter().map(|s| s.as_str().into()).collect(),
                    });
                }
                Policy {
                    callers: r.callers.unwrap_or(RouteCallers::Users),
                    rules,
                }
            }
        };

        let websocket = match &r.websocket {
            None => None,
            Some(_) if matches!(action, Action::Respond(_)) => {
                return Err(err("websocket", "WebSockets need an `upstream`"));
            }
            Some(ws) if ws.token_from.is_empty() => {
                return Err(err("websocket", "token_from needs at least one source"));
            }
            Some(ws) if r.access == Access::Public && ws.token_from != [TokenSource::Header] => {
                return Err(err(
                    "websocket",
                    "a public route reads no token: leave out token_from",
                ));
            }
            Some(ws) => Some(ws.token_from.clone()),
        };

        let route = Route {
            name: r.name.clone().unwrap_or_else(|| raw_path.clone()).into(),
            access: r.access,
            issuers,
            policy,
            limit_group: r
                .limit_group
                .as_deref()
                .and_then(|g| groups.get(g).copied()),
            action,
            websocket,
        };
        let key_in_table = RouteKey {
            host: host.as_deref(),
            segments: &segments,
            kind,
            methods,
        };
        router.add(key_in_table, route).map_err(|other| {
            err(
                field,
                &format!(
                    "overlaps route {:?} on the same path and methods",
                    other.name
                ),
            )
        })
    }
}

/// A value and the config key it came from.
type Keyed<'k, T> = (&'k str, T);

fn trim_newline(secret: &[u8]) -> &[u8] {
    let secret = secret.strip_suffix(b"\n").unwrap_or(secret);
    secret.strip_suffix(b"\r").unwrap_or(secret)
}

fn hmac_key(secret: &[u8]) -> Result<DecodingKey, &'static str> {
    // RFC 7518 §3.2: a key at least as long as the hash output.
    if secret.len() < 32 {
        return Err("the shared secret must be at least 32 bytes");
    }
    Ok(DecodingKey::from_secret(secret))
}

fn check_url(url: &str) -> Result<(), &'static str> {
    if url.starts_with("https://") || url.starts_with("http://") {
        Ok(())
    } else {
        Err("must be an http:// or https:// URL")
    }
}

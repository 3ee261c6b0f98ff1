//! The compiled, immutable form of a config: what the request path reads.
//!
//! Each part compiles its own table (and reports the first problem as an [`Invalid`] naming
//! its key); this module composes them and places errors at their file, line and key. A
//! snapshot is shared through one `ArcSwap`; each request takes one `Arc` of it and sees one
//! consistent config from start to end.

pub mod explain;
mod routes;
mod server;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::authenticate::{AddError, Authenticator, Issuer, IssuerContext};
use crate::client_ip::ClientIpResolver;
use crate::config::{self, Config, ConfigError, Invalid, KeyPath, Source};
use crate::identity::IdentityHeaders;
use crate::logs::{Destination, Logs};
use crate::rate_limit::RateLimiter;
use crate::respond::Responses;
use crate::route::Router;
use crate::session::{self, Sessions};
use crate::token_service::{self, TokenService};
use crate::trace::Tracer;
use crate::upstream::dns::{Answers, Resolver};
use crate::upstream::{self, Upstream, Upstreams};
use crate::websocket;

pub use routes::{Action, BodyPolicy, Route};
pub use server::ServerSettings;

/// The config the gateway currently serves, swapped atomically as a whole.
pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;

pub struct Snapshot {
    pub source: PathBuf,
    pub server: ServerSettings,
    pub router: Router<Route>,
    pub authenticator: Authenticator,
    pub(crate) upstreams: Upstreams,
    pub(crate) responses: Responses,
    pub(crate) identity: IdentityHeaders,
    pub(crate) client_ip: ClientIpResolver,
    pub rate_limiter: RateLimiter,
    pub websocket: websocket::Settings,
    /// Where the logs go, as configured.
    pub(crate) logging: (Destination, Destination),
    /// The open logs; empty until [`Snapshot::open_logs`].
    pub(crate) logs: Logs,
    /// `[dns]`, and what the upstreams' host names resolved to.
    pub(crate) resolver: Resolver,
    pub(crate) answers: Answers,
    /// `[tracing]`: which requests are traced, and their spans waiting for export.
    pub tracer: Option<Tracer>,
    /// `[token_service]`: the gateway's own anonymous session tokens.
    pub token_service: Option<TokenService>,
    /// `[sessions]`: browser logins and their sessions.
    pub sessions: Option<Sessions>,
    /// The parsed file this snapshot came from, to compile it again with new DNS answers.
    origin: Option<Arc<(Config, Source)>>,
}

impl Snapshot {
    /// Loads and compiles a config file.
    pub fn load(path: &Path, previous: Option<&Snapshot>) -> Result<Snapshot, ConfigError> {
        let (config, source) = config::load(path)?;
        let mut snapshot =
            Self::compile(&config, &source, previous).map_err(|e| source.locate(e))?;
        snapshot.origin = Some(Arc::new((config, source)));
        Ok(snapshot)
    }

    /// Loads and compiles a config file without looking up the upstreams' host names: each
    /// stands for an unroutable address (`portcullis check --skip-dns`).
    pub fn load_unresolved(path: &Path) -> Result<Snapshot, ConfigError> {
        let (config, source) = config::load(path)?;
        let answers = config
            .upstreams
            .values()
            .flat_map(upstream::host_names)
            .map(|name| (name.to_string(), vec![upstream::dns::unresolved(name)]))
            .collect();
        Self::compile_with(&config, &source, None, Some(answers)).map_err(|e| source.locate(e))
    }

    /// This snapshot's config compiled again with new DNS answers (all of them, old and new),
    /// taking over everything else as a reload does. `None` for a snapshot not loaded from
    /// a file.
    pub fn with_answers(&self, answers: Answers) -> Option<Result<Snapshot, ConfigError>> {
        let origin = self.origin.clone()?;
        let (config, source) = &*origin;
        let next = Self::compile_with(config, source, Some(self), Some(answers))
            .map_err(|e| source.locate(e))
            .and_then(|mut next| {
                next.origin = Some(origin.clone());
                next.open_logs(Some(self))?;
                Ok(next)
            });
        Some(next)
    }

    /// The host names the upstreams' targets are given by, with what they resolved to.
    pub fn dns(&self) -> (&Resolver, &Answers) {
        (&self.resolver, &self.answers)
    }

    /// Compiles a parsed config. Key stores, introspectors, rate-limit stores and target
    /// health of unchanged parts are taken over from `previous`, so a reload neither drops
    /// nor refetches what they hold.
    pub fn compile(
        config: &Config,
        source: &Source,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, Invalid> {
        Self::compile_with(config, source, previous, None)
    }

    /// [`Snapshot::compile`], with the upstreams' host names resolved now unless `answers`
    /// are given.
    fn compile_with(
        config: &Config,
        source: &Source,
        previous: Option<&Snapshot>,
        answers: Option<Answers>,
    ) -> Result<Snapshot, Invalid> {
        let root = KeyPath::root();
        let relative = |p: &Path| source.relative(p);
        let server = ServerSettings::compile(config, relative)?;
        let responses = Responses::compile(&config.responses, &root.key("responses"))?;
        let identity =
            IdentityHeaders::compile(&config.identity_headers, &root.key("identity_headers"))?;

        let mut authenticator = Authenticator::default();
        authenticator.cache_verified(config.token_cache.max_entries);
        let cx = IssuerContext {
            relative: &relative,
            previous: previous.map(|p| &p.authenticator),
        };
        for (name, conf) in &config.issuers {
            let at = root.key("issuers").key(name);
            let issuer = Issuer::compile(name, conf, &at, &cx)?;
            authenticator.add(issuer).map_err(|e| match e {
                AddError::SameIss(other) => Invalid::new(
                    at.key("issuer"),
                    format!("same `issuer` as issuers.{other}"),
                ),
                AddError::SecondIntrospector(other) => Invalid::new(
                    at.key("introspection"),
                    format!(
                        "issuers.{other} introspects tokens too; a token that is not a JWT \
                         names no issuer, so only one issuer may introspect"
                    ),
                ),
            })?;
        }

        let resolver = Resolver::compile(&config.dns, &root.key("dns"))?;
        let answers = match answers {
            Some(a) => a,
            None => resolve(config, &resolver)?,
        };
        let mut upstreams = Upstreams::default();
        for (name, conf) in &config.upstreams {
            let at = root.key("upstreams").key(name);
            let mut upstream = Upstream::compile(name, conf, &at, relative, &answers)?;
            if let Some(before) =
                previous.and_then(|p| p.upstreams.find(name).map(|id| &p.upstreams[id]))
            {
                upstream.inherit_health(before);
            }
            upstreams.add(upstream);
        }

        let client_ip = ClientIpResolver::compile(&config.client_ip, &root.key("client_ip"))?;

        // Groups are named by routes and referred to by tiers.
        let groups = routes::limit_groups(&config.routes)?;
        let at = root.key("rate_limit");
        let mut rate_limiter =
            RateLimiter::new(&config.rate_limit, &at, previous.map(|p| &p.rate_limiter))?;

        // The gateway's own issuer, before the routes and tiers that may name it.
        let token_service = match &config.token_service {
            None => None,
            Some(conf) => Some(token_service(
                conf,
                config,
                &relative,
                &rate_limiter,
                &mut authenticator,
                previous.and_then(|p| p.token_service.as_ref()),
            )?),
        };

        for (i, tier) in config.rate_limit.tiers.iter().enumerate() {
            let at = at.key("tiers").index(i);
            rate_limiter.add_tier(tier, &at, &groups, &mut authenticator)?;
        }

        let websocket = websocket::Settings::compile(
            &config.websocket,
            &root.key("websocket"),
            config.rate_limit.redis.as_ref().map(|r| r.url.as_str()),
        )?;

        let sessions = match &config.sessions {
            None => None,
            Some(conf) => Some(sessions(
                conf,
                config,
                &relative,
                &authenticator,
                previous.and_then(|p| p.sessions.as_ref()),
            )?),
        };

        let names = routes::Names {
            max_body_size: server.max_body_size,
            upstreams: &upstreams,
            groups: &groups,
            sessions: sessions.as_ref(),
        };
        let router = routes::compile(&config.routes, &names, &mut authenticator)?;

        let tracer = match &config.tracing {
            Some(conf) => Some(Tracer::compile(
                conf,
                &root.key("tracing"),
                previous.and_then(|p| p.tracer.as_ref()),
            )?),
            None => None,
        };

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
                Destination::parse(&config.logging.access_log, relative),
                Destination::parse(&config.logging.audit_log, relative),
            ),
            logs: Logs::default(),
            resolver,
            answers,
            tracer,
            token_service,
            sessions,
            origin: None,
        })
    }

    /// What the config holds, in a few words: `N routes, N issuers, N upstreams`.
    pub fn summary(&self) -> String {
        format!(
            "{} routes, {} issuers, {} upstreams",
            self.router.routes().len(),
            self.authenticator.issuers().len(),
            self.upstreams.len()
        )
    }

    /// Flushes the logs: the last lines before the process exits.
    pub fn flush_logs(&self) {
        self.logs.flush();
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
        for (_, upstream) in self.upstreams.iter() {
            if !upstream.has_healthy_target() {
                reasons.push(format!("upstream {}: no healthy target", upstream.name));
            }
            if upstream.all_circuits_open() {
                reasons.push(format!(
                    "upstream {}: every target's circuit is open",
                    upstream.name
                ));
            }
        }
        reasons
    }
}

/// Resolves every host name the upstreams' targets are given by; one that does not resolve
/// is an error at its upstream's `targets`.
/// Compiles `[token_service]` and adds its issuer to `authenticator`.
fn token_service(
    conf: &config::TokenServiceConf,
    config: &Config,
    relative: &dyn Fn(&Path) -> PathBuf,
    limiter: &RateLimiter,
    authenticator: &mut Authenticator,
    previous: Option<&TokenService>,
) -> Result<TokenService, Invalid> {
    let at = KeyPath::root().key("token_service");
    if config.issuers.contains_key(&conf.name) {
        let m = format!("[issuers.{}] has this name too", conf.name);
        return Err(Invalid::new(at.key("name"), m));
    }
    let cx = token_service::Context {
        relative,
        limiter,
        jti: authenticator.claim_slot(
            crate::authenticate::ClaimPath::parse("jti")
                .map_err(|e| Invalid::new(at.clone(), e))?,
        ),
        redis: config.rate_limit.redis.as_ref(),
        previous,
    };
    let service = TokenService::compile(conf, &at, &cx)?;
    let issuer = Issuer::own(
        &conf.name,
        service.issuer(),
        &conf.audiences,
        service.algorithms(),
        service.jwks(),
    )
    .map_err(|e| Invalid::new(at.key("key_file"), e))?;
    // It introspects nothing, so only its `iss` can clash.
    authenticator.add(issuer).map_err(|e| {
        let other = match e {
            AddError::SameIss(other) | AddError::SecondIntrospector(other) => other,
        };
        Invalid::new(
            at.key("issuer"),
            format!("same `issuer` as issuers.{other}"),
        )
    })?;
    Ok(service)
}

/// Compiles `[sessions]`, whose issuer must be configured already.
fn sessions(
    conf: &config::SessionsConf,
    config: &Config,
    relative: &dyn Fn(&Path) -> PathBuf,
    authenticator: &Authenticator,
    previous: Option<&Sessions>,
) -> Result<Sessions, Invalid> {
    let issuer = config.issuers.get(&conf.issuer);
    let discovery_url = issuer.and_then(|i| match (&i.discovery_url, i.discovery) {
        (Some(url), _) => Some(url.clone()),
        (None, true) => Some(format!(
            "{}/.well-known/openid-configuration",
            i.issuer.trim_end_matches('/')
        )),
        (None, false) => None,
    });
    let cx = session::Context {
        relative,
        authenticator,
        discovery_url,
        issuer: authenticator.find(&conf.issuer),
        redis: config.rate_limit.redis.as_ref(),
        previous,
    };
    Sessions::compile(conf, &KeyPath::root().key("sessions"), &cx)
}

fn resolve(config: &Config, resolver: &Resolver) -> Result<Answers, Invalid> {
    let mut names: Vec<(String, &str)> = Vec::new();
    for (upstream, conf) in &config.upstreams {
        for name in upstream::host_names(conf) {
            names.push((name.to_string(), upstream));
        }
    }
    let targets: Vec<String> = names.iter().map(|(n, _)| n.clone()).collect();
    let mut answers = Answers::new();
    for ((target, result), (_, upstream)) in resolver
        .lookup_all_blocking(&targets)
        .into_iter()
        .zip(&names)
    {
        match result {
            Ok(answer) => {
                answers.insert(target, answer.addrs);
            }
            Err(e) => {
                let at = KeyPath::root()
                    .key("upstreams")
                    .key(upstream)
                    .key("targets");
                return Err(Invalid::new(at, format!("cannot resolve {target:?}: {e}")));
            }
        }
    }
    Ok(answers)
}

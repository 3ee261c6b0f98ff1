//! One identity provider, compiled from `[issuers.NAME]`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

use super::claims::{ClaimMap, ClaimPath};
use super::introspect::{Endpoint, Introspector};
use super::keys::{KeySource, KeyStore};
use super::Authenticator;
use crate::config::secret::{client_secret, read_secret};
use crate::config::{
    IntrospectionConf, IntrospectionMode, Invalid, IssuerConf, KeyPath, ServiceTokens,
    TokenTypeConf,
};

/// How an issuer's service tokens are told apart from user tokens.
#[derive(Debug, Clone)]
pub enum ServiceTokenRule {
    /// `sub` equals the client id (RFC 9068 §2.2).
    SubIsClient,
    /// The claim is present and not empty.
    Claim(ClaimPath),
    /// This issuer issues no service tokens.
    None,
}

/// One identity provider, compiled.
pub struct Issuer {
    pub name: Arc<str>,
    pub iss: Box<str>,
    pub audiences: Vec<Box<str>>,
    pub algorithms: Vec<Algorithm>,
    pub leeway_secs: u64,
    pub allow_non_expiring: bool,
    pub keys: Arc<KeyStore>,
    /// Key for HS* algorithms, from a secret outside the config file.
    pub hmac: Option<DecodingKey>,
    pub claims: ClaimMap,
    pub service_tokens: ServiceTokenRule,
    pub require_bound_tokens: bool,
    pub introspection: Option<Arc<Introspector>>,
    /// What marks this issuer's access tokens; `None`: unchecked.
    pub token_type: Option<TokenType>,
}

/// What marks an issuer's access tokens (RFC 8725 §3.11).
#[derive(Debug, Clone)]
pub struct TokenType {
    /// Accepted header `typ` values, lower case, without `application/`; empty: any.
    header: Vec<Box<str>>,
    /// A claim that must hold one of the values.
    claim: Option<(ClaimPath, Vec<Box<str>>)>,
}

impl TokenType {
    fn compile(conf: &TokenTypeConf, at: &KeyPath) -> Result<Self, Invalid> {
        if conf.header.is_empty() && conf.claim.is_none() {
            return Err(Invalid::new(at.clone(), "set header, claim, or both"));
        }
        let claim = match &conf.claim {
            None => None,
            Some(c) => {
                let path =
                    ClaimPath::parse(&c.name).map_err(|e| Invalid::new(at.key("claim"), e))?;
                if c.values.is_empty() {
                    return Err(Invalid::new(
                        at.key("claim"),
                        "values must list at least one",
                    ));
                }
                Some((path, c.values.iter().map(|v| v.as_str().into()).collect()))
            }
        };
        Ok(Self {
            header: conf
                .header
                .iter()
                .map(|t| normalize_typ(t).into())
                .collect(),
            claim,
        })
    }

    /// Whether a token with header `typ` and these claims is an access token.
    pub(super) fn admits(
        &self,
        typ: Option<&str>,
        claims: &serde_json::Map<String, serde_json::Value>,
    ) -> bool {
        let header_ok = self.header.is_empty()
            || typ.is_some_and(|t| self.header.iter().any(|h| **h == *normalize_typ(t)));
        let claim_ok = self.claim.as_ref().is_none_or(|(path, values)| {
            path.get(claims)
                .and_then(|v| v.as_str())
                .is_some_and(|v| values.iter().any(|x| **x == *v))
        });
        header_ok && claim_ok
    }
}

/// `typ` as RFC 7515 §4.1.9 compares it: without case, `application/` left out.
fn normalize_typ(typ: &str) -> String {
    let lower = typ.to_ascii_lowercase();
    match lower.strip_prefix("application/") {
        Some(rest) => rest.to_string(),
        None => lower,
    }
}

/// What compiling an issuer reads besides its table.
pub struct Context<'a> {
    /// Resolves paths against the config file's directory.
    pub relative: &'a dyn Fn(&Path) -> PathBuf,
    /// The running config's issuers: unchanged key stores and introspectors are kept, with
    /// what they hold, so a reload neither drops keys nor refetches them.
    pub previous: Option<&'a Authenticator>,
}

impl Issuer {
    /// Whether this issuer asks its provider about tokens in `mode`.
    pub(super) fn introspects(&self, mode: IntrospectionMode) -> Option<&Introspector> {
        self.introspection.as_deref().filter(|i| i.mode() == mode)
    }

    /// Compiles `[issuers.NAME]`, found at `at`.
    pub fn compile(
        name: &str,
        conf: &IssuerConf,
        at: &KeyPath,
        cx: &Context<'_>,
    ) -> Result<Issuer, Invalid> {
        let err = |field: &str, m: &str| Invalid::new(at.key(field), m);
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
        let algorithms: Vec<Algorithm> = conf.algorithms.iter().map(|&a| a.into()).collect();
        let uses_hmac = algorithms
            .iter()
            .any(|a| a.family() == AlgorithmFamily::Hmac);
        let uses_keys = algorithms
            .iter()
            .any(|a| a.family() != AlgorithmFamily::Hmac);

        let secret = read_secret(
            conf.hmac_secret_file.as_deref(),
            conf.hmac_secret_env.as_deref(),
            at,
            ("hmac_secret_file", "hmac_secret_env"),
            cx.relative,
        )?;
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
            Some((key, secret)) => Some(hmac_key(&secret).map_err(|m| Invalid::new(key, m))?),
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
            Some(i) => Some(introspector(
                name,
                conf,
                i,
                &at.key("introspection"),
                discovery_url.as_deref(),
                cx,
            )?),
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
        if let [first, second, ..] = sources[..] {
            return Err(err(
                second,
                &format!("choose one key source; {first} is set too"),
            ));
        }
        if uses_keys && sources.is_empty() {
            return Err(err(
                "algorithms",
                "asymmetric algorithms need keys: set jwks_file, jwks_url, or discovery",
            ));
        }
        if !uses_keys && !sources.is_empty() {
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
            let path = (cx.relative)(file);
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
            let reused = cx.previous.and_then(|p| {
                p.issuers()
                    .iter()
                    .find(|i| {
                        &*i.name == name && *i.keys.source() == source && i.keys.refresh_conf() == k
                    })
                    .map(|i| i.keys.clone())
            });
            reused.unwrap_or_else(|| Arc::new(KeyStore::remote(source, k.clone())))
        };

        let claims = ClaimMap::compile(&conf.claims).map_err(|e| err("claims", &e))?;
        let service_tokens = match &conf.service_tokens {
            ServiceTokens::SubIsClient => ServiceTokenRule::SubIsClient,
            ServiceTokens::None => ServiceTokenRule::None,
            ServiceTokens::Claim(path) => ServiceTokenRule::Claim(
                ClaimPath::parse(path).map_err(|e| err("service_tokens", &e))?,
            ),
        };
        let token_type = conf
            .token_type
            .as_ref()
            .map(|t| TokenType::compile(t, &at.key("token_type")))
            .transpose()?;
        Ok(Issuer {
            token_type,
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
}

impl Issuer {
    /// The gateway itself as an issuer (`[token_service]`): its tokens carry `typ: at+jwt`, are
    /// signed with `algorithm` by the key whose public half is `jwks`, and have users' claims.
    pub fn own(
        name: &str,
        iss: &str,
        audiences: &[String],
        algorithms: &[Algorithm],
        jwks: &[u8],
    ) -> Result<Issuer, String> {
        let defaults = crate::config::ClaimsConf::default();
        Ok(Issuer {
            name: name.into(),
            iss: iss.into(),
            audiences: audiences.iter().map(|a| a.as_str().into()).collect(),
            algorithms: algorithms.to_vec(),
            // Its own clock: a little leeway for other instances' clocks only.
            leeway_secs: 5,
            allow_non_expiring: false,
            keys: Arc::new(KeyStore::from_document(jwks)?),
            hmac: None,
            claims: ClaimMap::compile(&defaults)?,
            service_tokens: ServiceTokenRule::None,
            require_bound_tokens: false,
            introspection: None,
            token_type: Some(TokenType {
                header: vec!["at+jwt".into()],
                claim: None,
            }),
        })
    }
}

/// `[issuers.NAME.introspection]` (at `at`); the running config's introspector is kept, with
/// what it remembers, when nothing about it changed.
fn introspector(
    name: &str,
    issuer: &IssuerConf,
    conf: &IntrospectionConf,
    at: &KeyPath,
    discovery_url: Option<&str>,
    cx: &Context<'_>,
) -> Result<Arc<Introspector>, Invalid> {
    let err = |field: &str, m: &str| Invalid::new(at.key(field), m);
    if conf.client_id.is_empty() {
        return Err(err("client_id", "must not be empty"));
    }
    let secret = client_secret(
        conf.client_secret_file.as_deref(),
        conf.client_secret_env.as_deref(),
        at,
        cx.relative,
    )?;
    for (field, value) in [("timeout", conf.timeout), ("retry_after", conf.retry_after)] {
        if value.is_zero() {
            return Err(err(field, "must be more than 0s"));
        }
    }
    if conf.max_concurrent == 0 {
        return Err(err("max_concurrent", "must be at least 1"));
    }
    if conf.cache_max_entries == 0 {
        return Err(err("cache_max_entries", "must be at least 1"));
    }
    let endpoint = match (&conf.endpoint, discovery_url) {
        (Some(url), _) => {
            check_url(url).map_err(|m| err("endpoint", m))?;
            Endpoint::Fixed(url.clone())
        }
        (None, Some(url)) => Endpoint::Discovered {
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
    let reused = cx.previous.and_then(|p| {
        p.issuers()
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

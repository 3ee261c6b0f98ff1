//! Cross-origin calls from browsers (the Fetch standard's CORS protocol), per route: preflights
//! answered at the edge without a token, and the `Access-Control-*` headers on every answer to
//! an allowed origin, the gateway's own refusals included, so a page can read a 401 or a 429.

use http::header::{self, HeaderName, HeaderValue};
use http::Method;
use pingora_http::RequestHeader;

use crate::config::{CorsConf, Invalid, KeyPath};
use crate::route::MethodSet;

/// Response headers a page may read by default besides the CORS-safelisted ones: those the
/// gateway itself sets.
const EXPOSED_BY_DEFAULT: &str = "www-authenticate, retry-after, x-request-id, ratelimit, \
     ratelimit-policy, x-ratelimit-limit, x-ratelimit-remaining, x-ratelimit-reset";

/// Request headers a preflight may ask for by default.
const ALLOWED_BY_DEFAULT: &[&str] = &["authorization", "content-type"];

/// An allowed origin.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    Any,
    Exact(Box<str>),
    /// `https://*.example.com`: the scheme, then any non-empty subdomain of the suffix.
    Subdomains {
        scheme: Box<str>,
        suffix: Box<str>,
    },
}

impl Origin {
    fn parse(s: &str) -> Result<Self, String> {
        if s == "*" {
            return Ok(Origin::Any);
        }
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| format!("{s:?} is not an origin (scheme://host[:port])"))?;
        if !matches!(scheme, "http" | "https") || rest.is_empty() || rest.contains('/') {
            return Err(format!(
                "{s:?} is not an origin: http or https, a host, an optional port, no path"
            ));
        }
        let lower = s.to_ascii_lowercase();
        match rest.strip_prefix("*.") {
            Some(suffix) if !suffix.is_empty() && !suffix.contains('*') => Ok(Origin::Subdomains {
                scheme: format!("{scheme}://").into(),
                suffix: format!(".{}", suffix.to_ascii_lowercase()).into(),
            }),
            _ if rest.contains('*') => Err(format!(
                "{s:?}: a wildcard may only stand for the leading labels (https://*.example.com)"
            )),
            _ => Ok(Origin::Exact(lower.into())),
        }
    }

    fn admits(&self, origin: &str) -> bool {
        match self {
            Origin::Any => true,
            Origin::Exact(o) => o.eq_ignore_ascii_case(origin),
            Origin::Subdomains { scheme, suffix } => {
                let lower = origin.to_ascii_lowercase();
                lower.strip_prefix(&**scheme).is_some_and(|host| {
                    // The part before the port must end in the suffix, with a label before it.
                    let host = host.split(':').next().unwrap_or(host);
                    host.len() > suffix.len() && host.ends_with(&**suffix)
                })
            }
        }
    }
}

/// A route's CORS policy, compiled.
#[derive(Debug)]
pub struct Cors {
    origins: Vec<Origin>,
    methods: MethodSet,
    allow_methods: HeaderValue,
    /// Lowercase.
    allow_headers: Vec<Box<str>>,
    expose_headers: HeaderValue,
    credentials: bool,
    max_age: HeaderValue,
}

/// What to do with a preflight.
#[derive(Debug, PartialEq, Eq)]
pub enum Preflight {
    /// Answer 204 with these headers.
    Allowed(Vec<(HeaderName, HeaderValue)>),
    /// The origin, the method or a header is not allowed: 403, with no CORS headers, so the
    /// browser refuses the call.
    Refused(&'static str),
}

const VARY_ORIGIN: (HeaderName, HeaderValue) = (header::VARY, HeaderValue::from_static("Origin"));

impl Cors {
    /// Compiles `[routes.cors]` (at `at`) of a route taking `route_methods`.
    pub fn compile(
        conf: &CorsConf,
        route_methods: MethodSet,
        at: &KeyPath,
    ) -> Result<Self, Invalid> {
        if conf.allow_origins.is_empty() {
            return Err(Invalid::new(
                at.key("allow_origins"),
                "at least one origin is needed",
            ));
        }
        let origins = conf
            .allow_origins
            .iter()
            .enumerate()
            .map(|(i, o)| {
                Origin::parse(o).map_err(|m| {
                    Invalid::new(at.key("allow_origins"), m)
                        .pointing_at(at.key("allow_origins").index(i))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if conf.allow_credentials && origins.contains(&Origin::Any) {
            return Err(Invalid::new(
                at.key("allow_origins"),
                "\"*\" cannot go with allow_credentials: browsers refuse it, and reflecting any \
                 origin with credentials would let every site call with the user's cookies",
            ));
        }
        let methods = match &conf.allow_methods {
            None => route_methods,
            Some(list) => MethodSet::parse(Some(list))
                .map_err(|m| Invalid::new(at.key("allow_methods"), m))?,
        };
        // A preflight never asks for these; listing them would only widen the answer.
        let names: Vec<&str> = methods
            .names()
            .filter(|m| !matches!(*m, "OPTIONS" | "TRACE" | "CONNECT"))
            .collect();
        let header_list = |list: &[String], key: &str| -> Result<Vec<Box<str>>, Invalid> {
            list.iter()
                .map(|h| {
                    HeaderName::from_bytes(h.as_bytes())
                        .map(|n| n.as_str().into())
                        .map_err(|_| {
                            Invalid::new(at.key(key), format!("{h:?} is not a header name"))
                        })
                })
                .collect()
        };
        let allow_headers = match &conf.allow_headers {
            None => ALLOWED_BY_DEFAULT.iter().map(|&h| h.into()).collect(),
            Some(list) => header_list(list, "allow_headers")?,
        };
        let expose_headers = match &conf.expose_headers {
            None => HeaderValue::from_static(EXPOSED_BY_DEFAULT),
            Some(list) => {
                let names = header_list(list, "expose_headers")?;
                HeaderValue::from_str(&names.join(", "))
                    .map_err(|_| Invalid::new(at.key("expose_headers"), "not a header value"))?
            }
        };
        let value = |s: String| HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static(""));
        Ok(Cors {
            origins,
            methods,
            allow_methods: value(names.join(", ")),
            allow_headers,
            expose_headers,
            credentials: conf.allow_credentials,
            max_age: HeaderValue::from(conf.max_age.as_secs()),
        })
    }

    fn admits(&self, origin: &HeaderValue) -> bool {
        origin
            .to_str()
            .is_ok_and(|o| self.origins.iter().any(|p| p.admits(o)))
    }

    /// `Access-Control-Allow-Origin` for an admitted origin: `*` when any origin may call
    /// without credentials (cacheable by anyone), else the origin itself.
    fn allow_origin(&self, origin: &HeaderValue) -> HeaderValue {
        if !self.credentials && self.origins.contains(&Origin::Any) {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        }
    }

    /// Answers a preflight (see [`preflight_method`]).
    pub fn preflight(&self, req: &RequestHeader, method: &Method) -> Preflight {
        let Some(origin) = req.headers.get(header::ORIGIN) else {
            return Preflight::Refused("no Origin");
        };
        if !self.admits(origin) {
            return Preflight::Refused("origin not allowed");
        }
        if !self.methods.contains(method) {
            return Preflight::Refused("method not allowed");
        }
        let asked = req
            .headers
            .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|h| !h.is_empty());
        let mut echoed = Vec::new();
        for name in asked {
            if !self
                .allow_headers
                .iter()
                .any(|a| a.eq_ignore_ascii_case(name))
            {
                return Preflight::Refused("header not allowed");
            }
            echoed.push(name.to_ascii_lowercase());
        }
        let mut headers = vec![
            (
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                self.allow_origin(origin),
            ),
            (
                header::ACCESS_CONTROL_ALLOW_METHODS,
                self.allow_methods.clone(),
            ),
            (header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone()),
            VARY_ORIGIN,
        ];
        if let Ok(v) = HeaderValue::from_str(&echoed.join(", ")) {
            if !echoed.is_empty() {
                headers.push((header::ACCESS_CONTROL_ALLOW_HEADERS, v));
            }
        }
        if self.credentials {
            headers.push(credentials());
        }
        Preflight::Allowed(headers)
    }

    /// The headers for any other answer to `req`: `Vary: Origin` always (the answer depends
    /// on it), the `Access-Control-*` headers when its origin is allowed.
    pub fn response_headers(&self, req: &RequestHeader) -> Vec<(HeaderName, HeaderValue)> {
        let mut headers = vec![VARY_ORIGIN];
        if let Some(origin) = req.headers.get(header::ORIGIN).filter(|o| self.admits(o)) {
            headers.push((
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                self.allow_origin(origin),
            ));
            headers.push((
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                self.expose_headers.clone(),
            ));
            if self.credentials {
                headers.push(credentials());
            }
        }
        headers
    }
}

fn credentials() -> (HeaderName, HeaderValue) {
    (
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
        HeaderValue::from_static("true"),
    )
}

/// The method a CORS preflight asks about: `OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`. `None` for any other request.
pub fn preflight_method(req: &RequestHeader) -> Option<Method> {
    if req.method != Method::OPTIONS || !req.headers.contains_key(header::ORIGIN) {
        return None;
    }
    req.headers
        .get(header::ACCESS_CONTROL_REQUEST_METHOD)
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(toml: &str) -> Cors {
        let conf: CorsConf = toml::from_str(toml).expect("conf");
        Cors::compile(&conf, MethodSet::ALL, &KeyPath::root()).expect("compile")
    }

    fn preflight(origin: &str, method: &str, headers: &str) -> RequestHeader {
        let mut req = RequestHeader::build("OPTIONS", b"/api", None).expect("req");
        req.insert_header("origin", origin).expect("h");
        req.insert_header("access-control-request-method", method)
            .expect("h");
        if !headers.is_empty() {
            req.insert_header("access-control-request-headers", headers)
                .expect("h");
        }
        req
    }

    #[test]
    fn origins_match_exactly_or_by_subdomain() {
        let c = cors(r#"allow_origins = ["https://app.example.com", "https://*.example.org"]"#);
        let admits = |o: &str| c.admits(&HeaderValue::from_str(o).expect("v"));
        assert!(admits("https://app.example.com"));
        assert!(admits("https://APP.example.com"));
        assert!(!admits("http://app.example.com"));
        assert!(!admits("https://app.example.com.evil.net"));
        assert!(admits("https://a.example.org"));
        assert!(admits("https://a.b.example.org:8443"));
        assert!(!admits("https://example.org"));
        assert!(!admits("https://evilexample.org"));
        assert!(!admits("null"));
    }

    #[test]
    fn a_preflight_echoes_only_what_is_allowed() {
        let c = cors(
            r#"allow_origins = ["https://app.example.com"]
               allow_methods = ["GET", "POST"]
               allow_credentials = true"#,
        );
        let req = preflight(
            "https://app.example.com",
            "POST",
            "Authorization, Content-Type",
        );
        let Preflight::Allowed(h) = c.preflight(&req, &Method::POST) else {
            panic!("refused")
        };
        let get = |n: HeaderName| h.iter().find(|(k, _)| *k == n).map(|(_, v)| v.clone());
        assert_eq!(
            get(header::ACCESS_CONTROL_ALLOW_ORIGIN).expect("acao"),
            "https://app.example.com"
        );
        assert_eq!(
            get(header::ACCESS_CONTROL_ALLOW_HEADERS).expect("acah"),
            "authorization, content-type"
        );
        assert_eq!(
            get(header::ACCESS_CONTROL_ALLOW_CREDENTIALS).expect("acac"),
            "true"
        );
        assert_eq!(
            c.preflight(&req, &Method::DELETE),
            Preflight::Refused("method not allowed")
        );
        let req = preflight("https://app.example.com", "POST", "x-secret");
        assert_eq!(
            c.preflight(&req, &Method::POST),
            Preflight::Refused("header not allowed")
        );
        let req = preflight("https://evil.example", "POST", "");
        assert_eq!(
            c.preflight(&req, &Method::POST),
            Preflight::Refused("origin not allowed")
        );
    }

    #[test]
    fn any_origin_is_a_star_and_never_goes_with_credentials() {
        let c = cors(r#"allow_origins = ["*"]"#);
        let mut req = RequestHeader::build("GET", b"/api", None).expect("req");
        req.insert_header("origin", "https://x.example").expect("h");
        let h = c.response_headers(&req);
        assert!(h.contains(&(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*")
        )));
        let conf: CorsConf =
            toml::from_str("allow_origins = [\"*\"]\nallow_credentials = true").expect("conf");
        assert!(Cors::compile(&conf, MethodSet::ALL, &KeyPath::root()).is_err());
        for bad in [
            "example.com",
            "https://*",
            "ftp://x",
            "https://a.*.com",
            "https://x/path",
        ] {
            let conf: CorsConf =
                toml::from_str(&format!("allow_origins = [{bad:?}]")).expect("conf");
            assert!(
                Cors::compile(&conf, MethodSet::ALL, &KeyPath::root()).is_err(),
                "{bad}"
            );
        }
    }
}

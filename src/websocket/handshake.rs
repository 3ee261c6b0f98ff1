//! The upgrade request and its 101: where the token comes from, what the backend is shown and
//! what the client is told.

use std::borrow::Cow;
use std::time::Duration;

use http::header::{
    HeaderName, CONNECTION, SEC_WEBSOCKET_EXTENSIONS, SEC_WEBSOCKET_PROTOCOL, UPGRADE,
};
use pingora_core::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};

use super::inband::RenewalShape;
use crate::authenticate::source::{self, Located};
use crate::authenticate::AuthError;
use crate::config::{Invalid, KeyPath, TokenSource, WebSocketConf};

/// `[websocket]`, compiled.
#[derive(Debug, Clone)]
pub struct Settings {
    pub query_parameter: String,
    pub subprotocol: String,
    pub renewal: RenewalShape,
    pub close_timeout: Duration,
    /// Where evictions are published, when several instances share them.
    pub redis_url: Option<String>,
    pub eviction_channel: String,
}

fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

impl Settings {
    /// Compiles `[websocket]`, found at `at`. `rate_limit_redis`: the rate limiter's Redis,
    /// used when `[websocket]` names none.
    pub fn compile(
        conf: &WebSocketConf,
        at: &KeyPath,
        rate_limit_redis: Option<&str>,
    ) -> Result<Self, Invalid> {
        let nonempty = |field: &str, value: &str| {
            if value.is_empty() {
                Err(Invalid::new(at.key(field), "must not be empty"))
            } else {
                Ok(value.to_string())
            }
        };
        let subprotocol = nonempty("subprotocol", &conf.subprotocol)?;
        if !subprotocol.chars().all(is_tchar) {
            return Err(Invalid::new(
                at.key("subprotocol"),
                format!("{subprotocol:?} is not an HTTP token (RFC 6455 §4.1)"),
            ));
        }
        if !(64..=1 << 20).contains(&conf.renewal_max_bytes) {
            return Err(Invalid::new(
                at.key("renewal_max_bytes"),
                "must be 64 to 1048576",
            ));
        }
        if conf.close_timeout.is_zero() {
            return Err(Invalid::new(at.key("close_timeout"), "must be above zero"));
        }
        let redis_url = conf.redis_url.as_deref().or(rate_limit_redis);
        if let Some(url) = redis_url {
            if !url.starts_with("redis://") {
                return Err(Invalid::new(at.key("redis_url"), "must be a redis:// URL"));
            }
        }
        Ok(Self {
            query_parameter: nonempty("query_parameter", &conf.query_parameter)?,
            subprotocol,
            renewal: RenewalShape {
                type_field: nonempty("renewal_type_field", &conf.renewal_type_field)?,
                type_value: nonempty("renewal_type", &conf.renewal_type)?,
                token_field: nonempty("renewal_token_field", &conf.renewal_token_field)?,
                max_bytes: conf.renewal_max_bytes,
            },
            close_timeout: conf.close_timeout,
            redis_url: redis_url.map(str::to_owned),
            eviction_channel: nonempty("eviction_channel", &conf.eviction_channel)?,
        })
    }
}

/// The elements of a comma-separated header, over all its lines (RFC 9110 §5.6.1).
fn list<'r>(req: &'r RequestHeader, name: &HeaderName) -> impl Iterator<Item = &'r str> {
    req.headers
        .get_all(name)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
}

fn has_token(req: &RequestHeader, name: &HeaderName, token: &str) -> bool {
    list(req, name).any(|t| t.eq_ignore_ascii_case(token))
}

/// Whether the request asks for any protocol upgrade.
pub fn has_upgrade(req: &RequestHeader) -> bool {
    req.headers.contains_key(UPGRADE)
}

/// Whether the request opens a WebSocket (RFC 6455 §4.1).
pub fn is_websocket(req: &RequestHeader) -> bool {
    req.method == http::Method::GET
        && has_token(req, &UPGRADE, "websocket")
        && has_token(req, &CONNECTION, "upgrade")
}

/// Turns an upgrade request into a plain one, for routes that take no upgrades.
pub fn strip_upgrade(req: &mut RequestHeader) {
    req.remove_header(&UPGRADE);
    req.remove_header(&CONNECTION);
}

fn protocols(req: &RequestHeader) -> impl Iterator<Item = &str> {
    list(req, &SEC_WEBSOCKET_PROTOCOL)
}

/// The token of a WebSocket upgrade, from the first of `sources` that carries one.
pub fn token<'r>(
    req: &'r RequestHeader,
    sources: &[TokenSource],
    settings: &Settings,
) -> Result<Located<'r>, AuthError> {
    for source in sources {
        let found = match source {
            TokenSource::Subprotocol => {
                let mut offered = protocols(req);
                offered
                    .by_ref()
                    .find(|p| *p == settings.subprotocol)
                    .and_then(|_| offered.next())
                    .map(Cow::Borrowed)
            }
            other => source::one(
                &req.headers,
                req.uri.query(),
                other,
                &settings.query_parameter,
            )?,
        };
        match found {
            Some(t) if t.is_empty() => return Err(AuthError::Malformed),
            Some(token) => {
                let from_cookie = matches!(source, TokenSource::Cookie(_));
                return Ok(Located { token, from_cookie });
            }
            None => {}
        }
    }
    Err(AuthError::Missing)
}

/// What the backend is shown of an upgrade request: no token in the query or among the
/// subprotocols, and only extensions the gateway can read through.
pub fn upstream_request(req: &mut RequestHeader, settings: &Settings) -> Result<()> {
    let names = [settings.query_parameter.as_str()];
    if let Some(kept) = req
        .uri
        .query()
        .and_then(|q| source::without_params(q, &names))
    {
        let path = req.uri.path();
        let uri = if kept.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{kept}")
        };
        let uri = http::Uri::try_from(uri)
            .map_err(|e| Error::because(ErrorType::InternalError, "query without the token", e))?;
        req.set_uri(uri);
    }

    let offered: Vec<&str> = protocols(req).collect();
    if let Some(at) = offered.iter().position(|p| *p == settings.subprotocol) {
        let kept: Vec<&str> = offered
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != at && *i != at + 1)
            .map(|(_, p)| *p)
            .collect();
        let kept = kept.join(", ");
        req.remove_header(&SEC_WEBSOCKET_PROTOCOL);
        if !kept.is_empty() {
            req.insert_header(SEC_WEBSOCKET_PROTOCOL, kept)?;
        }
    }

    // Only permessage-deflate: an unknown extension could give frames a meaning the gateway
    // cannot read renewals through.
    let offers: Vec<String> = list(req, &SEC_WEBSOCKET_EXTENSIONS)
        .filter(|o| {
            o.split(';')
                .next()
                .is_some_and(|name| name.trim().eq_ignore_ascii_case("permessage-deflate"))
        })
        .map(str::to_owned)
        .collect();
    req.remove_header(&SEC_WEBSOCKET_EXTENSIONS);
    if !offers.is_empty() {
        req.insert_header(SEC_WEBSOCKET_EXTENSIONS, offers.join(", "))?;
    }
    Ok(())
}

/// Adjusts the backend's 101 for the client; returns whether permessage-deflate is on.
///
/// * A client that sent its token as a subprotocol gets the marker back when the backend chose
///   none: browsers fail a handshake that offered subprotocols and got none.
/// * permessage-deflate is answered with `client_no_context_takeover` (RFC 7692 §7.1.1.1 lets
///   a server require it): each client message is then compressed on its own, so the gateway
///   can read a renewal and drop it without breaking the backend's decompression.
pub fn client_response(
    resp: &mut ResponseHeader,
    req: &RequestHeader,
    settings: &Settings,
) -> Result<bool> {
    if !resp.headers.contains_key(SEC_WEBSOCKET_PROTOCOL)
        && protocols(req).any(|p| p == settings.subprotocol)
    {
        resp.insert_header(SEC_WEBSOCKET_PROTOCOL, settings.subprotocol.as_str())?;
    }
    let Some(extensions) = resp
        .headers
        .get(SEC_WEBSOCKET_EXTENSIONS)
        .and_then(|v| v.to_str().ok())
    else {
        return Ok(false);
    };
    let mut deflate = false;
    let rewritten: Vec<String> = extensions
        .split(',')
        .map(|ext| {
            let ext = ext.trim();
            let mut params = ext.split(';').map(str::trim);
            let is_deflate = params
                .next()
                .is_some_and(|n| n.eq_ignore_ascii_case("permessage-deflate"));
            if !is_deflate {
                return ext.to_string();
            }
            deflate = true;
            if params.any(|p| p.eq_ignore_ascii_case("client_no_context_takeover")) {
                ext.to_string()
            } else {
                format!("{ext}; client_no_context_takeover")
            }
        })
        .collect();
    resp.insert_header(SEC_WEBSOCKET_EXTENSIONS, rewritten.join(", "))?;
    Ok(deflate)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings::compile(&WebSocketConf::default(), &KeyPath::root(), None)
            .expect("defaults compile")
    }

    fn upgrade(uri: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", uri.as_bytes(), None).expect("request");
        req.insert_header("upgrade", "websocket").expect("header");
        req.insert_header("connection", "keep-alive, Upgrade")
            .expect("header");
        for (n, v) in headers {
            req.append_header(n.to_string(), *v).expect("header");
        }
        req
    }

    #[test]
    fn sources_are_tried_in_order_and_only_when_allowed() {
        let s = settings();
        let all = [
            TokenSource::Header,
            TokenSource::Query(None),
            TokenSource::Subprotocol,
        ];
        let req = upgrade(
            "/ws?x=1&access_token=a%2Eb",
            &[("sec-websocket-protocol", "chat, access_token, sub.tok")],
        );
        assert!(is_websocket(&req));
        let found = |r: Result<Located, AuthError>| r.map(|l| l.token.into_owned());
        assert_eq!(found(token(&req, &all, &s)).as_deref(), Ok("a.b"));
        assert_eq!(
            found(token(&req, &[TokenSource::Subprotocol], &s)).as_deref(),
            Ok("sub.tok")
        );
        assert_eq!(
            token(&req, &[TokenSource::Header], &s),
            Err(AuthError::Missing)
        );
        let req = upgrade("/ws", &[("authorization", "Bearer h.t")]);
        assert_eq!(found(token(&req, &all, &s)).as_deref(), Ok("h.t"));
        let req = upgrade("/ws?access_token=", &[]);
        assert_eq!(token(&req, &all, &s), Err(AuthError::Malformed));
    }

    #[test]
    fn the_backend_sees_no_token_and_the_client_gets_its_subprotocol() {
        let s = settings();
        let original = upgrade(
            "/ws?access_token=secret&room=7",
            &[
                ("sec-websocket-protocol", "access_token, secret"),
                (
                    "sec-websocket-extensions",
                    "x-webkit-deflate-frame, permessage-deflate; client_max_window_bits",
                ),
            ],
        );
        let mut req = original.clone();
        upstream_request(&mut req, &s).expect("rewrite");
        assert_eq!(req.uri.to_string(), "/ws?room=7");
        assert!(req.headers.get("sec-websocket-protocol").is_none());
        assert_eq!(
            req.headers["sec-websocket-extensions"],
            "permessage-deflate; client_max_window_bits"
        );

        let mut resp = ResponseHeader::build(101, None).expect("response");
        resp.insert_header(
            "sec-websocket-extensions",
            "permessage-deflate; server_no_context_takeover",
        )
        .expect("header");
        assert!(client_response(&mut resp, &original, &s).expect("rewrite"));
        assert_eq!(resp.headers["sec-websocket-protocol"], "access_token");
        assert_eq!(
            resp.headers["sec-websocket-extensions"],
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
    }

    #[test]
    fn a_chosen_subprotocol_is_kept() {
        let s = settings();
        let original = upgrade(
            "/ws",
            &[("sec-websocket-protocol", "graphql-ws, access_token, tok")],
        );
        let mut req = original.clone();
        upstream_request(&mut req, &s).expect("rewrite");
        assert_eq!(req.headers["sec-websocket-protocol"], "graphql-ws");
        let mut resp = ResponseHeader::build(101, None).expect("response");
        resp.insert_header("sec-websocket-protocol", "graphql-ws")
            .expect("header");
        assert!(!client_response(&mut resp, &original, &s).expect("rewrite"));
        assert_eq!(resp.headers["sec-websocket-protocol"], "graphql-ws");
    }
}

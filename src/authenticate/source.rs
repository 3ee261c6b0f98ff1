//! Where a request's token is: `Authorization: Bearer`, another header, a cookie, the query.

use std::borrow::Cow;

use http::HeaderMap;
use pingora_http::RequestHeader;

use super::{bearer_token_of, AuthError};
use crate::config::TokenSource;

/// A token, and whether a cookie carried it (browsers send cookies on their own, so such a
/// token does not show that the page asking is the one that holds it: see [`same_origin`]).
#[derive(Debug, PartialEq, Eq)]
pub struct Located<'r> {
    pub token: Cow<'r, str>,
    pub from_cookie: bool,
}

/// The token from the first of `sources` that holds one, in a request's `headers` and
/// `query`; `query` without a name reads `query_parameter`. `subprotocol` is the WebSocket
/// handshake's business and read there.
pub fn locate<'r>(
    headers: &'r HeaderMap,
    query: Option<&'r str>,
    sources: &[TokenSource],
    query_parameter: &str,
) -> Result<Located<'r>, AuthError> {
    for source in sources {
        if let Some(token) = one(headers, query, source, query_parameter)? {
            if token.is_empty() {
                return Err(AuthError::Malformed);
            }
            let from_cookie = matches!(source, TokenSource::Cookie(_));
            return Ok(Located { token, from_cookie });
        }
    }
    Err(AuthError::Missing)
}

/// The token `source` holds, if it holds one.
pub fn one<'r>(
    headers: &'r HeaderMap,
    query: Option<&'r str>,
    source: &TokenSource,
    query_parameter: &str,
) -> Result<Option<Cow<'r, str>>, AuthError> {
    Ok(match source {
        TokenSource::Header => match bearer_token_of(headers) {
            Err(AuthError::Missing) => None,
            other => Some(Cow::Borrowed(other?)),
        },
        TokenSource::NamedHeader(name) => {
            let mut values = headers.get_all(name.as_str()).iter();
            match (values.next(), values.next()) {
                (None, _) => None,
                (Some(_), Some(_)) => return Err(AuthError::Malformed),
                (Some(v), None) => {
                    let v = v.to_str().map_err(|_| AuthError::Malformed)?.trim();
                    let v = match v.split_once(' ') {
                        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => {
                            rest.trim()
                        }
                        _ => v,
                    };
                    Some(Cow::Borrowed(v))
                }
            }
        }
        TokenSource::Cookie(name) => cookie(headers, name)?.map(Cow::Borrowed),
        TokenSource::Query(name) => {
            let name = name.as_deref().unwrap_or(query_parameter);
            match query.and_then(|q| query_value(q, name)) {
                None => None,
                Some(v) => Some(
                    percent_encoding::percent_decode_str(v)
                        .decode_utf8()
                        .map_err(|_| AuthError::Malformed)?,
                ),
            }
        }
        TokenSource::Subprotocol => None,
    })
}

/// A cookie's value (RFC 6265 §4.2). Two cookies of that name are refused: another site of
/// the same domain can set one, and the gateway would not know which the user's is.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, AuthError> {
    let mut found = None;
    for header in headers.get_all(http::header::COOKIE) {
        let Ok(header) = header.to_str() else {
            continue;
        };
        for pair in header.split(';') {
            let Some((n, v)) = pair.trim().split_once('=') else {
                continue;
            };
            if n.trim() != name {
                continue;
            }
            if found.is_some() {
                return Err(AuthError::Malformed);
            }
            let v = v.trim();
            found = Some(
                v.strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v),
            );
        }
    }
    Ok(found)
}

/// The raw value of a query parameter.
fn query_value<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .find_map(|pair| match pair.split_once('=') {
            Some((n, v)) if n == name => Some(v),
            _ => None,
        })
}

/// `query` without the parameters named `names` (tokens the upstream is not to see), when it
/// had any; `None` when nothing was removed.
pub fn without_params(query: &str, names: &[&str]) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| !names.contains(&pair.split('=').next().unwrap_or_default()))
        .collect();
    (kept.len() != query.split('&').count()).then(|| kept.join("&"))
}

/// The query parameters `sources` read, `query` standing for `query_parameter`.
pub fn query_names<'a>(sources: &'a [TokenSource], query_parameter: &'a str) -> Vec<&'a str> {
    sources
        .iter()
        .filter_map(|s| match s {
            TokenSource::Query(name) => Some(name.as_deref().unwrap_or(query_parameter)),
            _ => None,
        })
        .collect()
}

/// Whether a request comes from a page of the site it is sent to, or from no page at all (a
/// program, a typed URL): `Sec-Fetch-Site`, else `Origin` against `Host`. A browser tells one
/// or the other on every request that could be forged across sites.
pub fn same_origin(req: &RequestHeader) -> bool {
    let header = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = header("sec-fetch-site") {
        return matches!(site, "same-origin" | "none");
    }
    let Some(origin) = header("origin") else {
        return true;
    };
    let host = header("host").or(req.uri.authority().map(|a| a.as_str()));
    let origin_host = origin
        .split_once("://")
        .map(|(_, rest)| rest.trim_end_matches('/'));
    matches!((origin_host, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(target: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", target.as_bytes(), None).expect("request");
        for (n, v) in headers {
            r.append_header(n.to_string(), *v).expect("header");
        }
        r
    }

    fn sources(list: &[&str]) -> Vec<TokenSource> {
        list.iter()
            .map(|s| TokenSource::try_from(s.to_string()).expect("source"))
            .collect()
    }

    #[test]
    fn sources_are_tried_in_order() {
        let s = sources(&["header", "header:X-Api-Token", "cookie:at", "query:t"]);
        let r = req(
            "/a?t=q%2Et",
            &[
                ("cookie", "theme=dark; at=c.t"),
                ("x-api-token", "Bearer h.t"),
            ],
        );
        let found = locate(&r.headers, r.uri.query(), &s, "access_token").expect("found");
        assert_eq!(found.token, "h.t");
        assert!(!found.from_cookie);
        let r = req("/a?t=q%2Et", &[("cookie", "theme=dark; at=\"c.t\"")]);
        let found = locate(&r.headers, r.uri.query(), &s, "access_token").expect("found");
        assert_eq!((found.token.as_ref(), found.from_cookie), ("c.t", true));
        let r = req("/a?x=1&t=q%2Et", &[]);
        assert_eq!(
            locate(&r.headers, r.uri.query(), &s, "access_token")
                .expect("found")
                .token,
            "q.t"
        );
        assert_eq!(
            locate(&HeaderMap::new(), None, &s, "x"),
            Err(AuthError::Missing)
        );
        // The bearer header first, when it is listed first.
        let r = req(
            "/a",
            &[("authorization", "Bearer b.t"), ("cookie", "at=c.t")],
        );
        assert_eq!(
            locate(&r.headers, r.uri.query(), &s, "x")
                .expect("found")
                .token,
            "b.t"
        );
    }

    #[test]
    fn ambiguous_or_empty_tokens_are_malformed() {
        let s = sources(&["cookie:at"]);
        let r = req("/", &[("cookie", "at=1"), ("cookie", "at=2")]);
        assert_eq!(
            locate(&r.headers, r.uri.query(), &s, "x"),
            Err(AuthError::Malformed)
        );
        let r = req("/", &[("cookie", "at=")]);
        assert_eq!(
            locate(&r.headers, r.uri.query(), &s, "x"),
            Err(AuthError::Malformed)
        );
        let s = sources(&["header:x-token"]);
        let r = req("/", &[("x-token", "a"), ("x-token", "b")]);
        assert_eq!(
            locate(&r.headers, r.uri.query(), &s, "x"),
            Err(AuthError::Malformed)
        );
    }

    #[test]
    fn names_are_checked_when_the_config_is_read() {
        for bad in [
            "cookie:",
            "cookie:a=b",
            "header:bad header",
            "query:",
            "bearer",
            "x:y",
        ] {
            assert!(TokenSource::try_from(bad.to_string()).is_err(), "{bad}");
        }
        assert_eq!(
            TokenSource::try_from("header:Authorization".to_string()),
            Ok(TokenSource::Header)
        );
    }

    #[test]
    fn query_tokens_are_taken_out_of_the_query() {
        assert_eq!(
            without_params("a=1&t=x&b=2", &["t"]).as_deref(),
            Some("a=1&b=2")
        );
        assert_eq!(without_params("t=x", &["t"]).as_deref(), Some(""));
        assert_eq!(without_params("a=1", &["t"]), None);
        let s = sources(&["header", "query", "query:t"]);
        assert_eq!(query_names(&s, "access_token"), ["access_token", "t"]);
    }

    #[test]
    fn cross_site_requests_are_told_apart() {
        let same = |h: &[(&str, &str)]| same_origin(&req("/", h));
        assert!(same(&[]), "no browser");
        assert!(same(&[("sec-fetch-site", "same-origin")]));
        assert!(same(&[("sec-fetch-site", "none")]));
        assert!(!same(&[("sec-fetch-site", "same-site")]));
        assert!(!same(&[
            ("sec-fetch-site", "cross-site"),
            ("host", "a.test")
        ]));
        assert!(same(&[("origin", "https://a.test"), ("host", "a.test")]));
        assert!(!same(&[
            ("origin", "https://evil.test"),
            ("host", "a.test")
        ]));
        assert!(!same(&[("origin", "null"), ("host", "a.test")]));
    }
}

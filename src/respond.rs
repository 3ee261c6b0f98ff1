//! The gateway's own answers: denials and direct responses, built once per config.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

use crate::authenticate::AuthError;
use crate::authorize::{external, Forbidden};
use crate::config::{Invalid, KeyPath, ResponsesConf};
use crate::rate_limit::{StoreUnavailable, Verdict};
use crate::route::PathError;
use crate::upstream::CredentialError;

/// A complete response, ready to write.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
    /// Sent after the body (HTTP/2 only): a gRPC answer's status.
    pub trailers: Vec<(HeaderName, HeaderValue)>,
}

impl Reply {
    pub fn new(status: u16, content_type: HeaderValue, body: Bytes) -> Self {
        Self {
            status,
            headers: vec![(CONTENT_TYPE, content_type)],
            body,
            trailers: Vec::new(),
        }
    }

    /// Writes the reply; the connection stays reusable.
    pub async fn send(&self, session: &mut Session) -> pingora_core::Result<()> {
        let mut header = ResponseHeader::build(self.status, Some(self.headers.len() + 1))?;
        for (name, value) in &self.headers {
            header.append_header(name.clone(), value.clone())?;
        }
        if !self.trailers.is_empty() {
            session
                .write_response_header(Box::new(header), false)
                .await?;
            let mut trailers = http::HeaderMap::with_capacity(self.trailers.len());
            for (name, value) in &self.trailers {
                trailers.append(name.clone(), value.clone());
            }
            return session.as_mut().write_response_trailers(trailers).await;
        }
        // RFC 9110 §8.6: no Content-Length on a 204 or 304, which never have a body.
        let bodiless = matches!(self.status, 204 | 304);
        if !bodiless {
            header.insert_header(CONTENT_LENGTH, self.body.len())?;
        }
        let head_only = bodiless || session.req_header().method == http::Method::HEAD;
        session
            .write_response_header(Box::new(header), head_only)
            .await?;
        if !head_only {
            session
                .write_response_body(Some(self.body.clone()), true)
                .await?;
        }
        Ok(())
    }
}

/// Whether a request is a gRPC call, whose client reads `grpc-status`, not the HTTP status.
pub fn is_grpc(req: &pingora_http::RequestHeader) -> bool {
    req.headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

impl Reply {
    /// The same answer for a gRPC client: HTTP 200 with no body, then trailers with the gRPC
    /// code the HTTP status stands for in `grpc-status` and the description in
    /// `grpc-message`. Other headers (the challenge, `retry-after`, the quota) are kept.
    pub fn for_grpc(&self) -> Reply {
        let code: u8 = match self.status {
            400 => 3,                   // INVALID_ARGUMENT
            401 => 16,                  // UNAUTHENTICATED
            403 => 7,                   // PERMISSION_DENIED
            404 => 12,                  // UNIMPLEMENTED
            408 => 4,                   // DEADLINE_EXCEEDED
            413 | 414 | 429 | 431 => 8, // RESOURCE_EXHAUSTED
            500 => 13,                  // INTERNAL
            502..=504 => 14,            // UNAVAILABLE
            _ => 2,                     // UNKNOWN
        };
        // The most precise description there is: the JSON body's, the bearer challenge's,
        // else the body's text.
        let challenge = self
            .headers
            .iter()
            .find(|(n, _)| *n == WWW_AUTHENTICATE)
            .and_then(|(_, v)| v.to_str().ok())
            .and_then(|v| v.split("error_description=\"").nth(1))
            .and_then(|d| d.split('"').next());
        let message = serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v["error_description"].as_str().map(str::to_owned))
            .or_else(|| challenge.map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&self.body).into_owned());
        let mut headers: Vec<(HeaderName, HeaderValue)> = self
            .headers
            .iter()
            .filter(|(n, _)| *n != CONTENT_TYPE)
            .cloned()
            .collect();
        headers.push((CONTENT_TYPE, HeaderValue::from_static("application/grpc")));
        let mut trailers = vec![(
            HeaderName::from_static("grpc-status"),
            HeaderValue::from(u16::from(code)),
        )];
        if let Ok(v) = HeaderValue::from_str(&grpc_percent_encode(&message)) {
            trailers.push((HeaderName::from_static("grpc-message"), v));
        }
        Reply {
            status: 200,
            headers,
            body: Bytes::new(),
            trailers,
        }
    }
}

/// `grpc-message` is percent-encoded: every byte outside printable ASCII, and `%`.
fn grpc_percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Why the gateway refused a request.
#[derive(Debug, Clone)]
pub enum Rejection {
    BadPath(PathError),
    /// The request line and headers are over `[server] max_header_bytes` or `max_headers`.
    HeadersTooLarge,
    /// The request target is over `[server] max_uri_length`.
    UriTooLong,
    NotFound,
    Unauthorized(AuthError),
    Forbidden(Forbidden),
    /// Over the tier's limit.
    Limited(Verdict),
    /// The tier's limit store is unreachable and the tier fails closed.
    LimiterUnavailable(StoreUnavailable),
    /// The token's issuer could not be asked whether it is active.
    Undecided {
        retry_after_secs: u32,
    },
    /// The route's external decision point refused, with this answer.
    External(Arc<external::Answer>),
    /// A CORS preflight for an origin, method or header the route does not allow.
    CorsRefused(&'static str),
    /// No token could be had for an upstream that requires its own.
    UpstreamCredentials(CredentialError),
}

impl From<AuthError> for Rejection {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Undecided { retry_after_secs } => Rejection::Undecided { retry_after_secs },
            e => Rejection::Unauthorized(e),
        }
    }
}

impl From<Forbidden> for Rejection {
    fn from(f: Forbidden) -> Self {
        Rejection::Forbidden(f)
    }
}

impl Rejection {
    pub fn status(&self) -> u16 {
        match self {
            Rejection::BadPath(_) => 400,
            Rejection::HeadersTooLarge => 431,
            Rejection::UriTooLong => 414,
            Rejection::NotFound => 404,
            Rejection::Unauthorized(_) => 401,
            Rejection::Forbidden(_) | Rejection::CorsRefused(_) => 403,
            Rejection::Limited(_) => 429,
            Rejection::LimiterUnavailable(_) | Rejection::Undecided { .. } => 503,
            Rejection::External(a) => a.status,
            Rejection::UpstreamCredentials(CredentialError::Refused) => 403,
            Rejection::UpstreamCredentials(CredentialError::Unavailable { .. }) => 503,
        }
    }
}

/// Denial responses of one config.
#[derive(Debug, Clone)]
pub struct Responses {
    realm: String,
    unauthorized: Reply,
    /// The 401 of each [`AuthError::fixed`] refusal, challenge included.
    unauthorized_by_error: Vec<(AuthError, Reply)>,
    forbidden: Reply,
    not_found: Reply,
}

const JSON: HeaderValue = HeaderValue::from_static("application/json");

impl Responses {
    /// Compiles `[responses]`, found at `at`.
    pub fn compile(conf: &ResponsesConf, at: &KeyPath) -> Result<Self, Invalid> {
        let value = |key: &str, v: &str| {
            HeaderValue::from_str(v)
                .map_err(|_| Invalid::new(at.key(key), "not a valid header value"))
        };
        if conf.realm.contains(['"', '\\']) || value("realm", &conf.realm).is_err() {
            return Err(Invalid::new(
                at.key("realm"),
                "must not contain quotes, backslashes or control characters",
            ));
        }
        let forbidden_www = HeaderValue::from_str(&format!(
            "Bearer realm=\"{}\", error=\"insufficient_scope\"",
            conf.realm
        ))
        .map_err(|_| Invalid::new(at.key("realm"), "not a valid header value"))?;
        let mut forbidden = Reply::new(
            403,
            value("forbidden_content_type", &conf.forbidden_content_type)?,
            Bytes::from(conf.forbidden_body.clone()),
        );
        forbidden.headers.push((WWW_AUTHENTICATE, forbidden_www));
        let mut responses = Self {
            realm: conf.realm.clone(),
            unauthorized: Reply::new(
                401,
                value("unauthorized_content_type", &conf.unauthorized_content_type)?,
                Bytes::from(conf.unauthorized_body.clone()),
            ),
            unauthorized_by_error: Vec::new(),
            forbidden,
            not_found: json_error(404, "not_found", "no route matches this request"),
        };
        responses.unauthorized_by_error = AuthError::fixed()
            .map(|e| (e, responses.unauthorized(e)))
            .collect();
        Ok(responses)
    }

    fn unauthorized(&self, e: AuthError) -> Reply {
        // RFC 6750 §3.1: no error code when the request carried no token at all.
        let challenge = match e {
            AuthError::Missing => format!("Bearer realm=\"{}\"", self.realm),
            e => format!(
                "Bearer realm=\"{}\", error=\"invalid_token\", error_description=\"{e}\"",
                self.realm
            ),
        };
        let mut reply = self.unauthorized.clone();
        // The realm was checked at compile and error texts are fixed ASCII.
        if let Ok(v) = HeaderValue::from_str(&challenge) {
            reply.headers.push((WWW_AUTHENTICATE, v));
        }
        reply
    }

    pub fn reply(&self, rejection: Rejection) -> Reply {
        match rejection {
            Rejection::BadPath(e) => json_error(400, "invalid_request", &e.to_string()),
            Rejection::HeadersTooLarge => json_error(
                431,
                "request_header_fields_too_large",
                "the request headers are larger or more numerous than the gateway takes",
            ),
            Rejection::UriTooLong => json_error(
                414,
                "uri_too_long",
                "the request target is longer than the gateway takes",
            ),
            Rejection::NotFound => self.not_found.clone(),
            Rejection::CorsRefused(why) => json_error(
                403,
                "cors_refused",
                &format!("cross-origin preflight refused: {why}"),
            ),
            Rejection::Forbidden(_) => self.forbidden.clone(),
            // Retry-After and the quota headers come from the rate limiter.
            Rejection::Limited(v) => json_error(
                429,
                "rate_limited",
                &format!("too many requests; retry after {} s", v.retry_after_secs()),
            ),
            Rejection::LimiterUnavailable(u) => {
                unavailable("the rate limit store is unavailable", u.retry_after_secs)
            }
            Rejection::Undecided { retry_after_secs } => unavailable(
                "the identity provider could not be asked whether the token is active",
                retry_after_secs.into(),
            ),
            Rejection::UpstreamCredentials(CredentialError::Unavailable { retry_after_secs }) => {
                unavailable(
                    "no token could be obtained for the upstream",
                    retry_after_secs.into(),
                )
            }
            Rejection::UpstreamCredentials(CredentialError::Refused) => json_error(
                403,
                "token_exchange_refused",
                "the identity provider would not exchange this token for the upstream",
            ),
            Rejection::External(a) => Reply {
                status: a.status,
                headers: a.headers.clone(),
                body: a.body.clone(),
                trailers: Vec::new(),
            },
            Rejection::Unauthorized(e) => {
                match self.unauthorized_by_error.iter().find(|r| r.0 == e) {
                    Some((_, reply)) => reply.clone(),
                    None => self.unauthorized(e),
                }
            }
        }
    }
}

impl Responses {
    /// The gateway's answer when it could not get one from the upstream.
    pub fn upstream_failure(&self, status: u16) -> Reply {
        match status {
            502 => json_error(
                502,
                "bad_gateway",
                "the upstream failed or gave an invalid answer",
            ),
            503 => json_error(
                503,
                "service_unavailable",
                "no upstream target is available",
            ),
            504 => json_error(
                504,
                "gateway_timeout",
                "the upstream did not answer in time",
            ),
            400 => json_error(400, "invalid_request", "the request could not be read"),
            413 => BodyRefusal::TooLarge.reply(),
            s => json_error(
                s,
                "internal_error",
                "the gateway could not complete the request",
            ),
        }
    }
}

impl Responses {
    /// The answer past an upstream's `max_requests`: the upstream is busy, not down.
    pub fn upstream_overloaded(&self) -> Reply {
        let mut reply = json_error(
            503,
            "service_unavailable",
            "the upstream has as many requests in flight as it takes",
        );
        reply
            .headers
            .push((http::header::RETRY_AFTER, HeaderValue::from_static("1")));
        reply
    }
}

/// Why a request body is refused before it reaches the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyRefusal {
    /// Over the route's `max_body_size`, or a chunked body past what can be buffered: 413.
    TooLarge,
    /// Not all there within `body_timeout`: 408.
    TooSlow,
    /// Its framing is broken (a bad chunk size, a short body): 400.
    Malformed,
}

impl BodyRefusal {
    pub fn reply(self) -> Reply {
        match self {
            BodyRefusal::TooLarge => json_error(
                413,
                "payload_too_large",
                "the request body is larger than this route takes",
            ),
            BodyRefusal::TooSlow => json_error(
                408,
                "request_timeout",
                "the request body did not arrive in time",
            ),
            BodyRefusal::Malformed => {
                json_error(400, "invalid_request", "the request body is malformed")
            }
        }
    }
}

/// The token service's answers (RFC 6749 §5.1 and §5.2 in shape).
pub mod token_service {
    use super::*;
    use crate::token_service::{IssueError, Issued};

    const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");

    pub fn issued(issued: &Issued) -> Reply {
        let body = serde_json::json!({
            "access_token": issued.access_token,
            "token_type": "Bearer",
            "expires_in": issued.expires_in,
        });
        let mut reply = Reply::new(200, JSON, Bytes::from(body.to_string()));
        reply.headers.push((http::header::CACHE_CONTROL, NO_STORE));
        reply
            .headers
            .push((http::header::PRAGMA, HeaderValue::from_static("no-cache")));
        reply
    }

    pub fn refused(e: IssueError) -> Reply {
        let limited = |retry_after_secs: u64| {
            let mut reply = json_error(429, "rate_limited", &e.to_string());
            reply.headers.push((
                http::header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs),
            ));
            reply
        };
        let mut reply = match e {
            IssueError::AddressLimited { retry_after_secs }
            | IssueError::NetworkLimited { retry_after_secs } => limited(retry_after_secs),
            IssueError::LimiterUnavailable { retry_after_secs } => {
                unavailable(&e.to_string(), retry_after_secs)
            }
            IssueError::CaptchaMissing => json_error(400, "captcha_required", &e.to_string()),
            IssueError::CaptchaFailed => json_error(403, "captcha_failed", &e.to_string()),
            IssueError::CaptchaUnavailable => unavailable(&e.to_string(), 5),
            IssueError::Signing => json_error(500, "server_error", &e.to_string()),
        };
        reply.headers.push((http::header::CACHE_CONTROL, NO_STORE));
        reply
    }

    /// A public document (the key set, the discovery document), cacheable for five minutes.
    pub fn document(body: &Bytes) -> Reply {
        let mut reply = Reply::new(200, JSON, body.clone());
        reply.headers.push((
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=300"),
        ));
        reply
    }

    /// The endpoint exists, but not for this method.
    pub fn wrong_method(allow: &'static str) -> Reply {
        let mut reply = json_error(405, "method_not_allowed", &format!("use {allow}"));
        reply
            .headers
            .push((http::header::ALLOW, HeaderValue::from_static(allow)));
        reply
    }
}

/// Answers at the session paths (`[sessions]`).
pub mod session {
    use super::*;
    use crate::session::{LoginError, Redirect};

    const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");

    /// 302 to `location`, setting the cookies.
    pub fn redirect(redirect: &Redirect) -> Reply {
        let mut reply = Reply::new(302, HeaderValue::from_static("text/plain"), Bytes::new());
        match HeaderValue::try_from(redirect.location.as_str()) {
            Ok(location) => reply.headers.push((http::header::LOCATION, location)),
            Err(_) => return json_error(500, "server_error", "redirect target"),
        }
        for cookie in &redirect.cookies {
            reply
                .headers
                .push((http::header::SET_COOKIE, cookie.clone()));
        }
        reply.headers.push((http::header::CACHE_CONTROL, NO_STORE));
        reply
    }

    /// A login that cannot go on: 400 for a bad or stale request, 403 when the provider
    /// refused, 401 for a token that fails its checks, 502 when the provider cannot be asked.
    pub fn login_failed(e: &LoginError) -> Reply {
        let (status, error) = match e {
            LoginError::Request(_) => (400, "invalid_request"),
            LoginError::Provider(_) => (403, "access_denied"),
            LoginError::Token(_) | LoginError::AccessToken(_) => (401, "invalid_token"),
            LoginError::Unavailable(_) => (502, "temporarily_unavailable"),
        };
        let mut reply = json_error(status, error, &e.to_string());
        reply.headers.push((http::header::CACHE_CONTROL, NO_STORE));
        reply
    }

    /// Back-Channel Logout 1.0 §2.8: 200 when the logout was taken.
    pub fn logged_out() -> Reply {
        let mut reply = Reply::new(200, JSON, Bytes::from_static(b"{}"));
        reply.headers.push((http::header::CACHE_CONTROL, NO_STORE));
        reply
    }

    /// §2.8: 400 for a logout token that is refused; 501 would say the gateway cannot log out.
    pub fn logout_refused(e: &LoginError) -> Reply {
        let status = match e {
            LoginError::Unavailable(_) => 503,
            _ => 400,
        };
        let mut reply = json_error(status, "invalid_request", &e.to_string());
        reply.headers.push((http::header::CACHE_CONTROL, NO_STORE));
        reply
    }
}

fn unavailable(description: &str, retry_after_secs: u64) -> Reply {
    let mut reply = json_error(503, "temporarily_unavailable", description);
    reply.headers.push((
        http::header::RETRY_AFTER,
        HeaderValue::from(retry_after_secs),
    ));
    reply
}

fn json_error(status: u16, error: &str, description: &str) -> Reply {
    let body = serde_json::json!({ "error": error, "error_description": description });
    Reply::new(status, JSON, Bytes::from(body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header<'a>(r: &'a Reply, name: &HeaderName) -> Option<&'a str> {
        r.headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.to_str().ok())
    }

    #[test]
    fn prebuilt_401s_carry_their_own_challenge() {
        let r = Responses::compile(&ResponsesConf::default(), &KeyPath::root()).unwrap();
        assert_eq!(r.unauthorized_by_error.len(), 19);
        for e in AuthError::fixed() {
            let reply = r.reply(Rejection::Unauthorized(e));
            let challenge = header(&reply, &WWW_AUTHENTICATE).unwrap();
            assert_eq!(reply.status, 401);
            assert!(
                e == AuthError::Missing || challenge.contains(&e.to_string()),
                "{e:?}: {challenge}"
            );
        }
        let odd = r.reply(Rejection::Unauthorized(AuthError::InvalidClaim(
            "sub is empty",
        )));
        assert!(header(&odd, &WWW_AUTHENTICATE)
            .unwrap()
            .contains("invalid claim: sub is empty"));
    }

    #[test]
    fn defaults_match_the_reference_deployment() {
        let r = Responses::compile(&ResponsesConf::default(), &KeyPath::root()).unwrap();
        let missing = r.reply(Rejection::Unauthorized(AuthError::Missing));
        assert_eq!(missing.status, 401);
        assert_eq!(&missing.body[..], b"401 Authorization Required");
        assert_eq!(
            header(&missing, &WWW_AUTHENTICATE),
            Some("Bearer realm=\"portcullis\"")
        );
        let expired = r.reply(Rejection::Unauthorized(AuthError::Expired));
        assert_eq!(
            header(&expired, &WWW_AUTHENTICATE),
            Some("Bearer realm=\"portcullis\", error=\"invalid_token\", error_description=\"token expired\"")
        );
        let denied = r.reply(Rejection::Forbidden(Forbidden::Insufficient));
        assert_eq!(
            &denied.body[..],
            br#"{"error":"access_denied","error_description":"not_authorized"}"#
        );
        assert_eq!(header(&denied, &CONTENT_TYPE), Some("application/json"));
    }

    #[test]
    fn realm_cannot_break_the_header() {
        let conf = ResponsesConf {
            realm: "a\"b".into(),
            ..Default::default()
        };
        assert!(Responses::compile(&conf, &KeyPath::root()).is_err());
    }
}

//! The token service's endpoints: a session token by `POST`, the key set and the discovery
//! document by `GET`.

use http::Method;
use pingora_proxy::Session;

use super::{body, RequestCtx};
use crate::respond::{token_service as answers, Reply};
use crate::token_service::Endpoint;

/// Largest token request read: a captcha response is a few kilobytes at most.
const MAX_BODY: usize = 16 * 1024;
/// The header a captcha response may come in, for clients that send no form.
const CAPTCHA_HEADER: &str = "x-captcha-response";

/// The gateway's answer to a request for its token service.
pub async fn answer(session: &mut Session, ctx: &RequestCtx, endpoint: Endpoint) -> Reply {
    let snap = ctx.snapshot.clone();
    let Some(service) = &snap.token_service else {
        return snap.responses.reply(crate::respond::Rejection::NotFound);
    };
    let method = session.req_header().method.clone();
    match endpoint {
        Endpoint::Jwks | Endpoint::Discovery if !matches!(method, Method::GET | Method::HEAD) => {
            answers::wrong_method("GET")
        }
        Endpoint::Jwks => answers::document(service.jwks()),
        Endpoint::Discovery => answers::document(service.discovery()),
        Endpoint::Issue if method != Method::POST => answers::wrong_method("POST"),
        Endpoint::Issue => {
            // Read whole in any case, so the connection can take another request.
            let timeout = snap.server.body_timeout;
            let form = match body::read_or_refuse(session, MAX_BODY, timeout).await {
                Ok(form) => form,
                Err(reply) => return reply,
            };
            let captcha = service
                .captcha_field()
                .and_then(|field| captcha_response(session, &form, field));
            match service
                .issue(ctx.client_ip, captcha.as_deref(), &snap.rate_limiter)
                .await
            {
                Ok(issued) => answers::issued(&issued),
                Err(e) => answers::refused(e),
            }
        }
    }
}

/// The captcha response: the `X-Captcha-Response` header, or the form field `field`.
fn captcha_response(session: &Session, form: &[u8], field: &str) -> Option<String> {
    let headers = &session.req_header().headers;
    if let Some(value) = headers.get(CAPTCHA_HEADER).and_then(|v| v.to_str().ok()) {
        return Some(value.to_string());
    }
    form_urlencoded::parse(form)
        .find(|(name, _)| name == field)
        .map(|(_, value)| value.into_owned())
}

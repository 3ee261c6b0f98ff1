//! The session paths (`[sessions]`): the login, the provider's callback, the logout, and the
//! provider's back-channel logout.

use http::Method;
use pingora_proxy::Session;

use super::{body, RequestCtx};
use crate::authenticate::source;
use crate::respond::{session as answers, token_service::wrong_method, Reply};
use crate::session::{Ended, Endpoint, LoginError};
use crate::websocket::registry::Registry;

/// Largest back-channel logout request read: a logout token is a few kilobytes.
const MAX_BODY: usize = 16 * 1024;

/// The gateway's answer at one of its session paths.
pub async fn answer(
    session: &mut Session,
    ctx: &RequestCtx,
    endpoint: Endpoint,
    websockets: &Registry,
) -> Reply {
    let snap = ctx.snapshot.clone();
    let Some(sessions) = &snap.sessions else {
        return snap.responses.reply(crate::respond::Rejection::NotFound);
    };
    let req = session.req_header();
    let method = req.method.clone();
    let get = matches!(method, Method::GET | Method::HEAD);
    match endpoint {
        Endpoint::Login if !get => wrong_method("GET"),
        Endpoint::Login => {
            let return_to = form_urlencoded::parse(req.uri.query().unwrap_or("").as_bytes())
                .find(|(k, _)| k == "return_to")
                .map_or_else(|| "/".to_owned(), |(_, v)| v.into_owned());
            login(ctx, &return_to).await
        }
        Endpoint::Callback if !get => wrong_method("GET"),
        Endpoint::Callback => {
            let finished = sessions
                .finish_login(&snap.authenticator, &req.headers, req.uri.query())
                .await;
            match finished {
                Ok(redirect) => answers::redirect(&redirect),
                Err(e) => {
                    crate::metrics::session_event("login", e.result());
                    log::info!("login refused: {e}");
                    answers::login_failed(&e)
                }
            }
        }
        Endpoint::Logout if !matches!(method, Method::GET | Method::POST) => {
            wrong_method("GET, POST")
        }
        // Another site must not be able to log the user out.
        Endpoint::Logout if !source::same_origin(req) && !sessions.allows_origin(&req.headers) => {
            answers::login_failed(&LoginError::Request("cross-site logout"))
        }
        Endpoint::Logout => {
            let (ended, redirect) = sessions.logout(&req.headers).await;
            close(websockets, &ended);
            answers::redirect(&redirect)
        }
        Endpoint::BackchannelLogout if method != Method::POST => wrong_method("POST"),
        Endpoint::BackchannelLogout => {
            let timeout = snap.server.body_timeout;
            let form = match body::read_or_refuse(session, MAX_BODY, timeout).await {
                Ok(form) => form,
                Err(reply) => return reply,
            };
            match sessions
                .backchannel_logout(&snap.authenticator, &form)
                .await
            {
                Ok(ended) => {
                    close(websockets, &ended);
                    answers::logged_out()
                }
                Err(e) => {
                    log::warn!("back-channel logout refused: {e}");
                    answers::logout_refused(&e)
                }
            }
        }
    }
}

/// A page navigation without a session: to the provider's login.
pub async fn login(ctx: &RequestCtx, return_to: &str) -> Reply {
    let Some(sessions) = &ctx.snapshot.sessions else {
        return ctx
            .snapshot
            .responses
            .reply(crate::respond::Rejection::NotFound);
    };
    match sessions.start_login(return_to).await {
        Ok(redirect) => answers::redirect(&redirect),
        Err(e) => {
            log::warn!("login not started: {e}");
            answers::login_failed(&e)
        }
    }
}

/// Closes the ended sessions' WebSockets on this instance.
fn close(websockets: &Registry, ended: &Ended) {
    for key in &ended.websockets {
        websockets.evict(key);
    }
}

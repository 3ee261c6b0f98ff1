//! The browser's side of a login: the authorization request (PKCE S256, `state`, `nonce`),
//! the sealed login cookie that carries them to the callback, the session cookie, and where
//! the browser is sent.

use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use serde::{Deserialize, Serialize};

use super::provider::{constant_time_eq, pkce_challenge, Endpoints, TokenRefused};
use super::seal::{random_id, Sealer};
use super::LOGIN_TTL;
use crate::authenticate::AuthError;
use crate::clock;
use crate::config::{SessionCookieConf, SessionsConf};

/// A redirect the gateway answers with, and the cookies it sets.
#[derive(Debug)]
pub struct Redirect {
    pub location: String,
    pub cookies: Vec<HeaderValue>,
}

/// Why a login (or a logout token) is refused.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// The request itself is wrong: no state, an unknown one, a foreign `return_to`.
    #[error("{0}")]
    Request(&'static str),
    /// The provider said no (an `error` at the callback, a code it refused).
    #[error("the provider refused: {0}")]
    Provider(String),
    #[error("{0}")]
    Token(TokenRefused),
    #[error("the access token is not accepted: {0}")]
    AccessToken(AuthError),
    #[error("{0}")]
    Unavailable(String),
}

impl LoginError {
    /// The outcome label of a failed login, for the metrics.
    pub fn result(&self) -> &'static str {
        match self {
            LoginError::Request(_) | LoginError::Token(_) | LoginError::AccessToken(_) => "refused",
            LoginError::Provider(_) => "denied",
            LoginError::Unavailable(_) => "error",
        }
    }
}

/// What the login cookie carries to the callback.
#[derive(Serialize, Deserialize)]
struct Login {
    state: String,
    nonce: String,
    verifier: String,
    return_to: String,
    /// Unix seconds.
    until: u64,
}

/// A login that came back from the provider, its state checked.
pub struct Pending {
    pub code: String,
    pub nonce: String,
    pub verifier: String,
    return_to: String,
    cookie_name: String,
}

/// The cookie's constraints: a `__Host-` name needs what the gateway always sets (`Secure`,
/// `Path=/`, no `Domain`); any name must be a cookie token.
pub fn check_cookie(conf: &SessionCookieConf) -> Result<(), (&'static str, String)> {
    let name = &conf.name;
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(token) {
        return Err(("name", format!("{name:?} is not a cookie name")));
    }
    if name.len() > 64 {
        return Err(("name", "at most 64 characters".into()));
    }
    if conf.idle_timeout > conf.absolute_timeout {
        return Err((
            "idle_timeout",
            "is longer than absolute_timeout, which always ends a session first".into(),
        ));
    }
    Ok(())
}

/// `return_to` as the gateway takes it: a path of this site, never another site (`//host`,
/// `/\host`, a scheme) and nothing a header cannot carry.
pub fn local_path(return_to: &str) -> Option<&str> {
    let ok = return_to.starts_with('/')
        && !return_to.starts_with("//")
        && !return_to.starts_with("/\\")
        && return_to.len() <= 2048
        && return_to
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'\\');
    ok.then_some(return_to)
}

fn login_cookie_name(conf: &SessionsConf, state: &str) -> String {
    // One cookie per login under way, so that two tabs logging in do not undo each other.
    format!(
        "{}-login-{}",
        conf.cookie.name,
        &state[..state.len().min(8)]
    )
}

fn set_cookie(name: &str, value: &str, max_age: Duration) -> Option<HeaderValue> {
    let mut v = HeaderValue::try_from(format!(
        "{name}={value}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={}",
        max_age.as_secs()
    ))
    .ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// The authorization request, and the login cookie that remembers it.
pub fn start(
    conf: &SessionsConf,
    sealer: &Sealer,
    endpoints: &Endpoints,
    return_to: &str,
) -> Result<Redirect, LoginError> {
    let return_to = local_path(return_to)
        .ok_or(LoginError::Request("return_to must be a path on this site"))?;
    let failed = |e: &str| LoginError::Unavailable(e.to_owned());
    let login = Login {
        state: random_id().map_err(failed)?,
        nonce: random_id().map_err(failed)?,
        verifier: random_id().map_err(failed)?,
        return_to: return_to.to_owned(),
        until: clock::unix_secs() + LOGIN_TTL.as_secs(),
    };
    let name = login_cookie_name(conf, &login.state);
    let plain = serde_json::to_vec(&login).map_err(|e| failed(&e.to_string()))?;
    let sealed = sealer.seal_text(name.as_bytes(), &plain).map_err(failed)?;
    let mut url = url::Url::parse(&endpoints.authorization)
        .map_err(|e| failed(&format!("authorization_endpoint: {e}")))?;
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("response_type", "code")
            .append_pair("client_id", &conf.client_id)
            .append_pair("redirect_uri", &conf.redirect_uri)
            .append_pair("scope", &conf.scopes.join(" "))
            .append_pair("state", &login.state)
            .append_pair("nonce", &login.nonce)
            .append_pair("code_challenge", &pkce_challenge(&login.verifier))
            .append_pair("code_challenge_method", "S256");
        if let Some(resource) = &conf.resource {
            q.append_pair("resource", resource);
        }
    }
    let cookie = set_cookie(&name, &sealed, LOGIN_TTL).ok_or_else(|| failed("cookie"))?;
    Ok(Redirect {
        location: url.into(),
        cookies: vec![cookie],
    })
}

/// The callback's login, once its `state` matches the login cookie's.
pub fn pending(
    conf: &SessionsConf,
    sealer: &Sealer,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Pending, LoginError> {
    let params: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .into_owned()
        .collect();
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let state = param("state").ok_or(LoginError::Request("no state"))?;
    if state.len() < 8 || state.len() > 128 {
        return Err(LoginError::Request("malformed state"));
    }
    let name = login_cookie_name(conf, state);
    let sealed = cookie(headers, &name).ok_or(LoginError::Request(
        "no login under way in this browser for this state (expired, or started elsewhere)",
    ))?;
    let login: Login = sealer
        .open_text(name.as_bytes(), sealed)
        .and_then(|plain| serde_json::from_slice(&plain).ok())
        .ok_or(LoginError::Request(
            "the login cookie is not one of the gateway's",
        ))?;
    if !constant_time_eq(login.state.as_bytes(), state.as_bytes()) {
        return Err(LoginError::Request("state does not match the login"));
    }
    if login.until < clock::unix_secs() {
        return Err(LoginError::Request("the login took too long"));
    }
    if let Some(error) = param("error") {
        return Err(LoginError::Provider(error.chars().take(64).collect()));
    }
    let code = param("code").ok_or(LoginError::Request("no code"))?;
    Ok(Pending {
        code: code.to_owned(),
        nonce: login.nonce,
        verifier: login.verifier,
        return_to: login.return_to,
        cookie_name: name,
    })
}

/// The session cookie is set, the login cookie cleared, and the browser sent back.
pub fn established(conf: &SessionsConf, id: &str, pending: &Pending) -> Redirect {
    let cookies = [
        set_cookie(&conf.cookie.name, id, conf.cookie.absolute_timeout),
        set_cookie(&pending.cookie_name, "", Duration::ZERO),
    ];
    Redirect {
        location: pending.return_to.clone(),
        cookies: cookies.into_iter().flatten().collect(),
    }
}

/// After logout: the session cookie cleared, and the browser sent to the provider's
/// end-session endpoint (OpenID Connect RP-Initiated Logout 1.0 §2), or to
/// `post_logout_redirect_uri`, or home.
pub fn logout_redirect(
    conf: &SessionsConf,
    end_session: Option<&str>,
    id_token: Option<&str>,
) -> Redirect {
    let location = match end_session.and_then(|e| url::Url::parse(e).ok()) {
        Some(mut url) => {
            {
                let mut q = url.query_pairs_mut();
                q.append_pair("client_id", &conf.client_id);
                if let Some(hint) = id_token {
                    q.append_pair("id_token_hint", hint);
                }
                if let Some(uri) = &conf.post_logout_redirect_uri {
                    q.append_pair("post_logout_redirect_uri", uri);
                }
            }
            url.into()
        }
        None => conf
            .post_logout_redirect_uri
            .clone()
            .unwrap_or_else(|| "/".into()),
    };
    Redirect {
        location,
        cookies: set_cookie(&conf.cookie.name, "", Duration::ZERO)
            .into_iter()
            .collect(),
    }
}

/// The value of cookie `name`, if exactly one request cookie has that name (another site of
/// the same domain may set a second one).
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    let mut found = None;
    for header in headers.get_all(http::header::COOKIE) {
        let Ok(header) = header.to_str() else {
            continue;
        };
        for pair in header.split(';') {
            if let Some((n, v)) = pair.trim().split_once('=') {
                if n.trim() == name {
                    if found.is_some() {
                        return None;
                    }
                    found = Some(v.trim());
                }
            }
        }
    }
    found.filter(|v| !v.is_empty())
}

/// A `Cookie` header without the gateway's own cookies (`name` and its login cookies).
pub fn without_own(value: &HeaderValue, name: &str) -> Option<String> {
    let text = value.to_str().ok()?;
    let login = format!("{name}-login-");
    let own = |pair: &str| {
        let n = pair.split('=').next().unwrap_or_default().trim();
        n == name || n.starts_with(&login)
    };
    if !text.split(';').any(own) {
        return None;
    }
    Some(
        text.split(';')
            .filter(|p| !own(p))
            .map(str::trim)
            .collect::<Vec<_>>()
            .join("; "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_to_stays_on_this_site() {
        assert_eq!(local_path("/desk?tab=2"), Some("/desk?tab=2"));
        for bad in [
            "https://evil.test/",
            "//evil.test",
            "/\\evil.test",
            "evil",
            "/a\r\nb",
            "",
        ] {
            assert_eq!(local_path(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn own_cookies_are_kept_from_the_upstream() {
        let name = "__Host-s";
        let v = HeaderValue::from_static("a=1; __Host-s=secret; __Host-s-login-abcd=x; b=2");
        assert_eq!(without_own(&v, name).as_deref(), Some("a=1; b=2"));
        assert_eq!(without_own(&HeaderValue::from_static("a=1"), name), None);
    }

    #[test]
    fn a_doubled_cookie_is_no_cookie() {
        let mut h = HeaderMap::new();
        h.append(http::header::COOKIE, HeaderValue::from_static("s=1; t=2"));
        assert_eq!(cookie(&h, "s"), Some("1"));
        h.append(http::header::COOKIE, HeaderValue::from_static("s=3"));
        assert_eq!(cookie(&h, "s"), None);
    }
}

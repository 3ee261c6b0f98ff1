//! Calls to identity providers: key sets, discovery documents, introspection. Every call is
//! bounded in time and in the size of what it reads.

use std::time::Duration;

use once_cell::sync::OnceCell;
use serde_json::Value;

/// Upper bound on a document a provider can make the gateway read.
pub const MAX_DOCUMENT_BYTES: usize = 512 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot build HTTP client: {0}")]
    Client(String),
    #[error("{0}")]
    Http(#[from] reqwest::Error),
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("document larger than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge,
    #[error("discovery: {0}")]
    Discovery(String),
    #[error("JWKS: {0}")]
    Jwks(String),
    #[error("not JSON: {0}")]
    NotJson(String),
}

/// For GETs of public documents, which providers may redirect.
pub fn http_client() -> Result<&'static reqwest::Client, FetchError> {
    static CLIENT: OnceCell<reqwest::Client> = OnceCell::new();
    CLIENT.get_or_try_init(|| build(reqwest::redirect::Policy::limited(3)))
}

/// For requests that carry client credentials: never redirected, so the credentials go to
/// the configured endpoint only.
pub fn credentials_client() -> Result<&'static reqwest::Client, FetchError> {
    static CLIENT: OnceCell<reqwest::Client> = OnceCell::new();
    CLIENT.get_or_try_init(|| build(reqwest::redirect::Policy::none()))
}

fn build(redirects: reqwest::redirect::Policy) -> Result<reqwest::Client, FetchError> {
    reqwest::Client::builder()
        .redirect(redirects)
        .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| FetchError::Client(e.to_string()))
}

/// The `Authorization` of a client authenticating with `client_secret_basic`: RFC 6749
/// §2.3.1 has id and secret form-encoded before they are joined.
pub fn basic_credentials(client_id: &str, secret: &str) -> String {
    use base64::Engine;
    let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let pair = format!("{}:{}", encode(client_id), encode(secret));
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// GETs a JSON document, bounded in time and size. Returns it with its `max-age`, if any.
pub async fn get(url: &str, timeout: Duration) -> Result<(Vec<u8>, Option<Duration>), FetchError> {
    let response = http_client()?
        .get(url)
        .header(http::header::ACCEPT, "application/json")
        .timeout(timeout)
        .send()
        .await?;
    let max_age = response
        .headers()
        .get(http::header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .and_then(max_age);
    Ok((read_body(response).await?, max_age))
}

/// The body of a successful response, refused past [`MAX_DOCUMENT_BYTES`].
pub async fn read_body(response: reqwest::Response) -> Result<Vec<u8>, FetchError> {
    if !response.status().is_success() {
        return Err(FetchError::Status(response.status().as_u16()));
    }
    read_bounded(response).await
}

/// The body of any response, refused past [`MAX_DOCUMENT_BYTES`]: for the JSON error
/// answers of OAuth endpoints too.
pub async fn read_bounded(mut response: reqwest::Response) -> Result<Vec<u8>, FetchError> {
    if response
        .content_length()
        .is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64)
    {
        return Err(FetchError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(FetchError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Sends a request to an OAuth endpoint and reads its answer, a success or an error, bounded.
pub async fn answer_of(
    request: reqwest::RequestBuilder,
) -> Result<(http::StatusCode, Vec<u8>), FetchError> {
    let response = request.send().await?;
    let status = response.status();
    Ok((status, read_bounded(response).await?))
}

/// The `error` code of an OAuth error answer (RFC 6749 §5.2), if it has one.
pub fn oauth_error(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Failed {
        error: String,
    }
    serde_json::from_slice::<Failed>(body).map(|f| f.error).ok()
}

/// Reads `field` (an endpoint URL) from the OIDC discovery document at `url`.
pub async fn discover(
    url: &str,
    issuer: &str,
    field: &str,
    timeout: Duration,
) -> Result<String, FetchError> {
    let (body, _) = get(url, timeout).await?;
    let doc: Value =
        serde_json::from_slice(&body).map_err(|e| FetchError::Discovery(e.to_string()))?;
    // OIDC Discovery §4.3: the document must name the issuer it was fetched for.
    if doc.get("issuer").and_then(Value::as_str) != Some(issuer) {
        return Err(FetchError::Discovery(format!(
            "document's issuer is not {issuer:?}"
        )));
    }
    doc.get(field)
        .and_then(Value::as_str)
        .map(String::from)
        .ok_or_else(|| FetchError::Discovery(format!("no {field}")))
}

fn max_age(cache_control: &str) -> Option<Duration> {
    cache_control.split(',').find_map(|directive| {
        let (name, value) = directive.trim().split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("max-age") {
            return None;
        }
        value
            .trim()
            .trim_matches('"')
            .parse()
            .ok()
            .map(Duration::from_secs)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_encoded_first() {
        use base64::Engine;
        let expected = base64::engine::general_purpose::STANDARD.encode("gate+way:s%3Ae%2Fcret");
        assert_eq!(
            basic_credentials("gate way", "s:e/cret"),
            format!("Basic {expected}")
        );
    }

    #[test]
    fn max_age_is_read_from_cache_control() {
        assert_eq!(
            max_age("public, max-age=600"),
            Some(Duration::from_secs(600))
        );
        assert_eq!(max_age("no-cache"), None);
        assert_eq!(max_age("max-age=abc"), None);
    }
}

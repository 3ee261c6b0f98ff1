//! Request bodies on their way in: too large is refused before the upstream is contacted, and
//! a small body is read whole, its framing checked, before anything goes upstream.

use std::time::Duration;

use pingora_proxy::Session;

use crate::respond::{BodyRefusal, Reply};
use crate::snapshot::BodyPolicy;

/// The most Pingora keeps to send upstream once it has been read (its retry buffer).
pub const BUFFERED_MAX: u64 = 64 * 1024;

/// Reads a buffered route's body before the upstream is chosen. Afterwards Pingora sends what
/// was read (its retry buffer) as the body; a streamed body is left to be read as it goes.
pub async fn admit(
    session: &mut Session,
    policy: BodyPolicy,
    timeout: Duration,
) -> Result<(), BodyRefusal> {
    let declared = declared_length(session)?;
    if declared.is_some_and(|n| n > policy.max) {
        return Err(BodyRefusal::TooLarge);
    }
    if !policy.buffer || session.is_body_empty() || declared.is_some_and(|n| n > BUFFERED_MAX) {
        return Ok(());
    }
    // A chunked body may go on past what is kept: it can then be neither sent nor replayed.
    let limit = policy.max.min(BUFFERED_MAX);
    session.enable_retry_buffering();
    let read = async {
        let mut total: u64 = 0;
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    total = total.saturating_add(chunk.len() as u64);
                    if total > limit {
                        return Err(BodyRefusal::TooLarge);
                    }
                }
                Ok(None) => return Ok(()),
                Err(e) => {
                    log::debug!("request body refused: {e}");
                    return Err(BodyRefusal::Malformed);
                }
            }
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Err(BodyRefusal::TooSlow))
}

/// [`read_whole`], or the answer to give when the body is refused; the rest of a refused
/// body is unread, so the connection takes no further request.
pub async fn read_or_refuse(
    session: &mut Session,
    limit: usize,
    timeout: Duration,
) -> Result<Vec<u8>, Reply> {
    read_whole(session, limit, timeout)
        .await
        .map_err(|refused| {
            session.set_keepalive(None);
            refused.reply()
        })
}

/// Reads a small body whole, for a request the gateway answers itself.
pub async fn read_whole(
    session: &mut Session,
    limit: usize,
    timeout: Duration,
) -> Result<Vec<u8>, BodyRefusal> {
    if declared_length(session)?.is_some_and(|n| n > limit as u64) {
        return Err(BodyRefusal::TooLarge);
    }
    let read = async {
        let mut body = Vec::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) if body.len() + chunk.len() > limit => {
                    return Err(BodyRefusal::TooLarge)
                }
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) => return Ok(body),
                Err(e) => {
                    log::debug!("request body refused: {e}");
                    return Err(BodyRefusal::Malformed);
                }
            }
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Err(BodyRefusal::TooSlow))
}

/// The body's `Content-Length`, if it has one; Pingora refused a malformed one already.
fn declared_length(session: &Session) -> Result<Option<u64>, BodyRefusal> {
    match session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
    {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .map(Some)
            .ok_or(BodyRefusal::Malformed),
    }
}

/// Counts a streamed body against the route's limit.
pub fn count(read_so_far: &mut u64, chunk: usize, policy: BodyPolicy) -> Result<(), BodyRefusal> {
    *read_so_far = read_so_far.saturating_add(chunk as u64);
    if *read_so_far > policy.max {
        return Err(BodyRefusal::TooLarge);
    }
    Ok(())
}

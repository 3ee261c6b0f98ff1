//! Whether an exchange the upstream took part in is tried again: after an answer listed in
//! `retry_on_status`, or a read timeout, for a request that is safe to send again, within the
//! attempts, deadline and budget left. Every outcome is also told to the target's circuit.

use pingora_core::{Error, ErrorSource, ErrorType, Result, RetryType};
use pingora_proxy::Session;

use super::RequestCtx;
use crate::upstream::{retry, RetryReason};

/// Whether the request may be sent to the upstream again: safe to repeat, its body (if any)
/// still held whole, and nothing of an answer sent to the client.
fn resendable(session: &Session) -> bool {
    let req = session.req_header();
    retry::idempotent(&req.method, &req.headers)
        && !session.as_ref().retry_buffer_truncated()
        && session.response_written().is_none()
}

/// The upstream answered `status`: a retryable answer becomes an error Pingora retries on, so
/// that the client never sees it while attempts are left.
pub fn after_answer(session: &Session, ctx: &mut RequestCtx, status: u16) -> Result<()> {
    let Some(forwarding) = ctx.forwarding.as_mut() else {
        return Ok(());
    };
    let upstream = &ctx.snapshot.upstreams[forwarding.pass.upstream()];
    forwarding.attempts.settle(upstream, status < 500);
    if upstream.retry.retries_status(status)
        && resendable(session)
        && forwarding.attempts.retry(upstream, RetryReason::Status)
    {
        forwarding.retrying = true;
        let mut e = Error::explain(ErrorType::HTTPStatus(status), "answer retried");
        e.set_retry(true);
        return Err(e);
    }
    Ok(())
}

/// The attempt failed once connected. A read timeout is retried when the upstream says so; a
/// pooled connection the upstream had closed is tried again, as Pingora does by default.
pub fn after_error(
    session: &Session,
    ctx: &mut RequestCtx,
    mut e: Box<Error>,
    client_reused: bool,
) -> Box<Error> {
    let Some(forwarding) = ctx.forwarding.as_mut() else {
        e.set_retry(false);
        return e;
    };
    // The retry asked for by `after_answer`.
    if std::mem::take(&mut forwarding.retrying) {
        return e;
    }
    // The client went away or sent garbage: nothing to retry, nothing said of the target.
    if e.esource() != &ErrorSource::Upstream {
        e.set_retry(false);
        return e;
    }
    let upstream = &ctx.snapshot.upstreams[forwarding.pass.upstream()];
    // A pooled connection the upstream had closed says nothing about the target either.
    let stale_connection =
        client_reused && matches!(e.retry, RetryType::ReusedOnly | RetryType::Decided(true));
    if !stale_connection {
        forwarding.attempts.settle(upstream, false);
    }
    if !resendable(session) {
        e.set_retry(false);
    } else if e.etype == ErrorType::ReadTimedout && upstream.retry.on_timeout {
        let again = forwarding.attempts.retry(upstream, RetryReason::Timeout);
        e.set_retry(again);
    } else {
        e.retry.decide_reuse(client_reused);
    }
    e
}

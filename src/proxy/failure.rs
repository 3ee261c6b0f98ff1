//! When the upstream could not serve a request: what the client is told.

use pingora_core::{Error, ErrorType, Result};
use pingora_proxy::Session;

use super::context::RequestCtx;
use crate::upstream::NoPeer;

/// The gateway's JSON answer (a gRPC status for a gRPC call) when the upstream could not
/// serve the request.
pub async fn answer(session: &mut Session, ctx: &RequestCtx, status: u16) -> Result<()> {
    let reply = ctx.snapshot.responses.upstream_failure(status);
    super::respond(session, ctx, reply).await.map(|_| ())
}

/// The error for an exchange with no connection attempt left. [`UpstreamFailure::classify`]
/// turns it into what the client is told: 503 when every target was down before the request,
/// 502 after the request's own attempts failed, 504 once the upstream's `timeout` passed.
pub fn no_peer(e: NoPeer) -> Box<Error> {
    match e {
        NoPeer::Unavailable => Error::explain(ErrorType::HTTPStatus(503), "no target is available"),
        // The attempts' own failures were logged as they happened.
        NoPeer::Failed => Error::explain(
            ErrorType::ConnectError,
            "no target is left to try after failed connections",
        ),
        NoPeer::TimedOut => Error::explain(
            ErrorType::ConnectTimedout,
            "the upstream timeout passed before a connection was made",
        ),
    }
}

/// Why a request could not be proxied, as the client is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// 502: refused, reset, TLS failure, a malformed answer.
    BadGateway,
    /// 504: connect, read or write timeout.
    Timeout,
    /// A status the gateway itself raised.
    Status(u16),
    /// The client hung up or sent garbage: nobody to answer, or a 400.
    ClientGone,
    BadRequest,
    Internal,
}

impl UpstreamFailure {
    pub fn classify(e: &Error) -> Self {
        use pingora_core::{ErrorSource, ErrorType as T};
        match e.etype() {
            T::HTTPStatus(code) => return Self::Status(*code),
            T::ConnectTimedout | T::ReadTimedout | T::WriteTimedout | T::TLSHandshakeTimedout => {
                return Self::Timeout
            }
            _ => {}
        }
        match e.esource() {
            ErrorSource::Upstream => Self::BadGateway,
            ErrorSource::Downstream => match e.etype() {
                T::WriteError | T::ReadError | T::ConnectionClosed => Self::ClientGone,
                _ => Self::BadRequest,
            },
            ErrorSource::Internal | ErrorSource::Unset => match e.etype() {
                // Connect-side failures are raised before the source is set.
                T::ConnectRefused
                | T::ConnectNoRoute
                | T::ConnectError
                | T::TLSHandshakeFailure
                | T::InvalidCert
                | T::HandshakeError => Self::BadGateway,
                _ => Self::Internal,
            },
        }
    }

    pub fn status(self) -> u16 {
        match self {
            Self::BadGateway => 502,
            Self::Timeout => 504,
            Self::Status(code) => code,
            Self::ClientGone => 0,
            Self::BadRequest => 400,
            Self::Internal => 500,
        }
    }
}

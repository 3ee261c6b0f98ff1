//! The log lines of a request: its admission decision (audit log) and its end (access log).
//! The token itself is never written.

use std::borrow::Cow;
use std::time::Duration;

use pingora_http::RequestHeader;

use super::admission::host_of;
use super::context::RequestCtx;
use crate::authorize::Granted;
use crate::clock;
use crate::logs::{AccessRecord, AuditRecord};
use crate::rate_limit::RateLimiter;
use crate::respond::Rejection;
use crate::upstream::CredentialError;

/// Why a request was refused, as the audit log and metrics say it. With the rate limiter,
/// a rate-limited request names its tier.
pub fn reason(rejection: &Rejection, limiter: Option<&RateLimiter>) -> Cow<'static, str> {
    match rejection {
        Rejection::BadPath(e) => Cow::Owned(e.to_string()),
        Rejection::HeadersTooLarge => Cow::Borrowed("headers_too_large"),
        Rejection::UriTooLong => Cow::Borrowed("uri_too_long"),
        Rejection::NotFound => Cow::Borrowed("no_route"),
        Rejection::Unauthorized(e) => Cow::Borrowed(e.reason()),
        Rejection::Forbidden(e) => Cow::Borrowed(e.reason()),
        Rejection::Limited(v) => match limiter {
            Some(l) => Cow::Owned(format!("rate_limited:{}", l.tier_name(v))),
            None => Cow::Borrowed("rate_limited"),
        },
        Rejection::LimiterUnavailable(_) => Cow::Borrowed("rate_limit_store_unavailable"),
        Rejection::Undecided { .. } => Cow::Borrowed("introspection_unavailable"),
        Rejection::External(_) => Cow::Borrowed("ext_authz_denied"),
        Rejection::CorsRefused(_) => Cow::Borrowed("cors_refused"),
        Rejection::UpstreamCredentials(CredentialError::Refused) => {
            Cow::Borrowed("token_exchange_refused")
        }
        Rejection::UpstreamCredentials(CredentialError::Unavailable { .. }) => {
            Cow::Borrowed("upstream_credentials_unavailable")
        }
    }
}

/// The audit line of a decision: every refusal (carried out, or only logged on a route in
/// shadow mode), and every admission of an authenticated request.
pub fn decision(req: &RequestHeader, ctx: &RequestCtx, rejection: Option<&Rejection>) {
    let snap = &ctx.snapshot;
    let Some(log) = &snap.logs.audit else {
        return;
    };
    let facts = &ctx.facts;
    let enforced = rejection.is_some() || facts.shadowed.is_none();
    let (decision, status, reason, rule) = match rejection.or(facts.shadowed.as_ref()) {
        None if facts.principal.is_none() => return,
        None => (
            "allow",
            None,
            Cow::Borrowed("ok"),
            facts.granted.map(Granted::rule),
        ),
        Some(r) => {
            let rule = match r {
                Rejection::Forbidden(f) => f.rule(),
                _ => None,
            };
            let reason = reason(r, Some(&snap.rate_limiter));
            ("deny", Some(r.status()), reason, rule)
        }
    };
    let p = facts.principal.as_ref();
    log.record(&AuditRecord {
        time: clock::rfc3339_millis(),
        log: "audit",
        request_id: ctx.request_id.to_str().unwrap_or("-"),
        client_ip: ctx.client_ip,
        method: req.method.as_str(),
        path: req.uri.path(),
        route: ctx.route_name(),
        decision,
        status,
        reason,
        rule,
        enforced: (!enforced).then_some(false),
        ext_authz: facts.ext_authz,
        issuer: p.map(|p| &*p.issuer),
        subject: p.map(|p| p.subject.as_str()),
        client_id: p.and_then(|p| p.client_id.as_deref()),
        tenant: p.and_then(|p| p.tenant.as_deref()),
        token: facts.token_id.clone(),
    });
}

/// The access line of a finished request.
pub fn access(
    req: &RequestHeader,
    bytes_sent: usize,
    ctx: &RequestCtx,
    status: u16,
    took: Duration,
) {
    let Some(log) = &ctx.snapshot.logs.access else {
        return;
    };
    let header =
        |name: http::header::HeaderName| req.headers.get(name).and_then(|v| v.to_str().ok());
    let upstream = ctx
        .forwarding
        .as_ref()
        .map(|f| (f.upstream(&ctx.snapshot), f.attempts.target()));
    log.record(&AccessRecord {
        time: clock::rfc3339_millis(),
        log: "access",
        request_id: ctx.request_id.to_str().unwrap_or("-"),
        client_ip: ctx.client_ip,
        method: req.method.as_str(),
        host: host_of(req).unwrap_or(""),
        path: req.uri.path(),
        status,
        route: ctx.route_name(),
        upstream: upstream.map(|(u, _)| &*u.name),
        target: upstream.and_then(|(u, t)| u.targets().get(t?).copied()),
        subject: ctx.facts.principal.as_ref().map(|p| p.subject.as_str()),
        // Whole microseconds: `0.15`, not `0.14977100000000002`.
        duration_ms: took.as_micros() as f64 / 1000.0,
        bytes_sent,
        user_agent: header(http::header::USER_AGENT),
    });
}

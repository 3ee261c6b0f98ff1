//! WebSocket upgrades: the gateway connects to the backend itself and relays the connection
//! to its end, so it can close both sides when the token expires, is revoked or evicted.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use pingora_core::connectors::TransportConnector;
use pingora_core::protocols::http::v1::client::HttpSession as UpstreamSession;
use pingora_core::{Error, ErrorType, Result};
use pingora_http::RequestHeader;
use pingora_proxy::Session;

use super::admission::{host_of, token_of, Pass};
use super::context::{Forwarding, Held, RequestCtx};
use super::failure::{self, UpstreamFailure};
use super::kept;
use super::prepare_upstream_request;
use crate::authenticate::AuthError;
use crate::authorize::{self, Forbidden};
use crate::clock;
use crate::config::Access;
use crate::metrics;
use crate::route;
use crate::snapshot::SharedSnapshot;
use crate::tls::ClientCert;
use crate::upstream::Attempts;
use crate::websocket::{self, handshake, registry::Registry, Relay, Renew};

/// Serves an admitted upgrade to the end of the connection.
pub async fn serve(
    session: &mut Session,
    ctx: &mut RequestCtx,
    pass: Pass,
    connector: &TransportConnector,
    config: &SharedSnapshot,
    websockets: &Arc<Registry>,
) -> Result<()> {
    let snap = ctx.snapshot.clone();
    let upstream = &snap.upstreams[pass.upstream()];
    let forwarding = ctx.forwarding.insert(Forwarding {
        attempts: Attempts::untimed(upstream),
        pass,
        body_read: 0,
        in_flight: None,
        retrying: false,
    });
    let mut req = session.req_header().clone();
    prepare_upstream_request(
        &mut req,
        &snap,
        forwarding,
        ctx.downstream.cert.as_ref(),
        &ctx.request_id,
    )?;
    handshake::upstream_request(&mut req, &snap.websocket)?;

    // Connect as a proxied request would: another target while attempts are left.
    let (stream, peer) = loop {
        let peer = match forwarding
            .attempts
            .next_peer(upstream, forwarding.pass.affinity())
        {
            Ok(peer) => peer,
            Err(e) => {
                let status = UpstreamFailure::classify(&failure::no_peer(e)).status();
                return failure::answer(session, ctx, status).await;
            }
        };
        match connector.new_stream(&peer).await {
            Ok(stream) => break (stream, peer),
            Err(e) => {
                log::warn!("upstream {peer}: {e}");
                if !forwarding.attempts.failed(upstream) {
                    return failure::answer(session, ctx, 502).await;
                }
            }
        }
    };
    let mut backend = UpstreamSession::new_with_options(stream, &peer);
    let answered = async {
        backend.write_request_header(Box::new(req)).await?;
        backend.read_response().await
    };
    let answered = answered.await;
    let ok = answered.is_ok()
        && backend
            .resp_header()
            .is_some_and(|r| r.status.as_u16() < 500);
    forwarding.attempts.settle(upstream, ok);
    if let Err(e) = answered {
        log::warn!("upstream {peer}: websocket handshake: {e}");
        let status = UpstreamFailure::classify(&e).status();
        return failure::answer(session, ctx, status.max(502)).await;
    }
    let Some(mut resp) = backend.resp_header().cloned() else {
        return failure::answer(session, ctx, 502).await;
    };
    for (name, value) in ctx.answer_headers() {
        resp.insert_header(name, value)?;
    }

    if !backend.was_upgraded() {
        // The backend refused the upgrade: its answer goes to the client as it is.
        session.write_response_header(Box::new(resp), false).await?;
        while let Some(body) = backend.read_body_bytes().await? {
            session.write_response_body(Some(body), false).await?;
        }
        return session.write_response_body(None, true).await;
    }
    let deflate = handshake::client_response(&mut resp, session.req_header(), &snap.websocket)?;
    // Frames the backend sent along with its 101.
    let first = match futures_util::FutureExt::now_or_never(backend.read_body_bytes()) {
        Some(Ok(Some(bytes))) => bytes,
        _ => bytes::Bytes::new(),
    };
    session.write_response_header(Box::new(resp), false).await?;
    ctx.websocket = Some(Held::new(metrics::websockets_open()));

    let principal = ctx.facts.principal.as_ref();
    let route = ctx.facts.route.map(|id| &snap.router[id]);
    // A token that may be revoked before it expires is asked about again now and then.
    let recheck = principal.and(snap.authenticator.websocket_recheck());
    let token = match (recheck, route) {
        (Some(_), Some(route)) => token_of(session.req_header(), route, &snap)
            .map(|l| l.token.into_owned())
            .unwrap_or_default(),
        _ => String::new(),
    };
    let renewal = Arc::new(Renewal {
        config: config.clone(),
        host: host_of(session.req_header()).map(str::to_owned),
        path: route::normalize(session.req_header().uri.path())
            .map_err(|e| Error::because(ErrorType::InternalError, "path", e))?
            .into_owned(),
        subject: principal.map(|p| p.subject.clone()).unwrap_or_default(),
        tenant: principal.and_then(|p| p.tenant.clone()),
        cert: ctx.downstream.cert.clone(),
        client_ip: ctx.client_ip,
        // Kept only when a rule reads them: a WebSocket lives long.
        headers: match route {
            Some(r) if r.policy.reads_headers() => session.req_header().headers.clone(),
            _ => http::HeaderMap::new(),
        },
        token: std::sync::Mutex::new(token),
        session: ctx.facts.session.as_ref().map(|s| s.handle.clone()),
    });
    let revoked = recheck.map(|every| {
        let renewal = renewal.clone();
        websocket::watch_revocation(every, move || {
            let renewal = renewal.clone();
            async move { renewal.still_active().await }
        })
    });
    let ticket = match &renewal.session {
        Some(handle) => {
            let key = crate::session::websocket_key(handle.as_str());
            websockets.register_as(&[&renewal.subject, &key])
        }
        None => websockets.register(&renewal.subject),
    };
    let deadline = principal.and_then(|p| clock::instant_of_unix(p.valid_until));
    let renews = principal.is_some();

    let req = access_line(session.req_header())?;
    // The relay goes on in a task of its own, so that the connection holds only what the
    // relay needs rather than Pingora's session and this request's future for its whole life.
    let Some((client, unread)) = session.take_upgraded().await? else {
        return Err(Error::explain(
            ErrorType::InternalError,
            "an upgraded connection is not HTTP/1",
        ));
    };
    let kept = kept::take();
    let mut ctx = ctx.detach();
    tokio::spawn(async move {
        let _kept = kept;
        let snap = ctx.snapshot.clone();
        // Nothing to renew on a public route: every message goes through.
        let renew = renews.then_some(&*renewal as &dyn Renew);
        let relay = Relay::new(&snap.websocket, deflate, deadline, ticket, renew, revoked);
        let (ending, sent) = relay.run(client, unread, backend.into_inner(), first).await;
        log::debug!(
            "websocket {} ended: {}",
            ctx.request_id.to_str().unwrap_or("-"),
            ending.label()
        );
        super::finished(&req, 101, sent as usize, &mut ctx);
    });
    Ok(())
}

/// What the access line reads of an upgrade request, kept for the connection's life instead
/// of all its headers (the token among them).
fn access_line(req: &RequestHeader) -> Result<RequestHeader> {
    let mut line = RequestHeader::build_no_case(req.method.clone(), b"/", Some(2))?;
    line.set_uri(req.uri.clone());
    for name in [http::header::HOST, http::header::USER_AGENT] {
        if let Some(value) = req.headers.get(&name) {
            line.insert_header(name, value.clone())?;
        }
    }
    Ok(line)
}

/// Validates the tokens of one WebSocket against the config current at the time: renewal
/// tokens as they arrive, and the token in use when it is introspected again.
struct Renewal {
    config: SharedSnapshot,
    host: Option<String>,
    path: String,
    subject: String,
    tenant: Option<String>,
    cert: Option<ClientCert>,
    client_ip: std::net::IpAddr,
    /// The upgrade request's headers, when the route's rules read headers.
    headers: http::HeaderMap,
    /// The token the connection lives by now: the one it was opened with, or the last renewal.
    token: std::sync::Mutex<String>,
    /// The browser session the connection was opened from, whose token the gateway refreshes.
    session: Option<crate::session::Handle>,
}

/// Why a token does not keep a WebSocket open.
enum Unfit {
    Token(AuthError),
    /// The route is gone or no longer authenticated (a reload changed it).
    NoRoute,
    /// Another subject or tenant than the connection's.
    OtherSubject,
    Forbidden(Forbidden),
}

impl Unfit {
    fn reason(&self) -> &'static str {
        match self {
            Unfit::Token(e) => e.reason(),
            Unfit::NoRoute => "no_route",
            Unfit::OtherSubject => "other_subject",
            Unfit::Forbidden(f) => f.reason(),
        }
    }
}

impl Renewal {
    /// The token's deadline, if it is still good for this connection.
    async fn check(&self, token: &str) -> Result<Option<Instant>, Unfit> {
        let snap = self.config.load_full();
        let route = snap
            .router
            .find(self.host.as_deref(), &self.path, &http::Method::GET)
            .filter(|r| r.access == Access::Authenticated)
            .ok_or(Unfit::NoRoute)?;
        let principal = snap
            .authenticator
            .authenticate(
                token,
                route.issuers.as_deref(),
                self.cert.as_ref().map(|c| c.sha256.as_slice()),
            )
            .await
            .map_err(Unfit::Token)?;
        if principal.subject != self.subject || principal.tenant != self.tenant {
            return Err(Unfit::OtherSubject);
        }
        let request = authorize::Request {
            method: &http::Method::GET,
            path: &self.path,
            headers: &self.headers,
            client_ip: self.client_ip,
            client_cert_subject: self.cert.as_ref().and_then(|c| c.subject.as_deref()),
        };
        route
            .policy
            .authorize(&request, Some(&principal))
            .map_err(Unfit::Forbidden)?;
        Ok(clock::instant_of_unix(principal.valid_until))
    }

    fn current_token(&self) -> String {
        self.token.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Whether the token in use is still active. A provider that cannot be asked ends no
    /// connection: the next check asks again, and the token's `exp` still holds.
    async fn still_active(&self) -> bool {
        match self.check(&self.current_token()).await {
            Ok(_) | Err(Unfit::Token(AuthError::Undecided { .. })) => true,
            Err(e) => {
                log::info!("websocket of {} ends: {}", self.subject, e.reason());
                false
            }
        }
    }
}

#[async_trait]
impl Renew for Renewal {
    async fn renew(&self, token: &str) -> Result<Option<Instant>, &'static str> {
        let deadline = self.check(token).await.map_err(|e| e.reason())?;
        if let Ok(mut current) = self.token.lock() {
            token.clone_into(&mut current);
        }
        Ok(deadline)
    }

    /// A session's connection lives on with the session's refreshed access token.
    async fn refreshed(&self) -> Option<Instant> {
        let handle = self.session.clone()?;
        let config = self.config.clone();
        // Run apart from the relay, which may stop waiting: a refresh is not cut off midway.
        let active = tokio::spawn(async move {
            let snap = config.load_full();
            snap.sessions.as_ref()?.resume_handle(handle).await.ok()
        })
        .await
        .ok()??;
        match self.check(active.access_token()).await {
            Ok(deadline) => {
                if let Ok(mut current) = self.token.lock() {
                    *current = active.access_token().to_owned();
                }
                deadline
            }
            Err(e) => {
                log::info!("websocket of {} ends: {}", self.subject, e.reason());
                None
            }
        }
    }
}

//! Ending sessions: by logout, by the provider's back-channel logout, by the admin eviction,
//! and as other instances announce it.

use std::time::Duration;

use http::HeaderMap;

use super::login::{self, LoginError, Redirect};
use super::provider;
use super::store::{self, By, Handle, Store, StoreError};
use super::{websocket_key, Ended, EndedMessage, Sessions, LEEWAY_SECS, MAX_ENDED_TOKENS};
use crate::authenticate::{Authenticator, Principal};
use crate::metrics;
use crate::token_service::Revocation;

impl Sessions {
    /// Ends sessions: removes them, refuses their access tokens, and tells the other
    /// instances. Returns what the caller closes here (WebSockets).
    pub async fn end(&self, handles: Vec<Handle>, how: &'static str) -> Result<Ended, StoreError> {
        let removed = self.state.store.remove(&handles).await?;
        let mut ended = Ended::default();
        let mut message = EndedMessage {
            sessions: Vec::new(),
            tokens: Vec::new(),
        };
        for (handle, record) in removed {
            metrics::session_event("end", how);
            let digest = store::hex(&crate::authenticate::token_digest(&record.access_token));
            let until = record.access_expires + LEEWAY_SECS;
            self.refuse_token(&digest, until);
            message.tokens.push((digest, until));
            message.sessions.push(handle.as_str().to_owned());
            ended.websockets.push(websocket_key(handle.as_str()));
            ended.id_token = Some(record.id_token);
        }
        if let (Some(channel), Store::Redis(shared), false) = (
            &self.channel,
            &self.state.store,
            message.sessions.is_empty(),
        ) {
            match serde_json::to_string(&message) {
                Ok(text) => {
                    if let Err(e) = shared.announce_ended(channel, &text, &message.tokens).await {
                        log::error!("ended sessions not published: {e}");
                    }
                }
                Err(e) => log::error!("ended sessions not published: {e}"),
            }
        }
        Ok(ended)
    }

    fn refuse_token(&self, digest: &str, until: u64) {
        if let Err(e) = self
            .state
            .ended_tokens
            .insert(&Revocation::Jti(digest.to_owned()), until)
        {
            log::error!("an ended session's access token is not refused: {e}");
        }
    }

    /// Whether `token`, verified as `principal`, belonged to a session that has ended.
    pub fn ended_token(&self, token: &str, principal: &Principal) -> bool {
        let ended = &self.state.ended_tokens;
        !ended.is_empty() && ended.contains(Some(&store::hex(principal.token_sha256(token))), "")
    }

    /// The Redis channel instances announce ended sessions on, with its server.
    pub fn channel(&self) -> Option<(String, String)> {
        let (_, redis) = &self.state.place;
        let (url, _) = redis.as_ref()?;
        Some((url.clone(), self.channel.clone()?))
    }

    /// Takes in the access tokens of sessions ended before this instance subscribed to the
    /// announcements (stored in Redis until they expire); returns how many.
    pub async fn catch_up_ended(&self) -> Result<usize, StoreError> {
        let Store::Redis(shared) = &self.state.store else {
            return Ok(0);
        };
        let tokens = shared.ended_tokens(MAX_ENDED_TOKENS).await?;
        for (digest, until) in &tokens {
            self.refuse_token(digest, *until);
        }
        Ok(tokens.len())
    }

    /// Takes in sessions another instance ended; returns the WebSocket keys to close here.
    pub fn take_ended(&self, payload: &[u8]) -> Vec<String> {
        let message = match serde_json::from_slice::<EndedMessage>(payload) {
            Ok(m) => m,
            Err(e) => {
                log::warn!("ended sessions: unreadable message: {e}");
                return Vec::new();
            }
        };
        for (digest, until) in &message.tokens {
            self.refuse_token(digest, *until);
        }
        message.sessions.iter().map(|h| websocket_key(h)).collect()
    }

    /// Ends every session of `subject` (the admin eviction).
    pub async fn end_subject(&self, subject: &str) -> Result<Ended, StoreError> {
        let handles = self.state.store.find(&By::Subject(subject)).await?;
        self.end(handles, "admin").await
    }

    /// The logout path: ends the request's session; where to send the browser then.
    pub async fn logout(&self, headers: &HeaderMap) -> (Ended, Redirect) {
        let ended = match self.session_id(headers) {
            Some(id) => self
                .end(vec![Handle::of(id)], "logout")
                .await
                .unwrap_or_else(|e| {
                    log::error!("session not ended at logout: {e}");
                    Ended::default()
                }),
            None => Ended::default(),
        };
        let end_session = match self.provider.endpoints(&self.iss).await {
            Ok(e) => e.end_session.clone(),
            Err(e) => {
                log::warn!("logout without the provider's end-session endpoint: {e}");
                None
            }
        };
        let redirect = login::logout_redirect(
            &self.conf,
            end_session.as_deref(),
            ended.id_token.as_deref(),
        );
        (ended, redirect)
    }

    /// A back-channel logout: the sessions the provider's logout token names end.
    pub async fn backchannel_logout(
        &self,
        authenticator: &Authenticator,
        form: &[u8],
    ) -> Result<Ended, LoginError> {
        let token = form_urlencoded::parse(form)
            .find(|(k, _)| k == "logout_token")
            .map(|(_, v)| v.into_owned())
            .ok_or(LoginError::Request("no logout_token"))?;
        let claims = self
            .provider
            .check_logout_token(authenticator, &token)
            .await
            .map_err(LoginError::Token)?;
        let ttl = provider::LOGOUT_TOKEN_MAX_AGE + Duration::from_secs(2 * LEEWAY_SECS);
        let first = self
            .state
            .store
            .first_use(&claims.jti, ttl)
            .await
            .map_err(|e| LoginError::Unavailable(e.to_string()))?;
        if !first {
            return Err(LoginError::Request("logout token replayed"));
        }
        let store = &self.state.store;
        let unavailable = |e: StoreError| LoginError::Unavailable(e.to_string());
        let mut handles = match (&claims.sid, &claims.sub) {
            (Some(sid), _) => store
                .find(&By::ProviderSession(sid))
                .await
                .map_err(unavailable)?,
            (None, Some(sub)) => store.find(&By::Subject(sub)).await.map_err(unavailable)?,
            (None, None) => Vec::new(),
        };
        // With both, only the sessions of that subject in that provider session.
        if let (Some(_), Some(_)) = (&claims.sid, &claims.sub) {
            let subject = claims.sub.as_deref().unwrap_or_default();
            let of_subject = store
                .find(&By::Subject(subject))
                .await
                .map_err(unavailable)?;
            handles.retain(|h| of_subject.contains(h));
        }
        log::info!("back-channel logout ends {} session(s)", handles.len());
        self.end(handles, "backchannel").await.map_err(unavailable)
    }
}

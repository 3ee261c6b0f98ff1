//! Refreshing a session's access token: once per session at a time, here and across
//! instances, and ending the session when the provider refuses.

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use super::provider::{self, CallError};
use super::store::{Handle, Record, StoreError};
use super::{access_expiry, Lapsed, Sessions, REFRESH_WAIT};
use crate::clock;
use crate::metrics;

impl Sessions {
    pub(super) fn refresh_due(&self, record: &Record) -> bool {
        let lifetime = record.access_expires.saturating_sub(record.access_issued);
        let at = record
            .access_expires
            .saturating_sub(self.conf.refresh_before.as_secs())
            .max(record.access_issued + lifetime / 4);
        clock::unix_secs() >= at
    }

    /// A refreshed session: one refresh per session at a time here, and with Redis across
    /// instances; the others wait for its outcome.
    pub(super) async fn refreshed(
        &self,
        handle: &Handle,
        record: Arc<Record>,
    ) -> Result<Arc<Record>, Lapsed> {
        let flight = {
            let mut map = self
                .state
                .refreshing
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            map.entry(handle.clone()).or_default().clone()
        };
        let turn = flight.lock().await;
        let outcome = self.refresh_once(handle, record).await;
        drop(turn);
        let mut map = self
            .state
            .refreshing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if map.get(handle).is_some_and(|f| Arc::ptr_eq(f, &flight))
            && Arc::strong_count(&flight) <= 2
        {
            map.remove(handle);
        }
        outcome
    }

    async fn refresh_once(
        &self,
        handle: &Handle,
        record: Arc<Record>,
    ) -> Result<Arc<Record>, Lapsed> {
        let idle = self.conf.cookie.idle_timeout;
        let store = &self.state.store;
        let unavailable = |e: StoreError| Lapsed::Unavailable(e.to_string());
        // Another request (here or elsewhere) may have refreshed it meanwhile.
        let current = store.get(handle, idle).await.map_err(unavailable)?;
        let record = match current {
            None => return Err(Lapsed::Gone),
            Some(r) if r.access_token != record.access_token || !self.refresh_due(&r) => {
                return Ok(r)
            }
            Some(r) => r,
        };
        let usable = clock::unix_secs() < record.access_expires;
        let Some(refresh_token) = record.refresh_token.clone() else {
            // Nothing to refresh with: the session lasts as long as its access token.
            return if usable {
                Ok(record)
            } else {
                self.lapse(handle, "expired").await
            };
        };
        if !store.lock_refresh(handle).await.map_err(unavailable)? {
            return self.wait_for_refresh(handle, record).await;
        }
        let outcome = self.call_refresh(&refresh_token).await;
        let result = match outcome {
            Ok(tokens) => {
                metrics::session_event("refresh", "ok");
                let access_expires = access_expiry(&tokens);
                let renewed = Record {
                    access_issued: clock::unix_secs(),
                    access_expires,
                    // A provider that rotates refresh tokens sends a new one; else the old holds.
                    refresh_token: tokens.refresh_token.or(record.refresh_token.clone()),
                    id_token: tokens.id_token.unwrap_or(record.id_token.clone()),
                    access_token: tokens.access_token,
                    ..(*record).clone()
                };
                match store.put(handle, &renewed, idle).await {
                    Ok(()) => Ok(Arc::new(renewed)),
                    Err(e) => Err(unavailable(e)),
                }
            }
            Err(CallError::Refused(why)) => {
                metrics::session_event("refresh", "refused");
                log::info!(
                    "session of {} ends: refresh refused ({why})",
                    record.subject
                );
                store.unlock_refresh(handle).await;
                return self.lapse(handle, "refresh_refused").await;
            }
            Err(CallError::Failed(why)) => {
                metrics::session_event("refresh", "error");
                log::warn!("session refresh failed: {why}");
                if usable {
                    Ok(record)
                } else {
                    Err(Lapsed::Unavailable(why))
                }
            }
        };
        store.unlock_refresh(handle).await;
        result
    }

    /// Another instance refreshes: its result is awaited in the store.
    async fn wait_for_refresh(
        &self,
        handle: &Handle,
        record: Arc<Record>,
    ) -> Result<Arc<Record>, Lapsed> {
        let deadline = tokio::time::Instant::now() + REFRESH_WAIT;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            match self
                .state
                .store
                .get(handle, self.conf.cookie.idle_timeout)
                .await
            {
                Ok(None) => return Err(Lapsed::Gone),
                Ok(Some(r)) if r.access_token != record.access_token => return Ok(r),
                _ => {}
            }
        }
        if clock::unix_secs() < record.access_expires {
            Ok(record)
        } else {
            Err(Lapsed::Unavailable("the session's refresh is late".into()))
        }
    }

    async fn call_refresh(&self, refresh_token: &str) -> Result<provider::Tokens, CallError> {
        let endpoints = self.provider.endpoints(&self.iss).await?;
        self.provider.refresh(&endpoints.token, refresh_token).await
    }

    /// Ends a session whose tokens can no longer be renewed.
    async fn lapse(&self, handle: &Handle, how: &'static str) -> Result<Arc<Record>, Lapsed> {
        if let Err(e) = self.end(vec![handle.clone()], how).await {
            log::warn!("session not ended: {e}");
        }
        Err(Lapsed::Gone)
    }
}

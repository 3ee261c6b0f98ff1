//! Portcullis: an API security gateway on Pingora.
//!
//! A request passes [`route`] → [`authenticate`] → [`authorize`] → [`rate_limit`] → upstream,
//! as laid out in [`proxy`]. Configuration is read by [`config`] and compiled into a [`snapshot`].

pub mod admin;
pub mod authenticate;
pub mod authorize;
pub mod client_ip;
pub mod config;
pub mod health;
pub mod identity;
pub mod key_refresh;
pub mod lifecycle;
pub mod logs;
pub mod metrics;
pub mod proxy;
pub mod rate_limit;
pub mod reload;
pub mod request_id;
pub mod respond;
pub mod route;
pub mod snapshot;
pub mod tls;
pub mod token;
pub mod upstream;
pub mod websocket;

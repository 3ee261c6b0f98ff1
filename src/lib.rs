//! Portcullis: an API security gateway on Pingora.
//!
//! A request passes [`route`] → [`authenticate`] → [`authorize`] → upstream, as laid out in
//! [`proxy`]. Configuration is read by [`config`] and compiled into a [`snapshot`].

pub mod authenticate;
pub mod authorize;
pub mod config;
pub mod identity;
pub mod key_refresh;
pub mod proxy;
pub mod reload;
pub mod respond;
pub mod route;
pub mod snapshot;
pub mod token;
pub mod upstream;

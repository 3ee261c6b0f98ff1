//! Portcullis: an API security gateway on Pingora.
//!
//! A request passes [`route`] → [`authenticate`] → [`authorize`] → [`rate_limit`] → upstream,
//! as laid out in [`proxy`]. The layers point one way:
//!
//! * foundations: [`clock`], [`metrics`], [`logs`], [`config`] (the schema and its errors);
//! * domain modules, each compiling its own config table: [`route`], [`authenticate`],
//!   [`authorize`], [`rate_limit`], [`identity`], [`upstream`], [`tls`], [`websocket`],
//!   [`respond`], [`client_ip`], [`request_id`];
//! * [`snapshot`]: the compiled config, composing the domain modules;
//! * [`proxy`]: the request path over a snapshot;
//! * [`runtime`]: reload, key refresh, health checks, evictions, the admin listener and the
//!   process lifecycle, driving snapshots over time.
//!
//! `tests/layers.rs` checks that no module imports one of a layer above it.

pub mod authenticate;
pub mod authorize;
pub mod client_ip;
pub mod clock;
pub mod config;
pub mod identity;
pub mod logs;
pub mod metrics;
pub mod proxy;
pub mod rate_limit;
pub mod request_id;
pub mod respond;
pub mod route;
pub mod runtime;
pub mod snapshot;
pub mod tls;
pub mod token;
pub mod upstream;
pub mod websocket;

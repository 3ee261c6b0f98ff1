//! Portcullis: an API security gateway on Pingora.
//!
//! A request passes [`route`] → [`authenticate`] → [`authorize`] → [`rate_limit`] → upstream,
//! as laid out in [`proxy`]. The layers point one way:
//!
//! * foundations: [`clock`], [`metrics`], [`logs`], [`config`] (the schema and its errors),
//!   [`trace`] (request spans);
//! * domain modules, each compiling its own config table: [`route`], [`authenticate`],
//!   [`authorize`], [`rate_limit`], [`identity`], [`upstream`], [`tls`], [`websocket`],
//!   [`respond`], [`client_ip`], [`request_id`], [`cors`], [`token_service`] (the gateway's
//!   own anonymous session tokens);
//! * [`snapshot`]: the compiled config, composing the domain modules;
//! * [`proxy`]: the request path over a snapshot;
//! * [`runtime`]: reload, key refresh, health checks, evictions, the admin listener and the
//!   process lifecycle, driving snapshots over time.
//!
//! `tests/layers.rs` checks that no module imports one of a layer above it. Modules the
//! binary, the tests and the benches do not use are private to the crate.

pub mod authenticate;
pub mod authorize;
pub(crate) mod client_ip;
pub(crate) mod clock;
pub mod config;
pub(crate) mod cors;
#[doc(hidden)]
pub mod fuzz;
pub(crate) mod identity;
pub mod import;
pub(crate) mod logs;
pub mod metrics;
pub mod proxy;
pub mod rate_limit;
pub(crate) mod request_id;
pub(crate) mod respond;
pub mod rewrite;
pub mod route;
pub mod runtime;
pub(crate) mod session;
pub mod snapshot;
pub mod tls;
pub mod token;
pub(crate) mod token_service;
pub mod trace;
pub(crate) mod upstream;
pub mod websocket;

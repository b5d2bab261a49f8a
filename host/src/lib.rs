//! gatehouse: a gRPC gateway that gives every client session its own
//! sandboxed backend worker.
//!
//! Data flows one way through the modules:
//!
//! ```text
//! api (gRPC, auth, status mapping)
//!   -> registry (sessions, state machine, cap, leases, sweeper)
//!     -> session (one session's state, events, worker handle)
//!       -> backend (the Worker trait; wasm and native implementations)
//! ```
//!
//! Around that flow, every module by its job:
//!
//! - the request path: [`api`] (gRPC services, auth, status mapping),
//!   [`registry`] (sessions, versions, restarts, upgrades, drain),
//!   [`backend`] (wasm and native workers), [`events`] (a session's event
//!   log), [`transport`] (listeners, TLS, connection caps), [`console`]
//!   (the web console);
//! - shared state the registry and the edge count with: [`phase`] (the
//!   gateway's phase), [`permit`] (a count under a limit),
//!   [`memory_budget`], [`rate`] (token buckets), [`clock`], [`keys`] and
//!   [`keystore`] (API keys and the audit log), [`cluster`] (several
//!   gateways behind one proxy);
//! - what describes and observes it: [`config`], [`metrics`] (the
//!   metrics model), [`server::telemetry`];
//! - the wiring of `gatehouse serve`, all under [`server`]:
//!   [`server::loader`] (a config into loaded backends),
//!   [`server::preflight`], [`server::reload`], [`server::drain`],
//!   [`server::health`], the HTTP port's server (`/metrics`, health, the
//!   console) and [`server::plugin_check`]; [`builtin`] (the example
//!   backends in the binary) stays beside [`config`], which names them,
//!   so that config imports nothing of the server;
//! - the client side and tools: [`proto`] (the wire types and names both
//!   sides share), [`client`] (the Rust client library), [`cli`] (the
//!   `gatehouse` command built on it), [`loadgen`] (`gatehouse bench`),
//!   [`scaffold`] (`gatehouse plugin new`), and `fuzzing` (what the fuzz
//!   targets share).
//!
//! Everything but [`client`] and [`proto`] is behind the default `server`
//! feature: a program that only talks to a gateway depends on this crate
//! with `default-features = false` and compiles no wasmtime.

#![warn(missing_docs)]

#[cfg(feature = "server")]
pub mod api;
#[cfg(feature = "server")]
pub mod backend;
#[cfg(feature = "server")]
pub mod builtin;
#[cfg(feature = "server")]
pub mod cli;
pub mod client;
#[cfg(feature = "server")]
pub mod clock;
#[cfg(feature = "server")]
pub mod cluster;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod console;
#[cfg(feature = "server")]
pub mod events;
#[cfg(all(test, feature = "server"))]
mod fuzzing;
#[cfg(feature = "server")]
pub mod keys;
#[cfg(feature = "server")]
pub mod keystore;
#[cfg(feature = "server")]
pub mod loadgen;
#[cfg(feature = "server")]
pub mod memory_budget;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod notify;
#[cfg(feature = "server")]
pub mod permit;
#[cfg(feature = "server")]
pub mod phase;
pub mod proto;
#[cfg(feature = "server")]
pub mod rate;
#[cfg(feature = "server")]
pub mod registry;
#[cfg(feature = "server")]
pub mod scaffold;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod transport;

/// A `Duration` as a protobuf `Duration`.
pub fn api_duration(d: std::time::Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// The README's Rust examples, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;

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
//! [`config`] describes everything, [`metrics`] and [`telemetry`] observe
//! everything, [`loader`] turns a config into loaded backends, and
//! [`server`] wires the pieces together for `gatehouse serve`. [`client`]
//! is the Rust client library the `gatehouse` CLI ([`cli`]) is built on.

#![warn(missing_docs)]

pub mod api;
pub mod backend;
pub mod builtin;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod events;
pub mod health;
pub mod keys;
pub mod loader;
pub mod loadgen;
pub mod metrics;
pub mod proto;
pub mod registry;
pub mod scaffold;
pub mod server;
pub mod telemetry;

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

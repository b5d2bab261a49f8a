//! Black-box integration tests: the real `gatehouse` binary, real gRPC over
//! loopback, one gateway process per test.
//!
//! Run with `cargo test --test integration`.

mod fixtures;

mod bench;
mod budgets;
mod call;
mod cap;
mod cli_messages;
mod cluster;
mod compat;
mod connections;
mod console;
mod contain;
mod cpu;
mod events;
mod faults;
mod hardening;
mod js_plugins;
mod keys;
mod kill;
mod leases;
mod native;
mod ops;
mod plugins;
mod prometheus;
mod rates;
mod reload;
mod restart;
mod rpcs;
mod sandbox;
mod sessions;
mod shutdown;
mod status;
mod systemd;
mod tenants;
mod tls;
mod upgrade;

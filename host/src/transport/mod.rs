//! How connections reach the servers. Each port (gRPC, HTTP) has one
//! [`Acceptor`]: it accepts, counts against the port's connection caps,
//! runs the TLS handshake with the port's [`TlsStore`] and hands finished
//! connections, with their [`Peer`], to tonic or axum; each connection's
//! watchdog closes it when it sends no request or sits idle.
//!
//! The pieces, by job: `acceptor.rs` the accept loop, `conn.rs` one
//! connection, `limit.rs` the connection caps (in all, per address, the
//! health reserve), `watchdog.rs` a connection's deadlines, `activity.rs`
//! its open requests, `requests.rs` the servers' layer that counts them, `tls.rs` certificates and
//! their rotation, `peer.rs` the client's address and certificate names, `host_check.rs`
//! the names the HTTP port answers to.

mod acceptor;
mod activity;
mod conn;
mod host_check;
mod limit;
mod peer;
mod requests;
pub mod tls;
mod watchdog;

pub use self::acceptor::{Acceptor, Budget, HANDSHAKE_TIMEOUT};
pub use self::activity::Activity;
pub use self::conn::Conn;
pub use self::host_check::HostCheckLayer;
pub use self::limit::{Caps, ConnectionLimit, Permit, Refused};
pub use self::peer::{Peer, PeerIdentity};
pub use self::requests::{ActivityBody, ActivityLayer, Protocol};
pub use self::tls::{TlsError, TlsStore};
pub use self::watchdog::Deadlines;

//! How connections reach the servers. Each port (gRPC, HTTP) has one
//! [`Acceptor`]: it accepts, counts against `server.max_connections`, runs
//! the TLS handshake with the port's [`TlsStore`] and hands finished
//! connections, with their [`Peer`], to tonic or axum.
//!
//! The pieces, by job: `acceptor.rs` the accept loop, `conn.rs` one
//! connection, `limit.rs` the connection cap, `tls.rs` certificates and
//! their rotation, `peer.rs` the client's address and certificate names.

mod acceptor;
mod conn;
mod limit;
mod peer;
pub mod tls;

pub use self::acceptor::{Acceptor, HANDSHAKE_TIMEOUT};
pub use self::conn::Conn;
pub use self::limit::{ConnectionLimit, Permit};
pub use self::peer::{Peer, PeerIdentity};
pub use self::tls::{TlsError, TlsStore};

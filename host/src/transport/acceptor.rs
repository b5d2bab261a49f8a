//! A port's accept loop: every connection is counted against
//! `server.max_connections` from the moment it is accepted, TLS handshakes
//! run concurrently (one slow client cannot hold up the others) and end
//! after [`HANDSHAKE_TIMEOUT`], and only finished connections reach the
//! HTTP server.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use prometheus_client::metrics::counter::Counter;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::conn::Conn;
use super::limit::{ConnectionLimit, Permit};
use super::peer::{Peer, PeerIdentity};
use super::tls::TlsStore;
use crate::metrics::{PortLabel, TransportMetrics};

/// How long a client has to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The connections of one port, as tonic's incoming stream or an axum
/// listener. Dropping it stops the accept loop and closes the socket.
#[derive(Debug)]
pub struct Acceptor {
    rx: mpsc::Receiver<Conn>,
    local: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Acceptor {
    /// Starts accepting on `listener` for `port` (`grpc` or `http`), with
    /// TLS from `tls` if given.
    pub fn spawn(
        listener: TcpListener,
        port: &'static str,
        tls: Option<Arc<TlsStore>>,
        max_connections: usize,
        metrics: &TransportMetrics,
    ) -> io::Result<Self> {
        let local = listener.local_addr()?;
        let label = PortLabel { port: port.into() };
        let limit = ConnectionLimit::new(
            max_connections,
            metrics.connections_open.get_or_create(&label).clone(),
        );
        let counters = Counters {
            port,
            refused: metrics.connections_refused.get_or_create(&label).clone(),
            handshake_failures: metrics.tls_handshake_failures.get_or_create(&label).clone(),
        };
        // Room for a burst of accepts while the server spawns their tasks.
        let (tx, rx) = mpsc::channel(64);
        let task = tokio::spawn(accept_loop(listener, tx, tls, limit, counters));
        Ok(Self { rx, local, task })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Stream for Acceptor {
    type Item = io::Result<Conn>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|c| c.map(Ok))
    }
}

impl axum::serve::Listener for Acceptor {
    type Io = Conn;
    type Addr = Option<SocketAddr>;

    async fn accept(&mut self) -> (Conn, Option<SocketAddr>) {
        match self.rx.recv().await {
            Some(conn) => {
                let remote = conn.peer().remote;
                (conn, remote)
            }
            // The loop only ends when this acceptor is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Option<SocketAddr>> {
        Ok(Some(self.local))
    }
}

struct Counters {
    port: &'static str,
    refused: Counter,
    handshake_failures: Counter,
}

async fn accept_loop(
    listener: TcpListener,
    tx: mpsc::Sender<Conn>,
    tls: Option<Arc<TlsStore>>,
    limit: ConnectionLimit,
    counters: Counters,
) {
    // Handshakes belong to the loop: they end with it.
    let mut handshakes = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => continue,
            () = tx.closed() => return,
        };
        let (tcp, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                backoff(&e, counters.port).await;
                continue;
            }
        };
        let Some(permit) = limit.try_acquire() else {
            // Closed at once: the client sees a reset, not a hang.
            counters.refused.inc();
            tracing::debug!(port = counters.port, %remote, "connection refused: server.max_connections reached");
            continue;
        };
        // Small gRPC frames must not wait for Nagle.
        let _ = tcp.set_nodelay(true);
        let peer = Peer {
            remote: Some(remote),
            identity: None,
        };
        match &tls {
            None => {
                if tx.send(Conn::plain(tcp, peer, permit)).await.is_err() {
                    return;
                }
            }
            Some(store) => {
                let acceptor = store.acceptor();
                let tx = tx.clone();
                let failures = counters.handshake_failures.clone();
                let port = counters.port;
                handshakes.spawn(async move {
                    match handshake(acceptor, tcp, peer, permit).await {
                        Ok(conn) => {
                            let _ = tx.send(conn).await;
                        }
                        Err(why) => {
                            failures.inc();
                            tracing::debug!(port, %remote, "TLS handshake failed: {why}");
                        }
                    }
                });
            }
        }
    }
}

async fn handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    mut peer: Peer,
    permit: Permit,
) -> Result<Conn, String> {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err(format!("not finished after {HANDSHAKE_TIMEOUT:?}")),
    };
    // The verifier has checked the chain; what remains is to read names.
    if let Some(leaf) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
        match PeerIdentity::from_der(leaf) {
            Ok(identity) => peer.identity = Some(Arc::new(identity)),
            Err(e) => return Err(format!("unreadable client certificate: {e}")),
        }
    }
    Ok(Conn::tls(tls, peer, permit))
}

/// After a failed accept: connection-level errors are the client's and
/// are skipped; anything else (out of file descriptors) is logged and
/// waited out, so the loop does not spin.
async fn backoff(e: &io::Error, port: &str) {
    use io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted
    ) {
        return;
    }
    tracing::error!(port, "accept failed: {e}; retrying in 100ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

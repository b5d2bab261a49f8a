//! A port's accept loop: every connection is counted against the port's
//! caps ([`Caps`]) from the moment it is accepted, TLS handshakes run
//! concurrently (one slow client cannot hold up the others) and end after
//! [`HANDSHAKE_TIMEOUT`], and only finished connections reach the HTTP
//! server, each with its watchdog armed ([`Deadlines`]).

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

use super::activity::Activity;
use super::conn::Conn;
use super::limit::{Caps, ConnectionLimit, Permit, Refused};
use super::peer::{Peer, PeerIdentity};
use super::tls::TlsStore;
use super::watchdog::{Deadlines, Watchdog};
use crate::metrics::{PortLabel, PortReasonLabel, TransportMetrics};

/// How long a client has to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a port lets its connections hold: how many, and for how long
/// without a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The connection caps.
    pub caps: Caps,
    /// `server.first_request_timeout`.
    pub first_request: Duration,
    /// `server.idle_timeout`; `None` keeps idle connections.
    pub idle: Option<Duration>,
}

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
        budget: Budget,
        metrics: &TransportMetrics,
    ) -> io::Result<Self> {
        let local = listener.local_addr()?;
        let label = PortLabel { port: port.into() };
        let limit = ConnectionLimit::new(
            budget.caps,
            metrics.connections_open.get_or_create(&label).clone(),
        );
        let reason = |reason: &str| PortReasonLabel {
            port: port.into(),
            reason: reason.into(),
        };
        // One statement each: a family's guard is held to the end of the
        // statement, and a second `get_or_create` on it would deadlock.
        let first_request_closed = metrics
            .connections_timed_out
            .get_or_create(&reason("first-request"))
            .clone();
        let idle_closed = metrics
            .connections_timed_out
            .get_or_create(&reason("idle"))
            .clone();
        let counters = Counters {
            port,
            refused: metrics.connections_refused.get_or_create(&label).clone(),
            refused_address: metrics
                .connections_refused_per_address
                .get_or_create(&label)
                .clone(),
            reserved: metrics
                .health_connections_admitted
                .get_or_create(&label)
                .clone(),
            handshake_failures: metrics.tls_handshake_failures.get_or_create(&label).clone(),
            deadlines: Deadlines {
                first_request: budget.first_request,
                idle: budget.idle,
                first_request_closed,
                idle_closed,
            },
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

/// The "address" of an HTTP-port connection is its [`Peer`], so axum's
/// `ConnectInfo<Peer>` carries the connection's activity to
/// [`super::ActivityLayer`].
impl axum::serve::Listener for Acceptor {
    type Io = Conn;
    type Addr = Peer;

    async fn accept(&mut self) -> (Conn, Peer) {
        match self.rx.recv().await {
            Some(conn) => {
                let peer = conn.peer().clone();
                (conn, peer)
            }
            // The loop only ends when this acceptor is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Peer> {
        Ok(Peer {
            remote: Some(self.local),
            ..Peer::default()
        })
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Acceptor>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, Acceptor>) -> Self {
        stream.remote_addr().clone()
    }
}

struct Counters {
    port: &'static str,
    refused: Counter,
    refused_address: Counter,
    reserved: Counter,
    handshake_failures: Counter,
    deadlines: Deadlines,
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
        let permit = match limit.try_acquire(Some(remote.ip())) {
            Ok(p) => p,
            // Closed at once: the client sees a reset, not a hang.
            Err(Refused::Full) => {
                counters.refused.inc();
                tracing::debug!(port = counters.port, %remote, "connection refused: server.max_connections reached");
                continue;
            }
            Err(Refused::Address) => {
                counters.refused_address.inc();
                tracing::debug!(port = counters.port, %remote, "connection refused: server.max_connections_per_address reached");
                continue;
            }
        };
        if permit.is_reserved() {
            counters.reserved.inc();
        }
        // Small gRPC frames must not wait for Nagle.
        let _ = tcp.set_nodelay(true);
        let peer = Peer {
            remote: Some(remote),
            identity: None,
            activity: Arc::new(Activity::new(permit.is_reserved())),
        };
        match &tls {
            None => {
                let watchdog = Watchdog::new(counters.deadlines.clone());
                if tx
                    .send(Conn::plain(tcp, peer, watchdog, permit))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Some(store) => {
                let acceptor = store.acceptor();
                let tx = tx.clone();
                let failures = counters.handshake_failures.clone();
                let port = counters.port;
                let deadlines = counters.deadlines.clone();
                handshakes.spawn(async move {
                    match handshake(acceptor, tcp, peer, deadlines, permit).await {
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
    deadlines: Deadlines,
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
    // The first-request deadline counts from the end of the handshake,
    // which had its own.
    Ok(Conn::tls(tls, peer, Watchdog::new(deadlines), permit))
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

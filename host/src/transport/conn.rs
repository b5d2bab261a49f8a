//! One accepted connection, plaintext or TLS, holding its place under
//! `server.max_connections` until it closes, and closed by its watchdog
//! when it never sends a request or sits idle (`watchdog.rs`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

use super::limit::Permit;
use super::peer::Peer;
use super::watchdog::Watchdog;

/// An accepted connection, ready for HTTP.
#[derive(Debug)]
pub struct Conn {
    io: Io,
    peer: Peer,
    watchdog: Watchdog,
    _permit: Permit,
}

#[derive(Debug)]
enum Io {
    Plain(TcpStream),
    // Boxed: a TLS stream is a few KiB of buffers, a TcpStream a handle.
    Tls(Box<TlsStream<TcpStream>>),
}

impl Conn {
    /// A plaintext connection.
    pub(super) fn plain(tcp: TcpStream, peer: Peer, watchdog: Watchdog, permit: Permit) -> Self {
        Self {
            io: Io::Plain(tcp),
            peer,
            watchdog,
            _permit: permit,
        }
    }

    /// A connection after its TLS handshake.
    pub(super) fn tls(
        tls: TlsStream<TcpStream>,
        peer: Peer,
        watchdog: Watchdog,
        permit: Permit,
    ) -> Self {
        Self {
            io: Io::Tls(Box::new(tls)),
            peer,
            watchdog,
            _permit: permit,
        }
    }

    /// Who is on the other end.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }
}

impl Connected for Conn {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let read = match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        // What the client sent is delivered first (a request arriving at
        // the deadline starts, and holds the connection); only a read that
        // waits is ended by the watchdog.
        if read.is_pending() && this.watchdog.expired(&this.peer.activity, cx) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no request before server.first_request_timeout, or idle past server.idle_timeout",
            )));
        }
        read
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

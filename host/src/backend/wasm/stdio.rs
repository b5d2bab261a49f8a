//! Guest stdout and stderr as WASI output streams that write whole lines
//! to the gateway's log through [`log_line`].

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use crate::backend::guest_log::{LogLimiter, MAX_LINE, log_line};

/// Where a line of guest output came from.
#[derive(Debug, Clone, Copy)]
pub enum Source {
    /// The guest's stdout.
    Stdout,
    /// The guest's stderr.
    Stderr,
}

/// A guest stdout or stderr that writes lines to the log.
#[derive(Debug, Clone)]
pub struct GuestOutput {
    session: Arc<str>,
    source: Source,
    limiter: Arc<LogLimiter>,
}

impl GuestOutput {
    /// Output for one session's `source`.
    pub fn new(session: Arc<str>, source: Source, limiter: Arc<LogLimiter>) -> Self {
        Self {
            session,
            source,
            limiter,
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LineWriter::new(self.clone()))
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineWriter::new(self.clone()))
    }
}

/// Splits written bytes into lines and logs them.
struct LineWriter {
    out: GuestOutput,
    partial: Vec<u8>,
}

impl LineWriter {
    fn new(out: GuestOutput) -> Self {
        Self {
            out,
            partial: Vec::new(),
        }
    }

    fn write_bytes(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match bytes.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.push(&bytes[..i]);
                    self.emit();
                    bytes = &bytes[i + 1..];
                }
                None => {
                    self.push(bytes);
                    bytes = &[];
                }
            }
        }
    }

    fn push(&mut self, mut bytes: &[u8]) {
        while self.partial.len() + bytes.len() > MAX_LINE {
            let room = MAX_LINE - self.partial.len();
            self.partial.extend_from_slice(&bytes[..room]);
            self.emit();
            bytes = &bytes[room..];
        }
        self.partial.extend_from_slice(bytes);
    }

    fn emit(&mut self) {
        let line = String::from_utf8_lossy(&self.partial);
        let (source, level) = match self.out.source {
            Source::Stdout => ("stdout", tracing::Level::INFO),
            Source::Stderr => ("stderr", tracing::Level::WARN),
        };
        log_line(
            &self.out.session,
            source,
            level,
            &self.out.limiter,
            line.trim_end_matches('\r'),
        );
        self.partial.clear();
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.partial.is_empty() {
            self.emit();
        }
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LineWriter {
    async fn ready(&mut self) {}
}

impl OutputStream for LineWriter {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.write_bytes(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl AsyncWrite for LineWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

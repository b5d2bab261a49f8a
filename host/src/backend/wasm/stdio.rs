//! Guest stdout, stderr and `host.log` into the gateway's `tracing` logs,
//! tagged with the session id and rate limited per session.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Longest line kept; longer output is split.
const MAX_LINE: usize = 4096;

/// A token bucket shared by one session's stdout, stderr and `host.log`, so a
/// chatty plugin cannot fill the gateway's log.
#[derive(Debug)]
pub struct LogLimiter {
    state: Mutex<Bucket>,
    burst: f64,
    per_sec: f64,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    suppressed: u64,
}

impl LogLimiter {
    /// Allows `burst` lines at once and `per_sec` lines a second after that.
    pub fn new(burst: u32, per_sec: u32) -> Self {
        Self {
            state: Mutex::new(Bucket {
                tokens: f64::from(burst),
                last: Instant::now(),
                suppressed: 0,
            }),
            burst: f64::from(burst),
            per_sec: f64::from(per_sec),
        }
    }

    /// Takes a token for one line. Returns `None` when the line must be
    /// dropped, else the number of lines dropped since the last one allowed.
    pub fn admit(&self) -> Option<u64> {
        let mut b = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let refill = now.duration_since(b.last).as_secs_f64() * self.per_sec;
        b.tokens = (b.tokens + refill).min(self.burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Some(std::mem::take(&mut b.suppressed))
        } else {
            b.suppressed += 1;
            None
        }
    }
}

/// Where a line of guest output came from.
#[derive(Debug, Clone, Copy)]
pub enum Source {
    /// The guest's stdout.
    Stdout,
    /// The guest's stderr.
    Stderr,
}

/// Writes one line of guest output to the log, if the limiter allows it.
pub fn log_line(
    session: &str,
    source: &str,
    level: tracing::Level,
    limiter: &LogLimiter,
    line: &str,
) {
    let Some(suppressed) = limiter.admit() else {
        return;
    };
    if suppressed > 0 {
        tracing::warn!(target: "gatehouse::guest", session_id = session, suppressed, "guest log lines dropped by the rate limit");
    }
    match level {
        tracing::Level::ERROR => {
            tracing::error!(target: "gatehouse::guest", session_id = session, source, "{line}")
        }
        tracing::Level::WARN => {
            tracing::warn!(target: "gatehouse::guest", session_id = session, source, "{line}")
        }
        tracing::Level::INFO => {
            tracing::info!(target: "gatehouse::guest", session_id = session, source, "{line}")
        }
        tracing::Level::DEBUG => {
            tracing::debug!(target: "gatehouse::guest", session_id = session, source, "{line}")
        }
        tracing::Level::TRACE => {
            tracing::trace!(target: "gatehouse::guest", session_id = session, source, "{line}")
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_allows_a_burst_then_counts_drops() {
        let l = LogLimiter::new(3, 0);
        assert_eq!(l.admit(), Some(0));
        assert_eq!(l.admit(), Some(0));
        assert_eq!(l.admit(), Some(0));
        assert_eq!(l.admit(), None);
        assert_eq!(l.admit(), None);
    }
}

//! Plugin and worker output into the gateway's `tracing` log: tagged with
//! the session id (target `gatehouse::guest`) and rate limited per session,
//! so a chatty plugin or worker process cannot fill the gateway's log. Wasm
//! guests' stdout, stderr and `host.log`, and native workers' output, all
//! come through [`log_line`].

use std::sync::Mutex;
use std::time::Instant;

/// Longest line kept; longer output is split.
pub const MAX_LINE: usize = 4096;

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

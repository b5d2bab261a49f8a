//! A tenant's CPU budget (`max_cpu_per_sec`, `cpu_burst`) as a bucket of
//! CPU time: it gains `per_sec_ms` CPU-ms a second up to `burst_ms`, and
//! the CPU guests use is taken from it after the fact, so it can go below
//! zero. While it is below zero, the tenant's commands and ticks wait.
//!
//! Time is passed in, so tests move it by hand.

use std::time::{Duration, Instant};

use crate::config::CpuBudgetSpec;

/// The bucket; CPU-ns as `f64`.
#[derive(Debug, Clone, Copy)]
pub struct CpuBucket {
    spec: CpuBudgetSpec,
    tokens: f64,
    at: Instant,
}

impl CpuBucket {
    /// A full bucket.
    pub fn full(spec: CpuBudgetSpec, now: Instant) -> Self {
        Self {
            spec,
            tokens: spec.burst_ms * 1e6,
            at: now,
        }
    }

    /// Its settings.
    pub fn spec(&self) -> CpuBudgetSpec {
        self.spec
    }

    fn refill(&mut self, now: Instant) {
        if let Some(elapsed) = now.checked_duration_since(self.at) {
            self.tokens = (self.tokens + elapsed.as_secs_f64() * self.spec.per_sec_ms * 1e6)
                .min(self.spec.burst_ms * 1e6);
            self.at = now;
        }
    }

    /// Takes `used` CPU time, however little is left.
    pub fn spend(&mut self, used: Duration, now: Instant) {
        self.refill(now);
        self.tokens -= used.as_nanos() as f64;
    }

    /// Whether work may start at `now`; else how long until it may.
    pub fn ready(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 0.0 {
            return Ok(());
        }
        let secs = -self.tokens / (self.spec.per_sec_ms * 1e6);
        // At least a nanosecond, so a caller that waits this long is ready.
        Err(Duration::from_secs_f64(secs).max(Duration::from_nanos(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn spending_past_the_burst_waits_for_the_refill() {
        let now = Instant::now();
        let spec = CpuBudgetSpec {
            per_sec_ms: 100.0,
            burst_ms: 50.0,
        };
        let mut b = CpuBucket::full(spec, now);
        assert!(b.ready(now).is_ok());
        b.spend(50 * MS, now);
        assert!(b.ready(now).is_ok(), "exactly empty still runs");
        b.spend(30 * MS, now);
        // 30 CPU-ms of debt at 100 CPU-ms a second: 300 ms.
        let wait = b.ready(now).unwrap_err();
        assert!((wait.as_secs_f64() - 0.3).abs() < 1e-6, "{wait:?}");
        assert!(b.ready(now + 299 * MS).is_err());
        assert!(b.ready(now + 300 * MS).is_ok());
    }

    #[test]
    fn the_bucket_holds_at_most_the_burst() {
        let now = Instant::now();
        let spec = CpuBudgetSpec {
            per_sec_ms: 100.0,
            burst_ms: 20.0,
        };
        let mut b = CpuBucket::full(spec, now);
        // An hour idle banks only the burst.
        let later = now + Duration::from_secs(3600);
        b.spend(40 * MS, later);
        let wait = b.ready(later).unwrap_err();
        assert!((wait.as_secs_f64() - 0.2).abs() < 1e-6, "{wait:?}");
    }
}

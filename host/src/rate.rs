//! Token buckets: a rate with a burst. A bucket holds at most `burst`
//! tokens and gains `per_sec` a second; each admitted thing takes one, and
//! an empty bucket says when the next token is due. Tenants' request and
//! open rates and the failed-authentication throttle are built on it.
//!
//! Time is passed in (from a [`crate::clock::Clock`]), so tests move it by
//! hand instead of sleeping.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Largest rate accepted: more a second than any gateway could serve.
pub const MAX_PER_SEC: f64 = 1e9;

/// Largest burst accepted.
pub const MAX_BURST: u32 = 1_000_000;

/// Float slack: refilling by exactly one token's worth of time must admit.
const EPSILON: f64 = 1e-9;

/// A rate and its burst.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    per_sec: f64,
    burst: u32,
}

impl Rate {
    /// `per_sec` tokens a second, at most `burst` at once. Without a burst,
    /// the rate rounded up (at least 1): a second's worth at once.
    pub fn new(per_sec: f64, burst: Option<u32>) -> Result<Self, String> {
        if !per_sec.is_finite() || per_sec <= 0.0 || per_sec > MAX_PER_SEC {
            return Err(format!(
                "must be a number of tokens a second greater than 0 and at most {MAX_PER_SEC:e}, not {per_sec}"
            ));
        }
        let burst = burst.unwrap_or_else(|| Self::default_burst(per_sec));
        if burst == 0 || burst > MAX_BURST {
            return Err(format!("the burst must be 1..={MAX_BURST}, not {burst}"));
        }
        Ok(Self { per_sec, burst })
    }

    /// The burst a rate gets when none is configured: a second's worth.
    pub fn default_burst(per_sec: f64) -> u32 {
        // Saturating float-to-int: a huge rate gets MAX_BURST.
        (per_sec.ceil() as u32).clamp(1, MAX_BURST)
    }

    /// Tokens gained a second.
    pub fn per_sec(&self) -> f64 {
        self.per_sec
    }

    /// Most tokens held at once.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// How long `missing` tokens take to refill, rounded up to the
    /// nanosecond: waiting that long must be enough.
    fn time_for(&self, missing: f64) -> Duration {
        let nanos = (missing.max(0.0) / self.per_sec * 1e9).ceil();
        // Saturating float-to-int: a wait past u64 nanoseconds is forever.
        Duration::from_nanos(nanos as u64)
    }
}

/// One bucket's state, for callers that keep many (one per peer) under a
/// lock of their own. [`TokenBucket`] is the shared, locked form.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn full(rate: Rate, now: Instant) -> Self {
        Self {
            tokens: f64::from(rate.burst),
            at: now,
        }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        // A clock reading older than the last one adds nothing.
        if let Some(elapsed) = now.checked_duration_since(self.at) {
            self.tokens =
                (self.tokens + elapsed.as_secs_f64() * rate.per_sec).min(f64::from(rate.burst));
            self.at = now;
        }
    }

    /// Takes a token, or says how long until one is due.
    pub fn take(&mut self, rate: Rate, now: Instant) -> Result<(), Duration> {
        self.wait(rate, now)?;
        self.tokens = (self.tokens - 1.0).max(0.0);
        Ok(())
    }

    /// Whether a token is there (without taking it), else how long until
    /// one is due.
    pub fn wait(&mut self, rate: Rate, now: Instant) -> Result<(), Duration> {
        self.refill(rate, now);
        if self.tokens + EPSILON >= 1.0 {
            Ok(())
        } else {
            Err(rate.time_for(1.0 - self.tokens))
        }
    }

    /// Takes a token whether or not there is one: the bucket only empties.
    /// For things that already happened (a failed authentication).
    pub fn drain_one(&mut self, rate: Rate, now: Instant) {
        self.refill(rate, now);
        self.tokens = (self.tokens - 1.0).max(0.0);
    }

    /// Whether the bucket is full again: it then says nothing a fresh
    /// one would not.
    pub fn is_full(&mut self, rate: Rate, now: Instant) -> bool {
        self.refill(rate, now);
        self.tokens + EPSILON >= f64::from(rate.burst)
    }
}

/// A token bucket shared between threads, full until first used.
#[derive(Debug)]
pub struct TokenBucket {
    rate: Rate,
    state: Mutex<Option<Bucket>>,
}

impl TokenBucket {
    /// A full bucket of `rate`.
    pub fn new(rate: Rate) -> Self {
        Self {
            rate,
            state: Mutex::new(None),
        }
    }

    /// Its rate.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Takes a token, or says how long until one is due.
    pub fn take(&self, now: Instant) -> Result<(), Duration> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state
            .get_or_insert_with(|| Bucket::full(self.rate, now))
            .take(self.rate, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_burst_then_one_token_every_interval() {
        let clock = ManualClock::new();
        let b = TokenBucket::new(Rate::new(5.0, Some(3)).unwrap());
        for _ in 0..3 {
            b.take(clock.now()).unwrap();
        }
        // Empty: the next token is a fifth of a second away.
        let wait = b.take(clock.now()).unwrap_err();
        assert!(
            wait.abs_diff(ms(200)) < Duration::from_micros(1),
            "{wait:?}"
        );
        clock.advance(ms(150));
        let wait = b.take(clock.now()).unwrap_err();
        assert!(wait.abs_diff(ms(50)) < Duration::from_micros(1), "{wait:?}");
        clock.advance(ms(50));
        b.take(clock.now()).unwrap();
        assert!(b.take(clock.now()).is_err());
        // A long pause refills to the burst, never beyond.
        clock.advance(Duration::from_secs(3600));
        for _ in 0..3 {
            b.take(clock.now()).unwrap();
        }
        assert!(b.take(clock.now()).is_err());
    }

    #[test]
    fn exactly_one_interval_later_a_token_is_due() {
        // 1/3 s is not exact in floating point; the slack must still admit.
        let clock = ManualClock::new();
        let b = TokenBucket::new(Rate::new(3.0, Some(1)).unwrap());
        for _ in 0..100 {
            b.take(clock.now()).unwrap();
            let wait = b.take(clock.now()).unwrap_err();
            clock.advance(wait);
        }
    }

    #[test]
    fn slow_rates_say_how_long_to_wait() {
        let clock = ManualClock::new();
        let b = TokenBucket::new(Rate::new(0.5, None).unwrap());
        assert_eq!(b.rate().burst(), 1);
        b.take(clock.now()).unwrap();
        assert_eq!(b.take(clock.now()), Err(Duration::from_secs(2)));
    }

    #[test]
    fn the_default_burst_is_a_seconds_worth() {
        assert_eq!(Rate::new(0.1, None).unwrap().burst(), 1);
        assert_eq!(Rate::new(1.0, None).unwrap().burst(), 1);
        assert_eq!(Rate::new(2.5, None).unwrap().burst(), 3);
        assert_eq!(Rate::new(100.0, None).unwrap().burst(), 100);
        assert_eq!(Rate::new(1e9, None).unwrap().burst(), MAX_BURST);
    }

    #[test]
    fn bad_rates_are_refused() {
        for r in [0.0, -1.0, f64::NAN, f64::INFINITY, 2e9] {
            assert!(Rate::new(r, None).is_err(), "{r}");
        }
        assert!(Rate::new(1.0, Some(0)).is_err());
        assert!(Rate::new(1.0, Some(MAX_BURST + 1)).is_err());
    }

    #[test]
    fn drain_and_fullness_for_kept_buckets() {
        let clock = ManualClock::new();
        let rate = Rate::new(1.0, Some(2)).unwrap();
        let mut b = Bucket::full(rate, clock.now());
        assert!(b.is_full(rate, clock.now()));
        b.drain_one(rate, clock.now());
        b.drain_one(rate, clock.now());
        b.drain_one(rate, clock.now());
        assert_eq!(b.wait(rate, clock.now()), Err(Duration::from_secs(1)));
        clock.advance(Duration::from_secs(1));
        b.wait(rate, clock.now()).unwrap();
        assert!(!b.is_full(rate, clock.now()));
        clock.advance(Duration::from_secs(1));
        assert!(b.is_full(rate, clock.now()));
    }
}

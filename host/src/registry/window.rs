//! A sliding time window: the events of the last period, counted. The
//! restart intensity (`[backends.restart] max_restarts` within `period`)
//! and a canary's faults (`[backends.rollout] max_faults` within
//! `window`) are both one.
//!
//! The window is the last `period` up to now, without its start: an event
//! exactly `period` old has left it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The times of the events within the last period.
#[derive(Debug, Default)]
pub struct Window {
    times: VecDeque<Instant>,
}

impl Window {
    /// Forgets the events `period` old or older at `now`.
    fn forget(&mut self, period: Duration, now: Instant) {
        while self
            .times
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= period)
        {
            self.times.pop_front();
        }
    }

    /// Counts an event at `now` if fewer than `max` happened within
    /// `period` before it; returns its number within the period (1 for
    /// the first), or `None` when the budget is spent.
    pub fn admit(&mut self, max: u32, period: Duration, now: Instant) -> Option<u32> {
        self.forget(period, now);
        if self.times.len() >= max as usize {
            return None;
        }
        self.times.push_back(now);
        u32::try_from(self.times.len()).ok()
    }

    /// Counts an event at `now`; returns how many happened within
    /// `period`, this one included.
    pub fn record(&mut self, period: Duration, now: Instant) -> usize {
        self.forget(period, now);
        self.times.push_back(now);
        self.times.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_allows_max_per_period_and_forgets_old_ones() {
        let t0 = Instant::now();
        let period = Duration::from_secs(60);
        let mut w = Window::default();
        assert_eq!(w.admit(2, period, t0), Some(1));
        assert_eq!(w.admit(2, period, t0 + Duration::from_secs(10)), Some(2));
        assert_eq!(w.admit(2, period, t0 + Duration::from_secs(20)), None);
        // The first one leaves the window at 60 s.
        assert_eq!(w.admit(2, period, t0 + Duration::from_secs(60)), Some(2));
        assert_eq!(w.admit(2, period, t0 + Duration::from_secs(61)), None);
        assert_eq!(w.admit(2, period, t0 + Duration::from_secs(200)), Some(1));
    }

    #[test]
    fn nothing_allowed_means_the_first_is_refused() {
        let mut w = Window::default();
        assert_eq!(w.admit(0, Duration::from_secs(1), Instant::now()), None);
    }

    #[test]
    fn record_counts_what_is_within_the_period() {
        let t0 = Instant::now();
        let period = Duration::from_secs(10);
        let mut w = Window::default();
        assert_eq!(w.record(period, t0), 1);
        assert_eq!(w.record(period, t0 + Duration::from_secs(9)), 2);
        // Exactly a period old: gone, as for admit.
        assert_eq!(w.record(period, t0 + Duration::from_secs(10)), 2);
        assert_eq!(w.record(period, t0 + Duration::from_secs(30)), 1);
    }
}

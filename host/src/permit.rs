//! A counted permit: a count that goes up only while it stays within a
//! limit, with a gauge that follows it. The session slots (the gateway's
//! cap and each tenant's quota) and the memory budget (the gateway's and
//! each tenant's bytes) are each one; nothing here queues, a refusal is
//! immediate.

use std::sync::atomic::{AtomicUsize, Ordering};

use prometheus_client::metrics::gauge::Gauge;

/// A count with a limit given at each take (a reload may change it).
#[derive(Debug, Default)]
pub struct Counted {
    used: AtomicUsize,
    gauge: Gauge,
}

impl Counted {
    /// Zero, reported into `gauge`.
    pub fn new(gauge: Gauge) -> Self {
        Self {
            used: AtomicUsize::new(0),
            gauge,
        }
    }

    /// Adds `n` if the count stays at or under `limit`; otherwise returns
    /// the count it found.
    pub fn try_add(&self, n: usize, limit: usize) -> Result<(), usize> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|t| *t <= limit)
            })
            .map(|_| {
                self.gauge.inc_by(gauge_value(n));
            })
    }

    /// Gives back `n` taken by [`try_add`](Self::try_add).
    pub fn sub(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
        self.gauge.dec_by(gauge_value(n));
    }

    /// The count now.
    pub fn get(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_up_to_the_limit_and_gives_back() {
        let gauge = Gauge::default();
        let c = Counted::new(gauge.clone());
        assert_eq!(c.try_add(3, 4), Ok(()));
        assert_eq!(c.try_add(2, 4), Err(3));
        assert_eq!(c.try_add(1, 4), Ok(()));
        assert_eq!((c.get(), gauge.get()), (4, 4));
        c.sub(4);
        assert_eq!((c.get(), gauge.get()), (0, 0));
        assert_eq!(c.try_add(usize::MAX, usize::MAX), Ok(()));
        assert_eq!(c.try_add(1, usize::MAX), Err(usize::MAX));
    }
}

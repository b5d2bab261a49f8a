//! The session cap: a slot per live session, taken at open (never queued)
//! and given back exactly once when the session ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use prometheus_client::metrics::gauge::Gauge;

/// The pool of session slots.
#[derive(Debug)]
pub struct Slots {
    used: AtomicUsize,
    cap: usize,
}

impl Slots {
    /// A pool of `cap` slots.
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            cap,
        })
    }

    /// Takes a slot, or returns `None` at once when all are taken. `gauge`
    /// goes up now and down when the slot is dropped.
    pub fn try_take(self: &Arc<Self>, gauge: Gauge) -> Option<Slot> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.cap).then_some(n + 1)
            })
            .ok()?;
        gauge.inc();
        Some(Slot {
            pool: Arc::clone(self),
            gauge,
        })
    }

    /// Slots in use.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// The cap.
    pub fn cap(&self) -> usize {
        self.cap
    }
}

/// A taken slot; dropping it gives it back.
#[derive(Debug)]
pub struct Slot {
    pool: Arc<Slots>,
    gauge: Gauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.pool.used.fetch_sub(1, Ordering::AcqRel);
        self.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_is_enforced_and_slots_come_back() {
        let slots = Slots::new(2);
        let g = Gauge::default();
        let a = slots.try_take(g.clone()).unwrap();
        let b = slots.try_take(g.clone()).unwrap();
        assert!(slots.try_take(g.clone()).is_none());
        assert_eq!(g.get(), 2);
        drop(a);
        assert_eq!(slots.used(), 1);
        let _c = slots.try_take(g.clone()).unwrap();
        drop(b);
        assert_eq!(g.get(), 1);
    }
}

//! `server.max_connections`: how many connections a port holds at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use prometheus_client::metrics::gauge::Gauge;

/// A port's connection count and its cap. Each accepted connection holds a
/// [`Permit`] for as long as it is open.
#[derive(Debug, Clone)]
pub struct ConnectionLimit {
    open: Arc<AtomicUsize>,
    max: usize,
    gauge: Gauge,
}

/// One open connection's place under the cap; given back on drop.
#[derive(Debug)]
pub struct Permit {
    open: Arc<AtomicUsize>,
    gauge: Gauge,
}

impl ConnectionLimit {
    /// A cap of `max` connections, counted into `gauge`.
    pub fn new(max: usize, gauge: Gauge) -> Self {
        Self {
            open: Arc::new(AtomicUsize::new(0)),
            max,
            gauge,
        }
    }

    /// A permit, or `None` when `max` connections are open.
    pub fn try_acquire(&self) -> Option<Permit> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()?;
        self.gauge.inc();
        Some(Permit {
            open: Arc::clone(&self.open),
            gauge: self.gauge.clone(),
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_are_capped_and_given_back() {
        let gauge = Gauge::default();
        let limit = ConnectionLimit::new(2, gauge.clone());
        let a = limit.try_acquire().unwrap();
        let b = limit.try_acquire().unwrap();
        assert!(limit.try_acquire().is_none());
        assert_eq!((limit.open(), gauge.get()), (2, 2));
        drop(a);
        let c = limit.try_acquire().unwrap();
        drop((b, c));
        assert_eq!((limit.open(), gauge.get()), (0, 0));
    }
}

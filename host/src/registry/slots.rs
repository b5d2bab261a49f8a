//! The session cap and tenant quotas: a slot per live session, taken at open
//! (never queued) and given back exactly once when the session ends.
//!
//! A session holds one unit of the gateway-wide pool and, when its tenant
//! has one, one unit of the tenant's pool. [`Slots::try_take_both`] takes
//! both or neither, and dropping the [`Slot`] gives both back, so no failure
//! path can leak either.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use prometheus_client::metrics::gauge::Gauge;

use crate::cluster::SharedClaim;
use crate::permit::Counted;

/// A pool of session slots.
#[derive(Debug)]
pub struct Slots {
    used: Counted,
    // Atomic so a reload can lower or raise a tenant's quota in place:
    // the sessions holding slots keep them, and new opens see the new cap.
    cap: AtomicUsize,
    /// Woken whenever a slot is given back (a drain waits on it).
    freed: tokio::sync::Notify,
}

/// Which limit refused a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The gateway-wide pool is full.
    Cap(usize),
    /// The tenant's pool is full.
    Quota(usize),
}

impl Slots {
    /// A pool of `cap` slots.
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            used: Counted::default(),
            cap: AtomicUsize::new(cap),
            freed: tokio::sync::Notify::new(),
        })
    }

    /// A pool that never refuses (a tenant without a quota).
    pub fn unlimited() -> Arc<Self> {
        Self::new(usize::MAX)
    }

    fn claim(self: &Arc<Self>) -> Option<Claim> {
        self.used.try_add(1, self.cap()).ok()?;
        Some(Claim {
            pool: Arc::clone(self),
        })
    }

    /// Takes a slot, or returns `None` at once when all are taken. `gauge`
    /// goes up now and down when the slot is dropped.
    pub fn try_take(self: &Arc<Self>, gauge: Gauge) -> Option<Slot> {
        let global = self.claim()?;
        Some(Slot::new(global, None, vec![gauge]))
    }

    /// Takes a slot from this (gateway-wide) pool and one from `tenant`, or
    /// neither. The tenant's is taken first, so a tenant at its quota never
    /// holds a gateway slot, not even for a moment. Each of `gauges` goes up
    /// once both are held and down when the slot is dropped.
    pub fn try_take_both(
        self: &Arc<Self>,
        tenant: &Arc<Slots>,
        gauges: Vec<Gauge>,
    ) -> Result<Slot, Refused> {
        let quota = tenant.claim().ok_or(Refused::Quota(tenant.cap()))?;
        // On failure `quota` is dropped here, giving the tenant's slot back.
        let global = self.claim().ok_or(Refused::Cap(self.cap()))?;
        Ok(Slot::new(global, Some(quota), gauges))
    }

    /// Resolves when a slot is given back after this call; create it
    /// before looking at what the slots hold, so no release is missed.
    pub fn freed(&self) -> impl std::future::Future<Output = ()> + '_ {
        let notified = self.freed.notified();
        async move {
            notified.await;
        }
    }

    /// Slots in use.
    pub fn used(&self) -> usize {
        self.used.get()
    }

    /// The cap.
    pub fn cap(&self) -> usize {
        self.cap.load(Ordering::Acquire)
    }

    /// A new cap. Slots already taken stay taken, even above it: a lowered
    /// quota refuses new opens and never ends a live session.
    pub fn set_cap(&self, cap: usize) {
        self.cap.store(cap, Ordering::Release);
    }
}

/// One unit of one pool; dropping it gives it back.
#[derive(Debug)]
struct Claim {
    pool: Arc<Slots>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.pool.used.sub(1);
        self.pool.freed.notify_waiters();
    }
}

/// A taken slot; dropping it gives it back to every pool it came from:
/// this gateway's, and in a cluster with Redis the cluster's.
#[derive(Debug)]
pub struct Slot {
    _global: Claim,
    _tenant: Option<Claim>,
    _shared: Option<SharedClaim>,
    gauges: Vec<Gauge>,
}

impl Slot {
    fn new(global: Claim, tenant: Option<Claim>, gauges: Vec<Gauge>) -> Self {
        for g in &gauges {
            g.inc();
        }
        Self {
            _global: global,
            _tenant: tenant,
            _shared: None,
            gauges,
        }
    }

    /// The same slot, also holding one of the cluster's (given back with
    /// the rest when the slot is dropped).
    pub fn with_shared(mut self, shared: SharedClaim) -> Self {
        self._shared = Some(shared);
        self
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        for g in &self.gauges {
            g.dec();
        }
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

    #[test]
    fn quota_reached_while_the_cap_is_not() {
        let global = Slots::new(10);
        let tenant = Slots::new(2);
        let (g, t) = (Gauge::default(), Gauge::default());
        let take = || global.try_take_both(&tenant, vec![g.clone(), t.clone()]);
        let a = take().unwrap();
        let _b = take().unwrap();
        assert_eq!(take().unwrap_err(), Refused::Quota(2));
        // The refusal took nothing.
        assert_eq!((global.used(), tenant.used()), (2, 2));
        assert_eq!((g.get(), t.get()), (2, 2));
        drop(a);
        assert_eq!((global.used(), tenant.used()), (1, 1));
        assert_eq!((g.get(), t.get()), (1, 1));
        take().unwrap();
    }

    #[test]
    fn cap_reached_while_the_quota_is_not_rolls_the_quota_back() {
        let global = Slots::new(2);
        let (a, b) = (Slots::new(5), Slots::unlimited());
        let g = Gauge::default();
        let _x = global.try_take_both(&b, vec![g.clone()]).unwrap();
        let y = global.try_take_both(&b, vec![g.clone()]).unwrap();
        assert_eq!(
            global.try_take_both(&a, vec![g.clone()]).unwrap_err(),
            Refused::Cap(2)
        );
        assert_eq!(a.used(), 0, "the tenant slot taken first was given back");
        assert_eq!((global.used(), g.get()), (2, 2));
        drop(y);
        let _z = global.try_take_both(&a, vec![g.clone()]).unwrap();
        assert_eq!((a.used(), b.used(), global.used()), (1, 1, 2));
    }

    #[test]
    fn concurrent_takes_never_overshoot_or_leak() {
        let global = Slots::new(8);
        let tenants: Vec<Arc<Slots>> = (0..4).map(|_| Slots::new(3)).collect();
        std::thread::scope(|s| {
            for t in &tenants {
                let global = &global;
                s.spawn(move || {
                    for _ in 0..2000 {
                        let held: Vec<Slot> = (0..4)
                            .filter_map(|_| global.try_take_both(t, Vec::new()).ok())
                            .collect();
                        assert!(t.used() <= 3);
                        assert!(global.used() <= 8);
                        drop(held);
                    }
                });
            }
        });
        assert_eq!(global.used(), 0);
        assert!(tenants.iter().all(|t| t.used() == 0));
    }
}

//! The gateway's memory budget (`server.memory_budget`): one shared count of
//! the bytes sessions make the gateway hold, with a child count per tenant
//! (`[[tenants]] max_memory`).
//!
//! The registry opens a [`MemoryAccount`] per session (the gateway's budget
//! plus the session's tenant) and hands it to the session's event log and
//! worker. Each holds [`Reservation`]s of one [`MemoryKind`]: wasm linear
//! memories and tables reserve as they grow (in the store's resource
//! limiter), the event log as it keeps events. A reservation grows only if
//! the tenant's count and the gateway's both have room (both or neither),
//! and it gives everything back when dropped: when the instance goes, when
//! an event is delivered past the replay buffer or evicted, when the log
//! goes. No path can leak a byte of the count.
//!
//! The counts are what sessions *reserve*, a close upper bound of what they
//! hold (event overheads are estimated), not the gateway's RSS: the
//! gateway's own heap, code and the wasm runtime's fixed pools come on top.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::permit::Counted;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

/// Bytes an event is charged beyond its name and payload: the `Event`, its
/// `Arc`, its slot in the ring and the allocator's rounding of its two
/// buffers. An estimate, a little above what it costs.
pub const EVENT_OVERHEAD: usize = 160;

/// What a reservation holds memory for; the `kind` label of
/// `gatehouse_memory_reserved_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemoryKind {
    /// wasm linear memories.
    WasmMemory,
    /// wasm tables.
    WasmTable,
    /// Undelivered events and the replay buffer.
    Events,
    /// The latest state snapshot of a stateful session.
    Snapshots,
}

impl MemoryKind {
    /// Every kind, in label order.
    pub const ALL: [MemoryKind; 4] = [
        MemoryKind::WasmMemory,
        MemoryKind::WasmTable,
        MemoryKind::Events,
        MemoryKind::Snapshots,
    ];

    /// The stable label value.
    pub fn as_str(self) -> &'static str {
        match self {
            MemoryKind::WasmMemory => "wasm-memory",
            MemoryKind::WasmTable => "wasm-table",
            MemoryKind::Events => "events",
            MemoryKind::Snapshots => "snapshots",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A reservation that did not fit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OverBudget {
    /// The gateway's `server.memory_budget` has no room.
    #[error(
        "the gateway's memory budget of {limit} bytes has {} bytes free, less than the {requested} requested",
        limit.saturating_sub(*reserved)
    )]
    Gateway {
        /// Bytes asked for.
        requested: usize,
        /// Bytes reserved when it was refused.
        reserved: usize,
        /// `server.memory_budget`.
        limit: usize,
    },
    /// The tenant's `max_memory` has no room.
    #[error(
        "tenant {tenant:?}'s max_memory of {limit} bytes has {} bytes free, less than the {requested} requested",
        limit.saturating_sub(*reserved)
    )]
    Tenant {
        /// The tenant.
        tenant: String,
        /// Bytes asked for.
        requested: usize,
        /// Bytes the tenant had reserved when it was refused.
        reserved: usize,
        /// The tenant's `max_memory`.
        limit: usize,
    },
}

/// Makes the gauge of one tenant's reserved bytes, given its name.
pub type TenantGauge = Box<dyn Fn(&str) -> Gauge + Send + Sync>;

/// Where the budget reports: gauges of the reserved bytes by kind and by
/// tenant, and counters of refusals by kind. All optional (tests).
#[derive(Default)]
pub struct BudgetGauges {
    /// Reserved bytes in all.
    pub total: Gauge,
    /// Reserved bytes, one gauge per [`MemoryKind`] in [`MemoryKind::ALL`] order.
    pub by_kind: [Gauge; 4],
    /// Refused reservations, one counter per [`MemoryKind`].
    pub refusals: [Counter; 4],
    /// The gauge of one tenant's reserved bytes.
    pub tenant: Option<TenantGauge>,
}

/// One counter with a limit: the gateway's or a tenant's.
#[derive(Debug)]
struct Pool {
    limit: usize,
    reserved: Counted,
}

impl Pool {
    fn new(limit: usize, gauge: Gauge) -> Self {
        Self {
            limit,
            reserved: Counted::new(gauge),
        }
    }

    /// Adds `n` if it fits; otherwise returns what was reserved.
    fn try_add(&self, n: usize) -> Result<(), usize> {
        self.reserved.try_add(n, self.limit)
    }

    fn sub(&self, n: usize) {
        self.reserved.sub(n);
    }
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The gateway-wide budget.
pub struct MemoryBudget {
    pool: Pool,
    by_kind: [AtomicUsize; 4],
    kind_gauges: [Gauge; 4],
    refusals: [Counter; 4],
    tenant_gauge: Option<TenantGauge>,
    tenants: Mutex<HashMap<String, Arc<TenantMemory>>>,
}

impl std::fmt::Debug for MemoryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBudget")
            .field("limit", &self.pool.limit)
            .field("reserved", &self.reserved())
            .finish_non_exhaustive()
    }
}

impl MemoryBudget {
    /// A budget of `limit` bytes reporting into `gauges`.
    pub fn new(limit: usize, gauges: BudgetGauges) -> Arc<Self> {
        Arc::new(Self {
            pool: Pool::new(limit, gauges.total),
            by_kind: Default::default(),
            kind_gauges: gauges.by_kind,
            refusals: gauges.refusals,
            tenant_gauge: gauges.tenant,
            tenants: Mutex::new(HashMap::new()),
        })
    }

    /// A budget that never refuses, for tests and tools.
    pub fn unlimited() -> Arc<Self> {
        Self::new(usize::MAX, BudgetGauges::default())
    }

    /// The budget in bytes.
    pub fn limit(&self) -> usize {
        self.pool.limit
    }

    /// Bytes reserved now, over every kind and tenant.
    pub fn reserved(&self) -> usize {
        self.pool.reserved.get()
    }

    /// Bytes reserved now for one kind.
    pub fn reserved_for(&self, kind: MemoryKind) -> usize {
        self.by_kind[kind.index()].load(Ordering::Acquire)
    }

    /// The count of tenant `name`, created on first use with `max_memory`
    /// (`None`: only the gateway's budget limits it). A tenant's limit is
    /// fixed by its first session: tenants come from the config, which does
    /// not change while the gateway runs.
    pub fn tenant(&self, name: &str, max_memory: Option<usize>) -> Arc<TenantMemory> {
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = tenants.get(name) {
            return Arc::clone(t);
        }
        let gauge = self
            .tenant_gauge
            .as_ref()
            .map_or_else(Gauge::default, |make| make(name));
        let t = Arc::new(TenantMemory {
            name: name.to_string(),
            pool: Pool::new(max_memory.unwrap_or(usize::MAX), gauge),
        });
        tenants.insert(name.to_string(), Arc::clone(&t));
        t
    }

    /// An account for one session of `tenant`.
    pub fn account(self: &Arc<Self>, tenant: Arc<TenantMemory>) -> MemoryAccount {
        MemoryAccount {
            budget: Arc::clone(self),
            tenant: Some(tenant),
        }
    }
}

/// One tenant's count.
#[derive(Debug)]
pub struct TenantMemory {
    name: String,
    pool: Pool,
}

impl TenantMemory {
    /// Bytes the tenant's sessions reserve now.
    pub fn reserved(&self) -> usize {
        self.pool.reserved.get()
    }

    /// The tenant's `max_memory`; `usize::MAX` without one.
    pub fn limit(&self) -> usize {
        self.pool.limit
    }
}

/// What one session reserves against: the gateway's budget and its
/// tenant's. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MemoryAccount {
    budget: Arc<MemoryBudget>,
    tenant: Option<Arc<TenantMemory>>,
}

impl MemoryAccount {
    /// An account that never refuses, for tests and tools.
    pub fn unlimited() -> Self {
        Self {
            budget: MemoryBudget::unlimited(),
            tenant: None,
        }
    }

    /// An empty reservation of `kind`.
    pub fn reservation(&self, kind: MemoryKind) -> Reservation {
        Reservation {
            account: self.clone(),
            kind,
            bytes: 0,
        }
    }

    fn try_add(&self, kind: MemoryKind, n: usize) -> Result<(), OverBudget> {
        let budget = &self.budget;
        // The tenant's first, so a tenant at its limit never holds gateway
        // bytes, not even for a moment.
        if let Some(t) = &self.tenant
            && let Err(reserved) = t.pool.try_add(n)
        {
            budget.refusals[kind.index()].inc();
            return Err(OverBudget::Tenant {
                tenant: t.name.clone(),
                requested: n,
                reserved,
                limit: t.pool.limit,
            });
        }
        if let Err(reserved) = budget.pool.try_add(n) {
            if let Some(t) = &self.tenant {
                t.pool.sub(n);
            }
            budget.refusals[kind.index()].inc();
            return Err(OverBudget::Gateway {
                requested: n,
                reserved,
                limit: budget.pool.limit,
            });
        }
        budget.by_kind[kind.index()].fetch_add(n, Ordering::AcqRel);
        budget.kind_gauges[kind.index()].inc_by(gauge_value(n));
        Ok(())
    }

    fn sub(&self, kind: MemoryKind, n: usize) {
        if n == 0 {
            return;
        }
        let budget = &self.budget;
        budget.by_kind[kind.index()].fetch_sub(n, Ordering::AcqRel);
        budget.kind_gauges[kind.index()].dec_by(gauge_value(n));
        budget.pool.sub(n);
        if let Some(t) = &self.tenant {
            t.pool.sub(n);
        }
    }
}

/// Bytes of one kind held for one session; gives them back when dropped.
#[derive(Debug)]
pub struct Reservation {
    account: MemoryAccount,
    kind: MemoryKind,
    bytes: usize,
}

impl Reservation {
    /// A reservation that never refuses, for tests and tools.
    pub fn unlimited(kind: MemoryKind) -> Self {
        MemoryAccount::unlimited().reservation(kind)
    }

    /// Reserves `n` more bytes, or nothing if they do not fit.
    pub fn try_grow(&mut self, n: usize) -> Result<(), OverBudget> {
        if n == 0 {
            return Ok(());
        }
        self.account.try_add(self.kind, n)?;
        self.bytes += n;
        Ok(())
    }

    /// Gives back `n` bytes (at most what is held).
    pub fn shrink(&mut self, n: usize) {
        let n = n.min(self.bytes);
        self.account.sub(self.kind, n);
        self.bytes -= n;
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.account.sub(self.kind, self.bytes);
    }
}

/// The machine's physical memory in bytes, if it can be read.
pub fn physical_memory() -> Option<usize> {
    // SAFETY: sysconf has no preconditions.
    let (pages, size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let (pages, size) = (usize::try_from(pages).ok()?, usize::try_from(size).ok()?);
    pages.checked_mul(size).filter(|b| *b > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(limit: usize) -> Arc<MemoryBudget> {
        MemoryBudget::new(limit, BudgetGauges::default())
    }

    #[test]
    fn reservations_are_refused_past_the_budget_and_given_back_on_drop() {
        let b = budget(100);
        let account = b.account(b.tenant("t", None));
        let mut mem = account.reservation(MemoryKind::WasmMemory);
        let mut events = account.reservation(MemoryKind::Events);
        mem.try_grow(60).unwrap();
        events.try_grow(30).unwrap();
        let refused = events.try_grow(11).unwrap_err();
        assert_eq!(
            refused,
            OverBudget::Gateway {
                requested: 11,
                reserved: 90,
                limit: 100
            }
        );
        assert_eq!(events.bytes(), 30, "a refusal reserves nothing");
        events.try_grow(10).unwrap();
        assert_eq!(b.reserved(), 100);
        assert_eq!(b.reserved_for(MemoryKind::WasmMemory), 60);
        events.shrink(25);
        assert_eq!(b.reserved_for(MemoryKind::Events), 15);
        drop(mem);
        drop(events);
        assert_eq!(b.reserved(), 0);
        assert_eq!(b.tenant("t", None).reserved(), 0);
        assert!(MemoryKind::ALL.iter().all(|k| b.reserved_for(*k) == 0));
    }

    #[test]
    fn a_tenant_at_its_limit_takes_nothing_from_the_gateway() {
        let b = budget(1000);
        let small = b.account(b.tenant("small", Some(50)));
        let other = b.account(b.tenant("other", None));
        let mut r = small.reservation(MemoryKind::Events);
        r.try_grow(40).unwrap();
        assert!(matches!(
            r.try_grow(20),
            Err(OverBudget::Tenant {
                limit: 50,
                reserved: 40,
                ..
            })
        ));
        assert_eq!(b.reserved(), 40);
        // Another tenant still has the rest of the gateway's budget.
        let mut o = other.reservation(MemoryKind::WasmMemory);
        o.try_grow(960).unwrap();
        // The gateway is full: the small tenant's own room does not help,
        // and the refusal gives its tenant count back.
        assert!(matches!(r.try_grow(5), Err(OverBudget::Gateway { .. })));
        assert_eq!(b.tenant("small", None).reserved(), 40);
        drop(o);
        r.try_grow(10).unwrap();
        drop(r);
        assert_eq!((b.reserved(), b.tenant("small", None).reserved()), (0, 0));
    }

    #[test]
    fn gauges_follow_the_counts() {
        let gauges = BudgetGauges::default();
        let kinds = gauges.by_kind.clone();
        let refusals = gauges.refusals.clone();
        let b = MemoryBudget::new(10, gauges);
        let a = b.account(b.tenant("t", None));
        let mut r = a.reservation(MemoryKind::WasmTable);
        r.try_grow(8).unwrap();
        assert_eq!(kinds[MemoryKind::WasmTable.index()].get(), 8);
        r.try_grow(8).unwrap_err();
        assert_eq!(refusals[MemoryKind::WasmTable.index()].get(), 1);
        drop(r);
        assert!(kinds.iter().all(|g| g.get() == 0));
    }

    #[test]
    fn concurrent_reservations_never_overshoot_or_leak() {
        let b = budget(1 << 20);
        std::thread::scope(|s| {
            for t in 0..4 {
                let b = &b;
                s.spawn(move || {
                    let a = b.account(b.tenant(&format!("t{t}"), Some(300 << 10)));
                    for i in 0..2000 {
                        let mut r = a.reservation(MemoryKind::Events);
                        let _ = r.try_grow(100 << 10);
                        let _ = r.try_grow((i % 7) << 12);
                        assert!(b.reserved() <= 1 << 20);
                    }
                });
            }
        });
        assert_eq!(b.reserved(), 0);
    }

    #[test]
    fn physical_memory_is_known_here() {
        assert!(physical_memory().is_some_and(|b| b > 64 << 20));
    }
}

//! CPU between tenants: who runs next, what each session used, and the
//! tenants' CPU budgets. One module for both kinds of worker; the registry
//! hands each worker a [`CpuAccount`] as it hands it a memory account, and
//! never learns how a worker spends it.
//!
//! - **Turns** ([`fair`]): a wasm guest runs only while it holds a turn of
//!   the runtime's threads, taken before each call into the plugin and
//!   given back at every epoch tick; waiting guests get turns in proportion
//!   to their tenant's `cpu_weight`, within its `max_concurrent_commands`.
//!   Native workers are processes: the kernel schedules them.
//! - **Metering**: workers [`charge`](CpuAccount::charge) the CPU their
//!   guest used: wasm time from the store's call hooks (host calls
//!   excluded), a native worker's from its process's CPU time. The charge
//!   goes to the session, the tenant, `gatehouse_guest_cpu_seconds_total`
//!   and the tenant's budget.
//! - **Budgets** ([`bucket`]): a tenant over `max_cpu_per_sec` has its next
//!   commands wait for the refill ([`admit`](CpuAccount::admit)), up to
//!   their deadline, and its ticks are put off until the refill
//!   ([`tick_delay`](CpuAccount::tick_delay));
//!   nothing running is stopped.

pub mod bucket;
pub mod fair;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;

use self::bucket::CpuBucket;
use self::fair::{Turn, Turns};
use crate::config::{CpuBudgetSpec, TenantCpuSpec};

/// A counter of seconds.
pub type SecondsCounter = crate::metrics::SecondsCounter;

/// Makes the guest-CPU counter of a tenant and backend.
pub type CpuCounterFn = Box<dyn Fn(&str, &str) -> SecondsCounter + Send + Sync>;

/// Makes a per-tenant counter.
pub type TenantCounterFn<C> = Box<dyn Fn(&str) -> C + Send + Sync>;

/// Where CPU is reported; all optional (tests).
#[derive(Default)]
pub struct CpuMetrics {
    /// `gatehouse_guest_cpu_seconds_total{tenant,backend}`.
    pub guest_seconds: Option<CpuCounterFn>,
    /// `gatehouse_cpu_throttled_total{tenant}`: commands refused over the
    /// budget.
    pub throttled: Option<TenantCounterFn<Counter>>,
    /// `gatehouse_cpu_wait_seconds_total{tenant}`: time commands and ticks
    /// waited for the budget's refill.
    pub wait_seconds: Option<TenantCounterFn<SecondsCounter>>,
}

/// A command refused because its tenant is over its CPU budget and the
/// refill would come after the command's deadline.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "tenant {tenant:?} is over its CPU budget of {per_sec_ms} CPU-ms a second (max_cpu_per_sec); retry in {}ms",
    retry_after.as_nanos().div_ceil(1_000_000)
)]
pub struct Throttled {
    /// The tenant.
    pub tenant: String,
    /// Its `max_cpu_per_sec`.
    pub per_sec_ms: f64,
    /// When the budget is back above zero.
    pub retry_after: Duration,
}

/// The gateway's CPU: the turns of the wasm runtime's threads and the
/// tenants' accounts.
pub struct CpuScheduler {
    turns: Arc<Turns>,
    tenants: Mutex<HashMap<String, Arc<TenantCpu>>>,
    /// CPU-ns charged per API key label since it was last taken
    /// ([`take_key_usage`](Self::take_key_usage)).
    keys: Mutex<HashMap<Arc<str>, Arc<AtomicU64>>>,
    metrics: CpuMetrics,
}

impl std::fmt::Debug for CpuScheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuScheduler").finish_non_exhaustive()
    }
}

impl CpuScheduler {
    /// A scheduler with `threads` turns (the runtime's worker threads).
    pub fn new(threads: usize, metrics: CpuMetrics) -> Arc<Self> {
        Arc::new(Self {
            turns: Turns::new(threads),
            tenants: Mutex::new(HashMap::new()),
            keys: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// The threads of the tokio runtime this is called on (the number of
    /// turns), or the machine's cores outside one.
    pub fn runtime_threads() -> usize {
        match tokio::runtime::Handle::try_current() {
            Ok(h) => h.metrics().num_workers(),
            Err(_) => std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    /// The account of tenant `name`, created on first use; its settings
    /// follow `spec` (a reload changes weights and budgets in place; a
    /// changed budget starts full).
    pub fn tenant(&self, name: &str, spec: &TenantCpuSpec) -> Arc<TenantCpu> {
        let tenant = {
            let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(tenants.entry(name.to_string()).or_insert_with(|| {
                Arc::new(TenantCpu {
                    name: name.into(),
                    used_ns: AtomicU64::new(0),
                    budget: Mutex::new(None),
                    throttled: self
                        .metrics
                        .throttled
                        .as_ref()
                        .map_or_else(Counter::default, |f| f(name)),
                    wait_seconds: self
                        .metrics
                        .wait_seconds
                        .as_ref()
                        .map_or_else(SecondsCounter::default, |f| f(name)),
                })
            }))
        };
        self.turns
            .configure(&tenant.name, spec.weight, spec.max_concurrent_commands);
        {
            let mut budget = tenant.budget.lock().unwrap_or_else(|e| e.into_inner());
            let unchanged = budget.as_ref().map(CpuBucket::spec) == spec.budget;
            if !unchanged {
                *budget = spec.budget.map(|s| CpuBucket::full(s, Instant::now()));
            }
        }
        tenant
    }

    /// An account for one session of `tenant` on `backend`, opened with
    /// the API key labelled `key` (its CPU is counted for the key too).
    pub fn account(
        &self,
        tenant: Arc<TenantCpu>,
        backend: &str,
        key: Option<&Arc<str>>,
    ) -> CpuAccount {
        let guest_seconds = self
            .metrics
            .guest_seconds
            .as_ref()
            .map_or_else(SecondsCounter::default, |f| f(&tenant.name, backend));
        let key = key.map(|k| {
            let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(keys.entry(Arc::clone(k)).or_default())
        });
        CpuAccount {
            tenant,
            session: Arc::new(AtomicU64::new(0)),
            key,
            turns: Arc::clone(&self.turns),
            guest_seconds,
        }
    }

    /// The CPU charged to each API key (by label) since the last call, for
    /// the key store's per-key totals; keys with nothing new are left out.
    pub fn take_key_usage(&self) -> Vec<(String, Duration)> {
        let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        keys.iter()
            .filter_map(|(k, ns)| match ns.swap(0, Ordering::Relaxed) {
                0 => None,
                ns => Some((k.to_string(), Duration::from_nanos(ns))),
            })
            .collect()
    }
}

/// One tenant's CPU: what it used, and its budget.
#[derive(Debug)]
pub struct TenantCpu {
    name: Arc<str>,
    used_ns: AtomicU64,
    budget: Mutex<Option<CpuBucket>>,
    throttled: Counter,
    wait_seconds: SecondsCounter,
}

impl TenantCpu {
    /// CPU its sessions used, in all.
    pub fn used(&self) -> Duration {
        Duration::from_nanos(self.used_ns.load(Ordering::Relaxed))
    }

    /// Whether its work may start at `now`, else how long until it may and
    /// the budget.
    fn ready(&self, now: Instant) -> Result<(), (Duration, CpuBudgetSpec)> {
        let mut budget = self.budget.lock().unwrap_or_else(|e| e.into_inner());
        match budget.as_mut() {
            None => Ok(()),
            Some(b) => b.ready(now).map_err(|wait| (wait, b.spec())),
        }
    }
}

/// What one session's CPU is charged to: the session, its tenant and the
/// metric. Cheap to clone; clones share the session's total.
#[derive(Debug, Clone)]
pub struct CpuAccount {
    tenant: Arc<TenantCpu>,
    session: Arc<AtomicU64>,
    /// The opening key's CPU since the key store last took it.
    key: Option<Arc<AtomicU64>>,
    turns: Arc<Turns>,
    guest_seconds: SecondsCounter,
}

impl CpuAccount {
    /// An account of its own, without a budget or anyone to share turns
    /// with, for tests and tools.
    pub fn unlimited() -> Self {
        let scheduler = CpuScheduler::new(usize::MAX, CpuMetrics::default());
        scheduler.account(
            scheduler.tenant("unlimited", &TenantCpuSpec::default()),
            "unlimited",
            None,
        )
    }

    /// The same tenant and metric with a fresh session total (a one-shot
    /// call).
    pub fn for_new_session(&self) -> Self {
        Self {
            session: Arc::new(AtomicU64::new(0)),
            ..self.clone()
        }
    }

    /// Charges `used` CPU time to the session, its tenant, the metric and
    /// the tenant's budget.
    pub fn charge(&self, used: Duration) {
        if used.is_zero() {
            return;
        }
        let ns = u64::try_from(used.as_nanos()).unwrap_or(u64::MAX);
        self.session.fetch_add(ns, Ordering::Relaxed);
        self.tenant.used_ns.fetch_add(ns, Ordering::Relaxed);
        if let Some(key) = &self.key {
            key.fetch_add(ns, Ordering::Relaxed);
        }
        self.guest_seconds.inc_by(used.as_secs_f64());
        let mut budget = self.tenant.budget.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = budget.as_mut() {
            b.spend(used, Instant::now());
        }
    }

    /// CPU the session used so far.
    pub fn used(&self) -> Duration {
        Duration::from_nanos(self.session.load(Ordering::Relaxed))
    }

    /// The tenant's name.
    pub fn tenant(&self) -> &str {
        &self.tenant.name
    }

    /// Waits until the tenant's budget lets a command start, or refuses at
    /// once when that would be after `until` (the command's deadline).
    pub async fn admit(&self, until: Instant) -> Result<(), Throttled> {
        let began = Instant::now();
        loop {
            let now = Instant::now();
            match self.tenant.ready(now) {
                Ok(()) => break,
                Err((wait, spec)) => {
                    if now + wait > until {
                        self.tenant.throttled.inc();
                        self.waited(began);
                        return Err(Throttled {
                            tenant: self.tenant.name.to_string(),
                            per_sec_ms: spec.per_sec_ms,
                            retry_after: wait,
                        });
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
        self.waited(began);
        Ok(())
    }

    /// How long a timer tick due now must be put off for the tenant's
    /// budget to refill; `None` when it may run. The delay counts as a wait.
    pub fn tick_delay(&self) -> Option<Duration> {
        let (wait, _) = self.tenant.ready(Instant::now()).err()?;
        self.tenant.wait_seconds.inc_by(wait.as_secs_f64());
        Some(wait)
    }

    fn waited(&self, began: Instant) {
        let waited = began.elapsed();
        // Not a wait: the budget had room at once.
        if waited > Duration::from_micros(100) {
            self.tenant.wait_seconds.inc_by(waited.as_secs_f64());
        }
    }

    /// Waits for a turn of the runtime's threads (wasm guests).
    pub async fn turn(&self) -> Turn {
        self.turns.acquire(&self.tenant.name).await
    }
}

/// The CPU time the calling thread has used, for metering code that runs
/// on it; `None` where the clock cannot be read.
pub fn thread_cpu_time() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return None;
    }
    Some(Duration::new(
        u64::try_from(ts.tv_sec).ok()?,
        u32::try_from(ts.tv_nsec).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budgeted(per_sec_ms: f64, burst_ms: f64) -> (Arc<CpuScheduler>, CpuAccount) {
        let s = CpuScheduler::new(2, CpuMetrics::default());
        let spec = TenantCpuSpec {
            budget: Some(CpuBudgetSpec {
                per_sec_ms,
                burst_ms,
            }),
            ..Default::default()
        };
        let key: Arc<str> = "k".into();
        let account = s.account(s.tenant("t", &spec), "b", Some(&key));
        (s, account)
    }

    #[tokio::test]
    async fn charges_reach_the_session_and_the_tenant() {
        let (s, a) = budgeted(1000.0, 1000.0);
        let b = a.for_new_session();
        a.charge(Duration::from_millis(3));
        b.charge(Duration::from_millis(4));
        assert_eq!(a.used(), Duration::from_millis(3));
        assert_eq!(b.used(), Duration::from_millis(4));
        assert_eq!(
            s.tenant("t", &TenantCpuSpec::default()).used(),
            Duration::from_millis(7)
        );
        // The opening key's share, taken once.
        assert_eq!(
            s.take_key_usage(),
            vec![("k".to_string(), Duration::from_millis(7))]
        );
        assert_eq!(s.take_key_usage(), vec![]);
    }

    #[tokio::test]
    async fn a_tenant_over_its_budget_is_refused_when_the_refill_is_too_late() {
        let (_s, a) = budgeted(10.0, 1.0);
        // 101 CPU-ms of debt at 10 CPU-ms a second: 10 s to refill.
        a.charge(Duration::from_millis(102));
        let now = Instant::now();
        let e = a.admit(now + Duration::from_millis(50)).await.unwrap_err();
        assert!(e.retry_after > Duration::from_secs(9), "{e}");
        assert!(e.to_string().contains("max_cpu_per_sec"), "{e}");
    }

    #[tokio::test]
    async fn a_tenant_over_its_budget_waits_for_the_refill() {
        let (_s, a) = budgeted(1000.0, 1.0);
        a.charge(Duration::from_millis(2));
        // 1 CPU-ms of debt at 1000 CPU-ms a second: about 1 ms; the budget
        // allows it within the deadline, so the command waits and runs.
        a.admit(Instant::now() + Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(a.tick_delay(), None, "refilled");
        a.charge(Duration::from_millis(11));
        let delay = a.tick_delay().expect("over the budget again");
        assert!(delay <= Duration::from_millis(11), "{delay:?}");
    }
}

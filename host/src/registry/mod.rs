//! The session registry: every live session, the cap, the state machine,
//! leases and the sweeper.
//!
//! Opening a session takes a slot of the caller's tenant's quota and one of
//! the gateway's cap (both or neither, rejecting at once when either is
//! full), registers the session, starts its worker and marks it `READY`. A
//! failure rolls back every step in reverse: fault, deregister, dispose the
//! worker, release the slot, count the fault, log, return the error.
//!
//! This file holds the registry itself, finding sessions and invoking
//! them; opening (open.rs), one-shot calls (call.rs), ending (lifecycle.rs), event streams
//! (stream.rs), state snapshots (snapshots.rs), restarts (restart.rs) and
//! moving sessions between versions (upgrade.rs) live beside it.

mod backend_metrics;
mod call;
pub mod catalog;
mod deadline;
mod drain;
mod error;
mod lifecycle;
mod open;
mod replace;
mod restart;
pub mod session;
pub mod slots;
mod snapshots;
pub mod state;
mod stream;
pub mod tenant;
mod upgrade;
mod window;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::backend::cpu::{CpuAccount, CpuScheduler};
use crate::backend::{Command, FaultReport, Outcome};
use crate::clock::Clock;
use crate::memory_budget::MemoryBudget;
use crate::metrics::{Metrics, RateLabel};

pub use self::call::CallRequest;
use self::catalog::Catalog;
pub use self::catalog::{BackendEntry, Changes, Version, VersionState};
pub use self::drain::{KeepUntilEnd, SessionMover};
pub use self::error::{GatewayError, RETRY_AFTER};
pub use self::lifecycle::CloseResult;
pub use self::open::OpenRequest;
pub use self::session::{Session, SessionSnapshot, SessionTimes};
use self::slots::Slots;
pub use self::state::{CloseReason, SessionState};
pub use self::stream::EventStream;
pub use self::tenant::{Caller, DEFAULT_TENANT, RateKind, Tenant};

/// Registry-wide settings.
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    /// Live sessions allowed.
    pub max_sessions: usize,
    /// How long closed and faulted sessions stay visible.
    pub closed_session_retention: Duration,
    /// How long a client should wait before retrying at the cap; the
    /// gateway uses [`RETRY_AFTER`].
    pub retry_after: Duration,
    /// Bytes every session together may make the gateway hold
    /// (`server.memory_budget`).
    pub memory_budget: usize,
    /// `cluster.node_id`: the prefix of this node's session ids.
    pub node_id: Option<Arc<str>>,
    /// The cluster's shared slots (`cluster.redis`), taken with this
    /// gateway's at every open and call.
    pub ledger: Option<Arc<crate::cluster::Ledger>>,
    /// wasm guests running at once (`server.guest_threads`); `None`: one
    /// per thread of the runtime the registry is created on.
    pub guest_threads: Option<usize>,
    /// The gateway's phase: a drain or a shutdown refuses new starts.
    pub phase: crate::phase::GatewayPhase,
}

/// A cluster view that Redis could not give.
fn cluster_error(e: crate::cluster::LedgerError) -> GatewayError {
    GatewayError::ClusterUnavailable(e.to_string())
}

/// The session registry.
pub struct Registry {
    catalog: RwLock<Arc<Catalog>>,
    sessions: Mutex<HashMap<Arc<str>, Arc<Session>>>,
    slots: Arc<Slots>,
    memory: Arc<MemoryBudget>,
    cpu: Arc<CpuScheduler>,
    settings: RegistrySettings,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    faults: mpsc::UnboundedSender<FaultReport>,
    /// Itself, for the restart tasks a fault starts; they end with it.
    this: Weak<Self>,
}

impl Registry {
    /// Creates a registry and starts the task that handles out-of-band
    /// worker faults. Must be called inside a tokio runtime.
    pub fn new(
        backends: BTreeMap<String, BackendEntry>,
        settings: RegistrySettings,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let (tx, mut rx) = mpsc::unbounded_channel::<FaultReport>();
        let registry = Arc::new_cyclic(|this| Self {
            catalog: RwLock::new(Arc::new(Catalog::new(backends, &metrics))),
            sessions: Mutex::new(HashMap::new()),
            slots: Slots::new(settings.max_sessions),
            memory: MemoryBudget::new(
                settings.memory_budget,
                metrics.budget_gauges(settings.memory_budget),
            ),
            cpu: {
                let turns = settings
                    .guest_threads
                    .unwrap_or_else(CpuScheduler::runtime_threads);
                metrics
                    .guest_threads
                    .set(i64::try_from(turns).unwrap_or(i64::MAX));
                CpuScheduler::new(turns, cpu_metrics(&metrics))
            },
            settings,
            clock,
            metrics,
            faults: tx,
            this: Weak::clone(this),
        });
        let weak: Weak<Self> = Arc::downgrade(&registry);
        tokio::spawn(async move {
            while let Some(report) = rx.recv().await {
                let Some(registry) = weak.upgrade() else {
                    return;
                };
                let session = registry.sessions().get(&report.session_id).cloned();
                // A worker a restart or an upgrade replaced may still
                // report its end; only the current one's faults count.
                if let Some(session) = session
                    && session.runs_worker(report.worker)
                {
                    registry.fault_session(&session, report.fault);
                }
            }
        });
        registry
    }

    fn sessions(&self) -> MutexGuard<'_, HashMap<Arc<str>, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The loaded backends, as of now.
    pub fn catalog(&self) -> Arc<Catalog> {
        Arc::clone(&self.catalog.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Every loaded version the caller's tenant may open, current first by
    /// name.
    pub fn backends_for(&self, caller: &Caller) -> Vec<(Arc<Version>, VersionState)> {
        self.catalog()
            .versions()
            .into_iter()
            .filter(|(v, _)| caller.tenant.may_open(&v.info.name))
            .collect()
    }

    /// Drops retiring versions whose last session ended: their compiled
    /// code and pool slots go with the last reference.
    fn unload_unused(&self) {
        let mut catalog = self.catalog.write().unwrap_or_else(PoisonError::into_inner);
        if catalog.has_unused() {
            let next = catalog.without_unused();
            for (name, version) in catalog.unused() {
                tracing::info!(backend = %name, version = %version.info.version, digest = %version.info.digest, "retired backend version unloaded");
            }
            *catalog = Arc::new(next);
        }
    }

    /// Ends `name`'s rollout by hand: `promote` makes the canary current,
    /// else it retires.
    pub fn end_rollout(&self, name: &str, promote: bool) -> Result<(), GatewayError> {
        let mut catalog = self.catalog.write().unwrap_or_else(PoisonError::into_inner);
        let next = catalog
            .rollout_ended(name, promote, self.clock.now())
            .map_err(GatewayError::InvalidArgument)?;
        *catalog = Arc::new(next);
        tracing::info!(backend = name, promote, "rollout ended by hand");
        Ok(())
    }

    /// Counts a fault against the session's version; a canary past its
    /// faults rolls back here, by itself.
    fn version_faulted(&self, version: &Version) {
        if version.fault(self.clock.now()) {
            version.metrics.lifecycle.rolled_back();
            tracing::warn!(backend = %version.info.name, version = %version.info.version, digest = %version.info.digest, "canary rolled back: its sessions faulted more than max_faults times within the window; new opens go to the current version");
        }
    }

    /// Installs a reload's backends: unchanged ones keep their loaded
    /// version, changed and removed ones retire (see `catalog`). Returns
    /// what changed.
    pub fn install_backends(&self, backends: BTreeMap<String, BackendEntry>) -> Changes {
        let mut catalog = self.catalog.write().unwrap_or_else(PoisonError::into_inner);
        let (next, changes) = catalog.reloaded(backends, &self.metrics, self.clock.now());
        *catalog = Arc::new(next);
        changes
    }

    /// The cluster's shared slots, in a cluster with Redis.
    pub fn ledger(&self) -> Option<&Arc<crate::cluster::Ledger>> {
        self.settings.ledger.as_ref()
    }

    /// Sessions holding a slot.
    pub fn open_count(&self) -> usize {
        self.slots.used()
    }

    /// A CPU account for a new session (or call) of the caller's tenant on
    /// `backend`.
    fn cpu_account(&self, caller: &Caller, backend: &str) -> CpuAccount {
        self.cpu.account(
            self.cpu.tenant(caller.tenant_name(), caller.tenant.cpu()),
            backend,
            caller.key.as_ref(),
        )
    }

    /// Guest CPU charged to each API key (by label: a store key's id)
    /// since the last call; for the key store's per-key totals.
    pub fn take_cpu_by_key(&self) -> Vec<(String, std::time::Duration)> {
        self.cpu.take_key_usage()
    }

    /// The gateway's memory budget and what sessions reserve of it.
    pub fn memory(&self) -> &MemoryBudget {
        &self.memory
    }

    /// The wall time of a registry instant.
    pub fn wall(&self, at: Instant) -> std::time::SystemTime {
        self.clock.wall(at)
    }

    /// The registry's clock, for the API layer's own time-keeping.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The gateway's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Admits one RPC of the caller's tenant under its request rate. The
    /// API calls it once per RPC, as soon as the caller is known.
    pub fn admit(&self, caller: &Caller) -> Result<(), GatewayError> {
        self.take_token(caller, RateKind::Requests)
    }

    /// Takes a token of one of the caller's tenant's rates, counting a
    /// refusal.
    fn take_token(&self, caller: &Caller, kind: RateKind) -> Result<(), GatewayError> {
        caller
            .tenant
            .take_token(kind, self.clock.now())
            .map_err(|(rate, retry_after)| {
                self.metrics
                    .rate_limited
                    .get_or_create(&RateLabel {
                        tenant: caller.tenant_name().to_string(),
                        kind: kind.as_str().into(),
                    })
                    .inc();
                GatewayError::RateLimited {
                    tenant: caller.tenant_name().to_string(),
                    kind,
                    per_sec: rate.per_sec(),
                    retry_after,
                }
            })
    }

    /// Finds a session the caller may see: one of its tenant's, or any for
    /// an admin. Anything else is `SessionNotFound`, exactly as for an
    /// unknown id.
    pub fn lookup(&self, caller: &Caller, id: &str) -> Result<Arc<Session>, GatewayError> {
        self.find(caller, id, caller.admin)
    }

    /// Finds a session of the caller's own tenant: the sessions it may use
    /// (invoke, stream, renew). An admin sees and closes every tenant's
    /// sessions but does not drive them.
    pub fn owned(&self, caller: &Caller, id: &str) -> Result<Arc<Session>, GatewayError> {
        self.find(caller, id, false)
    }

    fn find(
        &self,
        caller: &Caller,
        id: &str,
        any_tenant: bool,
    ) -> Result<Arc<Session>, GatewayError> {
        let sessions = self.sessions();
        match sessions.get(id) {
            Some(s) if any_tenant || s.tenant == caller.tenant_name() => Ok(Arc::clone(s)),
            _ => Err(GatewayError::SessionNotFound(id.to_string())),
        }
    }

    /// Finds a session, renewing its lease if it is READY and the caller is
    /// its owner (same tenant and key).
    pub fn get(&self, caller: &Caller, id: &str) -> Result<Arc<Session>, GatewayError> {
        let session = self.lookup(caller, id)?;
        if session.state() == SessionState::Ready && session.is_owned_by(caller) {
            session.touch(self.clock.now());
        }
        Ok(session)
    }

    /// The caller's sessions (every session for an admin), oldest first.
    pub fn list(&self, caller: &Caller) -> Vec<Arc<Session>> {
        let mut out: Vec<Arc<Session>> = self
            .sessions()
            .values()
            .filter(|s| caller.admin || s.tenant == caller.tenant_name())
            .cloned()
            .collect();
        out.sort_by_key(|s| s.opened_at);
        out
    }

    /// The other nodes' live sessions, for an admin in a cluster with
    /// Redis (each node publishes its own there: see docs/cluster.md for
    /// why Redis and not asking the peers); nothing otherwise.
    pub async fn cluster_sessions(
        &self,
        caller: &Caller,
    ) -> Result<Vec<crate::cluster::SessionRecord>, GatewayError> {
        match &self.settings.ledger {
            Some(ledger) if caller.admin => ledger.others().await.map_err(cluster_error),
            _ => Ok(Vec::new()),
        }
    }

    /// Another node's live session `id`, for an admin in a cluster with
    /// Redis.
    pub async fn cluster_session(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<Option<crate::cluster::SessionRecord>, GatewayError> {
        match &self.settings.ledger {
            Some(ledger) if caller.admin => ledger.other(id).await.map_err(cluster_error),
            _ => Ok(None),
        }
    }

    /// Renews a READY session's lease.
    pub fn renew(&self, caller: &Caller, id: &str) -> Result<Arc<Session>, GatewayError> {
        let session = self.owned(caller, id)?;
        let state = session.state();
        if state != SessionState::Ready {
            return Err(session.not_ready(state));
        }
        session.touch(self.clock.now());
        Ok(session)
    }

    /// Runs commands on a session's worker, in order. `deadline` is the
    /// client's gRPC deadline, if any.
    pub async fn invoke(
        &self,
        caller: &Caller,
        id: &str,
        commands: Vec<Command>,
        deadline: Option<Instant>,
    ) -> Result<Vec<Outcome>, GatewayError> {
        let session = self.owned(caller, id)?;
        self.invoke_on(&session, commands, deadline).await
    }

    /// [`invoke`](Self::invoke) on a session already looked up with
    /// [`owned`](Self::owned), so the API edge finds it once per call.
    pub async fn invoke_on(
        &self,
        session: &Arc<Session>,
        commands: Vec<Command>,
        deadline: Option<Instant>,
    ) -> Result<Vec<Outcome>, GatewayError> {
        // Held for the whole call: an upgrade or a restart by hand waits
        // for it and holds later calls back.
        let _gate = session.gate.read().await;
        let (worker, number) = session.ready_worker_numbered()?;
        session.touch(self.clock.now());
        let began = Instant::now();
        // Over its CPU budget, the tenant's command waits for the refill,
        // up to when the command would have to have answered.
        let until = deadline.map_or(began + session.times.command_timeout, |d| {
            d.min(began + session.times.command_timeout)
        });
        session
            .start
            .cpu
            .admit(until)
            .await
            .map_err(GatewayError::CpuThrottled)?;
        let invoked = worker.invoke(commands, session.times.command_timeout, deadline);
        let result = deadline::by_deadline(invoked, deadline, began, "command").await;
        session
            .metrics
            .invoke_seconds
            .observe(began.elapsed().as_secs_f64());
        match result {
            Ok(outcomes) => {
                if worker.stateful() {
                    self.after_command(session, worker.as_ref());
                }
                if let Some((index, size, limit)) =
                    outcomes.iter().enumerate().find_map(|(i, o)| match o {
                        Outcome::ReplyTooLarge { size, limit } => Some((i, *size, *limit)),
                        _ => None,
                    })
                {
                    return Err(GatewayError::ReplyTooLarge { index, size, limit });
                }
                Ok(outcomes)
            }
            Err(fault) => {
                // A worker already taken out (a close, a restart) faulted
                // because of that; its fault changes nothing about the
                // session.
                if !session.runs_worker(number) || !self.fault_session(session, fault.clone()) {
                    // A close got there first: the worker stopped because the
                    // session is closing, not because it failed. (RESTARTING
                    // or READY: the worker's own report of the same fault
                    // started the restart first; the command still failed.)
                    let state = session.state();
                    if !matches!(
                        state,
                        SessionState::Faulted | SessionState::Ready | SessionState::Restarting
                    ) {
                        return Err(session.not_ready(state));
                    }
                }
                Err(GatewayError::Faulted(fault))
            }
        }
    }
}

/// The counters the CPU scheduler reports into. Built here, where both are
/// known: the metrics model does not know the scheduler.
fn cpu_metrics(metrics: &Metrics) -> crate::backend::cpu::CpuMetrics {
    use crate::metrics::{TenantBackendLabel, TenantLabel};
    let guest = metrics.guest_cpu_seconds.clone();
    let throttled = metrics.cpu_throttled.clone();
    let waited = metrics.cpu_wait_seconds.clone();
    let tenant = |name: &str| TenantLabel {
        tenant: name.to_string(),
    };
    crate::backend::cpu::CpuMetrics {
        guest_seconds: Some(Box::new(move |t: &str, b: &str| {
            guest
                .get_or_create(&TenantBackendLabel {
                    tenant: t.to_string(),
                    backend: b.to_string(),
                })
                .clone()
        })),
        throttled: Some(Box::new(move |t: &str| {
            throttled.get_or_create(&tenant(t)).clone()
        })),
        wait_seconds: Some(Box::new(move |t: &str| {
            waited.get_or_create(&tenant(t)).clone()
        })),
    }
}

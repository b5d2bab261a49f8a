//! One session: who owns it, its state, its lease, its events and its
//! worker handle.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::backend::{BackendInfo, Fault, FaultCode, SnapshotStore, Worker};
use crate::events::EventLog;
use crate::registry::GatewayError;
use crate::registry::backend_metrics::BackendMetrics;
use crate::registry::catalog::{Version, VersionPin};
use crate::registry::slots::Slot;
use crate::registry::state::{CloseReason, SessionState};
use crate::registry::window::Window;

/// The timeouts a session runs with, resolved at open.
#[derive(Debug, Clone, Copy)]
pub struct SessionTimes {
    /// Per-command timeout.
    pub command_timeout: Duration,
    /// Lease length; renewed by client calls and attached streams.
    pub lease: Duration,
    /// Close after this long without a client call.
    pub idle_timeout: Option<Duration>,
    /// Close this long after open.
    pub max_lifetime: Option<Duration>,
    /// Graceful close time before the worker is killed.
    pub close_timeout: Duration,
}

/// What the session's workers start from, kept from the open so a restart
/// or an upgrade starts the next worker the same way.
pub(super) struct StartInputs {
    /// The open request's config (the backend's goes under it).
    pub config: std::collections::BTreeMap<String, String>,
    /// The limits resolved at open (the backend's, lowered by the tenant).
    pub policy: crate::config::SessionPolicy,
    /// What the session's memory is charged to.
    pub memory: crate::memory_budget::MemoryAccount,
    /// What the session's CPU is charged to; its total outlives workers.
    pub cpu: crate::backend::cpu::CpuAccount,
}

/// Mutable status, behind one lock so transitions are atomic.
#[derive(Debug)]
struct Status {
    state: SessionState,
    last_activity: Instant,
    lease_expires: Instant,
    fault: Option<Fault>,
    close_reason: Option<CloseReason>,
    /// When the session reached CLOSED or FAULTED; drives retention.
    ended_at: Option<Instant>,
    /// Restarts so far, automatic and by hand.
    restarts: u32,
    /// The automatic restarts within the restart period.
    recent_restarts: Window,
    /// The fault that caused the last restart (kept when that restart gave
    /// up), or the one that ended a session that never restarted.
    last_fault: Option<Fault>,
    /// When a snapshot was last asked for (the interval policy).
    snapshot_asked: Option<Instant>,
}

/// A session in the registry.
pub struct Session {
    /// Opaque, unguessable id.
    pub id: Arc<str>,
    /// The owning tenant.
    pub tenant: String,
    /// The label of the API key that opened it; `None` when anonymous.
    pub owner_key: Option<Arc<str>>,
    /// The backend version it runs on: its one record, kept when a fault
    /// gives the pin back so a restart runs the same code again. An
    /// upgrade replaces it, under the same lock as the pin.
    version: Mutex<Arc<Version>>,
    /// The backend's metric handles, shared with every session of it.
    pub(super) metrics: Arc<BackendMetrics>,
    /// Client-chosen name.
    pub client_session_name: String,
    /// Client-chosen correlation id.
    pub client_correlation_id: String,
    /// Resolved timeouts.
    pub times: SessionTimes,
    /// When it was opened.
    pub opened_at: Instant,
    /// Its event log.
    pub events: Arc<EventLog>,
    /// Its latest state snapshot (stateful plugins).
    pub snapshots: Arc<SnapshotStore>,
    /// Whether a command ran since the last snapshot was asked for.
    dirty: AtomicBool,
    /// How its workers start.
    pub(super) start: StartInputs,
    status: Mutex<Status>,
    worker: Mutex<Option<Arc<dyn Worker>>>,
    /// Workers started for the session so far (each gets the next number).
    workers_started: AtomicU64,
    /// The number of the installed worker; written under `worker`'s lock.
    current_worker: AtomicU64,
    /// Held (shared) by every invoke for its whole call, and exclusively
    /// by an upgrade or a restart by hand: those wait for the commands in
    /// flight and hold new ones back, so no command runs on a worker that
    /// is being replaced.
    pub(super) gate: tokio::sync::RwLock<()>,
    held: Mutex<Option<Held>>,
    /// Serializes open and close of this session.
    pub(super) lifecycle: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("tenant", &self.tenant)
            .field("backend", &self.backend().name)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

/// What a live session holds and gives back exactly once when it ends: its
/// slot of the cap and quota, and its pin on the backend version.
pub(super) struct Held {
    #[expect(dead_code, reason = "held for its Drop, which gives the slot back")]
    pub slot: Slot,
    pub version: VersionPin,
}

/// What changed when a session faulted, so the caller can release resources
/// exactly once.
pub(super) struct Faulted {
    pub worker: Option<Arc<dyn Worker>>,
    pub held: Option<Held>,
}

impl Session {
    /// Creates a session in `CREATING`, holding `held`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        id: Arc<str>,
        tenant: String,
        owner_key: Option<Arc<str>>,
        metrics: Arc<BackendMetrics>,
        client_session_name: String,
        client_correlation_id: String,
        times: SessionTimes,
        events: Arc<EventLog>,
        snapshots: Arc<SnapshotStore>,
        held: Held,
        start: StartInputs,
        now: Instant,
    ) -> Self {
        Self {
            id,
            tenant,
            owner_key,
            version: Mutex::new(Arc::clone(held.version.version())),
            metrics,
            client_session_name,
            client_correlation_id,
            times,
            opened_at: now,
            events,
            snapshots,
            dirty: AtomicBool::new(false),
            start,
            status: Mutex::new(Status {
                state: SessionState::Creating,
                last_activity: now,
                lease_expires: now + times.lease,
                fault: None,
                close_reason: None,
                ended_at: None,
                restarts: 0,
                recent_restarts: Window::default(),
                last_fault: None,
                snapshot_asked: None,
            }),
            worker: Mutex::new(None),
            workers_started: AtomicU64::new(0),
            current_worker: AtomicU64::new(0),
            gate: tokio::sync::RwLock::new(()),
            held: Mutex::new(Some(held)),
            lifecycle: tokio::sync::Mutex::new(()),
        }
    }

    /// The backend version the session runs on now.
    pub fn backend(&self) -> Arc<BackendInfo> {
        Arc::clone(&self.recorded().info)
    }

    /// The version it runs on, or last ran on once it ended or faulted.
    pub(super) fn recorded(&self) -> Arc<Version> {
        Arc::clone(&self.version.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Whether `caller` is the client that opened the session: the same
    /// tenant and the same key.
    pub fn is_owned_by(&self, caller: &crate::registry::Caller) -> bool {
        self.tenant == caller.tenant_name() && self.owner_key == caller.key
    }

    fn status(&self) -> MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current state.
    pub fn state(&self) -> SessionState {
        self.status().state
    }

    /// Moves to `to` if the state machine allows it; returns whether it did.
    pub(super) fn transition(&self, to: SessionState, now: Instant) -> bool {
        let mut st = self.status();
        if !st.state.can_become(to) {
            return false;
        }
        st.state = to;
        if to.is_terminal() && st.ended_at.is_none() {
            st.ended_at = Some(now);
        }
        true
    }

    /// Records that a close began for `reason`.
    pub(super) fn begin_close(&self, reason: CloseReason) -> bool {
        let mut st = self.status();
        if !st.state.can_become(SessionState::Closing) {
            return false;
        }
        st.state = SessionState::Closing;
        st.close_reason = Some(reason);
        true
    }

    /// Faults the session unless it is already closing or ended. Returns the
    /// resources to release, once.
    ///
    /// A RESTARTING session faults only when its restart gives up
    /// (`restarting`): a worker's fault then comes from the worker the
    /// restart already took out, racing with it, and changes nothing.
    pub(super) fn fault(&self, fault: Fault, now: Instant, restarting: bool) -> Option<Faulted> {
        {
            let mut st = self.status();
            let faultable = if restarting {
                st.state == SessionState::Restarting
            } else {
                st.state.is_starting() || st.state == SessionState::Ready
            };
            if !faultable {
                return None;
            }
            st.state = SessionState::Faulted;
            // A recovery that failed (a restart that gave up, or the restart
            // budget spent) keeps the fault that called for it as the last
            // fault; `fault` says why the recovery failed. Both are what an
            // operator needs to see.
            let recovery_failed = restarting || fault.code == FaultCode::RestartLimit;
            if !(recovery_failed && st.last_fault.is_some()) {
                st.last_fault = Some(fault.clone());
            }
            st.fault = Some(fault);
            st.close_reason = Some(CloseReason::Fault);
            st.ended_at = Some(now);
        }
        // The snapshot stays: a restart by hand may still use it.
        self.events.close();
        Some(Faulted {
            worker: self.take_worker(),
            held: self.take_held(),
        })
    }

    /// Starts a restart of a READY session (after `fault`, or by hand
    /// without one) or of a FAULTED one (by hand). Returns the old worker,
    /// to kill, or `None` when the session cannot restart now.
    pub(super) fn begin_restart(
        &self,
        fault: Option<Fault>,
    ) -> Result<Option<Arc<dyn Worker>>, SessionState> {
        {
            let mut st = self.status();
            if !st.state.can_become(SessionState::Restarting) {
                return Err(st.state);
            }
            st.state = SessionState::Restarting;
            if let Some(f) = fault {
                st.last_fault = Some(f);
            }
            st.fault = None;
            st.close_reason = None;
            st.ended_at = None;
        }
        self.events.reopen();
        Ok(self.take_worker())
    }

    /// Counts an automatic restart at `now` against `max` within `period`.
    /// Returns the restart's number within the period (1 for the first),
    /// or `None` when the budget is spent.
    pub(super) fn count_restart(&self, max: u32, period: Duration, now: Instant) -> Option<u32> {
        self.status().recent_restarts.admit(max, period, now)
    }

    /// Ends a restart: the new worker serves, the lease starts over.
    /// Returns the restart count, or `None` if the session left RESTARTING
    /// meanwhile (a close), when the worker is not installed.
    pub(super) fn finish_restart(
        &self,
        worker: Arc<dyn Worker>,
        number: u64,
        now: Instant,
    ) -> Option<u32> {
        let mut st = self.status();
        if st.state != SessionState::Restarting {
            return None;
        }
        st.state = SessionState::Ready;
        st.restarts += 1;
        st.last_activity = now;
        st.lease_expires = now + self.times.lease;
        let restarts = st.restarts;
        // Installed before the status lock is let go: a call that sees
        // READY finds the new worker.
        self.set_worker(worker, number);
        drop(st);
        Some(restarts)
    }

    /// Records `fault` as the one behind the last restart, when it would
    /// have restarted the session but the restart budget was spent.
    pub(super) fn note_cause(&self, fault: Fault) {
        self.status().last_fault = Some(fault);
    }

    /// The fault behind the last restart.
    pub fn last_fault(&self) -> Option<Fault> {
        self.status().last_fault.clone()
    }

    /// Whether a command ran since the last interval snapshot was asked for.
    pub(super) fn is_dirty(&self) -> bool {
        self.dirty.load(Ordering::Relaxed)
    }

    /// Marks that a command ran (the snapshot policies read it).
    pub(super) fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Whether a snapshot is due under an interval policy: a command ran
    /// since the last one was asked for, and `every` has passed. Marks it
    /// asked for when it is.
    pub(super) fn snapshot_due(&self, every: Duration, now: Instant) -> bool {
        let mut st = self.status();
        if st.state != SessionState::Ready
            || st.snapshot_asked.is_some_and(|t| now < t + every)
            || !self.dirty.swap(false, Ordering::Relaxed)
        {
            return false;
        }
        st.snapshot_asked = Some(now);
        true
    }

    /// Moves the session to another version's worker (an upgrade):
    /// returns the worker and the pin it ran on, for the caller to close
    /// and drop.
    pub(super) fn swap_version(
        &self,
        worker: Arc<dyn Worker>,
        number: u64,
        version: VersionPin,
    ) -> (Option<Arc<dyn Worker>>, Option<VersionPin>) {
        let old_worker = {
            let mut slot = self.worker.lock().unwrap_or_else(|e| e.into_inner());
            self.current_worker.store(number, Ordering::Release);
            slot.replace(worker)
        };
        // `held` before `version`, as in `version()`: the record and the
        // pin change together.
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        *self.version.lock().unwrap_or_else(|e| e.into_inner()) = Arc::clone(version.version());
        let old_pin = held
            .as_mut()
            .map(|h| std::mem::replace(&mut h.version, version));
        (old_worker, old_pin)
    }

    /// The version the session is pinned to, while it holds one.
    pub(super) fn version(&self) -> Option<Arc<Version>> {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.is_some().then(|| self.recorded())
    }

    /// Gives the session a slot and a pin on its recorded version again (a
    /// FAULTED session restarted by hand).
    pub(super) fn hold(&self, slot: Slot) {
        let pin = VersionPin::new(&self.recorded());
        *self.held.lock().unwrap_or_else(|e| e.into_inner()) = Some(Held { slot, version: pin });
    }

    /// Renews the lease and records client activity.
    pub(super) fn touch(&self, now: Instant) {
        let mut st = self.status();
        st.last_activity = now;
        st.lease_expires = now + self.times.lease;
    }

    /// Renews the lease without counting as client activity (an attached
    /// event stream).
    pub(super) fn keep_alive(&self, now: Instant) {
        self.status().lease_expires = now + self.times.lease;
    }

    /// Why the session should be closed now, if it should.
    pub(super) fn expiry(&self, now: Instant) -> Option<CloseReason> {
        let st = self.status();
        if st.state != SessionState::Ready {
            return None;
        }
        if self
            .times
            .max_lifetime
            .is_some_and(|ttl| now >= self.opened_at + ttl)
        {
            return Some(CloseReason::MaxLifetime);
        }
        if self
            .times
            .idle_timeout
            .is_some_and(|idle| now >= st.last_activity + idle)
        {
            return Some(CloseReason::IdleTimeout);
        }
        if now >= st.lease_expires {
            return Some(CloseReason::LeaseExpired);
        }
        None
    }

    /// When the session ended, if it has.
    pub(super) fn ended_at(&self) -> Option<Instant> {
        self.status().ended_at
    }

    /// The number the next worker started for the session gets.
    pub(super) fn next_worker_number(&self) -> u64 {
        self.workers_started.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Installs worker number `number`.
    pub(super) fn set_worker(&self, worker: Arc<dyn Worker>, number: u64) {
        let mut slot = self.worker.lock().unwrap_or_else(|e| e.into_inner());
        *slot = Some(worker);
        self.current_worker.store(number, Ordering::Release);
    }

    /// Whether worker number `number` is the one installed: faults of a
    /// replaced worker change nothing.
    pub(super) fn runs_worker(&self, number: u64) -> bool {
        self.current_worker.load(Ordering::Acquire) == number
    }

    /// The worker and its number, if the session is READY.
    pub(super) fn ready_worker_numbered(&self) -> Result<(Arc<dyn Worker>, u64), GatewayError> {
        let state = self.state();
        if state != SessionState::Ready {
            return Err(self.not_ready(state));
        }
        let slot = self.worker.lock().unwrap_or_else(|e| e.into_inner());
        match slot.as_ref() {
            Some(w) => Ok((Arc::clone(w), self.current_worker.load(Ordering::Acquire))),
            None => Err(self.not_ready(state)),
        }
    }

    /// The worker, if the session is READY.
    pub(super) fn ready_worker(&self) -> Result<Arc<dyn Worker>, GatewayError> {
        self.ready_worker_numbered().map(|(w, _)| w)
    }

    /// The error for a call that needs READY, with why the session closed.
    pub(super) fn not_ready(&self, state: SessionState) -> GatewayError {
        GatewayError::NotReady {
            state,
            reason: self.status().close_reason,
        }
    }

    /// Takes the worker out; from now on no worker's fault counts until
    /// the next is installed.
    pub(super) fn take_worker(&self) -> Option<Arc<dyn Worker>> {
        let mut slot = self.worker.lock().unwrap_or_else(|e| e.into_inner());
        self.current_worker.store(0, Ordering::Release);
        slot.take()
    }

    /// Whether the session, not ended yet, runs on `version`.
    pub(super) fn runs_on(&self, version: &Arc<Version>) -> bool {
        self.version().is_some_and(|v| Arc::ptr_eq(&v, version))
    }

    pub(super) fn take_held(&self) -> Option<Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// A consistent copy of the mutable fields, for the API.
    pub fn snapshot(&self) -> SessionSnapshot {
        let st = self.status();
        let worker_pid = self
            .worker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(|w| w.pid());
        let worker_processes = self
            .worker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(|w| w.processes());
        let (events_emitted, events_dropped) = self.events.counts();
        SessionSnapshot {
            restarts: st.restarts,
            last_fault: st.last_fault.clone(),
            snapshot_bytes: self.snapshots.size(),
            state: st.state,
            last_activity: st.last_activity,
            lease_expires: st.lease_expires,
            fault: st.fault.clone(),
            close_reason: st.close_reason,
            worker_pid,
            worker_processes,
            events_emitted,
            events_dropped,
            cpu_time: self.start.cpu.used(),
        }
    }
}

/// The mutable part of a session at one moment.
#[derive(Debug, Clone)]
pub struct SessionSnapshot {
    /// State.
    pub state: SessionState,
    /// Last client call.
    pub last_activity: Instant,
    /// When the lease runs out.
    pub lease_expires: Instant,
    /// Why it faulted.
    pub fault: Option<Fault>,
    /// Why it closed.
    pub close_reason: Option<CloseReason>,
    /// Native worker pid.
    pub worker_pid: Option<u32>,
    /// Processes the native worker and its descendants are, where counted.
    pub worker_processes: Option<u64>,
    /// Events emitted.
    pub events_emitted: u64,
    /// Events dropped by the overflow policy.
    pub events_dropped: u64,
    /// Restarts so far.
    pub restarts: u32,
    /// The fault behind the last restart (kept when that restart gave up),
    /// or the one that ended a session that never restarted.
    pub last_fault: Option<Fault>,
    /// The size of the latest state snapshot; 0 without one.
    pub snapshot_bytes: usize,
    /// CPU the session's guest used, over all its workers.
    pub cpu_time: Duration,
}

//! One session: who owns it, its state, its lease, its events and its
//! worker handle.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::backend::{BackendInfo, Fault, Worker};
use crate::events::EventLog;
use crate::registry::GatewayError;
use crate::registry::backend_metrics::BackendMetrics;
use crate::registry::catalog::VersionPin;
use crate::registry::slots::Slot;
use crate::registry::state::{CloseReason, SessionState};

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
}

/// A session in the registry.
pub struct Session {
    /// Opaque, unguessable id.
    pub id: Arc<str>,
    /// The owning tenant.
    pub tenant: String,
    /// The label of the API key that opened it; `None` when anonymous.
    pub owner_key: Option<Arc<str>>,
    /// The backend it runs on.
    pub backend: Arc<BackendInfo>,
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
    status: Mutex<Status>,
    worker: Mutex<Option<Arc<dyn Worker>>>,
    held: Mutex<Option<Held>>,
    /// Serializes open and close of this session.
    pub(super) lifecycle: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("tenant", &self.tenant)
            .field("backend", &self.backend.name)
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
        backend: Arc<BackendInfo>,
        metrics: Arc<BackendMetrics>,
        client_session_name: String,
        client_correlation_id: String,
        times: SessionTimes,
        events: Arc<EventLog>,
        held: Held,
        now: Instant,
    ) -> Self {
        Self {
            id,
            tenant,
            owner_key,
            backend,
            metrics,
            client_session_name,
            client_correlation_id,
            times,
            opened_at: now,
            events,
            status: Mutex::new(Status {
                state: SessionState::Creating,
                last_activity: now,
                lease_expires: now + times.lease,
                fault: None,
                close_reason: None,
                ended_at: None,
            }),
            worker: Mutex::new(None),
            held: Mutex::new(Some(held)),
            lifecycle: tokio::sync::Mutex::new(()),
        }
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
    pub(super) fn fault(&self, fault: Fault, now: Instant) -> Option<Faulted> {
        {
            let mut st = self.status();
            if !(st.state.is_starting() || st.state == SessionState::Ready) {
                return None;
            }
            st.state = SessionState::Faulted;
            st.fault = Some(fault);
            st.close_reason = Some(CloseReason::Fault);
            st.ended_at = Some(now);
        }
        self.events.close();
        Some(Faulted {
            worker: self.take_worker(),
            held: self.take_held(),
        })
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

    pub(super) fn set_worker(&self, worker: Arc<dyn Worker>) {
        *self.worker.lock().unwrap_or_else(|e| e.into_inner()) = Some(worker);
    }

    /// The worker, if the session is READY.
    pub(super) fn ready_worker(&self) -> Result<Arc<dyn Worker>, GatewayError> {
        let state = self.state();
        if state != SessionState::Ready {
            return Err(self.not_ready(state));
        }
        self.worker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| self.not_ready(state))
    }

    /// The error for a call that needs READY, with why the session closed.
    pub(super) fn not_ready(&self, state: SessionState) -> GatewayError {
        GatewayError::NotReady {
            state,
            reason: self.status().close_reason,
        }
    }

    pub(super) fn take_worker(&self) -> Option<Arc<dyn Worker>> {
        self.worker.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Whether the session, not ended yet, runs on `version`.
    pub(super) fn runs_on(&self, version: &Arc<crate::registry::Version>) -> bool {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|h| Arc::ptr_eq(h.version.version(), version))
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
        let (events_emitted, events_dropped) = self.events.counts();
        SessionSnapshot {
            state: st.state,
            last_activity: st.last_activity,
            lease_expires: st.lease_expires,
            fault: st.fault.clone(),
            close_reason: st.close_reason,
            worker_pid,
            events_emitted,
            events_dropped,
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
    /// Events emitted.
    pub events_emitted: u64,
    /// Events dropped by the overflow policy.
    pub events_dropped: u64,
}

//! The session registry: every live session, the cap, the state machine,
//! leases and the sweeper.
//!
//! Opening a session takes a slot of the caller's tenant's quota and one of
//! the gateway's cap (both or neither, rejecting at once when either is
//! full), registers the session, starts its worker and marks it `READY`. A
//! failure rolls back every step in reverse: fault, deregister, dispose the
//! worker, release the slot, count the fault, log, return the error.

pub mod session;
pub mod slots;
pub mod state;
pub mod tenant;

/// Undoes a registered open that does not reach READY, in reverse order:
/// fault, deregister, dispose of the worker, release the slot, count.
/// Runs on drop, so an open abandoned at an `.await` rolls back too.
struct Rollback<'a> {
    registry: &'a Registry,
    session: &'a Arc<Session>,
    /// `None` once the session is READY.
    fault: Option<Fault>,
}

impl Drop for Rollback<'_> {
    fn drop(&mut self) {
        let Some(fault) = self.fault.take() else {
            return;
        };
        let (registry, session) = (self.registry, self.session);
        let code = fault.code;
        let released = session.fault(fault, registry.clock.now());
        registry.sessions().remove(&session.id);
        if let Some(released) = released {
            if let Some(worker) = released.worker {
                worker.kill();
            }
            drop(released.slot);
        }
        registry
            .metrics
            .faults
            .get_or_create(&CodeLabel {
                backend: session.backend.name.to_string(),
                code: code.as_str().into(),
            })
            .inc();
        if code == FaultCode::OpenAbandoned {
            tracing::info!(session_id = %session.id, "open abandoned by its caller; rolled back");
        }
    }
}

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use rand::RngCore;
use tokio::sync::mpsc;

use crate::backend::{
    Backend, BackendInfo, CloseOutcome, Command, Fault, FaultClass, FaultCode, FaultReporter,
    Outcome, StartError, StartPhase, StartRequest,
};
use crate::clock::Clock;
use crate::config::SessionPolicy;
use crate::events::{EventLimits, SubscribeError, Subscription};
use crate::metrics::{BackendLabel, CodeLabel, Metrics, ReasonLabel, TenantLabel};

pub use self::session::{Session, SessionSnapshot, SessionTimes};
use self::slots::{Refused, Slots};
pub use self::state::{CloseReason, SessionState};
pub use self::tenant::{Caller, DEFAULT_TENANT, Tenant};

/// A gateway-level failure. Mapped to a gRPC status once, in the API layer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    /// No such session, or one of another tenant.
    #[error("no session {0:?}")]
    SessionNotFound(String),
    /// No such backend.
    #[error("no backend named {0:?}")]
    BackendNotFound(String),
    /// The backend exists but the caller's tenant may not open it.
    #[error("this tenant may not open sessions on backend {0:?}")]
    BackendNotAllowed(String),
    /// The session is not READY.
    #[error("session is {0}, not READY")]
    NotReady(SessionState),
    /// Every session slot is taken.
    #[error("the gateway is at its cap of {cap} sessions")]
    SessionCapReached {
        /// The cap.
        cap: usize,
        /// When a retry may succeed.
        retry_after: Duration,
    },
    /// The caller's tenant holds as many sessions as its quota allows.
    #[error("tenant {tenant:?} is at its quota of {quota} sessions")]
    TenantQuotaReached {
        /// The tenant.
        tenant: String,
        /// The quota.
        quota: usize,
        /// When a retry may succeed.
        retry_after: Duration,
    },
    /// The session already has its maximum of event streams.
    #[error("{0}")]
    SubscriberExists(String),
    /// A request value is not allowed.
    #[error("{0}")]
    InvalidArgument(String),
    /// A resume point past the end of the stream.
    #[error("{0}")]
    OutOfRange(String),
    /// A command's reply was over the backend's limit.
    #[error("command {index}: reply of {size} bytes is over the limit of {limit}")]
    ReplyTooLarge {
        /// Which command of the request.
        index: usize,
        /// The reply size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The worker faulted; the session is now FAULTED.
    #[error("session faulted: {0}")]
    Faulted(Fault),
    /// The worker could not be started.
    #[error("{0}")]
    StartFailed(StartError),
    /// The gateway is shutting down.
    #[error("the gateway is shutting down")]
    ShuttingDown,
}

/// A client's request to open a session.
#[derive(Debug, Clone, Default)]
pub struct OpenRequest {
    /// Backend name.
    pub backend: String,
    /// Client-chosen name.
    pub client_session_name: String,
    /// Client-chosen correlation id.
    pub client_correlation_id: String,
    /// Requested command timeout; capped by the backend.
    pub command_timeout: Option<Duration>,
    /// Requested lease; capped by the backend.
    pub lease: Option<Duration>,
    /// Merged over the backend's config.
    pub config: BTreeMap<String, String>,
}

/// What `CloseSession` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseResult {
    /// The state after the close.
    pub final_state: SessionState,
    /// Whether someone else closed it first.
    pub already_closed: bool,
}

/// A backend and the policy its sessions run under.
pub struct BackendEntry {
    /// The loaded backend.
    pub backend: Arc<dyn Backend>,
    /// Session limits and timeouts.
    pub policy: SessionPolicy,
    /// Config handed to every session, under the request's.
    pub config: BTreeMap<String, String>,
}

/// A backend as the registry keeps it: the entry plus what every open of it
/// would otherwise rebuild (its info, its metric handles).
struct Loaded {
    entry: BackendEntry,
    info: Arc<BackendInfo>,
    metrics: Arc<BackendMetrics>,
}

/// One backend's metric handles, resolved once instead of by label on every
/// call.
pub(crate) struct BackendMetrics {
    open_sessions: prometheus_client::metrics::gauge::Gauge,
    sessions_opened: prometheus_client::metrics::counter::Counter,
    pub(crate) invoke_seconds: prometheus_client::metrics::histogram::Histogram,
    instantiate_seconds: prometheus_client::metrics::histogram::Histogram,
    events: Arc<dyn crate::events::EventObserver>,
}

impl BackendMetrics {
    fn new(metrics: &Metrics, backend: &str) -> Self {
        let label = BackendLabel {
            backend: backend.to_string(),
        };
        Self {
            open_sessions: metrics.open_sessions.get_or_create(&label).clone(),
            sessions_opened: metrics.sessions_opened.get_or_create(&label).clone(),
            invoke_seconds: metrics.invoke_seconds.get_or_create(&label).clone(),
            instantiate_seconds: metrics.instantiate_seconds.get_or_create(&label).clone(),
            events: metrics.event_observer(backend),
        }
    }
}

/// Registry-wide settings.
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    /// Live sessions allowed.
    pub max_sessions: usize,
    /// How long closed and faulted sessions stay visible.
    pub closed_session_retention: Duration,
    /// How long a client should wait before retrying at the cap.
    pub retry_after: Duration,
}

/// The session registry.
pub struct Registry {
    backends: BTreeMap<String, Loaded>,
    sessions: Mutex<HashMap<Arc<str>, Arc<Session>>>,
    slots: Arc<Slots>,
    settings: RegistrySettings,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    faults: mpsc::UnboundedSender<(Arc<str>, Fault)>,
    draining: AtomicBool,
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
        let (tx, mut rx) = mpsc::unbounded_channel::<(Arc<str>, Fault)>();
        let registry = Arc::new(Self {
            backends: backends
                .into_iter()
                .map(|(name, entry)| {
                    let loaded = Loaded {
                        info: Arc::new(entry.backend.info().clone()),
                        metrics: Arc::new(BackendMetrics::new(&metrics, &name)),
                        entry,
                    };
                    (name, loaded)
                })
                .collect(),
            sessions: Mutex::new(HashMap::new()),
            slots: Slots::new(settings.max_sessions),
            settings,
            clock,
            metrics,
            faults: tx,
            draining: AtomicBool::new(false),
        });
        let weak: Weak<Self> = Arc::downgrade(&registry);
        tokio::spawn(async move {
            while let Some((id, fault)) = rx.recv().await {
                let Some(registry) = weak.upgrade() else {
                    return;
                };
                let session = registry.sessions().get(&id).cloned();
                if let Some(session) = session {
                    registry.fault_session(&session, fault);
                }
            }
        });
        registry
    }

    fn sessions(&self) -> MutexGuard<'_, HashMap<Arc<str>, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The backends, by name.
    pub fn backends(&self) -> impl Iterator<Item = &BackendEntry> {
        self.backends.values().map(|l| &l.entry)
    }

    /// The backends the caller's tenant may open, by name.
    pub fn backends_for<'a>(
        &'a self,
        caller: &'a Caller,
    ) -> impl Iterator<Item = &'a BackendEntry> + 'a {
        self.backends
            .iter()
            .filter(|(name, _)| caller.tenant.may_open(name))
            .map(|(_, loaded)| &loaded.entry)
    }

    /// Sessions holding a slot.
    pub fn open_count(&self) -> usize {
        self.slots.used()
    }

    /// The wall time of a registry instant.
    pub fn wall(&self, at: Instant) -> std::time::SystemTime {
        self.clock.wall(at)
    }

    /// Opens a session and returns it once READY. An open the caller
    /// abandons (its future is dropped: the client went away or its
    /// deadline passed) rolls back, as a failed one does: nobody holds the
    /// id, so a session left behind would only wait for its lease.
    pub async fn open(
        &self,
        caller: &Caller,
        request: OpenRequest,
    ) -> Result<Arc<Session>, GatewayError> {
        // Runs on the caller's task: a task of its own cost a hop to
        // another thread on most opens (about a tenth of an echo open).
        if self.draining.load(Ordering::Acquire) {
            return Err(GatewayError::ShuttingDown);
        }
        let loaded = self
            .backends
            .get(&request.backend)
            .ok_or_else(|| GatewayError::BackendNotFound(request.backend.clone()))?;
        let entry = &loaded.entry;
        let handles = &loaded.metrics;
        if !caller.tenant.may_open(&request.backend) {
            return Err(GatewayError::BackendNotAllowed(request.backend));
        }
        // The backend's limits, lowered by the tenant's overrides.
        let policy = &caller.tenant.policy(&entry.policy);
        let times = SessionTimes {
            command_timeout: capped(
                request.command_timeout,
                policy.command_timeout,
                policy.max_command_timeout,
                "command_timeout",
            )?,
            lease: capped(request.lease, policy.lease, policy.max_lease, "lease")?,
            idle_timeout: policy.idle_timeout,
            max_lifetime: policy.max_lifetime,
            close_timeout: policy.close_timeout,
        };
        let backend_name = loaded.info.name.clone();

        // 1. Take a slot of the tenant's quota and one of the gateway's cap
        //    (both or neither), or refuse at once.
        let gauges = vec![
            handles.open_sessions.clone(),
            self.metrics
                .tenant_open_sessions
                .get_or_create(&TenantLabel {
                    tenant: caller.tenant_name().to_string(),
                })
                .clone(),
        ];
        let retry_after = self.settings.retry_after;
        let slot = self
            .slots
            .try_take_both(caller.tenant.quota(), gauges)
            .map_err(|refused| match refused {
                Refused::Cap(cap) => GatewayError::SessionCapReached { cap, retry_after },
                Refused::Quota(quota) => GatewayError::TenantQuotaReached {
                    tenant: caller.tenant_name().to_string(),
                    quota,
                    retry_after,
                },
            })?;

        // 2. Register.
        let id = new_session_id();
        let events = Arc::new(crate::events::EventLog::new(
            EventLimits {
                queue: policy.event_queue,
                replay: policy.replay_buffer,
                overflow: policy.event_overflow,
                max_subscribers: policy.max_event_subscribers,
            },
            Arc::clone(&handles.events),
        ));
        let now = self.clock.now();
        let session = Arc::new(Session::new(
            Arc::clone(&id),
            caller.tenant_name().to_string(),
            caller.key.clone(),
            Arc::clone(&loaded.info),
            request.client_session_name,
            request.client_correlation_id,
            times,
            Arc::clone(&events),
            slot,
            now,
        ));
        let _lifecycle = session.lifecycle.lock().await;
        self.sessions()
            .insert(Arc::clone(&id), Arc::clone(&session));
        // From here until READY, every way out rolls back: a failure below,
        // or the caller dropping this future mid-start.
        let mut rollback = Rollback {
            registry: self,
            session: &session,
            fault: Some(Fault::crashed(
                FaultCode::OpenAbandoned,
                "the caller went away before the session was ready",
            )),
        };

        // 3. Start the worker.
        let mut config = entry.config.clone();
        config.extend(request.config);
        let start = StartRequest {
            session_id: Arc::clone(&id),
            tenant: caller.tenant_name().to_string(),
            backend: backend_name.clone(),
            config,
            events,
            policy: policy.clone(),
            open_timeout: times.command_timeout,
            faults: FaultReporter::new(Arc::clone(&id), self.faults.clone()),
        };
        let clock = Arc::clone(&self.clock);
        let progress = |phase: StartPhase| {
            session.transition(phase.into(), clock.now());
        };
        let began = Instant::now();
        let started = entry.backend.start(start, &progress).await;
        handles
            .instantiate_seconds
            .observe(began.elapsed().as_secs_f64());

        // 4. READY, or roll back.
        let error = match started {
            Ok(worker) => {
                let worker: Arc<dyn crate::backend::Worker> = Arc::from(worker);
                session.set_worker(Arc::clone(&worker));
                if session.transition(SessionState::Ready, self.clock.now()) {
                    rollback.fault = None;
                    handles.sessions_opened.inc();
                    tracing::info!(session_id = %id, backend = %backend_name, tenant = %caller.tenant_name(), key = caller.key.as_deref().unwrap_or("-"), "session opened");
                    return Ok(Arc::clone(&session));
                }
                GatewayError::StartFailed(StartError::Failed(
                    session.snapshot().fault.unwrap_or_else(|| {
                        Fault::crashed(FaultCode::WorkerStopped, "the worker stopped during open")
                    }),
                ))
            }
            Err(e) => GatewayError::StartFailed(e),
        };
        rollback.fault = Some(match &error {
            GatewayError::StartFailed(StartError::Failed(f)) => f.clone(),
            GatewayError::StartFailed(StartError::Refused(m)) => {
                Fault::crashed(FaultCode::OpenRefused, m.clone())
            }
            GatewayError::StartFailed(StartError::Exhausted(m)) => {
                Fault::crashed(FaultCode::NoCapacity, m.clone())
            }
            other => Fault::crashed(FaultCode::StartFailed, other.to_string()),
        });
        let code = rollback.fault.as_ref().map_or("", |f| f.code.as_str());
        drop(rollback);
        tracing::warn!(session_id = %id, backend = %backend_name, code = %code, "session open failed: {error}");
        Err(error)
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
    fn owned(&self, caller: &Caller, id: &str) -> Result<Arc<Session>, GatewayError> {
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

    /// Renews a READY session's lease.
    pub fn renew(&self, caller: &Caller, id: &str) -> Result<Arc<Session>, GatewayError> {
        let session = self.owned(caller, id)?;
        let state = session.state();
        if state != SessionState::Ready {
            return Err(GatewayError::NotReady(state));
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
        let worker = session.ready_worker().map_err(GatewayError::NotReady)?;
        session.touch(self.clock.now());
        let began = Instant::now();
        let invoked = worker.invoke(commands, session.times.command_timeout, deadline);
        let result = match deadline {
            None => invoked.await,
            // The worker stops itself at the deadline too, but only at its
            // next epoch tick; answering from here on the dot keeps the
            // client's status DEADLINE_EXCEEDED even on a loaded machine,
            // ahead of tonic's own timer.
            Some(at) => tokio::select! {
                r = invoked => r,
                _ = tokio::time::sleep_until(at.into()) => {
                    let ms = at.saturating_duration_since(began).as_millis();
                    Err(Fault::deadline(format!(
                        "the command ran past the client's gRPC deadline, its {ms} ms deadline"
                    )))
                }
            },
        };
        if let Some(loaded) = self.backends.get(&*session.backend.name) {
            loaded
                .metrics
                .invoke_seconds
                .observe(began.elapsed().as_secs_f64());
        }
        match result {
            Ok(outcomes) => {
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
                if !self.fault_session(&session, fault.clone()) {
                    // A close got there first: the worker stopped because the
                    // session is closing, not because it failed.
                    let state = session.state();
                    if state != SessionState::Faulted {
                        return Err(GatewayError::NotReady(state));
                    }
                }
                Err(GatewayError::Faulted(fault))
            }
        }
    }

    /// Attaches an event stream to a READY session. At the subscriber limit
    /// it waits briefly for a just-cancelled stream to detach.
    pub async fn subscribe(
        &self,
        caller: &Caller,
        id: &str,
        resume_after: Option<u64>,
    ) -> Result<EventStream, GatewayError> {
        let session = self.owned(caller, id)?;
        let state = session.state();
        if state != SessionState::Ready {
            return Err(GatewayError::NotReady(state));
        }
        session.touch(self.clock.now());
        let subscription = session
            .events
            .subscribe_within(resume_after, SUBSCRIBE_GRACE)
            .await
            .map_err(|e| match e {
                SubscribeError::TooManySubscribers(_) => {
                    GatewayError::SubscriberExists(e.to_string())
                }
                SubscribeError::ResumePastEnd { .. } => GatewayError::OutOfRange(e.to_string()),
            })?;
        Ok(EventStream {
            subscription,
            session,
            clock: Arc::clone(&self.clock),
        })
    }

    /// Closes a session for a client. Idempotent while the session is known.
    /// Runs to completion even if the caller goes away: a close abandoned
    /// halfway would leave the session stuck in CLOSING.
    pub async fn close(
        self: &Arc<Self>,
        caller: &Caller,
        id: &str,
    ) -> Result<CloseResult, GatewayError> {
        let session = self.lookup(caller, id)?;
        let this = Arc::clone(self);
        tokio::spawn(async move { this.close_session(&session, CloseReason::ClientClose).await })
            .await
            .map_err(|e| {
                GatewayError::Faulted(Fault::crashed(
                    FaultCode::Internal,
                    format!("close failed: {e}"),
                ))
            })
    }

    /// Closes one session: serialized per session, graceful within the
    /// backend's close timeout, then killed.
    async fn close_session(&self, session: &Arc<Session>, reason: CloseReason) -> CloseResult {
        let _lifecycle = session.lifecycle.lock().await;
        match session.state() {
            SessionState::Closed => {
                return CloseResult {
                    final_state: SessionState::Closed,
                    already_closed: true,
                };
            }
            SessionState::Faulted => {
                // The worker is already gone; closing makes it final.
                session.transition(SessionState::Closed, self.clock.now());
                return CloseResult {
                    final_state: SessionState::Closed,
                    already_closed: false,
                };
            }
            _ => {}
        }
        if !session.begin_close(reason) {
            return CloseResult {
                final_state: session.state(),
                already_closed: true,
            };
        }
        let backend = session.backend.name.clone();
        if let Some(worker) = session.take_worker() {
            // The worker enforces the grace period itself; the outer timeout
            // only guards against a worker that does not.
            let outcome = tokio::time::timeout(
                session.times.close_timeout + Duration::from_millis(500),
                worker.close(session.times.close_timeout),
            )
            .await
            .unwrap_or(CloseOutcome::Killed);
            if outcome == CloseOutcome::Killed {
                worker.kill();
                self.metrics
                    .workers_killed
                    .get_or_create(&ReasonLabel {
                        backend: backend.clone(),
                        reason: "close-timeout".into(),
                    })
                    .inc();
            }
        }
        session.events.close();
        session.transition(SessionState::Closed, self.clock.now());
        drop(session.take_slot());
        self.metrics
            .sessions_closed
            .get_or_create(&ReasonLabel {
                backend,
                reason: reason.as_str().into(),
            })
            .inc();
        tracing::info!(session_id = %session.id, reason = %reason, "session closed");
        CloseResult {
            final_state: session.state(),
            already_closed: false,
        }
    }

    /// Faults a session: stops its worker and releases its slot, once.
    /// Returns whether this call faulted it.
    fn fault_session(&self, session: &Arc<Session>, fault: Fault) -> bool {
        let Some(released) = session.fault(fault.clone(), self.clock.now()) else {
            return false;
        };
        let backend = session.backend.name.clone();
        if let Some(worker) = released.worker {
            worker.kill();
            self.metrics
                .workers_killed
                .get_or_create(&ReasonLabel {
                    backend: backend.clone(),
                    reason: match fault.class {
                        FaultClass::Deadline => "deadline".into(),
                        FaultClass::Crashed => "fault".into(),
                    },
                })
                .inc();
        }
        drop(released.slot);
        self.metrics
            .faults
            .get_or_create(&CodeLabel {
                backend: backend.clone(),
                code: fault.code.as_str().into(),
            })
            .inc();
        self.metrics
            .sessions_closed
            .get_or_create(&ReasonLabel {
                backend,
                reason: CloseReason::Fault.as_str().into(),
            })
            .inc();
        tracing::warn!(session_id = %session.id, fault = %fault, "session faulted");
        true
    }

    /// One sweep: closes sessions whose lease, idle timeout or lifetime ran
    /// out (concurrently, so one slow worker delays none of the others),
    /// keeps sessions with an attached stream alive, and forgets ended
    /// sessions past their retention. Returns how many it closed.
    pub async fn sweep(&self) -> usize {
        let now = self.clock.now();
        let mut expired = Vec::new();
        {
            let mut sessions = self.sessions();
            sessions.retain(|_, s| {
                s.ended_at()
                    .is_none_or(|t| now < t + self.settings.closed_session_retention)
            });
            for s in sessions.values() {
                if s.events.has_subscriber() {
                    s.keep_alive(now);
                }
                if let Some(reason) = s.expiry(now) {
                    expired.push((Arc::clone(s), reason));
                }
            }
        }
        let n = expired.len();
        futures::future::join_all(
            expired
                .iter()
                .map(|(s, reason)| self.close_session(s, *reason)),
        )
        .await;
        n
    }

    /// Stops accepting sessions and closes every live one, killing what has
    /// not stopped within `timeout`.
    pub async fn shutdown(&self, timeout: Duration) {
        self.draining.store(true, Ordering::Release);
        let live: Vec<Arc<Session>> = self
            .sessions()
            .values()
            .filter(|s| !s.state().is_terminal())
            .cloned()
            .collect();
        if live.is_empty() {
            return;
        }
        tracing::info!(sessions = live.len(), "closing every session for shutdown");
        let closes = futures::future::join_all(
            live.iter()
                .map(|s| self.close_session(s, CloseReason::GatewayShutdown)),
        );
        if tokio::time::timeout(timeout, closes).await.is_err() {
            for s in &live {
                if let Some(worker) = s.take_worker() {
                    worker.kill();
                    self.metrics
                        .workers_killed
                        .get_or_create(&ReasonLabel {
                            backend: s.backend.name.clone(),
                            reason: "shutdown".into(),
                        })
                        .inc();
                }
            }
        }
    }
}

/// How long a new event stream waits for a cancelled one to detach before
/// ALREADY_EXISTS.
const SUBSCRIBE_GRACE: Duration = Duration::from_millis(250);

/// An attached event stream. While it exists the sweeper keeps the session's
/// lease alive; when it is dropped the lease restarts from that moment, so a
/// slow sweep can never expire a session that was being watched.
pub struct EventStream {
    subscription: Subscription,
    session: Arc<Session>,
    clock: Arc<dyn Clock>,
}

impl EventStream {
    /// The next event; `None` once the session has ended and the stream is
    /// drained.
    pub async fn next(&mut self) -> Option<crate::events::Delivery> {
        self.subscription.next().await
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        if self.session.state() == SessionState::Ready {
            self.session.keep_alive(self.clock.now());
        }
    }
}

/// The client's value, else the default; never above the cap.
fn capped(
    requested: Option<Duration>,
    default: Duration,
    cap: Duration,
    name: &str,
) -> Result<Duration, GatewayError> {
    match requested {
        None => Ok(default),
        Some(d) if d.is_zero() => Err(GatewayError::InvalidArgument(format!(
            "{name} must be greater than zero"
        ))),
        Some(d) => Ok(d.min(cap)),
    }
}

/// 128 random bits from the OS-seeded CSPRNG, as 32 hex digits.
fn new_session_id() -> Arc<str> {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes).into()
}

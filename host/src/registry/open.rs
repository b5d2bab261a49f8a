//! Opening a session: resolve the backend and the times, take a slot,
//! register, start the worker, mark it READY; or roll every step back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backend::cpu::CpuAccount;
use crate::backend::{
    Fault, FaultCode, FaultReporter, Restore, SnapshotStore, StartError, StartPhase, StartRequest,
    Worker,
};
use crate::cluster::{LedgerError, SessionRecord};
use crate::config::SessionPolicy;
use crate::events::{EventLimits, EventLog};
use crate::memory_budget::{MemoryAccount, MemoryKind};
use crate::metrics::TenantLabel;
use crate::phase::Phase;
use crate::registry::catalog::{Version, VersionPin};
use crate::registry::session::{Held, StartInputs};
use crate::registry::slots::{Refused, Slot};
use crate::registry::tenant::{Caller, RateKind};
use crate::registry::{GatewayError, Registry, Session, SessionState, SessionTimes};

/// A client's request to open a session.
#[derive(Debug, Clone, Default)]
pub struct OpenRequest {
    /// Backend name: `name` for its current version, `name@version` or
    /// `name@sha256:<hex prefix>` for a loaded one.
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
        let released = session.fault(fault, registry.clock.now(), false);
        registry.sessions().remove(&session.id);
        if let Some(released) = released {
            if let Some(worker) = released.worker {
                worker.kill();
            }
            // A canary whose sessions fail to start is failing too.
            if let Some(held) = &released.held
                && code != FaultCode::OpenAbandoned
            {
                registry.version_faulted(held.version.version());
            }
            drop(released.held);
        }
        session.metrics.lifecycle.fault(code);
        if code == FaultCode::OpenAbandoned {
            tracing::info!(session_id = %session.id, "open abandoned by its caller; rolled back");
        }
    }
}

impl Registry {
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
        let (loaded, policy) = self.admit_start(caller, &request.backend, |policy| {
            session_times(policy, &request)
        })?;
        let (loaded, policy, times) = (&loaded, &policy.0, policy.1);

        // 1. Take a slot of the tenant's quota and one of the gateway's cap
        //    (both or neither), or refuse at once.
        let id: Arc<str> = crate::cluster::session_id(self.settings.node_id.as_deref()).into();
        let slot = self.take_slot(caller, loaded, Some(&id)).await?;

        // 2. Register. The lifecycle lock is taken before the session is
        //    visible, so a close that finds it waits for the open to end.
        //    Its memory (events, then the worker's) is charged to the
        //    gateway's budget and its tenant's.
        let memory = self.memory.account(
            self.memory
                .tenant(caller.tenant_name(), caller.tenant.max_memory()),
        );
        let cpu = self.cpu_account(caller, &loaded.info.name);
        let session = new_session(
            id,
            caller,
            loaded,
            policy,
            &request,
            times,
            slot,
            (memory, cpu),
            self.clock.now(),
        );
        let _lifecycle = session.lifecycle.lock().await;
        self.sessions()
            .insert(Arc::clone(&session.id), Arc::clone(&session));
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
        let started = self.start_worker(&session, loaded, None).await;

        // 4. READY, or roll back.
        let error = match started {
            Ok((worker, number)) => {
                session.set_worker(worker, number);
                if session.transition(SessionState::Ready, self.clock.now()) {
                    rollback.fault = None;
                    session.metrics.sessions_opened.inc();
                    if let Some(ledger) = &self.settings.ledger {
                        ledger.publish(self.record(&session, ledger.node()));
                    }
                    tracing::info!(session_id = %session.id, backend = %loaded.info.name, tenant = %caller.tenant_name(), key = caller.key.as_deref().unwrap_or("-"), "session opened");
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
        let fault = rollback_fault(&error);
        let code = fault.code;
        rollback.fault = Some(fault);
        drop(rollback);
        tracing::warn!(session_id = %session.id, backend = %loaded.info.name, code = %code, "session open failed: {error}");
        Err(error)
    }

    /// Admits a start of a worker on `backend` (an open or a call): not
    /// draining, a version the caller may open, its policy (the backend's
    /// lowered by the tenant's overrides) and what `times` makes of it,
    /// then a token of the tenant's opens rate. A refused start takes no
    /// slot; the caller takes one next.
    pub(super) fn admit_start<T>(
        &self,
        caller: &Caller,
        backend: &str,
        times: impl FnOnce(&SessionPolicy) -> Result<T, GatewayError>,
    ) -> Result<(Arc<Version>, (SessionPolicy, T)), GatewayError> {
        match self.settings.phase.get() {
            Phase::ShuttingDown => return Err(GatewayError::ShuttingDown),
            Phase::Draining => return Err(GatewayError::Draining),
            Phase::Starting | Phase::Serving => {}
        }
        let loaded = self.openable(caller, backend)?;
        let policy = caller.tenant.policy(&loaded.entry.policy);
        let times = times(&policy)?;
        // Starts are the expensive call (a worker starts), with a rate of
        // their own.
        self.take_token(caller, RateKind::Opens)?;
        Ok((loaded, (policy, times)))
    }

    /// The version `backend` names (see [`OpenRequest::backend`]), if it
    /// is loaded and the caller's tenant may open its backend.
    fn openable(&self, caller: &Caller, backend: &str) -> Result<Arc<Version>, GatewayError> {
        let (name, version) = self
            .catalog()
            .resolve(backend)
            .map_err(|_| GatewayError::BackendNotFound(backend.to_string()))?;
        if !caller.tenant.may_open(&name) {
            return Err(GatewayError::BackendNotAllowed(name));
        }
        Ok(version)
    }

    /// A slot of the caller's tenant's quota and of the gateway's cap, both
    /// or neither; in a cluster with Redis, then one of the cluster's cap
    /// and the tenant's cluster-wide quota too (`session`'s record goes
    /// with it).
    pub(super) async fn take_slot(
        &self,
        caller: &Caller,
        loaded: &Version,
        session: Option<&Arc<str>>,
    ) -> Result<Slot, GatewayError> {
        let local = self.take_local_slot(caller, loaded)?;
        let Some(ledger) = &self.settings.ledger else {
            return Ok(local);
        };
        let retry_after = self.settings.retry_after;
        // The local slot is held meanwhile and dropped on a refusal.
        let shared = ledger
            .take(
                caller.tenant_name(),
                caller.tenant.max_sessions(),
                session.cloned(),
            )
            .await
            .map_err(|e| match e {
                LedgerError::Cap(cap) => refused(caller, Refused::Cap(cap), retry_after),
                LedgerError::Quota(quota) => refused(caller, Refused::Quota(quota), retry_after),
                LedgerError::Unavailable(m) => GatewayError::ClusterUnavailable(m),
            })?;
        Ok(local.with_shared(shared))
    }

    /// What the other nodes see of a READY session.
    pub(super) fn record(&self, session: &Session, node: &str) -> SessionRecord {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let opened = self
            .clock
            .wall(session.opened_at)
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let backend = session.backend();
        SessionRecord {
            id: session.id.to_string(),
            node: node.to_string(),
            tenant: session.tenant.clone(),
            backend: backend.name.clone(),
            kind: match backend.kind {
                crate::config::BackendKind::Wasm => "wasm",
                crate::config::BackendKind::Native => "native",
            }
            .to_string(),
            version: backend.version.clone(),
            digest: backend.digest.clone(),
            client_session_name: session.client_session_name.clone(),
            client_correlation_id: session.client_correlation_id.clone(),
            opened_at_ms: ms(opened),
            command_timeout_ms: ms(session.times.command_timeout),
            lease_ms: ms(session.times.lease),
        }
    }

    /// This gateway's slot alone.
    fn take_local_slot(&self, caller: &Caller, loaded: &Version) -> Result<Slot, GatewayError> {
        let gauges = vec![
            loaded.metrics.open_sessions.clone(),
            self.metrics
                .tenant_open_sessions
                .get_or_create(&TenantLabel {
                    tenant: caller.tenant_name().to_string(),
                })
                .clone(),
        ];
        let retry_after = self.settings.retry_after;
        self.slots
            .try_take_both(caller.tenant.quota(), gauges)
            .map_err(|r| refused(caller, r, retry_after))
    }

    /// Starts a worker for the session on `loaded`, reporting start-up
    /// states on the session as the backend walks them (an open; a
    /// restarting session stays RESTARTING). `restore` is the state a
    /// restart or an upgrade hands the new worker.
    pub(super) async fn start_worker(
        &self,
        session: &Arc<Session>,
        loaded: &Version,
        restore: Option<Restore>,
    ) -> Result<(Arc<dyn Worker>, u64), StartError> {
        let number = session.next_worker_number();
        let start = WorkerStart {
            id: Arc::clone(&session.id),
            tenant: session.tenant.clone(),
            config: session.start.config.clone(),
            events: Arc::clone(&session.events),
            policy: session.start.policy.clone(),
            open_timeout: session.times.command_timeout,
            faults: FaultReporter::new(Arc::clone(&session.id), self.faults.clone())
                .for_worker(number),
            memory: session.start.memory.clone(),
            cpu: session.start.cpu.clone(),
        }
        .request(loaded, restore);
        let clock = Arc::clone(&self.clock);
        let progress = |phase: StartPhase| {
            session.transition(phase.into(), clock.now());
        };
        let began = Instant::now();
        let started = loaded.entry.backend.start(start, &progress).await;
        session
            .metrics
            .instantiate_seconds
            .observe(began.elapsed().as_secs_f64());
        started.map(|w| (Arc::from(w), number))
    }
}

/// The session's timeouts: the request's, within the policy's caps.
fn session_times(
    policy: &SessionPolicy,
    request: &OpenRequest,
) -> Result<SessionTimes, GatewayError> {
    Ok(SessionTimes {
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
    })
}

/// The error of an open refused by a full pool, this gateway's or the
/// cluster's.
fn refused(caller: &Caller, refused: Refused, retry_after: Duration) -> GatewayError {
    match refused {
        Refused::Cap(cap) => GatewayError::SessionCapReached { cap, retry_after },
        Refused::Quota(quota) => GatewayError::TenantQuotaReached {
            tenant: caller.tenant_name().to_string(),
            quota,
            retry_after,
        },
    }
}

/// A new session in CREATING, with id `id` and its own event log and
/// snapshot store, whose memory is charged to `memory`.
#[allow(clippy::too_many_arguments)]
fn new_session(
    id: Arc<str>,
    caller: &Caller,
    loaded: &Arc<Version>,
    policy: &SessionPolicy,
    request: &OpenRequest,
    times: SessionTimes,
    slot: Slot,
    (memory, cpu): (MemoryAccount, CpuAccount),
    now: Instant,
) -> Arc<Session> {
    let events = Arc::new(EventLog::budgeted(
        EventLimits {
            queue: policy.event_queue,
            replay: policy.replay_buffer,
            overflow: policy.event_overflow,
            max_subscribers: policy.max_event_subscribers,
        },
        Arc::clone(&loaded.metrics.events),
        memory.reservation(MemoryKind::Events),
    ));
    Arc::new(Session::new(
        id,
        caller.tenant_name().to_string(),
        caller.key.clone(),
        Arc::clone(&loaded.metrics),
        request.client_session_name.clone(),
        request.client_correlation_id.clone(),
        times,
        events,
        SnapshotStore::new(
            loaded.entry.recovery.snapshot.max_bytes,
            memory.reservation(MemoryKind::Snapshots),
            loaded.metrics.snapshot_refusals.clone(),
        ),
        Held {
            slot,
            version: VersionPin::new(loaded),
        },
        StartInputs {
            config: request.config.clone(),
            policy: policy.clone(),
            memory,
            cpu,
        },
        now,
    ))
}

/// What a worker starts with besides its backend version: whom it is
/// for, the caller's config, its events, limits and memory.
/// [`WorkerStart::request`] is the one way a [`StartRequest`] is made (an
/// open, a restart, an upgrade, a call).
pub(super) struct WorkerStart {
    pub id: Arc<str>,
    pub tenant: String,
    /// The caller's config, laid over the backend's.
    pub config: BTreeMap<String, String>,
    pub events: Arc<EventLog>,
    pub policy: SessionPolicy,
    pub open_timeout: Duration,
    pub faults: FaultReporter,
    pub memory: MemoryAccount,
    pub cpu: CpuAccount,
}

impl WorkerStart {
    /// The request that starts a worker of `loaded`, restoring `restore`.
    pub(super) fn request(self, loaded: &Version, restore: Option<Restore>) -> StartRequest {
        let mut config = loaded.entry.config.clone();
        config.extend(self.config);
        StartRequest {
            session_id: self.id,
            tenant: self.tenant,
            backend: loaded.info.name.clone(),
            config,
            events: self.events,
            policy: self.policy,
            open_timeout: self.open_timeout,
            faults: self.faults,
            memory: self.memory,
            cpu: self.cpu,
            restore,
        }
    }
}

/// The fault a failed open is recorded with.
fn rollback_fault(error: &GatewayError) -> Fault {
    match error {
        GatewayError::StartFailed(e) => Fault::from(e.clone()),
        other => Fault::crashed(FaultCode::StartFailed, other.to_string()),
    }
}

/// The client's value, else the default; never above the cap.
pub(super) fn capped(
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

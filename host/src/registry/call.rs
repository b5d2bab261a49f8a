//! One-shot calls: admit as an open does, start a fresh worker, run one
//! command, close it and drop it, without a session record, a session
//! task or an event log. Every way out (an error, a trap, the deadline,
//! the caller dropping the future) releases the slot and stops the worker,
//! through the guards below.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;

use crate::backend::{Command, Fault, FaultClass, FaultReporter, Outcome, StartError, Worker};
use crate::config::OverflowPolicy;
use crate::events::{EventLimits, EventLog, EventObserver};
use crate::registry::backend_metrics::Lifecycle;
use crate::registry::catalog::{Version, VersionPin};
use crate::registry::open::{WorkerStart, capped};
use crate::registry::tenant::Caller;
use crate::registry::{GatewayError, Registry};

/// A client's request for one command on a fresh instance.
#[derive(Debug, Clone)]
pub struct CallRequest {
    /// Backend name, as [`crate::registry::OpenRequest::backend`].
    pub backend: String,
    /// Merged over the backend's config.
    pub config: BTreeMap<String, String>,
    /// The command.
    pub command: Command,
    /// Requested command timeout (also the start's); capped by the backend.
    pub command_timeout: Option<Duration>,
}

/// Numbers the calls' worker ids; they name a call in the worker's logs
/// and fault reports and never leave the gateway.
static NEXT_CALL: AtomicU64 = AtomicU64::new(1);

/// Counts a call's events and drops them: a call has no stream.
struct DroppedEvents(Counter);

impl EventObserver for DroppedEvents {
    fn emitted(&self, n: u64) {
        self.0.inc_by(n);
    }
    // Every emitted event is dropped at once; counting it again here
    // would count it twice.
    fn dropped(&self, _: u64) {}
}

/// Records the call's outcome and duration when it ends, however it ends:
/// `cancelled` unless something set another outcome first.
struct Outcomes<'a> {
    counts: &'a Lifecycle,
    began: Instant,
    outcome: &'static str,
}

impl Drop for Outcomes<'_> {
    fn drop(&mut self) {
        self.counts
            .call(self.outcome, self.began.elapsed().as_secs_f64());
    }
}

/// The call's worker, killed on drop unless it was closed: a call
/// abandoned mid-command leaves no worker behind.
struct Running(Option<Box<dyn Worker>>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(worker) = self.0.take() {
            worker.kill();
        }
    }
}

impl Registry {
    /// Runs one command on a fresh worker of `request.backend` and drops
    /// the worker. Admitted as an open (draining, tenant, opens rate,
    /// quota and cap); the slot is held until the worker is gone. A
    /// command error is an `Ok` outcome, as for an invoke. `deadline` is
    /// the client's gRPC deadline, for the whole call.
    pub async fn call(
        &self,
        caller: &Caller,
        request: CallRequest,
        deadline: Option<Instant>,
    ) -> Result<Outcome, GatewayError> {
        let (loaded, (policy, command_timeout)) =
            self.admit_start(caller, &request.backend, |policy| {
                capped(
                    request.command_timeout,
                    policy.command_timeout,
                    policy.max_command_timeout,
                    "command_timeout",
                )
            })?;
        let mut outcomes = Outcomes {
            counts: &loaded.metrics.lifecycle,
            began: Instant::now(),
            outcome: "refused",
        };
        // Over its CPU budget, the tenant's call waits for the refill, up
        // to when its command would have to have answered.
        let cpu = self.cpu_account(caller, &loaded.info.name);
        let until = deadline.map_or(outcomes.began + command_timeout, |d| {
            d.min(outcomes.began + command_timeout)
        });
        cpu.admit(until).await.map_err(GatewayError::CpuThrottled)?;
        // Held until this function returns or is dropped: the slot, the
        // version pin and the worker's memory go together.
        let _slot = self.take_slot(caller, &loaded, None).await?;
        let _pin = VersionPin::new(&loaded);
        outcomes.outcome = "cancelled";

        // As for an invoke; dropping the run at the deadline kills its
        // worker.
        let run = self.run_call(
            caller,
            &loaded,
            policy,
            request,
            (command_timeout, deadline),
            cpu,
        );
        let ran = super::deadline::by_deadline(run, deadline, outcomes.began, "call").await;
        outcomes.outcome = match &ran {
            Ok(Outcome::Error(_)) => "command-error",
            Ok(_) => "ok",
            Err(GatewayError::StartFailed(_)) => "start-failed",
            Err(GatewayError::ReplyTooLarge { .. }) => "command-error",
            Err(_) => "faulted",
        };
        if let Err(
            GatewayError::Faulted(fault) | GatewayError::StartFailed(StartError::Failed(fault)),
        ) = &ran
        {
            self.call_faulted(&loaded, fault);
        }
        ran
    }

    /// Starts the call's worker, runs the command and closes the worker.
    async fn run_call(
        &self,
        caller: &Caller,
        loaded: &Arc<Version>,
        policy: crate::config::SessionPolicy,
        request: CallRequest,
        (command_timeout, deadline): (Duration, Option<Instant>),
        cpu: crate::backend::cpu::CpuAccount,
    ) -> Result<Outcome, GatewayError> {
        let id: Arc<str> = format!("call-{}", NEXT_CALL.fetch_add(1, Ordering::Relaxed)).into();
        let dropped = loaded.metrics.lifecycle.call_events_dropped();
        // A log that keeps nothing: each event is counted, then dropped.
        let events = Arc::new(EventLog::new(
            EventLimits {
                queue: 0,
                replay: 0,
                overflow: OverflowPolicy::DropOldest,
                max_subscribers: 0,
            },
            Arc::new(DroppedEvents(dropped)),
        ));
        let close_timeout = policy.close_timeout;
        let start = WorkerStart {
            id: Arc::clone(&id),
            tenant: caller.tenant_name().to_string(),
            config: request.config,
            events,
            policy,
            open_timeout: command_timeout,
            // Nobody looks a call up by its id, so an out-of-band report
            // finds no session and changes nothing; the command's own
            // result carries the fault.
            faults: FaultReporter::new(id, self.faults.clone()).for_worker(1),
            memory: self.memory.account(
                self.memory
                    .tenant(caller.tenant_name(), caller.tenant.max_memory()),
            ),
            cpu,
        }
        .request(loaded, None);
        let began = Instant::now();
        let started = loaded.entry.backend.start_one_shot(start, &|_| {}).await;
        loaded
            .metrics
            .instantiate_seconds
            .observe(began.elapsed().as_secs_f64());
        let mut running = Running(Some(started.map_err(GatewayError::StartFailed)?));
        let worker = running.0.as_ref().ok_or_else(|| {
            GatewayError::StartFailed(StartError::Refused("the worker went away".into()))
        })?;
        let outcome = worker
            .invoke(vec![request.command], command_timeout, deadline)
            .await
            .map_err(GatewayError::Faulted)?
            .into_iter()
            .next()
            .ok_or_else(|| {
                GatewayError::Faulted(Fault::crashed(
                    crate::backend::FaultCode::WorkerStopped,
                    "the worker returned no result",
                ))
            })?;
        // The reply is in hand; a close that fails or times out kills the
        // worker and changes nothing about it. Still `running` meanwhile, so
        // a call dropped mid-close kills the worker too.
        let _ = worker.close(close_timeout).await;
        running.0 = None;
        match outcome {
            Outcome::ReplyTooLarge { size, limit } => Err(GatewayError::ReplyTooLarge {
                index: 0,
                size,
                limit,
            }),
            other => Ok(other),
        }
    }

    /// Counts a call's fault as a session's is counted; a canary whose
    /// calls crash is failing too (a deadline is the caller's, not the
    /// version's).
    fn call_faulted(&self, loaded: &Version, fault: &Fault) {
        loaded.metrics.lifecycle.fault(fault.code);
        if fault.class != FaultClass::Deadline {
            self.version_faulted(loaded);
        }
    }
}

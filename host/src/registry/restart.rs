//! Restarting a session: a fresh worker for the same session, restored from
//! its last state snapshot when it has one.
//!
//! A restart keeps everything the client holds: the id, the tenant and key,
//! the lease (renewed), the slot and the event sequence. Only the worker is
//! replaced. After a fault under `[backends.restart] policy = "on-fault"`
//! it happens by itself, OTP-style: at most `max_restarts` within `period`,
//! each after a backoff that doubles, and one more fault within the period
//! faults the session for good (`restart-limit`). `RestartSession` does the
//! same by hand, for a READY or a FAULTED session. The command that faulted
//! is never replayed; subscribers see one `gatehouse.restarted` event,
//! since the state may be older than the last reply they saw.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backend::{Fault, FaultCode, Restore};
use crate::config::{RestartOn, RestartPolicy};
use crate::registry::replace::{Failed, Why};
use crate::registry::tenant::Caller;
use crate::registry::{GatewayError, Registry, Session, SessionState};

impl Registry {
    /// Decides what a fault of a READY session does under its backend's
    /// restart policy: `Ok` when a restart was scheduled, else the fault
    /// the session should end with (the original, or `restart-limit`).
    pub(super) fn restart_after(&self, session: &Arc<Session>, fault: Fault) -> Result<(), Fault> {
        let Some(version) = session.version() else {
            return Err(fault);
        };
        let policy = version.entry.recovery.restart;
        if policy.on != RestartOn::OnFault || session.state() != SessionState::Ready {
            return Err(fault);
        }
        let Some(attempt) =
            session.count_restart(policy.max_restarts, policy.period, self.clock.now())
        else {
            return Err(restart_limit(&policy, &fault));
        };
        let old = match session.begin_restart(Some(fault.clone())) {
            Ok(old) => old,
            Err(_) => return Err(fault),
        };
        if let Some(worker) = old {
            worker.kill();
        }
        tracing::warn!(session_id = %session.id, %fault, attempt, "session faulted; restarting it");
        let Some(this) = self.this.upgrade() else {
            return Err(fault);
        };
        let session = Arc::clone(session);
        tokio::spawn(async move { this.restart_loop(session, fault, attempt, policy).await });
        Ok(())
    }

    /// Restarts after the backoff, again while the budget allows, until the
    /// session is READY, closed, or faulted for good.
    async fn restart_loop(
        self: Arc<Self>,
        session: Arc<Session>,
        mut fault: Fault,
        mut attempt: u32,
        policy: RestartPolicy,
    ) {
        let began = Instant::now();
        loop {
            // A zero backoff must not wait for the timer's next
            // millisecond tick.
            let wait = policy.backoff_for(attempt);
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            let result = {
                let _lifecycle = session.lifecycle.lock().await;
                self.replace_worker(&session, true, Some(&fault), began)
                    .await
            };
            match result.map_err(Failed::into_fault) {
                Ok(_) | Err(None) => return,
                Err(Some(failed)) if failed.code == FaultCode::RestoreFailed => {
                    // The same snapshot would fail the same way.
                    self.end_restart(&session, failed);
                    return;
                }
                Err(Some(failed)) => {
                    let now = self.clock.now();
                    match session.count_restart(policy.max_restarts, policy.period, now) {
                        Some(n) => {
                            tracing::warn!(session_id = %session.id, fault = %failed, attempt = n, "restart failed; trying again");
                            attempt = n;
                            fault = failed;
                        }
                        None => {
                            self.end_restart(&session, restart_limit(&policy, &failed));
                            return;
                        }
                    }
                }
            }
        }
    }

    /// `RestartSession`: replaces a READY or FAULTED session's worker now,
    /// from its last snapshot unless `from_snapshot` is false.
    pub async fn restart(
        &self,
        caller: &Caller,
        id: &str,
        from_snapshot: bool,
    ) -> Result<Arc<Session>, GatewayError> {
        let session = self.owned(caller, id)?;
        let _lifecycle = session.lifecycle.lock().await;
        // The commands in flight finish on the old worker first.
        let _gate = session.gate.write().await;
        let state = session.state();
        match state {
            SessionState::Ready => {}
            SessionState::Faulted => {
                // It gave its slot and version pin back when it faulted:
                // take them again, on the version it recorded (not one
                // resolved again, which could be another version of the
                // same code), or refuse as an open would.
                let version = session.recorded();
                if !self.catalog().holds(&version) {
                    return Err(GatewayError::InvalidArgument(format!(
                        "the session's backend version ({} {}) is no longer loaded",
                        version.info.name, version.info.version
                    )));
                }
                let slot = self.take_slot(caller, &version, Some(&session.id)).await?;
                session.hold(slot);
            }
            other => return Err(session.not_ready(other)),
        }
        // A live worker's state now is newer than any stored snapshot.
        if from_snapshot
            && state == SessionState::Ready
            && let (Ok(worker), Some(version)) = (session.ready_worker(), session.version())
            && worker.stateful()
        {
            let taken = self.snapshot_live(&session, &worker, &version).await;
            if let Err(e) = taken {
                tracing::warn!(session_id = %session.id, "restart by hand: no fresh snapshot ({e}); using the last one kept");
            }
        }
        let old = session
            .begin_restart(None)
            .map_err(|s| session.not_ready(s))?;
        if let Some(worker) = old {
            // By hand the old worker is still alive: its close runs (a
            // native worker releases what it holds) before the new opens;
            // past the grace `close` kills it.
            worker.close(session.times.close_timeout).await;
        }
        match self
            .replace_worker(&session, from_snapshot, None, Instant::now())
            .await
        {
            Ok(_) => {
                // Back from FAULTED it took its slot again, and its record
                // went with the old one: the other nodes see it again.
                if state == SessionState::Faulted
                    && let Some(ledger) = &self.settings.ledger
                {
                    ledger.publish(self.record(&session, ledger.node()));
                }
                Ok(Arc::clone(&session))
            }
            Err(Failed::Gone) => Err(session.not_ready(session.state())),
            Err(Failed::Start(e)) => {
                let fault = Fault::from(e);
                self.end_restart(&session, fault.clone());
                Err(GatewayError::Faulted(fault))
            }
        }
    }

    /// Starts the session's next worker on its own version, from its last
    /// snapshot when `from_snapshot`, and makes it READY. The caller holds
    /// the session's lifecycle lock.
    async fn replace_worker(
        &self,
        session: &Arc<Session>,
        from_snapshot: bool,
        cause: Option<&Fault>,
        began: Instant,
    ) -> Result<u32, Failed> {
        let version = session.version().ok_or(Failed::Gone)?;
        let restore = from_snapshot
            .then(|| session.snapshots.latest())
            .flatten()
            .map(|snapshot| Restore { snapshot });
        self.replace(session, &version, restore, Why::Restart { cause, began })
            .await
    }

    /// A restart that cannot bring the session back faults it for good.
    fn end_restart(&self, session: &Arc<Session>, fault: Fault) {
        tracing::warn!(session_id = %session.id, %fault, "session restart gave up");
        self.fault_for_good(session, fault, true);
    }
}

/// The fault of a session past its restart budget.
fn restart_limit(policy: &RestartPolicy, last: &Fault) -> Fault {
    Fault::crashed(
        FaultCode::RestartLimit,
        format!(
            "more than {} restarts within {}; the last fault: {last}",
            policy.max_restarts,
            humantime(policy.period)
        ),
    )
}

fn humantime(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

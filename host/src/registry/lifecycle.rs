//! Ending sessions: a client's close, a worker's fault, the sweeper's
//! expiries and the gateway's shutdown.

use std::sync::Arc;
use std::time::Duration;

use crate::backend::{CloseOutcome, Fault, FaultClass, FaultCode};
use crate::registry::backend_metrics::Kill;
use crate::registry::tenant::Caller;
use crate::registry::{CloseReason, GatewayError, Registry, Session, SessionState};

/// What `CloseSession` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseResult {
    /// The state after the close.
    pub final_state: SessionState,
    /// Whether someone else closed it first.
    pub already_closed: bool,
}

impl Registry {
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
                session.snapshots.clear();
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
                session.metrics.lifecycle.killed(Kill::CloseTimeout);
            }
        }
        session.events.close();
        session.snapshots.clear();
        session.transition(SessionState::Closed, self.clock.now());
        drop(session.take_held());
        session.metrics.lifecycle.closed(reason);
        tracing::info!(session_id = %session.id, reason = %reason, "session closed");
        CloseResult {
            final_state: session.state(),
            already_closed: false,
        }
    }

    /// A worker's fault: the session restarts if its backend's restart
    /// policy allows, else it faults for good. Returns whether this call
    /// did either (false: a close got there first).
    pub(super) fn fault_session(&self, session: &Arc<Session>, fault: Fault) -> bool {
        if session.state() == SessionState::Ready {
            let version = session.version();
            match self.restart_after(session, fault.clone()) {
                Ok(()) => {
                    // The fault counts (metrics, a canary's budget) even
                    // though the session lives on.
                    if let Some(v) = version {
                        self.version_faulted(&v);
                    }
                    self.count_fault(session, &fault);
                    return true;
                }
                Err(ending) => {
                    if ending.code == FaultCode::RestartLimit {
                        // The fault that found the budget spent is the cause.
                        session.note_cause(fault);
                    }
                    return self.fault_for_good(session, ending, false);
                }
            }
        }
        self.fault_for_good(session, fault, false)
    }

    fn count_fault(&self, session: &Session, fault: &Fault) {
        let counts = &session.metrics.lifecycle;
        counts.fault(fault.code);
        counts.killed(kill_of(fault));
    }

    /// Faults a session: stops its worker and releases its slot, once.
    /// Returns whether this call faulted it. `restarting`: a restart gives
    /// up (see `Session::fault`).
    pub(super) fn fault_for_good(
        &self,
        session: &Arc<Session>,
        fault: Fault,
        restarting: bool,
    ) -> bool {
        let Some(released) = session.fault(fault.clone(), self.clock.now(), restarting) else {
            return false;
        };
        let counts = &session.metrics.lifecycle;
        if let Some(worker) = released.worker {
            worker.kill();
            counts.killed(kill_of(&fault));
        }
        if let Some(held) = &released.held {
            self.version_faulted(held.version.version());
        }
        drop(released.held);
        counts.fault(fault.code);
        counts.closed(CloseReason::Fault);
        tracing::warn!(session_id = %session.id, fault = %fault, "session faulted");
        true
    }

    /// One sweep: closes sessions whose lease, idle timeout or lifetime ran
    /// out (concurrently, so one slow worker delays none of the others),
    /// keeps sessions with an attached stream alive, and forgets ended
    /// sessions past their retention. Returns how many it closed.
    pub async fn sweep(&self) -> usize {
        let now = self.clock.now();
        // Retired versions past their backend's retire_after close their
        // sessions; the others wait for theirs to end.
        let overdue = self.catalog().overdue(now);
        let mut expired = Vec::new();
        let live: Vec<Arc<Session>>;
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
                } else if !s.state().is_terminal() && overdue.iter().any(|v| s.runs_on(v)) {
                    expired.push((Arc::clone(s), CloseReason::BackendRetired));
                }
            }
            // Only sessions under an interval policy that ran a command
            // since their last snapshot are marked.
            live = sessions
                .values()
                .filter(|s| s.is_dirty())
                .cloned()
                .collect();
        }
        self.sweep_snapshots(&live);
        let n = expired.len();
        futures::future::join_all(
            expired
                .iter()
                .map(|(s, reason)| self.close_session(s, *reason)),
        )
        .await;
        self.unload_unused();
        n
    }

    /// The sessions not yet ended.
    pub(super) fn live_sessions(&self) -> Vec<Arc<Session>> {
        self.sessions()
            .values()
            .filter(|s| !s.state().is_terminal())
            .cloned()
            .collect()
    }

    /// Stops accepting sessions and closes every live one, killing what has
    /// not stopped within `timeout`.
    pub async fn shutdown(&self, timeout: Duration) {
        self.settings.phase.shut_down();
        let live = self.live_sessions();
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
                    s.metrics.lifecycle.killed(Kill::Shutdown);
                }
            }
        }
    }
}

/// How a faulted worker's kill is counted.
fn kill_of(fault: &Fault) -> Kill {
    match fault.class {
        FaultClass::Deadline => Kill::Deadline,
        FaultClass::Crashed => Kill::Fault,
    }
}

//! Replacing a session's worker: the one path a restart (by hand or after a
//! fault) and an upgrade take, and the ones to come (restore at start, a
//! move to another node).
//!
//! In order: snapshot the live worker (the caller, when it wants the state
//! now), start the next worker on the target version (restoring the
//! snapshot it is given), swap it in, close the old one, emit the event.
//! The next worker starts before anything changes, so a failed start
//! leaves the session as the caller left it; the old worker closes only
//! once the new one serves. A restart by hand closes its old worker
//! before calling this (a native worker releases what it holds first).

use std::sync::Arc;
use std::time::Instant;

use crate::backend::{Fault, Restore, SnapshotFailed, StartError, Worker};
use crate::registry::backend_metrics::Replaced;
use crate::registry::catalog::VersionPin;
use crate::registry::{Registry, Session, SessionState, Version};

/// The gateway's event that tells subscribers their session restarted.
pub const RESTARTED_EVENT: &str = "gatehouse.restarted";

/// The gateway's event that tells subscribers their session moved.
pub const UPGRADED_EVENT: &str = "gatehouse.upgraded";

/// Why a worker is replaced: which state the session is in meanwhile and
/// which event tells its subscribers.
pub(super) enum Why<'a> {
    /// A restart on the session's own version: it is RESTARTING, its old
    /// worker already taken out. `cause` is the fault behind it (none by
    /// hand), `began` when the session stopped serving.
    Restart {
        cause: Option<&'a Fault>,
        began: Instant,
    },
    /// An upgrade from `from`: the session stays READY and its old worker
    /// serves until the swap.
    Upgrade { from: &'a Arc<Version> },
}

/// Why a replacement did not happen.
pub(super) enum Failed {
    /// The session left the state the replacement needs (a close got in):
    /// nothing to do, the new worker was dropped, which stops it.
    Gone,
    /// The next worker did not start; the session is as it was.
    Start(StartError),
}

impl Failed {
    /// The fault a failed start leaves the session with (see
    /// `From<StartError> for Fault`); `None` when it went away.
    pub(super) fn into_fault(self) -> Option<Fault> {
        match self {
            Self::Gone => None,
            Self::Start(e) => Some(e.into()),
        }
    }
}

impl Registry {
    /// Replaces `session`'s worker with one of `to`, restoring `restore`;
    /// see the module docs. Returns the session's restart count (restarts)
    /// or 0 (upgrades). The caller holds the session's lifecycle lock.
    pub(super) async fn replace(
        &self,
        session: &Arc<Session>,
        to: &Arc<Version>,
        restore: Option<Restore>,
        why: Why<'_>,
    ) -> Result<u32, Failed> {
        let needs = match why {
            Why::Restart { .. } => SessionState::Restarting,
            Why::Upgrade { .. } => SessionState::Ready,
        };
        if session.state() != needs {
            return Err(Failed::Gone);
        }
        let restored = restore.is_some();
        // Start the next worker; nothing changed yet.
        let (worker, number) = match self.start_worker(session, to, restore).await {
            Ok(started) => started,
            Err(e) => {
                to.metrics.lifecycle.replaced(match why {
                    Why::Restart { .. } => Replaced::RestartFailed,
                    Why::Upgrade { .. } => Replaced::UpgradeFailed,
                });
                return Err(Failed::Start(e));
            }
        };
        // Swap it in.
        let (old, old_pin, restarts) = match why {
            Why::Restart { .. } => {
                let restarts = session
                    .finish_restart(worker, number, self.clock.now())
                    .ok_or(Failed::Gone)?;
                (None, None, restarts)
            }
            Why::Upgrade { .. } => {
                let (old, old_pin) = session.swap_version(worker, number, VersionPin::new(to));
                (old, old_pin, 0)
            }
        };
        // Close the old worker: its plugin's close runs; `close` kills it
        // past the grace. Its version stays pinned until it is gone.
        if let Some(old) = old {
            old.close(session.times.close_timeout).await;
        }
        drop(old_pin);
        to.metrics.lifecycle.replaced(match why {
            Why::Restart { .. } if restored => Replaced::Restored,
            Why::Restart { .. } => Replaced::Fresh,
            Why::Upgrade { .. } => Replaced::Upgraded,
        });
        let (event, payload) = match why {
            Why::Restart { cause, began } => {
                to.metrics
                    .restart_seconds
                    .observe(began.elapsed().as_secs_f64());
                tracing::info!(session_id = %session.id, restarts, from_snapshot = restored, "session restarted");
                let payload = serde_json::json!({
                    "restarts": restarts,
                    "from_snapshot": restored,
                    "fault": cause.map(|f| f.code.as_str()).unwrap_or(""),
                    "detail": cause.map(|f| f.detail.as_str()).unwrap_or(""),
                });
                (RESTARTED_EVENT, payload)
            }
            Why::Upgrade { from } => {
                tracing::info!(session_id = %session.id, from = %from.info.version, to = %to.info.version, "session upgraded");
                let payload = serde_json::json!({
                    "from": from.info.version,
                    "to": to.info.version,
                    "digest": to.info.digest,
                });
                (UPGRADED_EVENT, payload)
            }
        };
        let _ = session
            .events
            .emit(event.into(), payload.to_string().into_bytes());
        Ok(restarts)
    }

    /// Takes a snapshot of `worker`'s state now (after what it already
    /// queued), for the worker that replaces it.
    pub(super) async fn snapshot_live(
        &self,
        session: &Session,
        worker: &Arc<dyn Worker>,
        version: &Version,
    ) -> Result<(), SnapshotFailed> {
        worker
            .snapshot(
                &session.snapshots,
                &version.info.version,
                session.times.command_timeout,
            )
            .await
    }
}

//! Moving a live session to another loaded version of its backend.
//!
//! Snapshot the old worker, start a worker of the new version that
//! restores it, then swap: the session keeps its id, slot, lease and event
//! sequence and now runs (and is pinned to) the new version. The old
//! worker serves until the new one is ready; commands in flight finish on
//! it first and later ones wait (the session's gate), so none runs on a
//! state the snapshot missed. Any failure leaves the session on its old
//! version, untouched.

use std::sync::Arc;

use crate::backend::{Restore, SnapshotFailed, StartError};
use crate::registry::backend_metrics::Replaced;
use crate::registry::replace::{Failed, Why};
use crate::registry::tenant::Caller;
use crate::registry::{GatewayError, Registry, Session, SessionState, Version};

/// What a reload's `upgrade_sessions` did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UpgradeReport {
    /// Sessions moved.
    pub upgraded: usize,
    /// The session it stopped at, and why.
    pub stopped_at: Option<(String, String)>,
}

impl Registry {
    /// `UpgradeSession`: moves one of the caller's sessions to `version`
    /// of its backend ("1.4.0", "sha256:<prefix>", or empty for current).
    pub async fn upgrade(
        &self,
        caller: &Caller,
        id: &str,
        version: &str,
    ) -> Result<Arc<Session>, GatewayError> {
        let session = self.owned(caller, id)?;
        let name = session.backend().name.clone();
        let to = if version.is_empty() {
            self.catalog()
                .current(&name)
                .ok_or(GatewayError::BackendNotFound(name))?
        } else {
            let wanted = format!("{name}@{version}");
            self.catalog()
                .resolve(&wanted)
                .map_err(|_| GatewayError::BackendNotFound(wanted))?
                .1
        };
        self.upgrade_to(&session, &to).await?;
        Ok(session)
    }

    /// Moves `session` to `to`, or leaves it as it was.
    pub(super) async fn upgrade_to(
        &self,
        session: &Arc<Session>,
        to: &Arc<Version>,
    ) -> Result<(), GatewayError> {
        let _lifecycle = session.lifecycle.lock().await;
        let _gate = session.gate.write().await;
        let (worker, _) = session.ready_worker_numbered()?;
        let from = session
            .version()
            .ok_or_else(|| session.not_ready(SessionState::Closed))?;
        if Arc::ptr_eq(&from, to) {
            return Ok(());
        }
        let why = Why::Upgrade { from: &from };
        // 1. The old worker's state, now (after what it already queued).
        if let Err(e) = self.snapshot_live(session, &worker, &from).await {
            to.metrics.lifecycle.replaced(Replaced::UpgradeFailed);
            return Err(match e {
                SnapshotFailed::Fault(fault) => {
                    // The worker died taking it: that is the session's fault.
                    self.fault_session(session, fault.clone());
                    GatewayError::Faulted(fault)
                }
                other => GatewayError::UpgradeRefused(other.to_string()),
            });
        }
        let Some(snapshot) = session.snapshots.latest() else {
            to.metrics.lifecycle.replaced(Replaced::UpgradeFailed);
            return Err(GatewayError::UpgradeRefused("no snapshot was kept".into()));
        };
        // 2. A worker of the new version that restores it, swapped in; the
        //    old one closes.
        match self
            .replace(session, to, Some(Restore { snapshot }), why)
            .await
        {
            Ok(_) => Ok(()),
            Err(Failed::Gone) => Err(session.not_ready(session.state())),
            Err(Failed::Start(e)) => {
                tracing::warn!(session_id = %session.id, from = %from.info.version, to = %to.info.version, "upgrade failed; the session stays on its version: {e}");
                // Not a fault: the session stays on its version, untouched.
                Err(match e {
                    StartError::RestoreFailed(m) => GatewayError::UpgradeRefused(format!(
                        "version {} refused the state of version {}: {m}",
                        to.info.version, from.info.version
                    )),
                    other => GatewayError::StartFailed(other),
                })
            }
        }
    }

    /// `[backends.rollout] upgrade_sessions`: moves the live sessions of
    /// `name`'s other versions to its current one, one at a time, oldest
    /// first, stopping at the first failure.
    pub async fn upgrade_sessions(&self, name: &str) -> UpgradeReport {
        let mut report = UpgradeReport::default();
        let Some(current) = self.catalog().current(name) else {
            return report;
        };
        let sessions: Vec<Arc<Session>> = {
            let mut v: Vec<Arc<Session>> = self
                .sessions()
                .values()
                .filter(|s| {
                    s.state() == SessionState::Ready
                        && s.version()
                            .is_some_and(|v| v.info.name == name && !Arc::ptr_eq(&v, &current))
                })
                .cloned()
                .collect();
            v.sort_by_key(|s| s.opened_at);
            v
        };
        for session in sessions {
            match self.upgrade_to(&session, &current).await {
                Ok(()) => report.upgraded += 1,
                Err(e) => {
                    tracing::warn!(backend = name, session_id = %session.id, upgraded = report.upgraded, "upgrade_sessions stopped at the first failure: {e}");
                    report.stopped_at = Some((session.id.to_string(), e.to_string()));
                    break;
                }
            }
        }
        report
    }

    /// Starts `upgrade_sessions` in the background for each of `names`
    /// whose current version asks for it (`[backends.rollout]
    /// upgrade_sessions`): after a reload replaced them, or a promotion
    /// made a canary current. A rollout with a canary waits for its
    /// promotion.
    pub fn upgrade_in_background(&self, names: &[String], promoted: bool) {
        let Some(this) = self.this.upgrade() else {
            return;
        };
        for name in names {
            let Some(current) = self.catalog().current(name) else {
                continue;
            };
            let recovery = current.entry.recovery;
            if !recovery.upgrade_sessions || (current.entry.rollout.is_some() && !promoted) {
                continue;
            }
            let (this, name) = (Arc::clone(&this), name.clone());
            tokio::spawn(async move {
                let report = this.upgrade_sessions(&name).await;
                tracing::info!(backend = %name, upgraded = report.upgraded, stopped = report.stopped_at.is_some(), "live sessions moved to the current version");
            });
        }
    }
}

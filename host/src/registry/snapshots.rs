//! When stateful sessions are snapshotted (`[backends.snapshot] every`).
//!
//! The worker's own task takes each snapshot, between the requests it
//! serves, so a snapshot never runs concurrently with a command and costs
//! the client no wait: "command" queues one behind every successful invoke
//! (the reply is already on its way), an interval asks from the sweeper.

use std::sync::Arc;

use crate::backend::Worker;
use crate::config::SnapshotEvery;
use crate::registry::{Registry, Session};

impl Registry {
    /// After a successful invoke on a stateful worker: queue a snapshot
    /// under the "command" policy, or mark the session for the sweeper.
    pub(super) fn after_command(&self, session: &Session, worker: &dyn Worker) {
        let Some(version) = session.version() else {
            return;
        };
        match version.entry.recovery.snapshot.every {
            SnapshotEvery::Command => worker.queue_snapshot(
                &session.snapshots,
                &version.info.version,
                session.times.command_timeout,
            ),
            SnapshotEvery::Interval(_) => session.mark_dirty(),
            SnapshotEvery::Off => {}
        }
    }

    /// The sweeper's part: sessions under an interval policy that ran a
    /// command since their last snapshot and are due get one queued.
    pub(super) fn sweep_snapshots(&self, sessions: &[Arc<Session>]) {
        let now = self.clock.now();
        for session in sessions {
            let Some(version) = session.version() else {
                continue;
            };
            let SnapshotEvery::Interval(every) = version.entry.recovery.snapshot.every else {
                continue;
            };
            if !session.snapshot_due(every, now) {
                continue;
            }
            if let Ok(worker) = session.ready_worker() {
                worker.queue_snapshot(
                    &session.snapshots,
                    &version.info.version,
                    session.times.command_timeout,
                );
            }
        }
    }
}

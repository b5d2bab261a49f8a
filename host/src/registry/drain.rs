//! Draining by hand (`gatehouse drain`): refuse new opens, let the live
//! sessions go on until they end or the drain's time is up, then close
//! the rest as a shutdown would.
//!
//! The health side (NOT_SERVING, so a proxy sends opens elsewhere) is the
//! server's; this is only the registry's part.

use std::sync::Arc;
use std::time::Duration;

use crate::registry::{Registry, Session};

/// Where a drain hands a session that is still live when its time is up,
/// before it would be closed. The point for moving sessions to another
/// node once session snapshots can travel (the restart issue: a
/// snapshot from `backend::snapshot` restored on a node the proxy then
/// routes the session's id to). Until then [`KeepUntilEnd`] moves nothing
/// and the session is closed with `gateway-shutdown`.
#[async_trait::async_trait]
pub trait SessionMover: Send + Sync {
    /// Moves `session` off this node; `true` when it now lives elsewhere
    /// and this node has let go of it (it is no longer in the registry,
    /// so the closing that follows does not find it).
    async fn move_session(&self, session: &Arc<Session>) -> bool;
}

/// Moves nothing: drained sessions end here.
pub struct KeepUntilEnd;

#[async_trait::async_trait]
impl SessionMover for KeepUntilEnd {
    async fn move_session(&self, _session: &Arc<Session>) -> bool {
        false
    }
}

impl Registry {
    /// Refuses opens and calls from now on (`Draining`); `false` when a
    /// drain (or a shutdown) had begun already.
    pub fn begin_drain(&self) -> bool {
        self.settings.phase.drain()
    }

    /// Sessions not yet ended.
    pub fn live_count(&self) -> usize {
        self.live_sessions().len()
    }

    /// Waits for the live sessions to end, for at most `timeout`; then
    /// offers each one left to `mover` and closes those it did not move
    /// (`gateway-shutdown`), killing workers that take longer than
    /// `close_within` to close.
    pub async fn drain(&self, timeout: Duration, close_within: Duration, mover: &dyn SessionMover) {
        // Every session gives its slot back when it ends, after it left
        // the live states: each slot's drop wakes this to count again.
        let until = tokio::time::Instant::now() + timeout;
        loop {
            let freed = self.slots.freed();
            if self.live_count() == 0 {
                break;
            }
            if tokio::time::timeout_at(until, freed).await.is_err() {
                break;
            }
        }
        let left = self.live_sessions();
        let mut moved = 0;
        for session in &left {
            if mover.move_session(session).await {
                moved += 1;
            }
        }
        tracing::info!(
            left = left.len(),
            moved,
            "drain: time is up; closing the sessions left"
        );
        self.shutdown(close_within).await;
    }
}

//! State snapshots in a worker's conversation: a Snapshot frame between
//! commands, answered by a State frame within the command timeout.

use std::time::Instant;

use super::{Conversation, Phase, Step, violation};
use crate::backend::handle::SnapshotRequest;
use crate::backend::native::protocol::pb;

impl Conversation {
    /// Asks the worker for its state. Only sent between commands: the
    /// invokes channel, which carries snapshots too, is read only then.
    pub(super) async fn on_snapshot(&mut self, request: SnapshotRequest) -> Step {
        let clock = match request.budget.start(Instant::now()) {
            Ok(clock) => clock,
            Err(fault) => {
                request.fail(&fault);
                return Ok(());
            }
        };
        self.next_id += 1;
        let id = self.next_id;
        self.phase = Phase::Snapshotting {
            request: Box::new(request),
            id,
            clock,
        };
        self.send(pb::to_worker::Msg::Snapshot(pb::Snapshot { id }))
            .await
    }

    /// The worker's answer: stored (or refused over the cap), and the
    /// worker is between commands again.
    pub(super) fn on_state(&mut self, state: pb::State) -> Step {
        match &self.phase {
            Phase::Snapshotting { id, .. } if *id == state.id => {}
            Phase::Closing { .. } => return Ok(()),
            _ => {
                return Err(violation(&format!(
                    "a state for unknown snapshot {}",
                    state.id
                )));
            }
        }
        let Phase::Snapshotting { request, .. } =
            std::mem::replace(&mut self.phase, Phase::Ready(None))
        else {
            unreachable!("checked above");
        };
        request.store(state.state);
        Ok(())
    }
}

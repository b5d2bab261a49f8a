//! The worker of a one-shot call: the instance runs on the caller's task.
//!
//! A session's instance lives on a task of its own because it serves
//! callers on many tasks and fires timer ticks between them. A one-shot
//! call has one caller, one command and then a close, and no tick that
//! could ever fire, so the task and its two channel hops per request only
//! cost time: here the command and the close run where the caller awaits
//! them, and the instance is dropped (back to the pool) before the close
//! returns. Commands and closes run through the same [`Instance`] methods
//! as a session task's, so limits, deadlines and fault codes are the same.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::Mutex;

use super::worker::Instance;
use crate::backend::budget::Budget;
use crate::backend::{CloseOutcome, Command, Fault, FaultCode, Outcome, Worker};

/// How much longer than the grace period a close may run before it is
/// dropped: the epoch deadline enforces the grace; this only covers a guest
/// that cannot be interrupted (as the worker handle's own slack does).
const CLOSE_SLACK: Duration = Duration::from_millis(50);

/// An instance driven directly by its caller. `None` once it faulted,
/// closed or was killed.
pub(super) struct InlineWorker {
    instance: Mutex<Option<Instance>>,
}

impl InlineWorker {
    pub(super) fn new(instance: Instance) -> Self {
        Self {
            instance: Mutex::new(Some(instance)),
        }
    }
}

fn stopped() -> Fault {
    Fault::crashed(FaultCode::WorkerStopped, "the call's instance has stopped")
}

#[async_trait]
impl Worker for InlineWorker {
    async fn invoke(
        &self,
        commands: Vec<Command>,
        timeout: Duration,
        deadline: Option<Instant>,
    ) -> Result<Vec<Outcome>, Fault> {
        let mut slot = self.instance.lock().await;
        let instance = slot.as_mut().ok_or_else(stopped)?;
        let ran = instance
            .invoke(commands, Budget::new(timeout, deadline))
            .await;
        if ran.is_err() {
            // A fault ends the instance, as it ends a session's task.
            *slot = None;
        }
        ran
    }

    async fn close(&self, grace: Duration) -> CloseOutcome {
        let mut slot = self.instance.lock().await;
        let Some(mut instance) = slot.take() else {
            return CloseOutcome::Graceful;
        };
        let outcome = tokio::time::timeout(grace + CLOSE_SLACK, instance.close(grace))
            .await
            .unwrap_or(CloseOutcome::Killed);
        // Back to the pool before the caller hears, so the call's slot is
        // never free while its instance still holds pool room.
        drop(instance);
        outcome
    }

    fn kill(&self) {
        // Nobody else can hold the lock once the caller's future is gone;
        // a kill while a command runs leaves the instance to that command,
        // whose own deadline ends it.
        if let Ok(mut slot) = self.instance.try_lock() {
            slot.take();
        }
    }

    fn pid(&self) -> Option<u32> {
        None
    }
}

//! The one handle the registry holds for a running worker, wasm or native.
//!
//! A worker is a task that owns the instance or the process's socket and
//! serves requests in order. Everything between the registry and that task
//! is written here once: the request channels with their one-shot replies,
//! the recorded fault that answers callers once the task is gone, close
//! within a grace period, kill, and never leaking the task (or the process)
//! when the handle is dropped. The task side sees an [`Inbox`].

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::budget::Budget;
use super::snapshot::{SnapshotRefused, SnapshotStore, StateSnapshot};
use super::{CloseOutcome, Command, Fault, FaultCode, Outcome, Worker};

/// Requests queued for a worker's task.
const QUEUE: usize = 64;
/// Close requests queued: one is served, later ones find the task gone.
const CLOSE_QUEUE: usize = 4;
/// How much longer than the grace period a close waits for the task's own
/// answer before killing: the task enforces the grace itself, this only
/// covers a task that cannot.
const CLOSE_SLACK: Duration = Duration::from_millis(50);

/// One invoke: commands run in order, each within the budget.
pub struct InvokeRequest {
    /// The commands, in order.
    pub commands: Vec<Command>,
    /// Each command's time limit and the client's deadline.
    pub budget: Budget,
    /// Where the outcomes, or the fault that stopped the worker, go.
    pub reply: oneshot::Sender<Result<Vec<Outcome>, Fault>>,
}

/// A state snapshot of a stateful worker, taken between commands.
pub struct SnapshotRequest {
    /// Where the snapshot goes.
    pub into: Arc<SnapshotStore>,
    /// The backend version the worker runs, recorded with the snapshot.
    pub version: String,
    /// The time limit (the session's command timeout).
    pub budget: Budget,
    /// Told when the snapshot is stored (or was refused), for a caller that
    /// waits; `None` for one queued after a command.
    pub done: Option<oneshot::Sender<Result<(), SnapshotFailed>>>,
}

impl SnapshotRequest {
    /// Stores the plugin's `bytes` and tells the waiting caller.
    pub fn store(mut self, bytes: Vec<u8>) {
        let stored = self.into.put(StateSnapshot {
            bytes,
            version: std::mem::take(&mut self.version),
            taken_at: Instant::now(),
        });
        match stored {
            Ok(()) => {
                if let Some(done) = self.done {
                    let _ = done.send(Ok(()));
                }
            }
            // Counted and logged by the store.
            Err(refused) => self.refuse(refused),
        }
    }

    /// Tells the waiting caller the snapshot was not kept (the worker knew
    /// it was over the cap before copying it out).
    pub fn refuse(self, refused: SnapshotRefused) {
        if let Some(done) = self.done {
            let _ = done.send(Err(SnapshotFailed::Refused(refused)));
        }
    }

    /// Tells the waiting caller the worker faulted while snapshotting.
    pub fn fail(self, fault: &Fault) {
        if let Some(done) = self.done {
            let _ = done.send(Err(SnapshotFailed::Fault(fault.clone())));
        }
    }
}

/// Why a snapshot a caller waited for is not stored.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SnapshotFailed {
    /// The worker faulted (and is gone).
    #[error("{0}")]
    Fault(Fault),
    /// The snapshot was taken but not kept.
    #[error("{0}")]
    Refused(SnapshotRefused),
    /// The worker's plugin keeps no state.
    #[error("the backend keeps no state (it does not export gatehouse:backend/state)")]
    Stateless,
}

/// What a worker's task is asked to do, in order.
pub enum Request {
    /// Run commands.
    Invoke(InvokeRequest),
    /// Take a snapshot.
    Snapshot(SnapshotRequest),
}

/// A graceful close: run the plugin's close (or ask the process to exit)
/// within `grace`.
pub struct CloseRequest {
    /// How long the close may take.
    pub grace: Duration,
    /// How it ended.
    pub reply: oneshot::Sender<CloseOutcome>,
}

/// An OS process behind a worker (native workers), so the handle can report
/// its pid and kill it.
pub trait Process: Send + Sync {
    /// The process id.
    fn pid(&self) -> u32;
    /// Kills the process and everything it started. Idempotent.
    fn kill(&self);
    /// Whether the process is still running.
    fn is_running(&self) -> bool;
    /// How many processes it and its descendants are, where the gateway
    /// counts them (a cgroup per native worker).
    fn processes(&self) -> Option<u64> {
        None
    }
}

/// The task's side of a worker: the requests to serve and the place to
/// record the fault that ended it.
pub struct Inbox {
    /// Invokes and snapshots, in the order the registry sent them.
    pub invokes: mpsc::Receiver<Request>,
    /// Closes. On a channel of their own so a task that can listen while a
    /// command runs (a native worker) hears a close at once.
    pub closes: mpsc::Receiver<CloseRequest>,
    fault: Arc<OnceLock<Fault>>,
}

impl Inbox {
    /// Records why the worker stopped and refuses further invokes: callers
    /// already queued, and every later one, get this fault.
    pub fn fail(&mut self, fault: &Fault) {
        let _ = self.fault.set(fault.clone());
        self.invokes.close();
    }

    /// Refuses further invokes without a fault (a close has begun).
    pub fn stop_accepting(&mut self) {
        self.invokes.close();
    }
}

/// The handle for one running worker. Dropping it ends the task and kills
/// the process, if there is one.
pub struct WorkerHandle {
    invokes: mpsc::Sender<Request>,
    closes: mpsc::Sender<CloseRequest>,
    fault: Arc<OnceLock<Fault>>,
    task: JoinHandle<()>,
    process: Option<Arc<dyn Process>>,
    stateful: bool,
}

impl WorkerHandle {
    /// Spawns the worker's task, `run`, on its inbox. `process` is the OS
    /// process behind it, for native workers.
    pub fn spawn<F, Fut>(process: Option<Arc<dyn Process>>, run: F) -> Self
    where
        F: FnOnce(Inbox) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (invokes, invokes_rx) = mpsc::channel(QUEUE);
        let (closes, closes_rx) = mpsc::channel(CLOSE_QUEUE);
        let fault = Arc::new(OnceLock::new());
        let inbox = Inbox {
            invokes: invokes_rx,
            closes: closes_rx,
            fault: Arc::clone(&fault),
        };
        let task = tokio::spawn(run(inbox));
        Self {
            invokes,
            closes,
            fault,
            task,
            process,
            stateful: false,
        }
    }

    /// Marks the worker's plugin as one that keeps state (it serves
    /// [`Request::Snapshot`]).
    pub fn with_state(mut self, stateful: bool) -> Self {
        self.stateful = stateful;
        self
    }

    /// Whether the worker can still serve: no fault, the task and the
    /// process running, invokes accepted. For the warm pool.
    pub fn is_alive(&self) -> bool {
        self.fault.get().is_none()
            && !self.task.is_finished()
            && !self.invokes.is_closed()
            && self.process.as_ref().is_none_or(|p| p.is_running())
    }

    /// The recorded fault, or a generic one when the task ended without
    /// recording any.
    pub fn gone(&self) -> Fault {
        self.fault.get().cloned().unwrap_or_else(|| {
            Fault::crashed(FaultCode::WorkerStopped, "the session's worker has stopped")
        })
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        // Never leak an instance or a process.
        if let Some(p) = &self.process {
            p.kill();
        }
        self.task.abort();
    }
}

#[async_trait]
impl Worker for WorkerHandle {
    async fn invoke(
        &self,
        commands: Vec<Command>,
        timeout: Duration,
        deadline: Option<Instant>,
    ) -> Result<Vec<Outcome>, Fault> {
        let (reply, rx) = oneshot::channel();
        let request = InvokeRequest {
            commands,
            budget: Budget::new(timeout, deadline),
            reply,
        };
        self.invokes
            .send(Request::Invoke(request))
            .await
            .map_err(|_| self.gone())?;
        rx.await.map_err(|_| self.gone())?
    }

    fn stateful(&self) -> bool {
        self.stateful
    }

    fn queue_snapshot(&self, into: &Arc<SnapshotStore>, version: &str, timeout: Duration) {
        if !self.stateful {
            return;
        }
        // Never waits: with the queue full, the commands queued take their
        // own snapshots after them.
        let _ = self.invokes.try_send(Request::Snapshot(SnapshotRequest {
            into: Arc::clone(into),
            version: version.to_string(),
            budget: Budget::new(timeout, None),
            done: None,
        }));
    }

    async fn snapshot(
        &self,
        into: &Arc<SnapshotStore>,
        version: &str,
        timeout: Duration,
    ) -> Result<(), SnapshotFailed> {
        if !self.stateful {
            return Err(SnapshotFailed::Stateless);
        }
        let (done, rx) = oneshot::channel();
        let request = SnapshotRequest {
            into: Arc::clone(into),
            version: version.to_string(),
            budget: Budget::new(timeout, None),
            done: Some(done),
        };
        if self.invokes.send(Request::Snapshot(request)).await.is_err() {
            return Err(SnapshotFailed::Fault(self.gone()));
        }
        rx.await.map_err(|_| SnapshotFailed::Fault(self.gone()))?
    }

    async fn close(&self, grace: Duration) -> CloseOutcome {
        let (reply, rx) = oneshot::channel();
        if self
            .closes
            .send(CloseRequest { grace, reply })
            .await
            .is_err()
        {
            // The task has already stopped (faulted): nothing is left to
            // close but a process that may still be exiting.
            if let Some(p) = &self.process {
                p.kill();
            }
            return CloseOutcome::Graceful;
        }
        match tokio::time::timeout(grace + CLOSE_SLACK, rx).await {
            Ok(Ok(outcome)) => outcome,
            // The task ended without answering: it faulted meanwhile.
            Ok(Err(_)) => CloseOutcome::Graceful,
            Err(_) => {
                self.kill();
                CloseOutcome::Killed
            }
        }
    }

    fn kill(&self) {
        match &self.process {
            // The task sees the exit and finishes by itself.
            Some(p) => p.kill(),
            None => self.task.abort(),
        }
    }

    fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|p| p.pid())
    }

    fn processes(&self) -> Option<u64> {
        self.process.as_ref().and_then(|p| p.processes())
    }
}

//! A handshaken worker process that serves no session yet: fresh from the
//! launcher, or waiting in the warm pool. Opening a session on it turns it
//! into the shared [`WorkerHandle`] the registry holds.

use std::sync::Arc;

use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::process::Proc;
use super::session::{Attach, Conversation, Frames, OpenRequest, Timing};
use crate::backend::StartError;
use crate::backend::handle::{Process, WorkerHandle};

/// An idle worker. Dropping it kills the process.
pub struct IdleWorker {
    proc: Arc<Proc>,
    handle: WorkerHandle,
    opens: mpsc::Sender<OpenRequest>,
}

impl IdleWorker {
    /// Starts the conversation with a worker that passed its handshake.
    /// `frames` carries what the worker's reader task decoded.
    pub(super) fn spawn(
        proc: Arc<Proc>,
        writer: OwnedWriteHalf,
        frames: Frames,
        timing: Timing,
        backend: &str,
        stateful: bool,
    ) -> Self {
        let (opens, opens_rx) = mpsc::channel(1);
        let span = tracing::info_span!("worker", backend = %backend, pid = proc.pid);
        let process: Arc<dyn Process> = Arc::clone(&proc) as Arc<dyn Process>;
        let kept = Arc::clone(&proc);
        let handle = WorkerHandle::spawn(Some(process), move |inbox| {
            Conversation::new(proc, writer, frames, inbox, opens_rx, timing)
                .run()
                .instrument(span)
        })
        .with_state(stateful);
        Self {
            proc: kept,
            handle,
            opens,
        }
    }

    /// Lowers the memory limit of the worker's cell (a tenant's smaller
    /// `memory_limit`).
    pub(super) fn lower_memory_limit(&self, limit: usize) -> std::io::Result<()> {
        self.proc.lower_memory_limit(limit)
    }

    /// The worker's pid.
    pub(super) fn pid(&self) -> Option<u32> {
        use crate::backend::Worker;
        self.handle.pid()
    }

    /// Whether the worker said in its hello that it keeps state.
    pub(super) fn stateful(&self) -> bool {
        use crate::backend::Worker;
        self.handle.stateful()
    }

    /// Whether the worker is still usable (for the warm pool).
    pub(super) fn is_alive(&self) -> bool {
        self.handle.is_alive()
    }

    /// Opens the session on this worker. On an error the worker is gone.
    pub(super) async fn open(self, attach: Attach) -> Result<WorkerHandle, StartError> {
        let (reply, rx) = oneshot::channel();
        let request = OpenRequest {
            attach: Box::new(attach),
            reply,
        };
        if self.opens.send(request).await.is_err() {
            return Err(StartError::Failed(self.handle.gone()));
        }
        match rx.await {
            Ok(Ok(())) => Ok(self.handle),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(StartError::Failed(self.handle.gone())),
        }
    }
}

//! The backend abstraction: a [`Backend`] starts one [`Worker`] per session.
//!
//! The registry holds `Box<dyn Worker>` and never knows whether a session
//! runs in a wasm instance or in a native process.

pub mod budget;
pub mod cpu;
pub mod event_sink;
pub mod fault;
pub mod guest_log;
pub mod handle;
pub mod native;
pub mod snapshot;
pub mod wasm;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::config::{BackendKind, SessionPolicy};
use crate::events::EventLog;
use crate::memory_budget::MemoryAccount;

pub use self::fault::{Fault, FaultClass, FaultCode, FaultReport, FaultReporter, TrapCode};
pub use self::handle::SnapshotFailed;
pub use self::snapshot::{RefusalCounters, SnapshotRefused, SnapshotStore, StateSnapshot};

/// What `ListBackends` shows about a backend.
#[derive(Debug, Clone)]
pub struct BackendInfo {
    /// The name clients open sessions on.
    pub name: String,
    /// How it runs.
    pub kind: BackendKind,
    /// The configured version.
    pub version: String,
    /// `sha256:<hex>` of the component (wasm) or command line (native).
    pub digest: String,
    /// For people.
    pub description: String,
}

/// One client command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Command name.
    pub name: String,
    /// Command payload.
    pub payload: Vec<u8>,
}

/// A command the backend itself refused or failed; the session stays usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    /// No command of that name.
    UnknownCommand(String),
    /// The payload could not be understood.
    InvalidPayload(String),
    /// The command failed.
    Failed(String),
}

/// What one command produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The reply payload.
    Reply(Vec<u8>),
    /// The backend's own error.
    Error(CommandError),
    /// The reply was larger than the backend allows; it was discarded.
    ReplyTooLarge {
        /// The reply's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
}

impl Outcome {
    /// A reply payload, or [`Outcome::ReplyTooLarge`] when it is over
    /// `limit` bytes.
    pub fn reply(payload: Vec<u8>, limit: usize) -> Self {
        if payload.len() > limit {
            Outcome::ReplyTooLarge {
                size: payload.len(),
                limit,
            }
        } else {
            Outcome::Reply(payload)
        }
    }
}

/// How a close ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseOutcome {
    /// The worker finished its close within the grace period.
    Graceful,
    /// The worker outran the grace period and was stopped by force.
    Killed,
}

/// Why a worker did not start.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StartError {
    /// The plugin's `open` returned an error.
    #[error("the backend refused the session: {0}")]
    Refused(String),
    /// The worker failed while starting.
    #[error("the worker failed to start: {0}")]
    Failed(Fault),
    /// The runtime has no room for another instance, or the session's
    /// initial memory does not fit the memory budget; a retry may succeed.
    #[error("no capacity for another worker: {0}")]
    Exhausted(Fault),
    /// The plugin's `restore` refused the snapshot it was given.
    #[error("the backend refused to restore the session's state: {0}")]
    RestoreFailed(String),
}

impl From<StartError> for Fault {
    /// The fault a worker that did not start leaves its session with (an
    /// open rolled back, a restart given up): the one place this mapping
    /// is made.
    fn from(error: StartError) -> Self {
        match error {
            StartError::RestoreFailed(m) => Fault::crashed(
                FaultCode::RestoreFailed,
                format!("the plugin refused the session's snapshot: {m}"),
            ),
            StartError::Refused(m) => Fault::crashed(FaultCode::OpenRefused, m),
            StartError::Failed(f) | StartError::Exhausted(f) => f,
        }
    }
}

/// A snapshot for a new worker to restore after its `open`.
#[derive(Debug, Clone)]
pub struct Restore {
    /// The snapshot.
    pub snapshot: Arc<StateSnapshot>,
}

/// How far a worker's start-up has got. The registry shows each phase as
/// the session's wire state; a backend cannot report a session READY or
/// CLOSED, only the steps before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPhase {
    /// Creating the instance, or starting the process.
    StartingWorker,
    /// The process runs; waiting for its first frame (native).
    WaitingForWorker,
    /// Checking the process's hello (native).
    Handshaking,
    /// The plugin's or worker's `open` runs.
    InitializingWorker,
}

/// Where a backend reports its start-up phases.
pub type Progress<'a> = &'a (dyn Fn(StartPhase) + Send + Sync);

/// Everything a backend needs to start one session's worker.
pub struct StartRequest {
    /// The session id.
    pub session_id: Arc<str>,
    /// The owning tenant.
    pub tenant: String,
    /// The backend's name.
    pub backend: String,
    /// The request's config merged over the backend's.
    pub config: BTreeMap<String, String>,
    /// Where the worker's events go.
    pub events: Arc<EventLog>,
    /// The session's limits.
    pub policy: SessionPolicy,
    /// Deadline for start-up, including the plugin's `open`.
    pub open_timeout: Duration,
    /// Where out-of-band faults go.
    pub faults: FaultReporter,
    /// What the session's memory is charged to (the gateway's budget and
    /// the tenant's `max_memory`).
    pub memory: MemoryAccount,
    /// What the session's CPU is charged to, and where its wasm guest
    /// takes its turns.
    pub cpu: cpu::CpuAccount,
    /// State to restore right after `open` (a restart or an upgrade); a
    /// worker whose plugin keeps no state ignores it.
    pub restore: Option<Restore>,
}

/// A running worker serving one session.
#[async_trait]
pub trait Worker: Send + Sync {
    /// Runs `commands` in order. Each command gets `timeout` from when it
    /// starts, and none runs past `deadline` (the client's gRPC deadline).
    /// A fault stops the worker and is returned instead of any results.
    async fn invoke(
        &self,
        commands: Vec<Command>,
        timeout: Duration,
        deadline: Option<Instant>,
    ) -> Result<Vec<Outcome>, Fault>;

    /// Closes gracefully (the plugin's `close`), killing the worker if that
    /// takes longer than `grace`. Safe to call on a faulted worker.
    async fn close(&self, grace: Duration) -> CloseOutcome;

    /// Stops the worker at once.
    fn kill(&self);

    /// The worker's process id, for native workers.
    fn pid(&self) -> Option<u32>;

    /// How many processes the worker and its descendants are, where that
    /// is counted (native workers with a cgroup each).
    fn processes(&self) -> Option<u64> {
        None
    }

    /// Whether the worker's plugin keeps state across instances (it exports
    /// `gatehouse:backend/state`, or its native worker said so).
    fn stateful(&self) -> bool {
        false
    }

    /// Queues a snapshot into `into` behind the requests already queued,
    /// without waiting for it. Nothing for a stateless worker.
    fn queue_snapshot(&self, into: &Arc<SnapshotStore>, version: &str, timeout: Duration) {
        let _ = (into, version, timeout);
    }

    /// Takes a snapshot into `into` behind the requests already queued and
    /// waits until it is stored.
    async fn snapshot(
        &self,
        into: &Arc<SnapshotStore>,
        version: &str,
        timeout: Duration,
    ) -> Result<(), SnapshotFailed> {
        let _ = (into, version, timeout);
        Err(SnapshotFailed::Stateless)
    }
}

/// A loaded backend that can start workers.
#[async_trait]
pub trait Backend: Send + Sync {
    /// What `ListBackends` shows.
    fn info(&self) -> &BackendInfo;

    /// Starts a worker for one session, reporting start-up states through
    /// `progress`.
    async fn start(
        &self,
        request: StartRequest,
        progress: Progress<'_>,
    ) -> Result<Box<dyn Worker>, StartError>;

    /// Starts a worker for a one-shot call: one command, then a close, with
    /// no ticks to serve and no second caller. A backend that can run such
    /// a worker on its caller's task (wasm) does; by default it is the
    /// worker a session gets.
    async fn start_one_shot(
        &self,
        request: StartRequest,
        progress: Progress<'_>,
    ) -> Result<Box<dyn Worker>, StartError> {
        self.start(request, progress).await
    }

    /// A reload replaced or removed this backend: it keeps serving its
    /// sessions (and pinned opens) but should give back what it holds for
    /// opens that will now go elsewhere, such as a warm pool.
    fn retire(&self) {}
}

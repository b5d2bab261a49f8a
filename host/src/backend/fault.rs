//! Why a worker stopped: a [`Fault`] with its class (which decides the
//! gRPC status) and its typed [`FaultCode`], whose [`as_str`](FaultCode::as_str)
//! is the stable string clients see as `final_fault` and operators as the
//! `code` label of `gatehouse_faults_total`.

use std::fmt;
use std::sync::Arc;

use tokio::sync::mpsc;

/// A fault's stable code. The strings are part of the wire contract: never
/// change one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultCode {
    /// A command or call ran past its deadline.
    Deadline,
    /// Linear memory would grow past the session's `memory_limit`, or a
    /// native worker ran out of its memory limit.
    MemoryLimit,
    /// A session's memory (wasm memory or tables, held events) did not fit
    /// the gateway's `server.memory_budget` or its tenant's `max_memory`.
    MemoryBudget,
    /// A table would grow past its limit.
    TableLimit,
    /// A native worker tried to run more than `max_processes` processes.
    ProcessLimit,
    /// The event queue was full under the `fault` overflow policy.
    EventOverflow,
    /// An event payload was over `max_event_bytes`.
    EventTooLarge,
    /// More timer ticks were scheduled than `max_pending_ticks`.
    TooManyTicks,
    /// The wasm call stack overflowed.
    StackOverflow,
    /// The guest trapped.
    Trap(TrapCode),
    /// The instance pool has no room for another instance.
    PoolExhausted,
    /// No room for another worker (the backend said so).
    NoCapacity,
    /// A granted directory could not be opened for the session.
    PreopenFailed,
    /// The client went away while the session was opening.
    OpenAbandoned,
    /// The plugin's or worker's `open` refused the session.
    OpenRefused,
    /// The session could not be started for another reason.
    StartFailed,
    /// The worker stopped without saying why.
    WorkerStopped,
    /// The worker process exited.
    WorkerExited,
    /// The worker process reported a fault of its own.
    WorkerFault,
    /// The worker stopped answering or reading.
    HeartbeatTimeout,
    /// The worker did not finish starting in time.
    StartupTimeout,
    /// The worker process could not be started.
    SpawnFailed,
    /// The worker broke the protocol.
    ProtocolViolation,
    /// The worker's hello carried the wrong nonce.
    BadNonce,
    /// The worker speaks another protocol version.
    BadVersion,
    /// A frame was over the frame cap.
    FrameTooLarge,
    /// A gateway bug.
    Internal,
    /// More restarts than `[backends.restart] max_restarts` within its
    /// period: the session stays FAULTED.
    RestartLimit,
    /// The plugin's `restore` refused the session's snapshot on a restart.
    RestoreFailed,
}

/// Which trap a guest hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrapCode {
    /// `unreachable` (a Rust panic, an abort).
    Unreachable,
    /// A load or store outside linear memory.
    MemoryOutOfBounds,
    /// Division by zero.
    IntegerDivisionByZero,
    /// A call through a null table entry.
    IndirectCallToNull,
    /// A call through a table entry of another signature.
    BadSignature,
    /// An integer overflow in a checked operation.
    IntegerOverflow,
    /// A float that does not fit the integer it converts to.
    BadConversionToInteger,
    /// A table access out of bounds.
    TableOutOfBounds,
    /// A misaligned atomic access.
    HeapMisaligned,
    /// Any other trap.
    Other,
}

impl FaultCode {
    /// The stable string.
    pub fn as_str(self) -> &'static str {
        use FaultCode::*;
        match self {
            Deadline => "deadline",
            MemoryLimit => "memory-limit",
            MemoryBudget => "memory-budget",
            TableLimit => "table-limit",
            ProcessLimit => "process-limit",
            EventOverflow => "event-overflow",
            EventTooLarge => "event-too-large",
            TooManyTicks => "too-many-ticks",
            StackOverflow => "stack-overflow",
            Trap(trap) => trap.as_str(),
            PoolExhausted => "pool-exhausted",
            NoCapacity => "no-capacity",
            PreopenFailed => "preopen-failed",
            OpenAbandoned => "open-abandoned",
            OpenRefused => "open-refused",
            StartFailed => "start-failed",
            WorkerStopped => "worker-stopped",
            WorkerExited => "worker-exited",
            WorkerFault => "worker-fault",
            HeartbeatTimeout => "heartbeat-timeout",
            StartupTimeout => "startup-timeout",
            SpawnFailed => "spawn-failed",
            ProtocolViolation => "protocol-violation",
            BadNonce => "bad-nonce",
            BadVersion => "bad-version",
            FrameTooLarge => "frame-too-large",
            Internal => "internal",
            RestartLimit => "restart-limit",
            RestoreFailed => "restore-failed",
        }
    }
}

impl TrapCode {
    /// The stable string, `trap: ...`.
    pub fn as_str(self) -> &'static str {
        use TrapCode::*;
        match self {
            Unreachable => "trap: unreachable",
            MemoryOutOfBounds => "trap: memory out of bounds",
            IntegerDivisionByZero => "trap: integer division by zero",
            IndirectCallToNull => "trap: indirect call to null",
            BadSignature => "trap: bad signature",
            IntegerOverflow => "trap: integer overflow",
            BadConversionToInteger => "trap: bad conversion to integer",
            TableOutOfBounds => "trap: table out of bounds",
            HeapMisaligned => "trap: heap misaligned",
            Other => "trap",
        }
    }
}

impl fmt::Display for FaultCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The class of a fault, which decides its gRPC status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultClass {
    /// A command ran past its deadline.
    Deadline,
    /// The worker trapped, crashed, hit a limit or stopped answering.
    Crashed,
}

/// Why a worker died. The session becomes `FAULTED` with this reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// Deadline or crash.
    pub class: FaultClass,
    /// Its stable code.
    pub code: FaultCode,
    /// A longer description for people.
    pub detail: String,
}

impl Fault {
    /// A command or call ran past its deadline.
    pub fn deadline(detail: impl Into<String>) -> Self {
        Self {
            class: FaultClass::Deadline,
            code: FaultCode::Deadline,
            detail: detail.into(),
        }
    }

    /// The worker crashed with `code`.
    pub fn crashed(code: FaultCode, detail: impl Into<String>) -> Self {
        Self {
            class: FaultClass::Crashed,
            code,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = self.code.as_str();
        if self.detail.is_empty() || self.detail == code {
            f.write_str(code)
        } else {
            write!(f, "{code}: {}", self.detail)
        }
    }
}

/// Tells the registry about faults that happen outside a command (a trap in
/// a timer tick, a crashed process).
#[derive(Debug, Clone)]
pub struct FaultReporter {
    session_id: Arc<str>,
    worker: u64,
    tx: mpsc::UnboundedSender<FaultReport>,
}

/// One out-of-band fault.
#[derive(Debug, Clone)]
pub struct FaultReport {
    /// The session.
    pub session_id: Arc<str>,
    /// Which of the session's workers (a restart or an upgrade replaces
    /// it): a fault of one already replaced is ignored.
    pub worker: u64,
    /// What happened.
    pub fault: Fault,
}

impl FaultReporter {
    /// A reporter for one session's first worker that sends to `tx`.
    pub fn new(session_id: Arc<str>, tx: mpsc::UnboundedSender<FaultReport>) -> Self {
        Self {
            session_id,
            worker: 0,
            tx,
        }
    }

    /// The same, for the session's worker number `worker`.
    pub fn for_worker(mut self, worker: u64) -> Self {
        self.worker = worker;
        self
    }

    /// Reports a fault; a no-op once the registry has stopped listening.
    pub fn report(&self, fault: Fault) {
        let _ = self.tx.send(FaultReport {
            session_id: Arc::clone(&self.session_id),
            worker: self.worker,
            fault,
        });
    }
}

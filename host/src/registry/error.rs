//! The gateway-level failures the registry returns.

use std::time::Duration;

use crate::backend::{Fault, StartError};
use crate::registry::state::{CloseReason, SessionState};
use crate::registry::tenant::RateKind;

/// How long a client refused for capacity (the cap, its tenant's quota, a
/// backend out of workers) is told to wait before retrying.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// A gateway-level failure. Mapped to a gRPC status once, in the API layer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    /// No such session, or one of another tenant.
    #[error("no session {0:?}")]
    SessionNotFound(String),
    /// No such backend.
    #[error("no backend named {0:?}")]
    BackendNotFound(String),
    /// The backend exists but the caller's tenant may not open it.
    #[error("this tenant may not open sessions on backend {0:?}")]
    BackendNotAllowed(String),
    /// The session is not READY; an ended one says why it ended.
    #[error("session is {}{}, not READY", .state, because(*.state, .reason))]
    NotReady {
        /// Its state.
        state: SessionState,
        /// Why it closed or is closing, if it is.
        reason: Option<CloseReason>,
    },
    /// Every session slot is taken.
    #[error("the gateway is at its cap of {cap} sessions")]
    SessionCapReached {
        /// The cap.
        cap: usize,
        /// When a retry may succeed.
        retry_after: Duration,
    },
    /// The caller's tenant holds as many sessions as its quota allows.
    #[error("tenant {tenant:?} is at its quota of {quota} sessions")]
    TenantQuotaReached {
        /// The tenant.
        tenant: String,
        /// The quota.
        quota: usize,
        /// When a retry may succeed.
        retry_after: Duration,
    },
    /// The caller's tenant is over one of its rates.
    #[error(
        "tenant {tenant:?} is over its rate of {per_sec} {kind} a second ({}); retry in {}",
        kind.key(),
        retry_text(*retry_after)
    )]
    RateLimited {
        /// The tenant.
        tenant: String,
        /// Which rate.
        kind: RateKind,
        /// The rate.
        per_sec: f64,
        /// When the next token is due.
        retry_after: Duration,
    },
    /// The caller's tenant is over its CPU budget (`max_cpu_per_sec`) and
    /// the refill would come after the command's deadline; nothing ran.
    #[error("{0}")]
    CpuThrottled(crate::backend::cpu::Throttled),
    /// The session already has its maximum of event streams.
    #[error("{0}")]
    SubscriberExists(String),
    /// A request value is not allowed.
    #[error("{0}")]
    InvalidArgument(String),
    /// A resume point past the end of the stream.
    #[error("{0}")]
    OutOfRange(String),
    /// A command's reply was over the backend's limit.
    #[error("command {index}: reply of {size} bytes is over the limit of {limit}")]
    ReplyTooLarge {
        /// Which command of the request.
        index: usize,
        /// The reply size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The worker faulted; the session is now FAULTED.
    #[error("session faulted: {0}")]
    Faulted(Fault),
    /// The worker could not be started.
    #[error("{0}")]
    StartFailed(StartError),
    /// The gateway is shutting down.
    #[error("the gateway is shutting down")]
    ShuttingDown,
    /// The gateway is draining (`gatehouse drain`): its sessions go on,
    /// new opens belong on another node.
    #[error("the gateway is draining: open sessions on another node")]
    Draining,
    /// The cluster's shared state (`[cluster] redis`) cannot be reached,
    /// so no slot can be counted; live sessions are not affected.
    #[error("the cluster's shared state is unreachable: {0}")]
    ClusterUnavailable(String),
    /// An upgrade the session cannot take (no state, or the new version
    /// refused it); the session is untouched.
    #[error("the session was not upgraded and stays on its version: {0}")]
    UpgradeRefused(String),
}

/// A wait as a person reads it: whole milliseconds, rounded up.
fn retry_text(wait: Duration) -> String {
    let ms = wait.as_nanos().div_ceil(1_000_000);
    format!("{ms}ms")
}

/// ` (closed: lease-expired)` and the like, so a client that paused past
/// its lease learns why its session is gone.
fn because(state: SessionState, reason: &Option<CloseReason>) -> String {
    let verb = if state == SessionState::Closing {
        "closing"
    } else {
        "closed"
    };
    reason.map_or_else(String::new, |r| format!(" ({verb}: {r})"))
}

/// A worker's fault, where nothing more is known about the call.
impl From<Fault> for GatewayError {
    fn from(fault: Fault) -> Self {
        GatewayError::Faulted(fault)
    }
}

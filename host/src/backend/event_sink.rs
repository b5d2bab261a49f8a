//! Where a worker's events go: the session's event log, behind the checks
//! both kinds of worker apply to every event (its size, and the queue and
//! the memory budget under the `fault` overflow policy).

use std::sync::Arc;

use super::{Fault, FaultCode};
use crate::events::{EmitError, EventLog};
use crate::memory_budget::OverBudget;

/// Event names the gateway keeps for its own events.
pub const RESERVED_PREFIX: &str = "gatehouse.";

/// Why an event was refused; either ends the session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventRefused {
    /// The payload is over `max_event_bytes`.
    #[error("an event of {size} bytes is over the limit of {limit}")]
    TooLarge {
        /// The payload size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The event queue was full under the `fault` overflow policy.
    #[error("the event queue is full")]
    Overflow,
    /// The event did not fit the memory budget under the `fault` overflow
    /// policy.
    #[error("the event does not fit the memory budget: {0}")]
    OverBudget(OverBudget),
}

impl EventRefused {
    /// The fault code.
    pub fn code(&self) -> FaultCode {
        match self {
            EventRefused::TooLarge { .. } => FaultCode::EventTooLarge,
            EventRefused::Overflow => FaultCode::EventOverflow,
            EventRefused::OverBudget(_) => FaultCode::MemoryBudget,
        }
    }

    /// The session's fault.
    pub fn fault(&self) -> Fault {
        Fault::crashed(self.code(), self.to_string())
    }
}

/// One session's event log with its size limit.
#[derive(Clone)]
pub struct EventSink {
    log: Arc<EventLog>,
    max_bytes: usize,
}

impl EventSink {
    /// Events up to `max_bytes` of payload into `log`.
    pub fn new(log: Arc<EventLog>, max_bytes: usize) -> Self {
        Self { log, max_bytes }
    }

    /// Emits one event. An event after the log closed (the session is
    /// closing) is dropped quietly: nobody can receive it. So is one named
    /// in the gateway's reserved name space (`gatehouse.`), so a plugin
    /// cannot forge the gateway's own events such as `gatehouse.restarted`.
    pub fn emit(&self, name: String, payload: Vec<u8>) -> Result<(), EventRefused> {
        if name.starts_with(RESERVED_PREFIX) {
            tracing::debug!(event = %name, "plugin event in the reserved gatehouse. name space dropped");
            return Ok(());
        }
        if payload.len() > self.max_bytes {
            return Err(EventRefused::TooLarge {
                size: payload.len(),
                limit: self.max_bytes,
            });
        }
        match self.log.emit(name, payload) {
            Ok(_) | Err(EmitError::Closed) => Ok(()),
            Err(EmitError::Overflow) => Err(EventRefused::Overflow),
            Err(EmitError::OverBudget(refused)) => Err(EventRefused::OverBudget(refused)),
        }
    }
}

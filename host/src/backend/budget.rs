//! The time one command may take: its own timeout from when it starts,
//! never past the client's gRPC deadline. Both workers start every command
//! through [`Budget::start`], so the arithmetic and the fault texts exist
//! once.

use std::time::{Duration, Instant};

use super::Fault;

/// The limits an invoke's commands run under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    timeout: Duration,
    deadline: Option<Instant>,
}

impl Budget {
    /// Each command gets `timeout` from its start, and none runs past
    /// `deadline`.
    pub fn new(timeout: Duration, deadline: Option<Instant>) -> Self {
        Self { timeout, deadline }
    }

    /// The clock of a command starting at `now`; a deadline fault when the
    /// client's deadline passed while the command waited its turn.
    pub fn start(&self, now: Instant) -> Result<CommandClock, Fault> {
        let mut until = now + self.timeout;
        if let Some(d) = self.deadline {
            until = until.min(d);
        }
        if until <= now {
            return Err(Fault::deadline(
                "the gRPC deadline passed before the command ran",
            ));
        }
        Ok(CommandClock {
            started: now,
            until,
        })
    }
}

/// When one running command started and when it must have answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandClock {
    /// When the command started.
    pub started: Instant,
    /// When it must have answered.
    pub until: Instant,
}

impl CommandClock {
    /// Whether the command is out of time at `now`.
    pub fn expired(&self, now: Instant) -> bool {
        now >= self.until
    }

    /// The fault of command `name` running past its deadline.
    pub fn overrun(&self, name: &str) -> Fault {
        Fault::deadline(format!(
            "command {name:?} ran past its {} ms deadline",
            self.until.duration_since(self.started).as_millis()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::FaultClass;

    #[test]
    fn a_command_gets_its_timeout_capped_by_the_deadline() {
        let now = Instant::now();
        let own = Budget::new(Duration::from_secs(2), None)
            .start(now)
            .unwrap();
        assert_eq!(own.until, now + Duration::from_secs(2));
        let capped = Budget::new(
            Duration::from_secs(2),
            Some(now + Duration::from_millis(300)),
        )
        .start(now)
        .unwrap();
        assert_eq!(capped.until, now + Duration::from_millis(300));
        assert!(!capped.expired(now + Duration::from_millis(299)));
        assert!(capped.expired(now + Duration::from_millis(300)));
        let fault = capped.overrun("spin");
        assert_eq!(fault.class, FaultClass::Deadline);
        assert_eq!(
            fault.detail,
            "command \"spin\" ran past its 300 ms deadline"
        );
    }

    #[test]
    fn a_passed_deadline_faults_before_the_command_runs() {
        let now = Instant::now();
        let fault = Budget::new(Duration::from_secs(2), Some(now))
            .start(now)
            .unwrap_err();
        assert_eq!(fault.class, FaultClass::Deadline);
        assert!(fault.detail.contains("before the command ran"), "{fault}");
    }
}

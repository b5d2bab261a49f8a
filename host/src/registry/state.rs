//! The session state machine and the close-reason vocabulary.

use std::fmt;

use crate::backend::StartPhase;

/// Where a session is in its lifecycle; visible on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionState {
    /// Registered, nothing started yet.
    Creating,
    /// The worker is being created (wasm: instantiating).
    StartingWorker,
    /// Waiting for a native worker process to connect.
    WaitingForWorker,
    /// Checking a native worker's hello.
    Handshaking,
    /// The worker's `open` is running.
    InitializingWorker,
    /// Serving commands.
    Ready,
    /// The worker is being replaced (after a fault, by hand, or for an
    /// upgrade's failure path): the id, lease and event sequence stay.
    Restarting,
    /// A close is under way.
    Closing,
    /// Gone for good.
    Closed,
    /// The worker failed; only `Closed` can follow.
    Faulted,
}

impl From<StartPhase> for SessionState {
    fn from(phase: StartPhase) -> Self {
        match phase {
            StartPhase::StartingWorker => SessionState::StartingWorker,
            StartPhase::WaitingForWorker => SessionState::WaitingForWorker,
            StartPhase::Handshaking => SessionState::Handshaking,
            StartPhase::InitializingWorker => SessionState::InitializingWorker,
        }
    }
}

impl SessionState {
    /// Whether the machine allows going from `self` to `to`.
    ///
    /// Start-up moves forward only; any live state may fault or start
    /// closing; `Closing` ends in `Closed` or `Faulted`; `Faulted` closes
    /// or restarts; `Closed` is terminal. Only a restart returns to
    /// `Ready`: `Ready` and `Faulted` may restart, and `Restarting` ends in
    /// `Ready`, `Faulted` or `Closing`.
    pub fn can_become(self, to: SessionState) -> bool {
        use SessionState::*;
        match (self, to) {
            (Closed, _) => false,
            (Ready | Faulted, Restarting) => true,
            (Restarting, Ready | Faulted | Closing) => true,
            (Restarting, _) => false,
            (_, Restarting) => false,
            (Faulted, Closed) => true,
            (Faulted, _) => false,
            (Closing, Closed | Faulted) => true,
            (Closing, _) => false,
            (_, Faulted | Closing) => true,
            (Ready, Closed) => false,
            (from, to) if from.is_starting() && to == Closed => true,
            (from, to) if from.is_starting() && to.is_starting() || to == Ready => {
                to.rank() > from.rank()
            }
            _ => false,
        }
    }

    /// Whether the session is still starting up.
    pub fn is_starting(self) -> bool {
        self.rank() < SessionState::Ready.rank()
    }

    /// Whether the session has ended (its worker is gone).
    pub fn is_terminal(self) -> bool {
        matches!(self, SessionState::Closed | SessionState::Faulted)
    }

    fn rank(self) -> u8 {
        use SessionState::*;
        match self {
            Creating => 0,
            StartingWorker => 1,
            WaitingForWorker => 2,
            Handshaking => 3,
            InitializingWorker => 4,
            Ready => 5,
            Restarting => 6,
            Closing => 7,
            Faulted => 8,
            Closed => 9,
        }
    }

    /// The wire name, e.g. `READY`.
    pub fn as_str(self) -> &'static str {
        use SessionState::*;
        match self {
            Creating => "CREATING",
            StartingWorker => "STARTING_WORKER",
            WaitingForWorker => "WAITING_FOR_WORKER",
            Handshaking => "HANDSHAKING",
            InitializingWorker => "INITIALIZING_WORKER",
            Ready => "READY",
            Restarting => "RESTARTING",
            Closing => "CLOSING",
            Closed => "CLOSED",
            Faulted => "FAULTED",
        }
    }
}

impl fmt::Display for SessionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a session ended: a fixed vocabulary, used in metrics labels and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The client called `CloseSession`.
    ClientClose,
    /// The lease ran out.
    LeaseExpired,
    /// No client call within the idle timeout.
    IdleTimeout,
    /// The session reached its maximum lifetime.
    MaxLifetime,
    /// The gateway is stopping.
    GatewayShutdown,
    /// The worker faulted.
    Fault,
    /// A reload retired the session's backend version and its
    /// `retire_after` passed.
    BackendRetired,
}

impl CloseReason {
    /// The vocabulary word, e.g. `lease-expired`.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::ClientClose => "client-close",
            CloseReason::LeaseExpired => "lease-expired",
            CloseReason::IdleTimeout => "idle-timeout",
            CloseReason::MaxLifetime => "max-lifetime",
            CloseReason::GatewayShutdown => "gateway-shutdown",
            CloseReason::Fault => "fault",
            CloseReason::BackendRetired => "backend-retired",
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::SessionState::*;
    use super::*;

    const ALL: [SessionState; 10] = [
        Creating,
        StartingWorker,
        WaitingForWorker,
        Handshaking,
        InitializingWorker,
        Ready,
        Restarting,
        Closing,
        Closed,
        Faulted,
    ];

    #[test]
    fn closed_is_terminal() {
        for to in ALL {
            assert!(!Closed.can_become(to), "CLOSED -> {to}");
        }
    }

    #[test]
    fn faulted_only_closes_or_restarts() {
        for to in ALL {
            assert_eq!(
                Faulted.can_become(to),
                matches!(to, Closed | Restarting),
                "FAULTED -> {to}"
            );
        }
    }

    #[test]
    fn a_restart_comes_back_to_ready_or_ends() {
        for to in ALL {
            assert_eq!(
                Restarting.can_become(to),
                matches!(to, Ready | Faulted | Closing),
                "RESTARTING -> {to}"
            );
        }
        for from in ALL {
            assert_eq!(
                from.can_become(Restarting),
                matches!(from, Ready | Faulted),
                "{from} -> RESTARTING"
            );
        }
    }

    #[test]
    fn closing_only_ends() {
        for to in ALL {
            assert_eq!(
                Closing.can_become(to),
                matches!(to, Closed | Faulted),
                "CLOSING -> {to}"
            );
        }
    }

    #[test]
    fn nothing_but_a_restart_walks_back_to_ready() {
        for from in [Ready, Closing, Closed, Faulted] {
            assert!(!from.can_become(Ready), "{from} -> READY");
        }
    }

    #[test]
    fn startup_moves_forward() {
        assert!(Creating.can_become(StartingWorker));
        assert!(StartingWorker.can_become(InitializingWorker));
        assert!(StartingWorker.can_become(WaitingForWorker));
        assert!(WaitingForWorker.can_become(Handshaking));
        assert!(Handshaking.can_become(InitializingWorker));
        assert!(InitializingWorker.can_become(Ready));
        assert!(!InitializingWorker.can_become(StartingWorker));
        assert!(!Ready.can_become(InitializingWorker));
        assert!(!Ready.can_become(Closed), "READY closes through CLOSING");
        for s in [Creating, StartingWorker, InitializingWorker, Ready] {
            assert!(s.can_become(Faulted));
            assert!(s.can_become(Closing));
        }
    }
}

//! What a client call can fail with.

use std::fmt;
use std::time::Duration;

use tonic::Code;
use tonic_types::StatusExt;

use crate::proto::v1 as pb;

/// A failed client call.
///
/// Gateway failures keep their [`tonic::Status`] (code, message and details
/// such as `google.rpc.RetryInfo`); a command the plugin itself refused is
/// the separate [`Error::Command`] variant, because the session is fine and
/// the call reached the plugin.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The gateway could not be reached when connecting.
    #[error("cannot connect to {addr}: {message}")]
    Connect {
        /// The address dialled.
        addr: String,
        /// Why, with the whole source chain.
        message: String,
    },
    /// The gateway answered with a gRPC status other than OK.
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Status(tonic::Status),
    /// The plugin answered the command with its own error; the session is
    /// still `READY`.
    #[error("{0}")]
    Command(CommandError),
    /// A request could not be built: a bad address, key or duration.
    #[error("{0}")]
    InvalidArgument(String),
    /// [`Session::invoke_json`](super::Session::invoke_json) could not encode
    /// the request or decode the reply.
    #[error("JSON payload: {0}")]
    Json(#[from] serde_json::Error),
}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Self {
        Error::Status(s)
    }
}

impl Error {
    /// The gRPC status of a gateway failure.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            Error::Status(s) => Some(s),
            _ => None,
        }
    }

    /// The gRPC code of a gateway failure (`None` for the other variants).
    pub fn code(&self) -> Option<Code> {
        self.status().map(tonic::Status::code)
    }

    /// The plugin's command error, if that is what this is.
    pub fn command_error(&self) -> Option<&CommandError> {
        match self {
            Error::Command(e) => Some(e),
            _ => None,
        }
    }

    /// How long the gateway asked the client to wait before retrying
    /// (`google.rpc.RetryInfo`, sent with `RESOURCE_EXHAUSTED` at the session
    /// cap or a tenant's quota, and over a tenant's request or open rate,
    /// where it is when the next call is admitted).
    pub fn retry_after(&self) -> Option<Duration> {
        self.status()?.get_details_retry_info()?.retry_delay
    }
}

pub use crate::proto::code_name;

/// A command error returned by the plugin (`command-error` in the WIT
/// contract).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandError {
    /// What kind of error.
    pub kind: CommandErrorKind,
    /// The plugin's message.
    pub message: String,
}

impl CommandError {
    pub(crate) fn from_wire(e: pb::CommandError) -> Self {
        Self {
            kind: CommandErrorKind::from_wire(e.kind),
            message: e.message,
        }
    }
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "command error ({}): {}", self.kind, self.message)
    }
}

impl std::error::Error for CommandError {}

/// The kinds of [`CommandError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandErrorKind {
    /// The plugin has no such command.
    UnknownCommand,
    /// The payload was not what the command expects.
    InvalidPayload,
    /// The command ran and failed.
    Failed,
    /// A kind this client does not know.
    Unknown,
}

impl CommandErrorKind {
    fn from_wire(k: i32) -> Self {
        use pb::command_error::Kind;
        match Kind::try_from(k) {
            Ok(Kind::UnknownCommand) => Self::UnknownCommand,
            Ok(Kind::InvalidPayload) => Self::InvalidPayload,
            Ok(Kind::Failed) => Self::Failed,
            Ok(Kind::Unspecified) | Err(_) => Self::Unknown,
        }
    }

    /// The kebab-case name: `unknown-command`, `invalid-payload`, `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownCommand => "unknown-command",
            Self::InvalidPayload => "invalid-payload",
            Self::Failed => "failed",
            Self::Unknown => "unknown",
        }
    }
}

impl fmt::Display for CommandErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names_match_the_wire() {
        assert_eq!(code_name(Code::NotFound), "NOT_FOUND");
        assert_eq!(code_name(Code::DeadlineExceeded), "DEADLINE_EXCEEDED");
        assert_eq!(code_name(Code::Ok), "OK");
    }

    #[test]
    fn a_status_keeps_its_code_message_and_retry_info() {
        let status = tonic::Status::with_error_details(
            Code::ResourceExhausted,
            "the gateway is at its cap of 1 sessions",
            tonic_types::ErrorDetails::with_retry_info(Some(Duration::from_secs(2))),
        );
        let e = Error::from(status);
        assert_eq!(e.code(), Some(Code::ResourceExhausted));
        assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
        assert_eq!(
            e.to_string(),
            "RESOURCE_EXHAUSTED: the gateway is at its cap of 1 sessions"
        );
        assert!(e.command_error().is_none());
    }

    #[test]
    fn command_errors_are_their_own_variant() {
        let e = Error::Command(CommandError::from_wire(pb::CommandError {
            kind: pb::command_error::Kind::UnknownCommand as i32,
            message: "no such command".into(),
        }));
        assert_eq!(e.code(), None);
        assert_eq!(
            e.command_error().map(|c| c.kind),
            Some(CommandErrorKind::UnknownCommand)
        );
        assert_eq!(
            e.to_string(),
            "command error (unknown-command): no such command"
        );
    }
}

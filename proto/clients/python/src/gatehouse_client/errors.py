"""Typed errors.

Two families, deliberately apart:

- `CommandError`: the plugin refused or failed one command. The call
  itself succeeded and the session is still READY.
- `GatewayError`: the gateway refused the call (a gRPC status), with one
  subclass per status code a client acts on. `retry_delay` carries the
  `google.rpc.RetryInfo` the gateway attaches to RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import datetime
import enum
from typing import Dict, Optional, Type

import grpc


class GatehouseError(Exception):
    """Anything this client raises about a call."""


class CommandErrorKind(str, enum.Enum):
    """Which `command-error` case the plugin returned."""

    UNSPECIFIED = "unspecified"
    UNKNOWN_COMMAND = "unknown-command"
    INVALID_PAYLOAD = "invalid-payload"
    FAILED = "failed"


_KINDS = {
    0: CommandErrorKind.UNSPECIFIED,
    1: CommandErrorKind.UNKNOWN_COMMAND,
    2: CommandErrorKind.INVALID_PAYLOAD,
    3: CommandErrorKind.FAILED,
}


class CommandError(GatehouseError):
    """A command the plugin refused or failed; the session stays usable."""

    def __init__(self, kind: CommandErrorKind, message: str) -> None:
        super().__init__(f"{kind.value}: {message}")
        self.kind = kind
        self.message = message

    @classmethod
    def from_proto(cls, error) -> "CommandError":
        """From a `gatehouse.v1.CommandError` message."""
        return cls(_KINDS.get(error.kind, CommandErrorKind.UNSPECIFIED), error.message)


class GatewayError(GatehouseError):
    """The gateway answered a call with a non-OK gRPC status."""

    def __init__(self, code: grpc.StatusCode, message: str,
                 retry_delay: Optional[datetime.timedelta] = None) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        #: How long to wait before trying again, when the gateway said
        #: (`google.rpc.RetryInfo`); `None` otherwise.
        self.retry_delay = retry_delay


class NotFound(GatewayError):
    """NOT_FOUND: no such session (or one of another tenant), or backend."""


class AlreadyExists(GatewayError):
    """ALREADY_EXISTS: the session already has an event subscriber."""


class InvalidArgument(GatewayError):
    """INVALID_ARGUMENT."""


class FailedPrecondition(GatewayError):
    """FAILED_PRECONDITION: the session is not READY, or its open was refused."""


class OutOfRange(GatewayError):
    """OUT_OF_RANGE: a resume sequence past the end."""


class ResourceExhausted(GatewayError):
    """RESOURCE_EXHAUSTED: a cap, quota or rate; see `retry_delay`."""


class Unauthenticated(GatewayError):
    """UNAUTHENTICATED: a missing, unknown or malformed API key."""


class PermissionDenied(GatewayError):
    """PERMISSION_DENIED: the key lacks the scope, or the backend is not allowed."""


class Unavailable(GatewayError):
    """UNAVAILABLE: the gateway is unreachable, shutting down, or a worker did not start."""


class DeadlineExceeded(GatewayError):
    """DEADLINE_EXCEEDED: the command ran past its timeout (the session faulted)."""


class Aborted(GatewayError):
    """ABORTED: the worker crashed or hit a limit (the session faulted)."""


_BY_CODE: Dict[grpc.StatusCode, Type[GatewayError]] = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRange,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.ABORTED: Aborted,
}

_DETAILS_KEY = "grpc-status-details-bin"


def _retry_delay(trailers) -> Optional[datetime.timedelta]:
    """The RetryInfo delay in a `google.rpc.Status` trailer, if any."""
    from google.rpc import error_details_pb2, status_pb2

    for key, value in trailers or ():
        if key != _DETAILS_KEY:
            continue
        status = status_pb2.Status()
        try:
            status.ParseFromString(value)
        except Exception:  # a malformed trailer is no retry hint
            return None
        for detail in status.details:
            info = error_details_pb2.RetryInfo()
            if detail.Unpack(info):
                return info.retry_delay.ToTimedelta()
    return None


def from_status(code: grpc.StatusCode, message: str, trailers) -> GatewayError:
    """The typed error for a status with its trailing metadata."""
    cls = _BY_CODE.get(code, GatewayError)
    return cls(code, message, _retry_delay(trailers))


def from_rpc_error(error: grpc.RpcError) -> GatewayError:
    """The typed error for a failed sync call."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    message = error.details() if hasattr(error, "details") else str(error)
    trailers = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    return from_status(code, message or "", trailers)

"""A client for the gatehouse session gateway.

    from gatehouse_client import Client, CommandError

    with Client("127.0.0.1:50051", api_key="ghk_...") as client:
        with client.open("echo", keep_alive=True) as session:
            session.invoke("echo", b"hi")
            for event in session.events():
                ...

`gatehouse_client.aio` has the same API for asyncio. The generated
messages are `gatehouse_client.pb` (`gatehouse.v1`), the stubs
`gatehouse_client.rpc`.
"""

from ._common import SESSION_HEADER
from ._stubs import pb, rpc
from .client import Client, Events, Session
from .errors import (
    Aborted,
    AlreadyExists,
    CommandError,
    CommandErrorKind,
    DeadlineExceeded,
    FailedPrecondition,
    GatehouseError,
    GatewayError,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

__all__ = [
    "Aborted", "AlreadyExists", "Client", "CommandError", "CommandErrorKind",
    "DeadlineExceeded", "Events", "FailedPrecondition", "GatehouseError", "GatewayError",
    "InvalidArgument", "NotFound", "OutOfRange", "PermissionDenied", "ResourceExhausted",
    "SESSION_HEADER", "Session", "Unauthenticated", "Unavailable", "pb", "rpc",
]

"""What the sync and asyncio clients share: metadata, durations, TLS
credentials and request building."""

from __future__ import annotations

import datetime
from typing import Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import grpc
from google.protobuf import duration_pb2

from ._stubs import pb
from .errors import CommandError

#: The metadata naming the session a call is about, sent on every call that
#: names one, so a proxy or a cluster of gateways can route it without
#: decoding the request.
SESSION_HEADER = "x-gatehouse-session"

#: Seconds, or a timedelta.
Duration = Union[float, int, datetime.timedelta]

#: A command: its name, or (name, payload).
CommandLike = Union[str, Tuple[str, Union[bytes, str]]]

Metadata = Tuple[Tuple[str, str], ...]

#: Status codes after which an event stream is resumed: the gateway ended
#: the stream (`max_event_stream_age`), the connection broke, or the old
#: subscription is not yet detached right after a break.
RESUMABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ALREADY_EXISTS,
             grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)


def seconds(value: Duration) -> float:
    """A duration in seconds."""
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    return float(value)


def to_duration(value: Optional[Duration]) -> Optional[duration_pb2.Duration]:
    """A `google.protobuf.Duration`, or None for the backend's default."""
    if value is None:
        return None
    d = duration_pb2.Duration()
    d.FromTimedelta(datetime.timedelta(seconds=seconds(value)))
    return d


def as_bytes(payload: Union[bytes, bytearray, memoryview, str]) -> bytes:
    """A payload as bytes; text is UTF-8."""
    if isinstance(payload, str):
        return payload.encode()
    return bytes(payload)


def command(c: CommandLike) -> "pb.Command":
    """A `gatehouse.v1.Command` from a name or a (name, payload) pair."""
    if isinstance(c, str):
        return pb.Command(name=c)
    name, payload = c
    return pb.Command(name=name, payload=as_bytes(payload))


def metadata(api_key: Optional[str], session_id: Optional[str] = None) -> Metadata:
    """The call's metadata: the API key, and the session it names."""
    md: List[Tuple[str, str]] = []
    if api_key:
        md.append(("authorization", f"Bearer {api_key}"))
    if session_id:
        md.append((SESSION_HEADER, session_id))
    return tuple(md)


def open_request(backend: str, name: str, correlation_id: str,
                 command_timeout: Optional[Duration], lease: Optional[Duration],
                 config: Optional[Mapping[str, str]]) -> "pb.OpenSessionRequest":
    """An OpenSessionRequest; unset durations take the backend's defaults."""
    req = pb.OpenSessionRequest(backend=backend, client_session_name=name,
                                client_correlation_id=correlation_id,
                                config=dict(config or {}))
    if command_timeout is not None:
        req.command_timeout.CopyFrom(to_duration(command_timeout))
    if lease is not None:
        req.lease.CopyFrom(to_duration(lease))
    return req


def call_request(backend: str, name: str, payload: Union[bytes, str],
                 command_timeout: Optional[Duration],
                 config: Optional[Mapping[str, str]]) -> "pb.CallRequest":
    """A CallRequest: one command on a fresh instance of `backend`."""
    req = pb.CallRequest(backend=backend, config=dict(config or {}),
                         command=pb.Command(name=name, payload=as_bytes(payload)))
    if command_timeout is not None:
        req.command_timeout.CopyFrom(to_duration(command_timeout))
    return req


def reply_payload(reply) -> bytes:
    """The payload of an Invoke or Call reply; `CommandError` when the
    plugin refused the command."""
    if reply.HasField("error"):
        raise CommandError.from_proto(reply.error)
    return reply.payload


def results(response: "pb.InvokeBatchResponse") -> List[Union[bytes, CommandError]]:
    """A batch's outcomes in order: a payload, or the command's error."""
    return [CommandError.from_proto(r.error) if r.HasField("error") else r.payload
            for r in response.results]


def renew_interval(info: "pb.SessionInfo", interval: Optional[Duration]) -> float:
    """Seconds between keep-alive renewals: a third of the lease, so two
    renewals may fail before it runs out."""
    if interval is not None:
        return seconds(interval)
    lease = info.lease.ToTimedelta().total_seconds() if info.HasField("lease") else 60.0
    return max(lease / 3.0, 0.05)


def _read(value: Union[str, bytes, None]) -> Optional[bytes]:
    if value is None or isinstance(value, bytes):
        return value
    with open(value, "rb") as f:
        return f.read()


def credentials(ca_cert: Union[str, bytes, None], client_cert: Union[str, bytes, None],
                client_key: Union[str, bytes, None]) -> Optional[grpc.ChannelCredentials]:
    """TLS credentials trusting `ca_cert` (PEM bytes or a path), presenting
    the client certificate for mutual TLS; None for plaintext."""
    if ca_cert is None and client_cert is None:
        return None
    return grpc.ssl_channel_credentials(root_certificates=_read(ca_cert),
                                        private_key=_read(client_key),
                                        certificate_chain=_read(client_cert))


def channel_options(server_name: Optional[str],
                    extra: Sequence[Tuple[str, object]]) -> List[Tuple[str, object]]:
    """Channel options: the TLS name to check, then the caller's."""
    options: List[Tuple[str, object]] = []
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    options.extend(extra)
    return options


def batch_commands(commands: Iterable[CommandLike]) -> List["pb.Command"]:
    """The commands of a batch."""
    return [command(c) for c in commands]

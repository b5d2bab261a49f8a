"""The synchronous client: `Client`, `Session` and `Events`."""

from __future__ import annotations

import threading
import time
from typing import Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import grpc

from . import _common
from ._common import CommandLike, Duration
from ._stubs import pb, rpc
from .errors import CommandError, GatewayError, NotFound, from_rpc_error


class Client:
    """A connection to one gateway.

    `target` is `host:port`. TLS when `ca_cert` (or a client certificate)
    is given, as PEM bytes or a file path; `api_key` is sent as
    `authorization: Bearer <key>` on every call. `timeout` (seconds) bounds
    each unary call; streams are unbounded.
    """

    def __init__(self, target: str = "127.0.0.1:50051", *, api_key: Optional[str] = None,
                 ca_cert: Union[str, bytes, None] = None,
                 client_cert: Union[str, bytes, None] = None,
                 client_key: Union[str, bytes, None] = None,
                 server_name: Optional[str] = None, timeout: Optional[float] = None,
                 options: Sequence[Tuple[str, object]] = ()) -> None:
        creds = _common.credentials(ca_cert, client_cert, client_key)
        opts = _common.channel_options(server_name, options)
        self.channel = (grpc.secure_channel(target, creds, opts) if creds
                        else grpc.insecure_channel(target, opts))
        self.api_key = api_key
        self.timeout = timeout
        self.gateway = rpc.GatewayStub(self.channel)
        self.admin = rpc.AdminStub(self.channel)

    def _call(self, method, request, session_id: Optional[str] = None):
        try:
            return method(request, metadata=_common.metadata(self.api_key, session_id),
                          timeout=self.timeout)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    def list_backends(self) -> List["pb.BackendInfo"]:
        """The backends this caller may open, every loaded version."""
        return list(self._call(self.gateway.ListBackends, pb.ListBackendsRequest()).backends)

    def open(self, backend: str, *, name: str = "", correlation_id: str = "",
             command_timeout: Optional[Duration] = None, lease: Optional[Duration] = None,
             config: Optional[Mapping[str, str]] = None, keep_alive: bool = False,
             keep_alive_interval: Optional[Duration] = None) -> "Session":
        """Opens a session on `backend` (`name`, `name@version` or
        `name@sha256:prefix`) and returns once it is READY. With
        `keep_alive`, a background thread renews its lease until it closes."""
        req = _common.open_request(backend, name, correlation_id, command_timeout, lease, config)
        info = self._call(self.gateway.OpenSession, req).session
        session = Session(self, info)
        if keep_alive:
            session.keep_alive(keep_alive_interval)
        return session

    def call(self, backend: str, name: str, payload: Union[bytes, str] = b"", *,
             command_timeout: Optional[Duration] = None,
             config: Optional[Mapping[str, str]] = None) -> bytes:
        """Runs one command on a fresh instance of `backend` that is dropped
        afterwards (open, invoke and close in one round trip; no session is
        left behind, and its events are dropped). Returns the reply; raises
        `CommandError` if the plugin refused it, or `GatewayError`."""
        req = _common.call_request(backend, name, payload, command_timeout, config)
        reply = self._call(self.gateway.Call, req)
        return _common.reply_payload(reply)

    def session(self, session_id: str) -> "Session":
        """A handle on an existing session (NOT_FOUND if there is none)."""
        info = self._call(self.gateway.GetSession, pb.GetSessionRequest(session_id=session_id),
                          session_id)
        return Session(self, info)

    def list_sessions(self) -> List["pb.SessionInfo"]:
        """The caller's sessions (every session, for an admin key)."""
        return list(self._call(self.gateway.ListSessions, pb.ListSessionsRequest()).sessions)

    def reload(self, *, promote: str = "", rollback: str = "") -> "pb.ReloadResponse":
        """Admin: re-reads the gateway's config, or ends a rollout."""
        return self._call(self.admin.Reload, pb.ReloadRequest(promote=promote, rollback=rollback))

    def close(self) -> None:
        """Closes the channel (not the sessions: they live until their lease ends)."""
        self.channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Session:
    """One open session. As a context manager it closes the session on exit."""

    def __init__(self, client: Client, info: "pb.SessionInfo") -> None:
        self.client = client
        self.id: str = info.session_id
        #: The session as last described by the gateway.
        self.info = info
        #: The last error the keep-alive renewal met, if any.
        self.keep_alive_error: Optional[GatewayError] = None
        self._stop = threading.Event()
        self._renewer: Optional[threading.Thread] = None

    def _call(self, method, request):
        return self.client._call(method, request, self.id)

    def invoke(self, name: str, payload: Union[bytes, str] = b"", *,
               correlation_id: str = "") -> bytes:
        """Runs one command; returns its reply, raises `CommandError` if the
        plugin refused it (the session stays READY) or `GatewayError`."""
        reply = self._call(self.client.gateway.Invoke, pb.InvokeRequest(
            session_id=self.id, correlation_id=correlation_id,
            command=pb.Command(name=name, payload=_common.as_bytes(payload))))
        return _common.reply_payload(reply)

    def batch(self, commands: Iterable[CommandLike]) -> List[Union[bytes, CommandError]]:
        """Runs commands in order in one round trip: one reply or
        `CommandError` per command (errors are returned, not raised)."""
        reply = self._call(self.client.gateway.InvokeBatch, pb.InvokeBatchRequest(
            session_id=self.id, commands=_common.batch_commands(commands)))
        return _common.results(reply)

    def events(self, after: Optional[int] = None, *, resume: bool = True,
               max_retries: int = 20) -> "Events":
        """The session's events. `after` replays from the sequence after it.
        With `resume`, a stream the gateway ends or a broken connection is
        reopened after the last sequence seen."""
        return Events(self, after, resume, max_retries)

    def renew(self) -> "pb.SessionInfo":
        """Extends the lease by its duration from now."""
        self.info = self._call(self.client.gateway.RenewLease,
                               pb.RenewLeaseRequest(session_id=self.id))
        return self.info

    def refresh(self) -> "pb.SessionInfo":
        """Describes the session anew."""
        self.info = self._call(self.client.gateway.GetSession,
                               pb.GetSessionRequest(session_id=self.id))
        return self.info

    def keep_alive(self, interval: Optional[Duration] = None) -> "Session":
        """Renews the lease from a daemon thread every `interval` (a third of
        the lease by default) until `close`. It stops by itself once the
        session is gone; other failures are kept in `keep_alive_error` and
        retried at the next interval."""
        if self._renewer is not None:
            return self
        every = _common.renew_interval(self.info, interval)

        def loop() -> None:
            while not self._stop.wait(every):
                try:
                    self.renew()
                    self.keep_alive_error = None
                except NotFound as e:
                    self.keep_alive_error = e
                    return
                except GatewayError as e:
                    self.keep_alive_error = e

        self._renewer = threading.Thread(target=loop, name=f"gatehouse-renew-{self.id}",
                                         daemon=True)
        self._renewer.start()
        return self

    def close(self) -> "pb.CloseSessionResponse":
        """Closes the session (idempotent while the gateway still knows it)."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        return self._call(self.client.gateway.CloseSession,
                          pb.CloseSessionRequest(session_id=self.id))

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.close()
        except NotFound:  # already ended (its lease ran out)
            pass


class Events(Iterator["pb.Event"]):
    """An iterator over a session's events that resumes after a broken
    stream from the last sequence it returned. `cancel()` ends it (from any
    thread); iteration also ends when the session closes."""

    def __init__(self, session: Session, after: Optional[int], resume: bool,
                 max_retries: int) -> None:
        self.session = session
        #: The sequence of the last event returned (or the `after` given).
        self.last_sequence = after
        #: How many times the stream was reopened.
        self.resumes = 0
        self._resume = resume
        self._max_retries = max_retries
        self._call = None
        self._cancelled = False
        self._lock = threading.Lock()

    def _open(self):
        req = pb.StreamEventsRequest(session_id=self.session.id)
        if self.last_sequence is not None:
            req.resume_after_sequence = self.last_sequence
        md = _common.metadata(self.session.client.api_key, self.session.id)
        return self.session.client.gateway.StreamEvents(req, metadata=md)

    def __iter__(self) -> "Events":
        return self

    def __next__(self) -> "pb.Event":
        failures = 0
        while True:
            with self._lock:
                if self._cancelled:
                    raise StopIteration
                if self._call is None:
                    self._call = self._open()
                call = self._call
            try:
                event = next(call)
            except StopIteration:
                self._call = None
                raise
            except grpc.RpcError as e:
                self._call = None
                if self._cancelled:
                    raise StopIteration from None
                if (self._resume and e.code() in _common.RESUMABLE
                        and failures < self._max_retries):
                    failures += 1
                    self.resumes += 1
                    time.sleep(min(0.02 * failures, 1.0))
                    continue
                raise from_rpc_error(e) from None
            self.last_sequence = event.sequence
            return event

    def cancel(self) -> None:
        """Ends the stream."""
        with self._lock:
            self._cancelled = True
            if self._call is not None:
                self._call.cancel()

    def __enter__(self) -> "Events":
        return self

    def __exit__(self, *exc) -> None:
        self.cancel()

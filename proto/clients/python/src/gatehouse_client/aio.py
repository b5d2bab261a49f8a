"""The asyncio client: the same shape as `gatehouse_client.Client`, with
coroutines, `async with` and `async for` (grpc.aio underneath)."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import grpc
import grpc.aio

from . import _common
from ._common import CommandLike, Duration
from ._stubs import pb, rpc
from .errors import CommandError, GatewayError, NotFound, from_rpc_error

__all__ = ["Client", "Session", "Events"]


class Client:
    """A connection to one gateway; see `gatehouse_client.Client`."""

    def __init__(self, target: str = "127.0.0.1:50051", *, api_key: Optional[str] = None,
                 ca_cert: Union[str, bytes, None] = None,
                 client_cert: Union[str, bytes, None] = None,
                 client_key: Union[str, bytes, None] = None,
                 server_name: Optional[str] = None, timeout: Optional[float] = None,
                 options: Sequence[Tuple[str, object]] = ()) -> None:
        creds = _common.credentials(ca_cert, client_cert, client_key)
        opts = _common.channel_options(server_name, options)
        self.channel = (grpc.aio.secure_channel(target, creds, opts) if creds
                        else grpc.aio.insecure_channel(target, opts))
        self.api_key = api_key
        self.timeout = timeout
        self.gateway = rpc.GatewayStub(self.channel)
        self.admin = rpc.AdminStub(self.channel)

    async def _call(self, method, request, session_id: Optional[str] = None):
        try:
            return await method(request, metadata=_common.metadata(self.api_key, session_id),
                                timeout=self.timeout)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    async def list_backends(self) -> List["pb.BackendInfo"]:
        """The backends this caller may open, every loaded version."""
        return list((await self._call(self.gateway.ListBackends,
                                      pb.ListBackendsRequest())).backends)

    async def open(self, backend: str, *, name: str = "", correlation_id: str = "",
                   command_timeout: Optional[Duration] = None,
                   lease: Optional[Duration] = None,
                   config: Optional[Mapping[str, str]] = None, keep_alive: bool = False,
                   keep_alive_interval: Optional[Duration] = None) -> "Session":
        """Opens a session and returns once it is READY; with `keep_alive`,
        a task renews its lease until it closes."""
        req = _common.open_request(backend, name, correlation_id, command_timeout, lease, config)
        info = (await self._call(self.gateway.OpenSession, req)).session
        session = Session(self, info)
        if keep_alive:
            session.keep_alive(keep_alive_interval)
        return session

    async def call(self, backend: str, name: str, payload: Union[bytes, str] = b"", *,
                   command_timeout: Optional[Duration] = None,
                   config: Optional[Mapping[str, str]] = None) -> bytes:
        """Runs one command on a fresh instance of `backend` that is dropped
        afterwards (open, invoke and close in one round trip; no session is
        left behind, and its events are dropped). Returns the reply; raises
        `CommandError` if the plugin refused it, or `GatewayError`."""
        req = _common.call_request(backend, name, payload, command_timeout, config)
        reply = await self._call(self.gateway.Call, req)
        return _common.reply_payload(reply)

    async def session(self, session_id: str) -> "Session":
        """A handle on an existing session (NOT_FOUND if there is none)."""
        info = await self._call(self.gateway.GetSession,
                                pb.GetSessionRequest(session_id=session_id), session_id)
        return Session(self, info)

    async def list_sessions(self) -> List["pb.SessionInfo"]:
        """The caller's sessions (every session, for an admin key)."""
        return list((await self._call(self.gateway.ListSessions,
                                      pb.ListSessionsRequest())).sessions)

    async def reload(self, *, promote: str = "", rollback: str = "") -> "pb.ReloadResponse":
        """Admin: re-reads the gateway's config, or ends a rollout."""
        return await self._call(self.admin.Reload,
                                pb.ReloadRequest(promote=promote, rollback=rollback))

    async def close(self) -> None:
        """Closes the channel."""
        await self.channel.close()

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


class Session:
    """One open session; `async with` closes it on exit."""

    def __init__(self, client: Client, info: "pb.SessionInfo") -> None:
        self.client = client
        self.id: str = info.session_id
        self.info = info
        #: The last error the keep-alive renewal met, if any.
        self.keep_alive_error: Optional[GatewayError] = None
        self._renewer: Optional[asyncio.Task] = None

    async def _call(self, method, request):
        return await self.client._call(method, request, self.id)

    async def invoke(self, name: str, payload: Union[bytes, str] = b"", *,
                     correlation_id: str = "") -> bytes:
        """Runs one command; raises `CommandError` if the plugin refused it."""
        reply = await self._call(self.client.gateway.Invoke, pb.InvokeRequest(
            session_id=self.id, correlation_id=correlation_id,
            command=pb.Command(name=name, payload=_common.as_bytes(payload))))
        return _common.reply_payload(reply)

    async def batch(self, commands: Iterable[CommandLike]) -> List[Union[bytes, CommandError]]:
        """Runs commands in order in one round trip; errors are returned."""
        reply = await self._call(self.client.gateway.InvokeBatch, pb.InvokeBatchRequest(
            session_id=self.id, commands=_common.batch_commands(commands)))
        return _common.results(reply)

    def events(self, after: Optional[int] = None, *, resume: bool = True,
               max_retries: int = 20) -> "Events":
        """The session's events, resumed after a broken stream."""
        return Events(self, after, resume, max_retries)

    async def renew(self) -> "pb.SessionInfo":
        """Extends the lease by its duration from now."""
        self.info = await self._call(self.client.gateway.RenewLease,
                                     pb.RenewLeaseRequest(session_id=self.id))
        return self.info

    async def refresh(self) -> "pb.SessionInfo":
        """Describes the session anew."""
        self.info = await self._call(self.client.gateway.GetSession,
                                     pb.GetSessionRequest(session_id=self.id))
        return self.info

    def keep_alive(self, interval: Optional[Duration] = None) -> "Session":
        """Renews the lease from a task every `interval` (a third of the
        lease by default) until `close`; see the sync `Session.keep_alive`."""
        if self._renewer is not None:
            return self
        every = _common.renew_interval(self.info, interval)

        async def loop() -> None:
            while True:
                await asyncio.sleep(every)
                try:
                    await self.renew()
                    self.keep_alive_error = None
                except NotFound as e:
                    self.keep_alive_error = e
                    return
                except GatewayError as e:
                    self.keep_alive_error = e

        self._renewer = asyncio.get_running_loop().create_task(loop())
        return self

    async def close(self) -> "pb.CloseSessionResponse":
        """Closes the session (idempotent while the gateway still knows it)."""
        if self._renewer is not None:
            self._renewer.cancel()
            try:
                await self._renewer
            except asyncio.CancelledError:
                pass
        return await self._call(self.client.gateway.CloseSession,
                                pb.CloseSessionRequest(session_id=self.id))

    async def __aenter__(self) -> "Session":
        return self

    async def __aexit__(self, *exc) -> None:
        try:
            await self.close()
        except NotFound:
            pass


class Events(AsyncIterator["pb.Event"]):
    """An async iterator over a session's events that resumes after a
    broken stream from the last sequence it returned."""

    def __init__(self, session: Session, after: Optional[int], resume: bool,
                 max_retries: int) -> None:
        self.session = session
        self.last_sequence = after
        self.resumes = 0
        self._resume = resume
        self._max_retries = max_retries
        self._call = None
        self._cancelled = False

    def _open(self):
        req = pb.StreamEventsRequest(session_id=self.session.id)
        if self.last_sequence is not None:
            req.resume_after_sequence = self.last_sequence
        md = _common.metadata(self.session.client.api_key, self.session.id)
        return self.session.client.gateway.StreamEvents(req, metadata=md)

    def __aiter__(self) -> "Events":
        return self

    async def __anext__(self) -> "pb.Event":
        failures = 0
        while True:
            if self._cancelled:
                raise StopAsyncIteration
            if self._call is None:
                self._call = self._open()
            try:
                event = await self._call.read()
            except grpc.RpcError as e:
                self._call = None
                if self._cancelled:
                    raise StopAsyncIteration from None
                if (self._resume and e.code() in _common.RESUMABLE
                        and failures < self._max_retries):
                    failures += 1
                    self.resumes += 1
                    await asyncio.sleep(min(0.02 * failures, 1.0))
                    continue
                raise from_rpc_error(e) from None
            if event is grpc.aio.EOF:
                self._call = None
                raise StopAsyncIteration
            self.last_sequence = event.sequence
            return event

    def cancel(self) -> None:
        """Ends the stream."""
        self._cancelled = True
        if self._call is not None:
            self._call.cancel()

    async def __aenter__(self) -> "Events":
        return self

    async def __aexit__(self, *exc) -> None:
        self.cancel()

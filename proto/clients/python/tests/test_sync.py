"""The synchronous client against a real gateway."""

import datetime
import threading
import time

import grpc
import pytest

import gatehouse_client as gh
from gatehouse_client import CommandError, CommandErrorKind, pb

from conftest import API_KEY


@pytest.fixture
def client(gateway):
    with gh.Client(gateway.addr, timeout=30) as c:
        yield c


def test_list_backends_names_the_defaults(client):
    names = {b.name for b in client.list_backends()}
    assert {"echo", "kv", "sim-device"} <= names


def test_open_invoke_close(client):
    with client.open("echo", name="py", correlation_id="row-7") as s:
        assert s.info.state == pb.SESSION_STATE_READY
        assert s.info.client_session_name == "py"
        assert [s.invoke("count") for _ in range(3)] == [b"1", b"2", b"3"]
        assert s.invoke("echo", "héllo") == "héllo".encode()
        assert s.refresh().client_correlation_id == "row-7"
    closed = s.close()
    assert closed.already_closed and closed.final_state == pb.SESSION_STATE_CLOSED


def test_a_command_error_is_not_a_gateway_error(client):
    with client.open("echo") as s:
        with pytest.raises(CommandError) as e:
            s.invoke("nope")
        assert e.value.kind is CommandErrorKind.UNKNOWN_COMMAND
        assert not isinstance(e.value, gh.GatewayError)
        with pytest.raises(CommandError) as e:
            s.invoke("emit", b"many")
        assert e.value.kind is CommandErrorKind.INVALID_PAYLOAD
        # The session is still READY.
        assert s.invoke("count") == b"1"


def test_a_call_runs_on_a_fresh_instance_and_leaves_no_session(client):
    before = {s.session_id for s in client.list_sessions()}
    assert client.call("echo", "echo", "hi") == b"hi"
    # Each call has an instance of its own.
    assert [client.call("echo", "count") for _ in range(3)] == [b"1", b"1", b"1"]
    with pytest.raises(CommandError) as e:
        client.call("echo", "nope")
    assert e.value.kind is CommandErrorKind.UNKNOWN_COMMAND
    with pytest.raises(gh.NotFound):
        client.call("no-such-backend", "echo")
    # No session was created, not even a closed one.
    assert {s.session_id for s in client.list_sessions()} == before


def test_batch_returns_each_outcome_in_order(client):
    with client.open("echo") as s:
        out = s.batch(["count", ("echo", b"x"), ("nope", b""), "count"])
        assert out[0] == b"1" and out[1] == b"x" and out[3] == b"2"
        assert isinstance(out[2], CommandError)
        assert out[2].kind is CommandErrorKind.UNKNOWN_COMMAND


def test_events_resume_across_streams_the_gateway_ends(client):
    """Ticks arrive for 1.2s; the gateway ends each stream after 400ms
    (UNAVAILABLE). The iterator resumes after the last sequence: every event
    once, in order."""
    with client.open("echo") as s:
        s.invoke("ticks", b"100,12")
        events = s.events()
        got = []
        for event in events:
            got.append(event)
            if len(got) == 12:
                events.cancel()
        assert [e.sequence for e in got] == list(range(1, 13))
        assert all(e.name == "tick" and e.dropped_before == 0 for e in got)
        assert events.resumes >= 1, "the stream should have been ended at least once"


def test_events_replay_after_a_sequence(client):
    with client.open("echo") as s:
        s.invoke("emit", b"5")
        with s.events() as first:
            assert [next(first).sequence for _ in range(5)] == [1, 2, 3, 4, 5]
        with s.events(after=3) as replay:
            assert [next(replay).sequence for _ in range(2)] == [4, 5]
            assert replay.last_sequence == 5


def test_renew_moves_the_lease_on(client):
    with client.open("echo", lease=5) as s:
        before = s.info.lease_expires_at.ToDatetime()
        time.sleep(0.05)
        after = s.renew().lease_expires_at.ToDatetime()
        assert after > before
        assert s.info.lease.ToTimedelta() == datetime.timedelta(seconds=5)


def test_keep_alive_outlives_the_lease(client):
    """A 1s lease renewed every 200ms is still open after 2.5s."""
    with client.open("echo", lease=1, keep_alive=True, keep_alive_interval=0.2) as s:
        time.sleep(2.5)
        assert s.refresh().state == pb.SESSION_STATE_READY
        assert s.keep_alive_error is None
        assert s.invoke("count") == b"1"


def test_without_keep_alive_the_lease_runs_out(client):
    """Watched through ListSessions, which (unlike GetSession, a use of the
    session) does not renew the lease."""
    s = client.open("echo", lease=0.5)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        mine = [i for i in client.list_sessions() if i.session_id == s.id]
        if not mine:
            return
        if mine[0].state == pb.SESSION_STATE_CLOSED:
            assert mine[0].close_reason == pb.CLOSE_REASON_LEASE_EXPIRED
            return
        time.sleep(0.1)
    pytest.fail("a session nobody renewed stayed open")


def test_unknown_session_is_not_found(client):
    with pytest.raises(gh.NotFound) as e:
        client.session("no-such-session")
    assert e.value.code == grpc.StatusCode.NOT_FOUND
    assert e.value.retry_delay is None
    with pytest.raises(gh.NotFound):
        client.open("no-such-backend")


def test_close_is_idempotent(client):
    s = client.open("echo")
    first, second = s.close(), s.close()
    assert first.final_state == pb.SESSION_STATE_CLOSED and not first.already_closed
    assert second.already_closed


def test_a_native_session_looks_the_same(client):
    with client.open("sim-device") as s:
        assert s.info.backend_kind == pb.BACKEND_KIND_NATIVE and s.info.worker_pid > 0
        s.invoke("write", b"t 7")
        assert s.invoke("read", b"t") == b"7"
        s.invoke("subscribe", b"sim.ramp 20")
        with s.events() as events:
            first = next(events)
        assert first.sequence == 1 and first.name == "data-change"


def test_quota_is_resource_exhausted_with_a_retry_delay(keyed):
    with gh.Client(keyed.addr, api_key=API_KEY, timeout=30) as c:
        with c.open("echo") as s:
            assert s.invoke("whoami").find(b'"tenant":"py"') >= 0
            with pytest.raises(gh.ResourceExhausted) as e:
                c.open("echo")
            assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert isinstance(e.value.retry_delay, datetime.timedelta)
            assert e.value.retry_delay > datetime.timedelta(0)


def test_a_missing_or_wrong_key_is_unauthenticated(keyed):
    for key in (None, "ghk_wrong"):
        with gh.Client(keyed.addr, api_key=key, timeout=30) as c:
            with pytest.raises(gh.Unauthenticated):
                c.list_backends()


class _Recorder(grpc.GenericRpcHandler):
    """A stand-in gateway that answers every method with an empty message
    and records each call's metadata."""

    def __init__(self):
        self.calls = {}

    def service(self, details):
        method = details.method.rsplit("/", 1)[-1]
        self.calls[method] = dict(details.invocation_metadata)
        if method == "StreamEvents":
            return grpc.unary_stream_rpc_method_handler(lambda req, ctx: iter(()))
        return grpc.unary_unary_rpc_method_handler(lambda req, ctx: b"")


def test_every_call_naming_a_session_carries_its_id():
    from concurrent import futures

    recorder = _Recorder()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=[recorder])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with gh.Client(f"127.0.0.1:{port}", api_key="k", timeout=10) as c:
            s = gh.Session(c, pb.SessionInfo(session_id="s-1"))
            s.invoke("x")
            s.batch(["x"])
            list(s.events(resume=False))
            s.renew()
            s.refresh()
            s.close()
            c.list_backends()
    finally:
        server.stop(None)
    for method in ("Invoke", "InvokeBatch", "StreamEvents", "RenewLease", "GetSession",
                   "CloseSession"):
        assert recorder.calls[method].get(gh.SESSION_HEADER) == "s-1", method
        assert recorder.calls[method].get("authorization") == "Bearer k", method
    assert gh.SESSION_HEADER not in recorder.calls["ListBackends"]


def test_a_keep_alive_stops_with_the_session(client):
    s = client.open("echo", keep_alive=True, keep_alive_interval=0.05)
    s.close()
    assert not any(t.name == f"gatehouse-renew-{s.id}" for t in threading.enumerate())

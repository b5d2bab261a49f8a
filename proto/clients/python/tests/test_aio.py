"""The asyncio client against a real gateway: the same shape as the sync one."""

import asyncio
import datetime

import grpc
import pytest

import gatehouse_client as gh
from gatehouse_client import CommandError, CommandErrorKind, aio, pb

from conftest import API_KEY


def run(coro):
    return asyncio.run(coro)


def test_open_invoke_batch_close(gateway):
    async def go():
        async with aio.Client(gateway.addr, timeout=30) as c:
            assert "echo" in {b.name for b in await c.list_backends()}
            async with await c.open("echo", name="aio") as s:
                assert s.info.state == pb.SESSION_STATE_READY
                assert await s.invoke("count") == b"1"
                assert await s.invoke("echo", b"hi") == b"hi"
                out = await s.batch(["count", ("nope", b"")])
                assert out[0] == b"2" and isinstance(out[1], CommandError)
                with pytest.raises(CommandError) as e:
                    await s.invoke("nope")
                assert e.value.kind is CommandErrorKind.UNKNOWN_COMMAND
                renewed = await s.renew()
                assert renewed.state == pb.SESSION_STATE_READY
            closed = await s.close()
            assert closed.already_closed

    run(go())


def test_a_call_runs_on_a_fresh_instance(gateway):
    async def go():
        async with aio.Client(gateway.addr, timeout=30) as c:
            before = {s.session_id for s in await c.list_sessions()}
            assert await c.call("echo", "count") == b"1"
            assert await c.call("echo", "count") == b"1"
            with pytest.raises(CommandError):
                await c.call("echo", "nope", command_timeout=5)
            # No session was created, not even a closed one.
            assert {s.session_id for s in await c.list_sessions()} == before

    run(go())


def test_events_resume_across_streams_the_gateway_ends(gateway):
    async def go():
        async with aio.Client(gateway.addr, timeout=30) as c:
            async with await c.open("echo") as s:
                await s.invoke("ticks", b"100,12")
                events = s.events()
                got = []
                async for event in events:
                    got.append(event.sequence)
                    if len(got) == 12:
                        events.cancel()
                assert got == list(range(1, 13))
                assert events.resumes >= 1

    run(go())


def test_keep_alive_outlives_the_lease(gateway):
    async def go():
        async with aio.Client(gateway.addr, timeout=30) as c:
            async with await c.open("echo", lease=1, keep_alive=True,
                                    keep_alive_interval=0.2) as s:
                await asyncio.sleep(2.5)
                assert (await s.refresh()).state == pb.SESSION_STATE_READY
                assert s.keep_alive_error is None

    run(go())


def test_errors_are_typed(gateway, keyed):
    async def go():
        async with aio.Client(gateway.addr, timeout=30) as c:
            with pytest.raises(gh.NotFound) as e:
                await c.session("no-such-session")
            assert e.value.code == grpc.StatusCode.NOT_FOUND
        async with aio.Client(keyed.addr, api_key=API_KEY, timeout=30) as c:
            async with await c.open("echo"):
                with pytest.raises(gh.ResourceExhausted) as e:
                    await c.open("echo")
                assert e.value.retry_delay is not None
                assert e.value.retry_delay > datetime.timedelta(0)

    run(go())

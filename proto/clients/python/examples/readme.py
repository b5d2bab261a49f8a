"""The README's example, run as written by the test suite
(tests/test_readme.py) against a real gateway: GATEHOUSE_ADDR names it,
GATEHOUSE_KEY the API key if it needs one."""

import os

from gatehouse_client import Client, CommandError

addr = os.environ.get("GATEHOUSE_ADDR", "127.0.0.1:50051")
key = os.environ.get("GATEHOUSE_KEY")  # None: a gateway in local development mode

with Client(addr, api_key=key, timeout=30) as client:
    print([b.name for b in client.list_backends()])
    # One command on a fresh instance, dropped afterwards: no session is left.
    print(client.call("echo", "echo", b"one-off"))       # -> b"one-off"
    with client.open("echo", lease=60, keep_alive=True) as session:
        print(session.invoke("echo", b"hello"))          # -> b"hello"
        print(session.batch(["count", ("echo", b"x")]))  # -> [b"1", b"x"]
        try:
            session.invoke("nope")
        except CommandError as e:                        # the plugin said no;
            print(e.kind, e.message)                     # the session is still READY
        again = client.session(session.id)               # a handle on it by id
        print(again.info.state == session.info.state)    # -> True
        print([s.session_id for s in client.list_sessions()])
        session.invoke("ticks", b"100,5")
        for event in session.events():                   # resumes after a broken stream
            print(event.sequence, event.name, event.payload)
            if event.sequence == 5:
                break

#!/usr/bin/env python3
"""A gatehouse client written in Python from the proto alone (grpcio).

It compiles proto/gatehouse/v1/gateway.proto with grpcio-tools at run time,
then opens a session, invokes commands, streams events and closes it.

    pip install grpcio grpcio-tools
    python3 tests/python/client.py --addr 127.0.0.1:50051
    python3 tests/python/client.py --spawn target/debug/gatehouse   # starts its own gateway
    # a client generated from the 0.1.0 proto (the compatibility promise):
    python3 tests/python/client.py --proto-dir tests/fixtures/proto-0.1.0 --spawn target/debug/gatehouse
    python3 tests/python/client.py --addr localhost:50051 --ca-cert ca.pem   # over TLS
    # mutual TLS: add --client-cert client.pem --client-key client.key
"""

import argparse
import importlib
import os
import signal
import subprocess
import sys
import tempfile
import time

import grpc
import grpc_tools
from grpc_tools import protoc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_stubs(proto_dir=None):
    out = tempfile.mkdtemp(prefix="gatehouse-py-")
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    rc = protoc.main([
        "protoc",
        f"-I{proto_dir or os.path.join(ROOT, 'proto')}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        "gatehouse/v1/gateway.proto",
    ])
    if rc != 0:
        sys.exit(f"protoc failed with {rc}")
    sys.path.insert(0, out)
    return (importlib.import_module("gatehouse.v1.gateway_pb2"),
            importlib.import_module("gatehouse.v1.gateway_pb2_grpc"))


def spawn(binary):
    proc = subprocess.Popen(
        [binary, "serve", "--listen", "127.0.0.1:0", "--metrics-listen", "off"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    if "grpc=" not in line:
        proc.kill()
        sys.exit(f"gateway did not start: {line!r}")
    return proc, line.split("grpc=")[1].split()[0]


def resume(gw, pb, sid, after, attempts=100):
    """Subscribes again after `after`. Right after a cancel the gateway may
    not have detached the old stream yet (ALREADY_EXISTS): retry briefly."""
    for attempt in range(attempts):
        stream = gw.StreamEvents(pb.StreamEventsRequest(session_id=sid, resume_after_sequence=after))
        try:
            return stream, next(stream)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.ALREADY_EXISTS or attempt == attempts - 1:
                raise
            time.sleep(0.02)


def health(channel, service=""):
    """grpc.health.v1.Health/Check with hand-encoded messages: field 1
    (service) as a string; the reply's field 1 is the status (1 = SERVING)."""
    check = channel.unary_unary("/grpc.health.v1.Health/Check",
                                request_serializer=lambda b: b,
                                response_deserializer=lambda b: b)
    name = service.encode()
    return check(b"\x0a" + bytes([len(name)]) + name if name else b"")


def open_channel(addr, ca_cert=None, client_cert=None, client_key=None):
    """Plaintext, or TLS trusting `ca_cert` (and presenting a client
    certificate for mutual TLS) through grpc.ssl_channel_credentials."""
    if not ca_cert:
        return grpc.insecure_channel(addr)

    def read(path):
        with open(path, "rb") as f:
            return f.read()

    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(ca_cert),
        private_key=read(client_key) if client_key else None,
        certificate_chain=read(client_cert) if client_cert else None)
    return grpc.secure_channel(addr, credentials)


def run(channel, pb, rpc):
    checks = []

    def check(name, ok):
        checks.append((name, bool(ok)))
        print(f"{'ok  ' if ok else 'FAIL'} {name}")

    with channel:
        gw = rpc.GatewayStub(channel)
        check("health reports SERVING", health(channel) == b"\x08\x01"
              and health(channel, "gatehouse.v1.Gateway") == b"\x08\x01")
        backends = gw.ListBackends(pb.ListBackendsRequest())
        check("ListBackends lists echo", any(b.name == "echo" for b in backends.backends))

        opened = gw.OpenSession(pb.OpenSessionRequest(backend="echo", client_session_name="py"))
        sid = opened.session.session_id
        check("OpenSession returns READY", opened.session.state == pb.SESSION_STATE_READY)

        counts = [gw.Invoke(pb.InvokeRequest(session_id=sid, command=pb.Command(name="count"))).payload
                  for _ in range(3)]
        check("count is per session: 1, 2, 3", counts == [b"1", b"2", b"3"])

        reply = gw.Invoke(pb.InvokeRequest(session_id=sid, correlation_id="c-1",
                                           command=pb.Command(name="echo", payload=b"hello")))
        check("echo returns the payload", reply.payload == b"hello" and reply.correlation_id == "c-1")

        bad = gw.Invoke(pb.InvokeRequest(session_id=sid, command=pb.Command(name="nope")))
        check("a plugin error comes back inside an OK response",
              bad.error.kind == pb.CommandError.KIND_UNKNOWN_COMMAND)

        gw.Invoke(pb.InvokeRequest(session_id=sid, command=pb.Command(name="emit", payload=b"5")))
        stream = gw.StreamEvents(pb.StreamEventsRequest(session_id=sid))
        events = []
        for event in stream:
            events.append(event)
            if len(events) == 5:
                stream.cancel()
                break
        check("five tick events with sequences 1..5",
              [e.sequence for e in events] == [1, 2, 3, 4, 5]
              and all(e.name == "tick" for e in events))

        replay, first = resume(gw, pb, sid, 3)
        resumed = [first.sequence, next(replay).sequence]
        replay.cancel()
        check("resume_after_sequence replays 4, 5", resumed == [4, 5])

        try:
            gw.GetSession(pb.GetSessionRequest(session_id="no-such-session"))
            check("unknown session is NOT_FOUND", False)
        except grpc.RpcError as e:
            check("unknown session is NOT_FOUND", e.code() == grpc.StatusCode.NOT_FOUND)

        first = gw.CloseSession(pb.CloseSessionRequest(session_id=sid))
        second = gw.CloseSession(pb.CloseSessionRequest(session_id=sid))
        check("close is idempotent",
              first.final_state == pb.SESSION_STATE_CLOSED and not first.already_closed
              and second.already_closed)

        # A native session (one worker process) looks the same to a client.
        native = gw.OpenSession(pb.OpenSessionRequest(backend="sim-device")).session
        check("a native session is READY with a worker pid",
              native.state == pb.SESSION_STATE_READY
              and native.backend_kind == pb.BACKEND_KIND_NATIVE and native.worker_pid > 0)
        nid = native.session_id
        gw.Invoke(pb.InvokeRequest(session_id=nid, command=pb.Command(name="write", payload=b"t 7")))
        read = gw.Invoke(pb.InvokeRequest(session_id=nid, command=pb.Command(name="read", payload=b"t")))
        check("sim-device reads back what was written", read.payload == b"7")
        gw.Invoke(pb.InvokeRequest(session_id=nid,
                                   command=pb.Command(name="subscribe", payload=b"sim.ramp 20")))
        stream = gw.StreamEvents(pb.StreamEventsRequest(session_id=nid))
        first_event = next(stream)
        stream.cancel()
        check("sim-device subscriptions stream data-change events",
              first_event.sequence == 1 and first_event.name == "data-change")
        closed = gw.CloseSession(pb.CloseSessionRequest(session_id=nid))
        check("a native session closes", closed.final_state == pb.SESSION_STATE_CLOSED)

    failed = sum(1 for _, ok in checks if not ok)
    print(f"python: {len(checks) - failed} passed, {failed} failed")
    return failed == 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", default="127.0.0.1:50051")
    parser.add_argument("--spawn", help="path of a gatehouse binary to start for the run")
    parser.add_argument("--ca-cert", help="PEM CA to trust: connect over TLS")
    parser.add_argument("--client-cert", help="PEM client certificate, for mutual TLS")
    parser.add_argument("--client-key", help="PEM key of the client certificate")
    parser.add_argument("--proto-dir",
                        help="generate the client from the protos under this directory "
                             "(default: proto/), e.g. tests/fixtures/proto-0.1.0")
    args = parser.parse_args()
    pb, rpc = load_stubs(args.proto_dir and os.path.abspath(args.proto_dir))
    proc = None
    addr = args.addr
    if args.spawn:
        proc, addr = spawn(args.spawn)
    try:
        channel = open_channel(addr, args.ca_cert, args.client_cert, args.client_key)
        ok = run(channel, pb, rpc)
    finally:
        if proc:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

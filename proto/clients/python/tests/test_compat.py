"""The compatibility promise: a client generated from the 0.1.0 proto
(tests/fixtures/proto-0.1.0), with nothing but grpcio, still works.

It runs in a subprocess: the old and the current gateway.proto have the
same file name, and one process's protobuf registry takes only one.
"""

import subprocess
import sys
from pathlib import Path

from conftest import ROOT

SCRIPT = r'''
import importlib, os, sys, tempfile, time
import grpc, grpc_tools
from grpc_tools import protoc

proto_dir, addr = sys.argv[1], sys.argv[2]
out = tempfile.mkdtemp(prefix="gatehouse-0.1.0-")
well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
assert protoc.main(["protoc", f"-I{proto_dir}", f"-I{well_known}", f"--python_out={out}",
                    f"--grpc_python_out={out}", "gatehouse/v1/gateway.proto"]) == 0
sys.path.insert(0, out)
pb = importlib.import_module("gatehouse.v1.gateway_pb2")
rpc = importlib.import_module("gatehouse.v1.gateway_pb2_grpc")
with grpc.insecure_channel(addr) as channel:
    gw = rpc.GatewayStub(channel)
    assert any(b.name == "echo" for b in gw.ListBackends(pb.ListBackendsRequest()).backends)
    s = gw.OpenSession(pb.OpenSessionRequest(backend="echo", client_session_name="old")).session
    assert s.state == pb.SESSION_STATE_READY
    sid = s.session_id
    inv = lambda name, payload=b"": gw.Invoke(pb.InvokeRequest(
        session_id=sid, command=pb.Command(name=name, payload=payload)))
    assert [inv("count").payload for _ in range(3)] == [b"1", b"2", b"3"]
    assert inv("nope").error.kind == pb.CommandError.KIND_UNKNOWN_COMMAND
    inv("emit", b"3")
    stream = gw.StreamEvents(pb.StreamEventsRequest(session_id=sid))
    seqs = [next(stream).sequence for _ in range(3)]
    stream.cancel()
    assert seqs == [1, 2, 3], seqs
    try:
        gw.GetSession(pb.GetSessionRequest(session_id="no-such-session"))
        raise AssertionError("NOT_FOUND expected")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND
    first = gw.CloseSession(pb.CloseSessionRequest(session_id=sid))
    assert first.final_state == pb.SESSION_STATE_CLOSED and not first.already_closed
print("compat ok")
'''


def test_a_client_generated_from_the_0_1_0_proto_works(gateway):
    # Not skipped when missing: the test extra installs it.
    import grpc_tools  # noqa: F401  (pip install "./proto/clients/python[test]")

    fixture = ROOT / "tests" / "fixtures" / "proto-0.1.0"
    assert (fixture / "gatehouse" / "v1" / "gateway.proto").is_file()
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(fixture), gateway.addr],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "compat ok" in out.stdout

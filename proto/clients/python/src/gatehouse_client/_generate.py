"""Generates the gRPC stubs from gateway.proto with grpcio-tools.

Used by setup.py at build time, and by `_stubs` at import time when the
package runs from a source tree that was never built (an editable install).
Standard library only at import: setup.py loads it before anything is
installed.
"""

import os
import re

PROTO = "gatehouse/v1/gateway.proto"
PACKAGE = "gatehouse_client._proto"


def proto_dir(start: str) -> str:
    """The directory holding gatehouse/v1/gateway.proto: $GATEHOUSE_PROTO_DIR,
    or the nearest parent of `start` that holds it (proto/ in the repository)."""
    env = os.environ.get("GATEHOUSE_PROTO_DIR")
    if env:
        return env
    here = os.path.abspath(start)
    while True:
        if os.path.isfile(os.path.join(here, PROTO)):
            return here
        parent = os.path.dirname(here)
        if parent == here:
            raise FileNotFoundError(
                f"{PROTO} not found above {start}; set GATEHOUSE_PROTO_DIR")
        here = parent


def generate(src: str, out: str) -> None:
    """Writes gateway_pb2.py, gateway_pb2.pyi and gateway_pb2_grpc.py under
    `out`/gatehouse/v1, importing each other as `gatehouse_client._proto...`."""
    import grpc_tools
    from grpc_tools import protoc

    os.makedirs(out, exist_ok=True)
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    rc = protoc.main([
        "protoc", f"-I{src}", f"-I{well_known}",
        f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}",
        PROTO,
    ])
    if rc != 0:
        raise RuntimeError(f"protoc failed on {os.path.join(src, PROTO)} with {rc}")
    for d in ("", "gatehouse", "gatehouse/v1"):
        open(os.path.join(out, d, "__init__.py"), "a").close()
    # protoc writes absolute imports of a top-level `gatehouse` package;
    # the stubs live inside this one.
    for name in ("gateway_pb2.py", "gateway_pb2.pyi", "gateway_pb2_grpc.py"):
        path = os.path.join(out, "gatehouse", "v1", name)
        with open(path) as f:
            text = f.read()
        text = re.sub(r"^from gatehouse\.v1 import", f"from {PACKAGE}.gatehouse.v1 import",
                      text, flags=re.M)
        with open(path, "w") as f:
            f.write(text)

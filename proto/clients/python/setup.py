"""Builds gatehouse-client with its gRPC stubs generated from the proto.

The stubs are not kept in the repository: `build_py` runs grpcio-tools'
protoc on `proto/gatehouse/v1/gateway.proto` (two directories up, or
$GATEHOUSE_PROTO_DIR) and writes `gatehouse_client/_proto/` into the build,
with `.pyi` type stubs beside the modules.
"""

import os
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "src", "gatehouse_client"))
import _generate  # noqa: E402  (the same generator the import-time fallback uses)


def dependencies():
    """grpcio and protobuf no older than the generator: generated code
    refuses to load on an older runtime."""
    import grpc_tools
    from google.protobuf import __version__ as protobuf_version
    from importlib.metadata import version

    tools = version("grpcio-tools")
    major_minor = lambda v: ".".join(v.split(".")[:2])  # noqa: E731
    del grpc_tools
    return [
        f"grpcio>={major_minor(tools)}",
        f"protobuf>={major_minor(protobuf_version)}",
        "googleapis-common-protos>=1.56",
    ]


class BuildWithStubs(build_py):
    """build_py, then protoc into the built package."""

    def run(self):
        super().run()
        out = os.path.join(self.build_lib, "gatehouse_client", "_proto")
        _generate.generate(_generate.proto_dir(HERE), out)


setup(cmdclass={"build_py": BuildWithStubs}, install_requires=dependencies())

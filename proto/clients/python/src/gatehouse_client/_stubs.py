"""The generated messages (`pb`) and service stubs (`rpc`).

A built package carries them in `_proto/`. Run from a source tree that was
never built (an editable install), they are generated on first import into
a cache directory keyed by the proto's content.
"""

import hashlib
import importlib
import os
import sys

try:
    from ._proto.gatehouse.v1 import gateway_pb2 as pb
    from ._proto.gatehouse.v1 import gateway_pb2_grpc as rpc
except ImportError:  # not built: generate once into the cache
    from . import _generate

    _src = _generate.proto_dir(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(_src, _generate.PROTO), "rb") as _f:
        _key = hashlib.sha256(_f.read()).hexdigest()[:16]
    _cache = os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
        "gatehouse-client", _key)
    _root = os.path.join(_cache, "gatehouse_client", "_proto")
    if not os.path.isfile(os.path.join(_root, "gatehouse", "v1", "gateway_pb2_grpc.py")):
        _generate.generate(_src, _root)
    # The cached `_proto` joins this package's search path.
    _pkg_path = sys.modules[__package__].__path__
    _pkg_path.append(os.path.join(_cache, "gatehouse_client"))
    pb = importlib.import_module(f"{__package__}._proto.gatehouse.v1.gateway_pb2")
    rpc = importlib.import_module(f"{__package__}._proto.gatehouse.v1.gateway_pb2_grpc")

__all__ = ["pb", "rpc"]

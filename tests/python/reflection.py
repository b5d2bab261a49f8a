#!/usr/bin/env python3
"""Lists a gateway's services and the Gateway's methods through gRPC server
reflection, as Python's grpcio-reflection does it (it speaks only v1alpha).

    pip install grpcio grpcio-reflection
    python3 tests/python/reflection.py 127.0.0.1:50051

Prints one `service NAME` line per service and one `method NAME` line per
Gateway method; exits non-zero if reflection fails.
"""

import sys

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: reflection.py HOST:PORT")
    with grpc.insecure_channel(sys.argv[1]) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        db = ProtoReflectionDescriptorDatabase(channel)
        for name in db.get_services():
            print(f"service {name}")
        gateway = DescriptorPool(db).FindServiceByName("gatehouse.v1.Gateway")
        for method in gateway.methods:
            print(f"method {method.name}")


if __name__ == "__main__":
    main()

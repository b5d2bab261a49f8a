#!/usr/bin/env python3
"""A misbehaving native worker for the integration tests.

usage: fake_worker.py MODE PID_DIR

Writes its pid as a file into PID_DIR, then, by MODE:
  bad-nonce    a hello with the wrong nonce
  bad-version  a hello with protocol version 99
  oversize     a frame header announcing 2 GiB
  garbage      a frame that is not protobuf
  survivor     clears its parent-death signal, speaks the protocol properly,
               and ignores the gateway going away (a leftover in the making)
and then sleeps, so the test can see whether the gateway killed it.

The protobuf is encoded by hand (a few fields of worker.proto) so the test
needs nothing but python3.
"""

import ctypes
import os
import socket
import struct
import sys
import threading
import time


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def read_varint(buf, i):
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def field_bytes(num, data):
    return varint(num << 3 | 2) + varint(len(data)) + data


def field_varint(num, value):
    return varint(num << 3) + varint(value)


def frame(msg):
    return struct.pack(">I", len(msg)) + msg


def hello(nonce, version):
    body = field_bytes(1, nonce.encode()) + field_varint(2, version) + field_varint(3, os.getpid())
    return frame(field_bytes(1, body))  # FromWorker.hello = 1


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def survivor(sock):
    # PR_SET_PDEATHSIG = 1: undo what the gateway set up, as a badly
    # behaved program might.
    ctypes.CDLL(None, use_errno=True).prctl(1, 0, 0, 0, 0)
    lock = threading.Lock()

    def send(msg):
        with lock:
            sock.sendall(frame(msg))

    def beat():
        while True:
            time.sleep(0.1)
            try:
                send(field_bytes(5, b""))  # FromWorker.heartbeat = 5
            except OSError:
                return

    threading.Thread(target=beat, daemon=True).start()
    while True:
        header = recv_exact(sock, 4)
        if header is None:
            break  # the gateway is gone: a good worker would exit here
        (length,) = struct.unpack(">I", header)
        body = recv_exact(sock, length)
        if body is None:
            break
        key, i = read_varint(body, 0)
        field = key >> 3
        if field == 1:  # ToWorker.open
            send(field_bytes(2, field_varint(1, 1)))  # Opened{ok: true}
        elif field == 2:  # ToWorker.command
            size, i = read_varint(body, i)
            command = body[i : i + size]
            cid = 0
            if command and command[0] == 0x08:
                cid, _ = read_varint(command, 1)
            send(field_bytes(3, field_varint(1, cid) + field_bytes(2, b"ok")))
        elif field == 4:  # ToWorker.shutdown
            return
    while True:
        time.sleep(60)


def main():
    mode, pid_dir = sys.argv[1], sys.argv[2]
    with open(os.path.join(pid_dir, str(os.getpid())), "w") as f:
        f.write(mode)
    print(f"fake worker {mode} starting", file=sys.stderr, flush=True)
    sock = socket.socket(fileno=int(os.environ["GATEHOUSE_WORKER_FD"]))
    nonce = os.environ["GATEHOUSE_NONCE"]
    version = int(os.environ["GATEHOUSE_PROTOCOL_VERSION"])
    if mode == "bad-nonce":
        sock.sendall(hello("0" * 64, version))
    elif mode == "bad-version":
        sock.sendall(hello(nonce, 99))
    elif mode == "oversize":
        sock.sendall(struct.pack(">I", 0x7FFFFFFF) + b"x" * 16)
    elif mode == "garbage":
        sock.sendall(frame(b"\xff" * 8))
    elif mode == "survivor":
        sock.sendall(hello(nonce, version))
        survivor(sock)
    time.sleep(300)


if __name__ == "__main__":
    main()

"""Fixtures: real gateways, started from the binary the workspace builds.

The binary is $GATEHOUSE_BIN, or `debug/gatehouse` under $CARGO_TARGET_DIR
or the repository's `target/`; build it first with `cargo build`.
"""

import hashlib
import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[4]

#: The key the keyed gateway's tenant `py` accepts.
API_KEY = "ghk_python_client_tests"


def binary() -> str:
    if os.environ.get("GATEHOUSE_BIN"):
        return os.environ["GATEHOUSE_BIN"]
    target = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target")
    path = target / "debug" / "gatehouse"
    if not path.exists():
        pytest.exit(f"{path} does not exist: run `cargo build` (or set GATEHOUSE_BIN)", 2)
    return str(path)


class Gateway:
    """One `gatehouse serve` process on a free loopback port."""

    def __init__(self, directory: Path, config: str) -> None:
        self.dir = directory
        (directory / "gatehouse.toml").write_text(config)
        self.stderr_path = directory / "stderr.log"
        env = {k: v for k, v in os.environ.items()
               if k not in ("GATEHOUSE_ADDR", "GATEHOUSE_KEY", "GATEHOUSE_LOG_FORMAT")}
        env["RUST_LOG"] = "info"
        # The key store's default place is the user's data directory: a
        # test gateway keeps its own, so no other gateway's keys (which end
        # local development mode) or newer schema reach it.
        env["XDG_DATA_HOME"] = str(directory)
        with open(self.stderr_path, "wb") as stderr:
            self.proc = subprocess.Popen(
                [binary(), "serve", "--config", str(directory / "gatehouse.toml"),
                 "--listen", "127.0.0.1:0", "--metrics-listen", "off"],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr,
                env=env, text=True)
        line = self.proc.stdout.readline()
        if "grpc=" not in line:
            self.proc.kill()
            raise RuntimeError(f"the gateway did not start: {line!r}\n{self.stderr()}")
        self.addr = line.split("grpc=")[1].split()[0]
        # Drain the rest so the gateway never writes into a full pipe.
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _start(tmp_path_factory, name: str, config: str) -> Iterator[Gateway]:
    gw = Gateway(tmp_path_factory.mktemp(name), config)
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="session")
def gateway(tmp_path_factory) -> Iterator[Gateway]:
    """Local development mode with the default backends (echo, kv, the
    native sim-device); event streams end after 400ms, as behind a load
    balancer, so clients must resume."""
    yield from _start(tmp_path_factory, "gateway",
                      '[server]\nmax_event_stream_age = "400ms"\n')


@pytest.fixture(scope="session")
def keyed(tmp_path_factory) -> Iterator[Gateway]:
    """API keys: tenant `py` (key API_KEY) may hold one session at a time."""
    digest = hashlib.sha256(API_KEY.encode()).hexdigest()
    yield from _start(tmp_path_factory, "keyed", f"""
[[tenants]]
name = "py"
max_sessions = 1
[[tenants.keys]]
hash = "sha256:{digest}"
scopes = ["sessions:open", "sessions:use", "sessions:read", "backends:read"]
""")

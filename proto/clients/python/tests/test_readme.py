"""The README's example: the file it shows runs as written against a real
gateway, and the README shows exactly that file."""

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
EXAMPLE = HERE / "examples" / "readme.py"


def test_the_readme_shows_the_example_file():
    readme = (HERE / "README.md").read_text()
    assert f"```python\n{EXAMPLE.read_text()}```\n" in readme, \
        "README.md's example is not examples/readme.py as it is"


def test_the_readme_example_runs_as_written(gateway):
    env = {k: v for k, v in os.environ.items() if k != "GATEHOUSE_KEY"}
    env["GATEHOUSE_ADDR"] = gateway.addr
    out = subprocess.run([sys.executable, str(EXAMPLE)], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "'echo'" in lines[0], out.stdout
    assert lines[1:4] == ["b'one-off'", "b'hello'", "[b'1', b'x']"], out.stdout
    assert "UNKNOWN_COMMAND" in lines[4] or "unknown-command" in lines[4], out.stdout
    assert lines[5] == "True", out.stdout
    assert lines[-1].startswith("5 tick"), out.stdout

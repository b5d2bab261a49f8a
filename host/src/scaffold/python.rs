//! The Python template: `app.py`, built with componentize-py.

use super::{LISTEN, WIT, gatehouse_toml};

/// The componentize-py release CI builds `plugins/py-notes` with.
const COMPONENTIZE_PY: &str = "0.25.1";

/// The project's files, relative to its root.
pub(super) fn files(name: &str) -> Vec<(&'static str, String)> {
    let wasm = format!("{name}.wasm");
    vec![
        ("app.py", app_py(name)),
        ("wit/backend.wit", WIT.to_string()),
        (
            ".gitignore",
            "*.wasm\nwit_world/\n__pycache__/\n".to_string(),
        ),
        ("README.md", readme(name, &wasm)),
        ("gatehouse.toml", gatehouse_toml(name, &wasm)),
    ]
}

/// What to run next, in the project's directory.
pub(super) fn next(name: &str) -> String {
    format!(
        "pip install componentize-py=={COMPONENTIZE_PY} && \
         componentize-py -d wit -w backend componentize app -o {name}.wasm"
    )
}

fn app_py(name: &str) -> String {
    format!(
        r#""""{name}: a gatehouse backend. Every client session gets its own
instance, so the module's state below is that session's state."""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host, types


class Session(exports.Session):
    def __init__(self):
        self.greeting = "hello"
        self.calls = 0

    def open(self, ctx: types.SessionContext) -> None:
        self.greeting = dict(ctx.config).get("greeting", "hello")

    def handle(self, cmd: types.Command) -> bytes:
        self.calls += 1
        # hello {{"name": "ada"}} -> "hello, ada"
        if cmd.name == "hello":
            try:
                name = json.loads(cmd.payload)["name"]
            except (ValueError, KeyError, TypeError) as e:
                raise Err(types.CommandError_InvalidPayload(f'expected {{"name": ...}}: {{e}}'))
            host.emit(types.Event("greeted", str(name).encode()))
            return f"{{self.greeting}}, {{name}}".encode()
        # calls -> {{"calls": N}}
        if cmd.name == "calls":
            return json.dumps({{"calls": self.calls}}).encode()
        raise Err(types.CommandError_UnknownCommand(f"no command {{cmd.name!r}}"))

    def tick(self) -> None:
        pass

    def close(self) -> None:
        pass
"#
    )
}

fn readme(name: &str, wasm: &str) -> String {
    format!(
        r#"# {name}

A gatehouse backend in Python, built with componentize-py (the component
embeds CPython: about 18 MB, compiled once and then cached by the gateway).

```sh
pip install componentize-py=={COMPONENTIZE_PY}
componentize-py -d wit -w backend componentize app -o {wasm}
gatehouse plugin check {wasm}
gatehouse serve --config gatehouse.toml  # serves it as backend "{name}" on {LISTEN}
```

Then, in another terminal:

```sh
export GATEHOUSE_ADDR={LISTEN}
SID=$(gatehouse open {name} --config greeting=hi)
gatehouse invoke $SID hello '{{"name": "ada"}}'
gatehouse close $SID
```

`componentize-py -d wit -w backend bindings .` writes the bindings
(`wit_world/`) for your editor. A command error is raised as
`Err(types.CommandError_...(message))`; any other exception traps the
instance and faults the session.
"#
    )
}

//! The JavaScript template: `app.js`, built with componentize-js.

use super::{LISTEN, WIT, gatehouse_toml};

/// The componentize-js release CI builds `plugins/js-notes` with.
pub(super) const COMPONENTIZE_JS: &str = "0.23.0";

/// The preview2-shim release `plugins/js-notes` pins.
pub(super) const PREVIEW2_SHIM: &str = "0.25.0";

/// `plugins/js-notes`'s lock file: a new project resolves exactly the
/// toolchain CI builds js-notes with (jco, preview2-shim and everything
/// under them), not whatever is newest on the registry that day.
const JS_NOTES_LOCK: &str = include_str!("../../../plugins/js-notes/package-lock.json");

/// The project's files, relative to its root.
pub(super) fn files(name: &str) -> Vec<(&'static str, String)> {
    let wasm = format!("{name}.wasm");
    vec![
        ("app.js", app_js(name)),
        ("package.json", package_json(name, &wasm)),
        ("package-lock.json", package_lock(name)),
        ("wit/backend.wit", WIT.to_string()),
        (".gitignore", "node_modules/\n*.wasm\n".to_string()),
        ("README.md", readme(name, &wasm)),
        ("gatehouse.toml", gatehouse_toml(name, &wasm)),
    ]
}

/// What to run next: `npm ci` installs exactly what the lock file says.
pub(super) const NEXT: &str = "npm ci && npm run build";

/// js-notes's lock under the project's name (the file names it twice: the
/// lock and its root package).
fn package_lock(name: &str) -> String {
    JS_NOTES_LOCK.replacen(
        "\"name\": \"gatehouse-js-notes\"",
        &format!("\"name\": \"{name}\""),
        2,
    )
}

fn package_json(name: &str, wasm: &str) -> String {
    // `-d http fetch-event`: the default runtime build imports wasi:http,
    // which gatehouse never provides.
    format!(
        r#"{{
  "name": "{name}",
  "version": "0.1.0",
  "private": true,
  "type": "module",
  "scripts": {{
    "build": "componentize-js app.js -w wit -n backend -d http fetch-event -o {wasm}"
  }},
  "devDependencies": {{
    "@bytecodealliance/componentize-js": "{COMPONENTIZE_JS}",
    "@bytecodealliance/preview2-shim": "{PREVIEW2_SHIM}"
  }}
}}
"#
    )
}

fn app_js(name: &str) -> String {
    format!(
        r#"// {name}: a gatehouse backend. Every client session gets its own
// instance, so module-level state is that session's state.
import {{ emit }} from "gatehouse:backend/host@0.2.0";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

let greeting = "hello";
let calls = 0;

// A command error is thrown as {{tag, val}}, tag being the WIT case name.
const invalidPayload = (val) => ({{ tag: "invalid-payload", val }});

function run(cmd) {{
  switch (cmd.name) {{
    // hello {{"name": "ada"}} -> "hello, ada"
    case "hello": {{
      let name;
      try {{
        name = JSON.parse(decoder.decode(cmd.payload)).name;
      }} catch (e) {{
        throw invalidPayload(`bad JSON: ${{e.message}}`);
      }}
      if (typeof name !== "string") throw invalidPayload('expected {{"name": "..."}}');
      emit({{ name: "greeted", payload: encoder.encode(name) }});
      return encoder.encode(`${{greeting}}, ${{name}}`);
    }}
    // calls -> {{"calls": N}}
    case "calls":
      return encoder.encode(JSON.stringify({{ calls }}));
    default:
      throw {{ tag: "unknown-command", val: `no command ${{JSON.stringify(cmd.name)}}` }};
  }}
}}

export const session = {{
  open(ctx) {{
    greeting = new Map(ctx.config).get("greeting") ?? "hello";
  }},
  handle(cmd) {{
    calls += 1;
    try {{
      return run(cmd);
    }} catch (e) {{
      // Anything else thrown would trap the instance and fault the session.
      if (e && typeof e === "object" && "tag" in e) throw e;
      throw {{ tag: "failed", val: String(e) }};
    }}
  }},
  tick() {{}},
  close() {{}},
}};
"#
    )
}

fn readme(name: &str, wasm: &str) -> String {
    format!(
        r#"# {name}

A gatehouse backend in JavaScript, built with componentize-js
({COMPONENTIZE_JS}, pinned in package.json; package-lock.json pins jco,
preview2-shim and the rest of the toolchain).

```sh
npm ci                                   # installs exactly what package-lock.json says
npm run build                            # -> {wasm}
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

The build disables componentize-js's `http` and `fetch-event` features:
without that the component imports `wasi:http`, which gatehouse never
provides (`gatehouse plugin check` says so). How the WIT maps to
JavaScript is in gatehouse's docs/plugins.md.
"#
    )
}

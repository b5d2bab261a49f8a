//! The Rust template: a cargo project on the vendored `gatehouse-plugin` SDK.

use super::{LISTEN, WIT, gatehouse_toml};

const SDK_LIB: &str = include_str!("../../../plugins/sdk/src/lib.rs");

/// The project's files, relative to its root.
pub(super) fn files(name: &str) -> Vec<(&'static str, String)> {
    let wasm = format!("{}.wasm", name.replace('-', "_"));
    let module = format!("target/wasm32-wasip2/release/{wasm}");
    vec![
        ("Cargo.toml", cargo_toml(name)),
        (".cargo/config.toml", CARGO_CONFIG.to_string()),
        (".gitignore", "/target\n".to_string()),
        ("src/lib.rs", lib_rs(name)),
        ("README.md", readme(name, &wasm)),
        ("gatehouse.toml", gatehouse_toml(name, &module)),
        ("gatehouse-plugin/Cargo.toml", SDK_CARGO.to_string()),
        ("gatehouse-plugin/src/lib.rs", SDK_LIB.to_string()),
        ("gatehouse-plugin/wit/backend.wit", WIT.to_string()),
    ]
}

/// What to run next.
pub(super) const NEXT: &str = "cargo build --release";

const CARGO_CONFIG: &str = r#"# Build components for gatehouse by default.
[build]
target = "wasm32-wasip2"
"#;

const SDK_CARGO: &str = r#"[package]
name = "gatehouse-plugin"
description = "Write gatehouse wasm backends as one trait implementation"
version = "0.1.0"
edition = "2024"
publish = false

[features]
default = ["json"]
json = ["dep:serde", "dep:serde_json"]

[dependencies]
serde = { version = "1", optional = true }
serde_json = { version = "1", optional = true }
wit-bindgen = { version = "0.63", default-features = false, features = ["macros", "realloc", "std"] }
"#;

fn cargo_toml(name: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
gatehouse-plugin = {{ path = "gatehouse-plugin" }}
serde = {{ version = "1", features = ["derive"] }}

# A standalone project, not part of any enclosing workspace.
[workspace]

[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
strip = true
"#
    )
}

fn lib_rs(name: &str) -> String {
    format!(
        r#"//! `{name}`: a gatehouse backend. Every client session gets its own
//! instance, so the `Plugin` value below is that session's state.

use std::collections::BTreeMap;

use gatehouse_plugin::{{Command, CommandError, Context, Plugin, emit, json_reply}};

#[derive(Default)]
struct Session {{
    greeting: String,
    calls: u64,
}}

#[derive(serde::Deserialize)]
struct Hello {{
    name: String,
}}

impl Plugin for Session {{
    fn open(&mut self, ctx: &Context) -> Result<(), String> {{
        self.greeting = ctx.config("greeting").unwrap_or("hello").to_string();
        Ok(())
    }}

    fn handle(&mut self, cmd: Command) -> Result<Vec<u8>, CommandError> {{
        self.calls += 1;
        match cmd.name.as_str() {{
            // hello {{"name": "ada"}} -> "hello, ada"
            "hello" => {{
                let Hello {{ name }} = cmd.json()?;
                emit("greeted", name.clone());
                Ok(format!("{{}}, {{name}}", self.greeting).into_bytes())
            }}
            // calls -> {{"calls": N}}
            "calls" => json_reply(&BTreeMap::from([("calls", self.calls)])),
            _ => Err(cmd.unknown()),
        }}
    }}
}}

gatehouse_plugin::export!(Session);
"#
    )
}

fn readme(name: &str, wasm: &str) -> String {
    format!(
        r#"# {name}

A gatehouse backend.

```sh
rustup target add wasm32-wasip2          # once
cargo build --release                    # -> target/wasm32-wasip2/release/{wasm}
gatehouse plugin check target/wasm32-wasip2/release/{wasm}
gatehouse serve --config gatehouse.toml  # serves it as backend "{name}" on {LISTEN}
```

Then, in another terminal (gatehouse.toml listens on its own port, so it
does not collide with a gateway on the default 50051):

```sh
export GATEHOUSE_ADDR={LISTEN}           # or --addr {LISTEN} on each command
SID=$(gatehouse open {name} --config greeting=hi)
gatehouse invoke $SID hello '{{"name": "ada"}}'
gatehouse events $SID
gatehouse close $SID
```

`src/lib.rs` is the plugin; `gatehouse-plugin/` is the SDK and the WIT
contract of the gateway that wrote this project.
"#
    )
}

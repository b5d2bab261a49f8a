//! `gatehouse plugin new`: writes a ready-to-build plugin project.
//!
//! The project vendors the `gatehouse-plugin` SDK and the WIT contract this
//! gateway speaks, so it builds anywhere with `cargo build --release`
//! without a gatehouse checkout.

use std::fs;
use std::path::{Path, PathBuf};

const SDK_LIB: &str = include_str!("../../plugins/sdk/src/lib.rs");
const WIT: &str = include_str!("../../wit/backend.wit");

/// Why a project could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    /// The name is not a usable crate name.
    #[error(
        "{0:?} is not a valid plugin name: use lowercase letters, digits, '-' and '_', starting with a letter"
    )]
    BadName(String),
    /// The language is not supported.
    #[error("no template for language {0:?} (available: rust)")]
    BadLanguage(String),
    /// The directory exists.
    #[error("{0} already exists")]
    Exists(PathBuf),
    /// Writing failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Writes a new plugin project named `name` into `dir/name` and returns its
/// path.
pub fn new_plugin(dir: &Path, name: &str, lang: &str) -> Result<PathBuf, ScaffoldError> {
    let valid = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !valid {
        return Err(ScaffoldError::BadName(name.to_string()));
    }
    if lang != "rust" {
        return Err(ScaffoldError::BadLanguage(lang.to_string()));
    }
    let root = dir.join(name);
    if root.exists() {
        return Err(ScaffoldError::Exists(root));
    }
    let wasm = format!("{}.wasm", name.replace('-', "_"));
    let files: Vec<(&str, String)> = vec![
        ("Cargo.toml", cargo_toml(name)),
        (".cargo/config.toml", CARGO_CONFIG.to_string()),
        (".gitignore", "/target\n".to_string()),
        ("src/lib.rs", lib_rs(name)),
        ("README.md", readme(name, &wasm)),
        ("gatehouse.toml", gatehouse_toml(name, &wasm)),
        ("gatehouse-plugin/Cargo.toml", SDK_CARGO.to_string()),
        ("gatehouse-plugin/src/lib.rs", SDK_LIB.to_string()),
        ("gatehouse-plugin/wit/backend.wit", WIT.to_string()),
    ];
    for (rel, text) in files {
        let path = root.join(rel);
        let write = || -> std::io::Result<()> {
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)?;
            }
            fs::write(&path, text)
        };
        write().map_err(|source| ScaffoldError::Io {
            path: path.clone(),
            source,
        })?;
    }
    Ok(root)
}

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

/// The generated config's gRPC address: not the default 50051, so the
/// plugin's gateway starts next to one already running.
pub const LISTEN: &str = "127.0.0.1:50061";
/// The generated config's metrics address: not the default 9464.
pub const METRICS_LISTEN: &str = "127.0.0.1:9474";

fn gatehouse_toml(name: &str, wasm: &str) -> String {
    format!(
        r#"# Serves this plugin: gatehouse serve --config gatehouse.toml
# Its own ports, so it runs next to a gateway on the defaults (50051 and
# 9464); the client commands need --addr {LISTEN} (or GATEHOUSE_ADDR).
[server]
listen = "{LISTEN}"
metrics_listen = "{METRICS_LISTEN}"

[[backends]]
name = "{name}"
module = "target/wasm32-wasip2/release/{wasm}"
description = "{name}, built with gatehouse plugin new"
version = "0.1.0"

[backends.sessions]
command_timeout = "5s"
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_project_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = new_plugin(dir.path(), "hello-world", "rust").unwrap();
        for f in [
            "Cargo.toml",
            "src/lib.rs",
            "README.md",
            "gatehouse.toml",
            "gatehouse-plugin/wit/backend.wit",
        ] {
            assert!(root.join(f).is_file(), "{f}");
        }
        let config = fs::read_to_string(root.join("gatehouse.toml")).unwrap();
        assert!(config.contains("hello_world.wasm"));
        // Its own ports: the tour's gateway holds the defaults. (The
        // config names the module `cargo build` makes: a stand-in here.)
        let wasm = root.join("target/wasm32-wasip2/release/hello_world.wasm");
        fs::create_dir_all(wasm.parent().unwrap()).unwrap();
        fs::write(&wasm, b"").unwrap();
        let parsed = crate::config::Config::parse(&config, &root).unwrap();
        let defaults = crate::config::Config::builtin();
        assert_eq!(parsed.server.listen.to_string(), LISTEN);
        assert_ne!(parsed.server.listen, defaults.server.listen);
        assert_eq!(
            parsed
                .server
                .metrics_listen
                .map(|a| a.to_string())
                .as_deref(),
            Some(METRICS_LISTEN)
        );
        assert_ne!(parsed.server.metrics_listen, defaults.server.metrics_listen);
        let readme = fs::read_to_string(root.join("README.md")).unwrap();
        assert!(
            readme.contains(&format!("GATEHOUSE_ADDR={LISTEN}")),
            "{readme}"
        );
        assert!(matches!(
            new_plugin(dir.path(), "hello-world", "rust"),
            Err(ScaffoldError::Exists(_))
        ));
        assert!(matches!(
            new_plugin(dir.path(), "Bad Name", "rust"),
            Err(ScaffoldError::BadName(_))
        ));
        assert!(matches!(
            new_plugin(dir.path(), "x", "cobol"),
            Err(ScaffoldError::BadLanguage(_))
        ));
    }
}

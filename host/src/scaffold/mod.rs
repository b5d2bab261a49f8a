//! `gatehouse plugin new`: writes a ready-to-build plugin project in Rust,
//! Python or JavaScript.
//!
//! Each project vendors the WIT contract this gateway speaks (and, in Rust,
//! the `gatehouse-plugin` SDK), so it builds without a gatehouse checkout.

mod js;
mod python;
mod rust;

use std::fs;
use std::path::{Path, PathBuf};

const WIT: &str = include_str!("../../../wit/backend.wit");

/// The languages `plugin new --lang` knows.
pub const LANGUAGES: &[&str] = &["rust", "python", "js"];

/// Why a project could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    /// The name is not a usable crate name.
    #[error(
        "{0:?} is not a valid plugin name: use lowercase letters, digits, '-' and '_', starting with a letter"
    )]
    BadName(String),
    /// The language is not supported.
    #[error("no template for language {0:?} (available: rust, python, js)")]
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
    let files = match lang {
        "rust" => rust::files(name),
        "python" => python::files(name),
        "js" => js::files(name),
        _ => return Err(ScaffoldError::BadLanguage(lang.to_string())),
    };
    let root = dir.join(name);
    if root.exists() {
        return Err(ScaffoldError::Exists(root));
    }
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

/// The command that builds a new project `name` of `lang`, run in its
/// directory.
pub fn next_step(lang: &str, name: &str) -> String {
    match lang {
        "python" => python::next(name),
        "js" => js::NEXT.to_string(),
        _ => rust::NEXT.to_string(),
    }
}

/// The generated config's gRPC address: not the default 50051, so the
/// plugin's gateway starts next to one already running.
pub const LISTEN: &str = "127.0.0.1:50061";
/// The generated config's metrics address: not the default 9464.
pub const METRICS_LISTEN: &str = "127.0.0.1:9474";

/// The project's gateway config, serving the component at `module`
/// (relative to the project) as backend `name`.
fn gatehouse_toml(name: &str, module: &str) -> String {
    format!(
        r#"# Serves this plugin: gatehouse serve --config gatehouse.toml
# Its own ports, so it runs next to a gateway on the defaults (50051 and
# 9464); the client commands need --addr {LISTEN} (or GATEHOUSE_ADDR).
[server]
listen = "{LISTEN}"
metrics_listen = "{METRICS_LISTEN}"

[[backends]]
name = "{name}"
module = "{module}"
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

    #[test]
    fn python_and_js_projects_pin_the_toolchains_ci_uses() {
        let dir = tempfile::tempdir().unwrap();
        let py = new_plugin(dir.path(), "hello-py", "python").unwrap();
        let app = fs::read_to_string(py.join("app.py")).unwrap();
        assert!(app.contains("class Session(exports.Session)"), "{app}");
        assert!(py.join("wit/backend.wit").is_file());
        assert!(next_step("python", "hello-py").contains("-o hello-py.wasm"));
        let config = fs::read_to_string(py.join("gatehouse.toml")).unwrap();
        assert!(config.contains("module = \"hello-py.wasm\""), "{config}");

        let js = new_plugin(dir.path(), "hello-js", "js").unwrap();
        let package = fs::read_to_string(js.join("package.json")).unwrap();
        let example = include_str!("../../../plugins/js-notes/package.json");
        let pin = format!(
            "\"@bytecodealliance/componentize-js\": \"{}\"",
            js::COMPONENTIZE_JS
        );
        assert!(
            package.contains(&pin) && example.contains(&pin),
            "{package}"
        );
        assert!(package.contains("-d http fetch-event"), "{package}");
        // The lock file pins the whole toolchain, and agrees with
        // package.json (else `npm ci` refuses it).
        let package: serde_json::Value = serde_json::from_str(&package).unwrap();
        let lock: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(js.join("package-lock.json")).unwrap())
                .unwrap();
        assert_eq!(lock["name"], "hello-js");
        assert_eq!(lock["packages"][""]["name"], "hello-js");
        assert_eq!(
            lock["packages"][""]["devDependencies"],
            package["devDependencies"]
        );
        for dep in ["jco", "preview2-shim", "componentize-js"] {
            let entry = &lock["packages"][format!("node_modules/@bytecodealliance/{dep}")];
            assert!(
                entry["version"].is_string() && entry["integrity"].is_string(),
                "{dep} is not pinned: {entry}"
            );
        }
        let app = fs::read_to_string(js.join("app.js")).unwrap();
        assert!(app.contains("export const session"), "{app}");
        assert_eq!(next_step("js", "hello-js"), "npm ci && npm run build");
    }
}

//! `gatehouse plugin check`: does a file fit the `gatehouse:backend` world,
//! what does it import, what does each import do here, and what to change
//! when the gateway cannot run it?

use std::path::Path;
use std::time::{Duration, Instant};

use wasmtime::component::Component;
use wasmtime::{Config, Engine};

use super::cache::{ArtifactCache, Source};
use super::exports::{ExportIndices, VERSIONS};
use super::host::SessionData;
use super::{RuntimeOptions, engine_config, new_linker};

/// The WIT package version this gateway speaks (it loads older ones too).
pub const WORLD_VERSION: &str = VERSIONS[0];

/// Why a file is not a usable gatehouse plugin. Each has its own message.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// No `\0asm` magic.
    #[error("not a WebAssembly file (it does not start with \\0asm)")]
    NotWasm,
    /// A core module, not a component.
    #[error(
        "a core WebAssembly module, not a component: build with --target wasm32-wasip2 (or wrap it with `wasm-tools component new`)"
    )]
    CoreModule,
    /// The binary ends early.
    #[error("truncated: {0}")]
    Truncated(String),
    /// The binary is malformed or fails validation.
    #[error("invalid component: {0}")]
    Invalid(String),
    /// It does not export `gatehouse:backend/session`.
    #[error("not a gatehouse:backend component: it exports {0}")]
    WrongWorld(String),
    /// It targets another version of the world.
    #[error("targets gatehouse:backend@{found}, but this gateway loads @{expected}")]
    WrongVersion {
        /// What the component exports.
        found: String,
        /// What the gateway loads.
        expected: String,
    },
}

/// How an import is satisfied.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImportStatus {
    /// Always available.
    Provided,
    /// Linked, so the component loads and runs; what it reaches (files,
    /// the network, variables) is denied at run time unless the backend's
    /// `[backends.grants]` grants it. (`needs-grant` in JSON, kept for
    /// scripts that read it.)
    NeedsGrant,
    /// gatehouse never provides it: the component cannot be loaded.
    Unsupported,
}

/// One import of the component.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImportInfo {
    /// The import's name, e.g. `wasi:filesystem/types@0.2.6`.
    pub name: String,
    /// Whether gatehouse satisfies it.
    pub status: ImportStatus,
    /// What it means for the plugin.
    pub note: String,
    /// What to change, for an import gatehouse never provides.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// What `plugin check` found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckReport {
    /// File size in bytes.
    pub size: usize,
    /// Time to compile with this gateway's engine (or, when `cached`, to
    /// load the compiled code from the compile cache).
    #[serde(serialize_with = "millis")]
    pub compile_time: Duration,
    /// Whether the compiled code came from the compile cache.
    pub cached: bool,
    /// The `gatehouse:backend` version the component targets.
    pub world_version: String,
    /// Whether it exports `gatehouse:backend/state`: its sessions keep their
    /// state across restarts and upgrades.
    pub stateful: bool,
    /// Every import.
    pub imports: Vec<ImportInfo>,
    /// Imports gatehouse cannot satisfy, with the linker's words; empty when
    /// the component can run here.
    pub link_errors: Vec<String>,
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

impl CheckReport {
    /// Whether gatehouse can run the component.
    pub fn ok(&self) -> bool {
        self.link_errors.is_empty()
    }
}

fn classify_import(name: &str) -> (ImportStatus, &'static str) {
    let iface = name.split('@').next().unwrap_or(name);
    match iface {
        "gatehouse:backend/host" | "gatehouse:backend/types" => {
            (ImportStatus::Provided, "the gatehouse host interface")
        }
        i if i.starts_with("wasi:clocks/") => (ImportStatus::Provided, "clocks: always granted"),
        i if i.starts_with("wasi:random/") => {
            (ImportStatus::Provided, "randomness: always granted")
        }
        i if i.starts_with("wasi:io/") => (ImportStatus::Provided, "streams and polling"),
        "wasi:cli/stdout" | "wasi:cli/stderr" => (
            ImportStatus::Provided,
            "goes to the gateway log, tagged with the session id and rate limited",
        ),
        "wasi:cli/stdin" => (ImportStatus::Provided, "always empty"),
        "wasi:cli/environment" => (
            ImportStatus::NeedsGrant,
            "linked; empty at run time unless [backends.grants] env sets variables",
        ),
        "wasi:cli/exit" => (
            ImportStatus::Provided,
            "exiting ends the session with a fault",
        ),
        i if i.starts_with("wasi:cli/terminal") => (ImportStatus::Provided, "never a terminal"),
        i if i.starts_with("wasi:filesystem/") => (
            ImportStatus::NeedsGrant,
            "linked; every file access is denied at run time unless \
             [[backends.grants.preopens]] grants a directory",
        ),
        "wasi:sockets/ip-name-lookup" => (
            ImportStatus::NeedsGrant,
            "linked; name lookups are always denied: connect by IP address",
        ),
        i if i.starts_with("wasi:sockets/") => (
            ImportStatus::NeedsGrant,
            "linked; connections are denied at run time unless [backends.grants] \
             network allows IP:PORT destinations",
        ),
        i if i.starts_with("wasi:http/") => (
            ImportStatus::Unsupported,
            "HTTP: gatehouse never provides it to plugins",
        ),
        _ => (
            ImportStatus::Unsupported,
            "gatehouse does not provide this interface",
        ),
    }
}

/// What to change so an import gatehouse never provides goes away.
fn fix_for(name: &str) -> String {
    if name.starts_with("wasi:http/") {
        "a JavaScript component from componentize-js imports wasi:http unless built \
         with `-d http fetch-event` (as in `componentize-js app.js -w wit -n backend \
         -d http fetch-event -o app.wasm`); in Rust, drop the crate that uses wasi:http"
            .to_string()
    } else {
        format!(
            "remove what imports {name}: a plugin may import gatehouse:backend/host and \
             WASI 0.2 cli, clocks, random, io, filesystem and sockets"
        )
    }
}

/// Where [`check_component_with`] compiles.
#[derive(Debug, Clone)]
pub struct CheckOptions<'a> {
    /// The serving engine's settings: compiled with them, the code in the
    /// cache is the code `serve` loads.
    pub runtime: RuntimeOptions,
    /// The compile cache (`[server] cache_dir`); `None` compiles afresh.
    pub cache_dir: Option<&'a Path>,
}

/// Checks a component file's bytes, compiling with a plain engine and no
/// cache.
pub fn check_component(bytes: &[u8]) -> Result<CheckReport, CheckError> {
    validate(bytes)?;
    let mut config = Config::new();
    config.epoch_interruption(true).concurrency_support(false);
    let engine = Engine::new(&config).map_err(|e| CheckError::Invalid(format!("{e:#}")))?;
    let began = Instant::now();
    let component =
        Component::new(&engine, bytes).map_err(|e| CheckError::Invalid(format!("{e:#}")))?;
    report(bytes, &engine, &component, began.elapsed(), false)
}

/// Checks a component file's bytes with the serving engine's settings,
/// reading and filling the compile cache: a check then also warms the
/// cache for the gateway, and a second check of the same file is quick.
pub fn check_component_with(
    bytes: &[u8],
    options: &CheckOptions<'_>,
) -> Result<CheckReport, CheckError> {
    validate(bytes)?;
    let engine = Engine::new(&engine_config(&options.runtime))
        .map_err(|e| CheckError::Invalid(format!("{e:#}")))?;
    let began = Instant::now();
    let compiled = match options.cache_dir {
        Some(dir) => {
            let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes));
            ArtifactCache::new(dir, &engine).load(&engine, bytes, &digest)
        }
        None => Component::new(&engine, bytes).map(|c| (c, Source::Compiled)),
    };
    let (component, source) = compiled.map_err(|e| CheckError::Invalid(format!("{e:#}")))?;
    report(
        bytes,
        &engine,
        &component,
        began.elapsed(),
        source == Source::Cached,
    )
}

/// The checks that need no engine: magic, a component, valid.
fn validate(bytes: &[u8]) -> Result<(), CheckError> {
    use wasmtime::wasmparser::{Parser, Validator, WasmFeatures};

    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(CheckError::NotWasm);
    }
    if Parser::is_core_wasm(bytes) {
        return Err(CheckError::CoreModule);
    }
    if let Err(e) = Validator::new_with_features(WasmFeatures::all()).validate_all(bytes) {
        let message = e.to_string();
        return Err(if message.contains("unexpected end") {
            CheckError::Truncated(message)
        } else {
            CheckError::Invalid(message)
        });
    }
    Ok(())
}

/// What a compiled component exports and imports, and whether it links.
fn report(
    bytes: &[u8],
    engine: &Engine,
    component: &Component,
    compile_time: Duration,
    cached: bool,
) -> Result<CheckReport, CheckError> {
    let ty = component.component_type();
    let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
    let prefix = "gatehouse:backend/session";
    let world_version = match exports
        .iter()
        .find_map(|e| e.strip_prefix(prefix).and_then(|v| v.strip_prefix('@')))
    {
        Some(v) => v.to_string(),
        None => {
            let list = if exports.is_empty() {
                "nothing".to_string()
            } else {
                exports.join(", ")
            };
            return Err(CheckError::WrongWorld(list));
        }
    };
    if !VERSIONS.contains(&world_version.as_str()) {
        return Err(CheckError::WrongVersion {
            found: world_version,
            expected: VERSIONS.join(" or @"),
        });
    }
    let stateful = ExportIndices::find(component).is_ok_and(|e| e.stateful());

    let imports = ty
        .imports(engine)
        .map(|(name, _)| {
            let (status, note) = classify_import(name);
            let fix = (status == ImportStatus::Unsupported).then(|| fix_for(name));
            ImportInfo {
                name: name.to_string(),
                status,
                note: note.to_string(),
                fix,
            }
        })
        .collect();
    let mut link_errors = Vec::new();
    match new_linker(engine) {
        Ok(linker) => {
            let linker: wasmtime::component::Linker<SessionData> = linker;
            if let Err(e) = linker.instantiate_pre(component) {
                link_errors.push(format!("{e:#}"));
            }
        }
        Err(e) => link_errors.push(format!("{e:#}")),
    }
    Ok(CheckReport {
        size: bytes.len(),
        compile_time,
        cached,
        world_version,
        stateful,
        imports,
        link_errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_examples_pass() {
        for name in ["echo", "kv", "chaos"] {
            let report = check_component(crate::builtin::component(name).unwrap()).unwrap();
            assert!(report.ok(), "{name}: {:?}", report.link_errors);
            assert_eq!(report.world_version, WORLD_VERSION);
            assert!(
                report
                    .imports
                    .iter()
                    .any(|i| i.name.starts_with("gatehouse:backend/host"))
            );
        }
    }

    #[test]
    fn bad_files_get_distinct_errors() {
        let echo = crate::builtin::component("echo").unwrap();
        assert!(matches!(
            check_component(b"hello world"),
            Err(CheckError::NotWasm)
        ));
        assert!(matches!(
            check_component(b"\0asm\x01\0\0\0"),
            Err(CheckError::CoreModule)
        ));
        assert!(matches!(
            check_component(&echo[..echo.len() / 2]),
            Err(CheckError::Truncated(_))
        ));
        // The empty component: valid, but of another world.
        assert!(matches!(
            check_component(b"\0asm\x0d\0\x01\0"),
            Err(CheckError::WrongWorld(w)) if w == "nothing"
        ));
    }

    #[test]
    fn imports_are_classified() {
        assert_eq!(
            classify_import("wasi:filesystem/types@0.2.6").0,
            ImportStatus::NeedsGrant
        );
        assert_eq!(
            classify_import("wasi:clocks/monotonic-clock@0.2.0").0,
            ImportStatus::Provided
        );
        assert_eq!(
            classify_import("acme:gpu/compute").0,
            ImportStatus::Unsupported
        );
    }
}

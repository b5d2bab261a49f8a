//! Turns a [`Config`] into loaded backend entries: opens the native state
//! directory, creates the wasm runtime, and loads every backend once.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::backend::Backend;
use crate::backend::native::{NativeLoadError, NativeRuntime};
use crate::backend::wasm::{self, RuntimeOptions, WasmRuntime};
use crate::builtin;
use crate::config::{BackendSpec, Config, ModuleSource, Runner};
use crate::registry::BackendEntry;

/// Every backend of a config, loaded.
pub struct Loaded {
    /// The entries, by backend name, ready for the registry.
    pub backends: BTreeMap<String, BackendEntry>,
    /// The native runtime, when the state directory could be opened; its
    /// owner kills the remaining workers and removes the directory at exit.
    pub native: Option<NativeRuntime>,
}

/// Why the backends could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A native backend needs the state directory, and it could not be
    /// opened.
    #[error("opening the state directory {}: {source}", path.display())]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The wasm engine could not be created.
    #[error("{0}")]
    Runtime(wasm::LoadError),
    /// One backend could not be loaded.
    #[error("backend {name:?}: {failure}")]
    Backend {
        /// The backend.
        name: String,
        /// What went wrong.
        failure: BackendFailure,
    },
}

/// Why one backend could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum BackendFailure {
    /// A native backend, but the state directory could not be opened.
    #[error("no state directory for native workers")]
    NoStateDir,
    /// The native runtime refused the spec.
    #[error(transparent)]
    Native(#[from] NativeLoadError),
    /// `builtin:NAME` names no built-in component.
    #[error("no built-in component {0:?}")]
    NoBuiltin(String),
    /// The component file could not be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The component could not be compiled or linked.
    #[error(transparent)]
    Wasm(#[from] wasm::LoadError),
}

/// Loads every backend of `config`. Native backends need the state
/// directory: opening it also removes the leftovers of a previous run,
/// before any session is accepted.
///
/// The wasm runtime is dropped on return: each wasm backend holds the
/// engine, which keeps the epoch ticker running for as long as it lives.
pub fn load(config: &Config) -> Result<Loaded, LoadError> {
    let loader = Loader::new(config)?;
    let backends = loader.load(config)?;
    Ok(Loaded {
        backends,
        native: loader.native,
    })
}

/// What loads backends for the life of a gateway: its first config and
/// every reload. It keeps the engine (sized by the first config: a reload
/// that needs another size needs a restart), the native runtime and the
/// compile cache, and the backends of the last load, so that a reload
/// reuses every backend whose spec did not change instead of compiling it
/// again or starting a new warm pool.
pub struct Loader {
    runtime: WasmRuntime,
    native: Option<NativeRuntime>,
    cache: Option<wasm::cache::ArtifactCache>,
    options: RuntimeOptions,
    last: std::sync::Mutex<Vec<(BackendSpec, Arc<dyn Backend>)>>,
}

impl Loader {
    /// Opens the state directory and creates the engine for `config`.
    pub fn new(config: &Config) -> Result<Self, LoadError> {
        let native = open_state_dir(config)?;
        let options = runtime_options(config);
        let runtime = WasmRuntime::new(&options).map_err(LoadError::Runtime)?;
        let cache = config.server.cache_dir.as_deref().map(|d| runtime.cache(d));
        Ok(Self {
            runtime,
            native,
            cache,
            options,
            last: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Whether `config` fits the engine made at start: its memory, reply
    /// and snapshot sizes are at most those it was made for.
    pub fn fits(&self, config: &Config) -> Result<(), String> {
        fits(&self.options, &runtime_options(config))
    }

    /// The native runtime, for shutdown.
    pub fn native(&self) -> Option<&NativeRuntime> {
        self.native.as_ref()
    }

    /// Loads every backend of `config`, all or none: the first failure is
    /// the answer and nothing of this load is kept. A backend whose spec is
    /// unchanged since the last load (and, for a component file, whose
    /// bytes are) is the same loaded backend again.
    pub fn load(&self, config: &Config) -> Result<BTreeMap<String, BackendEntry>, LoadError> {
        let last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mut loaded = Vec::with_capacity(config.backends.len());
        let mut backends = BTreeMap::new();
        for spec in &config.backends {
            let reused = last
                .iter()
                .find(|(s, b)| s == spec && same_code(spec, b.as_ref()))
                .map(|(_, b)| Arc::clone(b));
            let backend = match reused {
                Some(b) => b,
                None => load_one(
                    spec,
                    self.native.as_ref(),
                    &self.runtime,
                    self.cache.as_ref(),
                )
                .map_err(|failure| LoadError::Backend {
                    name: spec.name.clone(),
                    failure,
                })?,
            };
            loaded.push((spec.clone(), Arc::clone(&backend)));
            backends.insert(
                spec.name.clone(),
                BackendEntry {
                    backend,
                    policy: spec.policy.clone(),
                    config: spec.config.clone(),
                    retire_after: spec.retire_after,
                    rollout: spec.rollout,
                    recovery: spec.recovery,
                },
            );
        }
        *self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = loaded;
        Ok(backends)
    }
}

/// Whether a component file still holds what `backend` was loaded from
/// (same digest); anything else is named by its spec alone.
fn same_code(spec: &BackendSpec, backend: &dyn Backend) -> bool {
    match &spec.runner {
        Runner::Wasm(ModuleSource::File(path)) => match std::fs::read(path) {
            Ok(bytes) => crate::backend::wasm::digest(&bytes) == backend.info().digest,
            Err(_) => false,
        },
        _ => true,
    }
}

/// The native runtime, or `None` when no backend needs it and the state
/// directory cannot be opened (then only a warning: nothing is lost but the
/// check for a previous run's leftovers).
fn open_state_dir(config: &Config) -> Result<Option<NativeRuntime>, LoadError> {
    let has_native = config
        .backends
        .iter()
        .any(|b| matches!(b.runner, Runner::Native(_)));
    let dir = &config.server.state_dir;
    match NativeRuntime::new(dir) {
        Ok(n) => Ok(Some(n)),
        Err(source) if has_native => Err(LoadError::StateDir {
            path: dir.clone(),
            source,
        }),
        Err(e) => {
            tracing::warn!(
                "state directory {}: {e}; leftovers of a previous run were not checked",
                dir.display()
            );
            Ok(None)
        }
    }
}

/// One engine for every wasm backend, sized for the largest of them.
/// (`plugin check` compiles with the same, so its cached code is the code
/// `serve` loads.)
pub fn runtime_options(config: &Config) -> RuntimeOptions {
    RuntimeOptions {
        max_sessions: config.server.max_sessions,
        max_memory_bytes: config
            .backends
            .iter()
            .map(|b| b.policy.memory_limit)
            .max()
            .unwrap_or(crate::config::DEFAULT_MEMORY_LIMIT),
        epoch_tick: config.server.epoch_tick,
        max_reply_bytes: config
            .backends
            .iter()
            .map(|b| b.policy.max_reply_bytes)
            .max()
            .unwrap_or(0),
        max_snapshot_bytes: config
            .backends
            .iter()
            .map(|b| b.recovery.snapshot.max_bytes)
            .max()
            .unwrap_or(0),
    }
}

/// Whether a runtime made for `started` serves `wanted`: its pooling
/// allocator is sized for the largest memory limit of the first config,
/// and the largest reply and snapshot it copies out of an instance are set
/// then too; only a restart changes them.
fn fits(started: &RuntimeOptions, wanted: &RuntimeOptions) -> Result<(), String> {
    if wanted.max_memory_bytes > started.max_memory_bytes {
        return Err(format!(
            "a backend's sessions.memory_limit ({} bytes) is above the {} bytes the wasm engine was sized for at start: raising it needs a restart",
            wanted.max_memory_bytes, started.max_memory_bytes
        ));
    }
    if wanted.max_reply_bytes > started.max_reply_bytes {
        return Err(format!(
            "a backend's sessions.max_reply_bytes ({} bytes) is above the {} bytes the wasm engine was sized for at start: raising it needs a restart",
            wanted.max_reply_bytes, started.max_reply_bytes
        ));
    }
    if wanted.max_snapshot_bytes > started.max_snapshot_bytes {
        return Err(format!(
            "a backend's [backends.snapshot] max_bytes ({} bytes) is above the {} bytes the wasm engine copies out, set at start: restart required",
            wanted.max_snapshot_bytes, started.max_snapshot_bytes
        ));
    }
    Ok(())
}

/// Loads one backend, native or wasm.
fn load_one(
    spec: &BackendSpec,
    native: Option<&NativeRuntime>,
    runtime: &WasmRuntime,
    cache: Option<&wasm::cache::ArtifactCache>,
) -> Result<Arc<dyn Backend>, BackendFailure> {
    let module = match &spec.runner {
        Runner::Wasm(m) => m,
        Runner::Native(n) => {
            let backend = native.ok_or(BackendFailure::NoStateDir)?.load(spec)?;
            tracing::info!(backend = %spec.name, command = ?n.command, warm_pool = n.warm_pool, "native backend loaded");
            return Ok(Arc::new(backend));
        }
    };
    let bytes: Cow<'static, [u8]> = match module {
        ModuleSource::Builtin(name) => builtin::component(name)
            .ok_or_else(|| BackendFailure::NoBuiltin(name.clone()))?
            .into(),
        ModuleSource::File(path) => std::fs::read(path)
            .map_err(|source| BackendFailure::Read {
                path: path.clone(),
                source,
            })?
            .into(),
    };
    let began = Instant::now();
    let (backend, source) = runtime.load_with(spec, &bytes, cache)?;
    tracing::info!(
        backend = %spec.name,
        bytes = bytes.len(),
        load_ms = began.elapsed().as_millis() as u64,
        cached = source == wasm::cache::Source::Cached,
        "backend loaded"
    );
    Ok(Arc::new(backend))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(text: &str, state_dir: &Path) -> Config {
        let mut config = Config::parse(text, Path::new(".")).unwrap();
        config.server.state_dir = state_dir.to_path_buf();
        config
    }

    #[test]
    fn an_unreadable_component_names_its_backend_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let module = dir.path().join("gone.wasm");
        std::fs::write(&module, b"").unwrap();
        let text = format!(
            "[[backends]]\nname = \"gone\"\nmodule = {:?}\n",
            module.display().to_string()
        );
        let config = config(&text, &dir.path().join("state"));
        // Removed after the config checked it: gone by the time it is read.
        std::fs::remove_file(&module).unwrap();
        match load(&config) {
            Err(LoadError::Backend {
                name,
                failure: BackendFailure::Read { path, .. },
            }) => assert_eq!((name.as_str(), path), ("gone", module)),
            Err(other) => panic!("expected a read failure, got {other}"),
            Ok(_) => panic!("expected a read failure, got loaded backends"),
        }
    }

    #[test]
    fn a_reload_that_raises_the_snapshot_cap_needs_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let module = dir.path().join("p.wasm");
        std::fs::write(&module, b"").unwrap();
        let options = |max: &str| {
            let text = format!(
                "[[backends]]\nname = \"p\"\nmodule = {:?}\n[backends.snapshot]\nmax_bytes = {max:?}\n",
                module.display().to_string()
            );
            runtime_options(&config(&text, &dir.path().join("state")))
        };
        let started = options("1MiB");
        assert!(fits(&started, &options("1MiB")).is_ok());
        assert!(fits(&started, &options("512KiB")).is_ok());
        let refused = fits(&started, &options("2MiB")).unwrap_err();
        assert!(
            refused.contains("[backends.snapshot] max_bytes")
                && refused.contains("restart required"),
            "{refused}"
        );
    }

    #[test]
    fn a_native_backend_needs_the_state_directory() {
        let dir = tempfile::tempdir().unwrap();
        // A regular file where the directory should be: it cannot be opened.
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, b"").unwrap();
        let text = "[[backends]]\nname = \"plc\"\nkind = \"native\"\ncommand = [\"/bin/true\"]\n";
        match load(&config(text, &blocker.join("state"))) {
            Err(LoadError::StateDir { path, .. }) => assert_eq!(path, blocker.join("state")),
            Err(other) => panic!("expected a state directory failure, got {other}"),
            Ok(_) => panic!("expected a state directory failure, got loaded backends"),
        }
    }
}

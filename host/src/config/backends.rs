//! `[[backends]]` and `server.plugins_dir`: what clients open sessions on,
//! and what runs each backend's sessions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::grants::GrantsFile;
use super::native::{NativeFile, resolve_command};
use super::{
    ConfigError, DEFAULT_BACKEND_VERSION, Grants, NativeSpec, SessionPatch, SessionPolicy,
    check_name, invalid, valid_name,
};
use crate::builtin;

/// How a backend runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// A WebAssembly component.
    Wasm,
    /// An out-of-process worker.
    Native,
}

/// Where a wasm backend's component comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleSource {
    /// One of the components built into the binary.
    Builtin(String),
    /// A component file.
    File(PathBuf),
}

/// What runs a backend's sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Runner {
    /// A wasm component.
    Wasm(ModuleSource),
    /// A native worker program.
    Native(NativeSpec),
}

/// One backend, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendSpec {
    /// The name clients open sessions on.
    pub name: String,
    /// How it runs.
    pub kind: BackendKind,
    /// The component or the worker program.
    pub runner: Runner,
    /// Shown by `ListBackends`.
    pub description: String,
    /// Shown by `ListBackends`.
    pub version: String,
    /// Handed to every session's `open`, under the request's config.
    pub config: BTreeMap<String, String>,
    /// What the sandbox opens for the plugin (native: `env` only).
    pub grants: Grants,
    /// Session limits and timeouts.
    pub policy: SessionPolicy,
    /// After a reload replaces or removes this version, how long its
    /// sessions may go on before they are closed (`backend-retired`);
    /// `None` (`"off"`, the default) waits for the last one to end.
    pub retire_after: Option<Duration>,
}

// ---- the file format -------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BackendFile {
    name: String,
    #[serde(default = "default_kind")]
    kind: BackendKind,
    module: Option<String>,
    command: Option<Vec<String>>,
    description: Option<String>,
    version: Option<String>,
    #[serde(default)]
    config: BTreeMap<String, String>,
    #[serde(default)]
    sessions: SessionPatch,
    #[serde(default)]
    grants: GrantsFile,
    native: Option<NativeFile>,
    #[serde(default, deserialize_with = "super::units::duration_or_off")]
    retire_after: Option<Option<Duration>>,
}

fn default_kind() -> BackendKind {
    BackendKind::Wasm
}

impl BackendFile {
    /// The backend written at `key`; paths are resolved against `base`, and
    /// its `[backends.sessions]` goes over `defaults` (`[sessions]`).
    pub(super) fn resolve(
        self,
        key: &str,
        base: &Path,
        defaults: &SessionPolicy,
    ) -> Result<BackendSpec, ConfigError> {
        check_name(&self.name, &format!("{key}.name"))?;
        let runner = match self.kind {
            BackendKind::Wasm => {
                if self.command.is_some() {
                    return Err(invalid(
                        format!("{key}.command"),
                        "is only for kind = \"native\"; a wasm backend names its module",
                    ));
                }
                if self.native.is_some() {
                    return Err(invalid(
                        format!("{key}.native"),
                        "is only for kind = \"native\"",
                    ));
                }
                Runner::Wasm(resolve_module(self.module, key, base)?)
            }
            BackendKind::Native => {
                if self.module.is_some() {
                    return Err(invalid(
                        format!("{key}.module"),
                        "is only for kind = \"wasm\"; a native backend names its command",
                    ));
                }
                if !self.grants.preopens.is_empty() || !self.grants.network.is_empty() {
                    let what = if self.grants.preopens.is_empty() {
                        "network"
                    } else {
                        "preopens"
                    };
                    return Err(invalid(
                        format!("{key}.grants.{what}"),
                        "native workers are not sandboxed; only grants.env applies to them",
                    ));
                }
                let command = resolve_command(self.command, key, base)?;
                Runner::Native(
                    self.native
                        .unwrap_or_default()
                        .resolve(&format!("{key}.native"), command)?,
                )
            }
        };
        let policy = self.sessions.over(defaults, &format!("{key}.sessions"))?;
        let grants = self.grants.resolve(&format!("{key}.grants"), base)?;
        Ok(BackendSpec {
            description: self.description.unwrap_or_default(),
            version: self
                .version
                .unwrap_or_else(|| DEFAULT_BACKEND_VERSION.into()),
            name: self.name,
            kind: self.kind,
            runner,
            config: self.config,
            grants,
            policy,
            retire_after: self.retire_after.flatten(),
        })
    }
}

/// A wasm backend's `module`: `builtin:NAME` or a component file, resolved
/// against `base`.
fn resolve_module(
    module: Option<String>,
    key: &str,
    base: &Path,
) -> Result<ModuleSource, ConfigError> {
    let Some(m) = module else {
        return Err(invalid(format!("{key}.module"), "is required"));
    };
    match m.strip_prefix(builtin::BUILTIN_PREFIX) {
        Some(name) => {
            if builtin::component(name).is_none() {
                let known: Vec<&str> = builtin::BUILTIN_COMPONENTS
                    .iter()
                    .map(|(n, _)| *n)
                    .collect();
                return Err(invalid(
                    format!("{key}.module"),
                    format!(
                        "no built-in component {name:?} (have: {})",
                        known.join(", ")
                    ),
                ));
            }
            Ok(ModuleSource::Builtin(name.to_string()))
        }
        None => {
            let path = base.join(&m);
            if !path.is_file() {
                return Err(invalid(
                    format!("{key}.module"),
                    format!("{} is not a file", path.display()),
                ));
            }
            Ok(ModuleSource::File(path))
        }
    }
}

/// One backend per `*.wasm` in `dir`, named by its file stem.
pub(super) fn plugins_in(
    dir: &Path,
    defaults: &SessionPolicy,
) -> Result<Vec<BackendSpec>, ConfigError> {
    let key = "server.plugins_dir";
    let entries = std::fs::read_dir(dir)
        .map_err(|e| invalid(key, format!("reading {}: {e}", dir.display())))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wasm") && p.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let name = path
                .file_stem()
                .and_then(|s| s.to_str())
                .filter(|n| valid_name(n))
                .ok_or_else(|| {
                    invalid(
                        key,
                        format!("{} does not make a valid backend name", path.display()),
                    )
                })?
                .to_string();
            Ok(BackendSpec {
                description: format!("{} (plugins_dir)", path.display()),
                version: DEFAULT_BACKEND_VERSION.into(),
                kind: BackendKind::Wasm,
                runner: Runner::Wasm(ModuleSource::File(path)),
                config: BTreeMap::new(),
                grants: Grants::default(),
                policy: defaults.clone(),
                retire_after: None,
                name,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    #[test]
    fn plugins_dir_adds_a_backend_per_component() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("alpha.wasm"), b"x").unwrap();
        std::fs::write(dir.path().join("beta.wasm"), b"x").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        let c = Config::parse(
            &format!(
                "[server]\nplugins_dir = {:?}\n",
                dir.path().display().to_string()
            ),
            Path::new("."),
        )
        .unwrap();
        let names: Vec<&str> = c.backends.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["alpha", "beta"]);
        let e = Config::parse(
            &format!(
                "[server]\nplugins_dir = {:?}\n[[backends]]\nname = \"alpha\"\nmodule = \"builtin:echo\"\n",
                dir.path().display().to_string()
            ),
            Path::new("."),
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("server.plugins_dir"), "{e}");
    }
}

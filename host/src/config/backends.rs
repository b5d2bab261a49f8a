//! `[[backends]]` and `server.plugins_dir`: what clients open sessions on,
//! and what runs each backend's sessions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::grants::GrantsFile;
use super::native::{NativeFile, resolve_command};
use super::recovery::{Recovery, RestartFile, SnapshotFile};
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
    /// `[backends.rollout]`: a new version of this backend starts as a
    /// canary taking a share of new opens; `None` replaces it at once.
    pub rollout: Option<Rollout>,
    /// Snapshots, restarts and session upgrades.
    pub recovery: Recovery,
}

/// A canary rollout (`[backends.rollout]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rollout {
    /// The share of new opens the new version gets, 1..=99.
    pub percent: u8,
    /// More faults than this of the new version's sessions within
    /// `window` roll the rollout back.
    pub max_faults: u32,
    /// The window faults are counted in.
    pub window: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RolloutFile {
    /// Without it there is no canary: `upgrade_sessions` alone.
    percent: Option<u8>,
    #[serde(default)]
    max_faults: Option<u32>,
    #[serde(default, deserialize_with = "super::units::duration")]
    window: Option<Duration>,
    #[serde(default)]
    upgrade_sessions: bool,
}

impl RolloutFile {
    /// The canary, if the table asks for one.
    fn resolve(self, at: &str) -> Result<Option<Rollout>, ConfigError> {
        let Some(percent) = self.percent else {
            if self.max_faults.is_some() || self.window.is_some() {
                return Err(invalid(
                    format!("{at}.percent"),
                    "is required with max_faults or window (they belong to a canary)",
                ));
            }
            return Ok(None);
        };
        if !(1..=99).contains(&percent) {
            return Err(invalid(
                format!("{at}.percent"),
                "must be 1..=99 (0 is no rollout, 100 a plain replacement)",
            ));
        }
        let window = self.window.unwrap_or(Duration::from_secs(60));
        if window.is_zero() {
            return Err(invalid(format!("{at}.window"), "must be greater than zero"));
        }
        Ok(Some(Rollout {
            percent,
            max_faults: self.max_faults.unwrap_or(3),
            window,
        }))
    }
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
    rollout: Option<RolloutFile>,
    snapshot: Option<SnapshotFile>,
    restart: Option<RestartFile>,
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
        let upgrade_sessions = self.rollout.as_ref().is_some_and(|r| r.upgrade_sessions);
        let restart = self
            .restart
            .unwrap_or_default()
            .resolve(&format!("{key}.restart"))?;
        let recovery = Recovery {
            snapshot: self
                .snapshot
                .unwrap_or_default()
                .resolve(&format!("{key}.snapshot"), restart.on)?,
            restart,
            upgrade_sessions,
        };
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
            rollout: self
                .rollout
                .map(|r| r.resolve(&format!("{key}.rollout")))
                .transpose()?
                .flatten(),
            recovery,
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
                rollout: None,
                recovery: Default::default(),
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

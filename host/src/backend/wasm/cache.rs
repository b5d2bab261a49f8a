//! The on-disk cache of compiled components, so a restart does not
//! recompile.
//!
//! Entries live at `DIR/<engine>/<sha256 of the component>.cwasm`, where
//! `<engine>` hashes wasmtime's compatibility key (version, target, engine
//! settings): a different engine never reads another's artifacts. Loading
//! an artifact runs its machine code, so the directory must be writable only
//! by the gateway's user; it is created with mode 0700.

use std::fs;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

/// Where compiled artifacts live.
#[derive(Debug, Clone)]
pub struct ArtifactCache {
    dir: PathBuf,
}

/// How a component was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Compiled now (and stored, if the cache could be written).
    Compiled,
    /// Read from the cache.
    Cached,
}

impl ArtifactCache {
    /// A cache in `dir` for artifacts of `engine`.
    pub fn new(dir: &Path, engine: &Engine) -> Self {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        Self {
            dir: dir.join(format!("{:016x}", h.finish())),
        }
    }

    /// Loads `bytes` (whose SHA-256 is `digest`) from the cache, or
    /// compiles and stores it.
    pub fn load(
        &self,
        engine: &Engine,
        bytes: &[u8],
        digest: &str,
    ) -> wasmtime::Result<(Component, Source)> {
        let path = self.dir.join(format!("{digest}.cwasm"));
        if path.is_file() {
            // SAFETY: the file was written by `serialize` of this engine
            // configuration (the directory is keyed by the compatibility hash)
            // into a directory only this user may write.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(c) => return Ok((c, Source::Cached)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), "ignoring a bad cache entry: {e:#}")
                }
            }
        }
        let component = Component::new(engine, bytes)?;
        if let Err(e) = self.store(&path, &component) {
            tracing::warn!(dir = %self.dir.display(), "cannot write the compile cache: {e}");
        }
        Ok((component, Source::Compiled))
    }

    fn store(&self, path: &Path, component: &Component) -> std::io::Result<()> {
        create_private_dir(&self.dir)?;
        let bytes = component
            .serialize()
            .map_err(|e| std::io::Error::other(format!("{e:#}")))?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        fs::write(&tmp, bytes)?;
        fs::rename(&tmp, path)
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
    }
    #[cfg(not(unix))]
    {
        fs::create_dir_all(dir)
    }
}

//! Native backends: one worker process per session, for backends that
//! cannot run in wasm (hardware, vendor SDKs, COM libraries, devices).
//!
//! A session's worker is spawned from the backend's command line with its
//! end of a private socket pair (an inherited descriptor, never a path),
//! and the session id, a fresh 256-bit nonce and the protocol version in
//! its environment (not in argv, which `ps` shows to everyone). Start-up
//! walks the wire-visible states:
//!
//! ```text
//! STARTING_WORKER     starting the process (launcher.rs, process.rs, child.rs)
//! WAITING_FOR_WORKER  the process runs; waiting for its first frame
//! HANDSHAKING         checking the hello: nonce, protocol version
//! INITIALIZING_WORKER the worker's open
//! READY
//! ```
//!
//! A worker taken from the warm pool (`warm_pool = N`, pool.rs) has already
//! passed the first three, so its session goes from `STARTING_WORKER`
//! straight to `INITIALIZING_WORKER`, like a wasm one.
//!
//! Failures: no hello within `startup_timeout` is `startup-timeout`; a
//! wrong nonce `bad-nonce`, a wrong version `bad-version`, anything else
//! (garbage, an oversized frame, another message) `protocol-violation`;
//! each kills the process and is a `StartError::Failed` (`UNAVAILABLE`).
//! A worker whose open returns an error is `StartError::Refused`
//! (`FAILED_PRECONDITION`). Dropping the start future (cancellation) kills
//! the process without reporting a timeout.
//!
//! Once serving (worker.rs), commands run one at a time with their
//! deadlines (`Fault::deadline`, the process is killed), heartbeats go both
//! ways (`heartbeat-timeout` after `heartbeat_grace` of silence), and a
//! worker that exits is `worker-exited` with its exit status. Faults outside
//! a command reach the registry through the session's `FaultReporter`.

mod child;
mod contain;
mod launcher;
mod memory_limit;
mod pool;
mod process;
pub mod protocol;
mod session;
pub mod state_dir;
mod worker;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use self::contain::Containment;
use self::launcher::Launcher;
use self::memory_limit::Rlimits;
use self::pool::Pool;
use self::process::LiveSet;
use self::protocol::pb;
use self::session::Attach;
use self::state_dir::StateDir;
use super::event_sink::EventSink;
use super::{
    Backend, BackendInfo, Fault, FaultCode, Progress, StartError, StartPhase, StartRequest, Worker,
};
use crate::config::{BackendKind, BackendSpec, Runner};

pub use self::protocol::{PROTOCOL_VERSION, env};

/// Why [`NativeRuntime::load`] could not load a backend.
#[derive(Debug, thiserror::Error)]
pub enum NativeLoadError {
    /// The spec runs wasm, not a native command.
    #[error("not a native backend")]
    NotNative,
}

/// What every native backend of a gateway shares: the state directory and
/// the set of live workers.
#[derive(Clone)]
pub struct NativeRuntime {
    state: Arc<StateDir>,
    live: Arc<LiveSet>,
    contain: Arc<Containment>,
}

impl NativeRuntime {
    /// Opens the state directory, killing the leftovers of a previous
    /// gateway run before anything else starts.
    pub fn new(state_dir: &Path) -> std::io::Result<Self> {
        raise_fd_limit();
        let (state, killed) = StateDir::open(state_dir)?;
        if killed > 0 {
            tracing::warn!(
                killed,
                state_dir = %state_dir.display(),
                "killed leftover native workers of a previous gateway run"
            );
        }
        let contain = Containment::probe();
        tracing::info!(
            containment = contain.name(),
            "native workers are contained by {}",
            contain.describe()
        );
        let memory = match &contain {
            Containment::Cgroup(_) => {
                "RLIMIT_DATA and RLIMIT_AS per process, and the worker's cgroup"
            }
            Containment::Subreaper => "RLIMIT_DATA and RLIMIT_AS per process; no cgroup is used",
        };
        tracing::debug!("native workers' memory_limit is enforced with {memory}");
        state.record_cgroups(&contain.dirs());
        Ok(Self {
            state: Arc::new(state),
            live: Arc::default(),
            contain: Arc::new(contain),
        })
    }

    /// A backend for `spec`, which must be a native one. Starts its warm
    /// pool, if it has one; must be called inside a tokio runtime.
    pub fn load(&self, spec: &BackendSpec) -> Result<NativeBackend, NativeLoadError> {
        let Runner::Native(native) = &spec.runner else {
            return Err(NativeLoadError::NotNative);
        };
        let launcher = Arc::new(Launcher {
            backend: spec.name.clone(),
            native: native.clone(),
            env: spec
                .grants
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            log_rate: (spec.policy.log_burst, spec.policy.log_lines_per_sec),
            memory_limit: spec.policy.memory_limit,
            state: Arc::clone(&self.state),
            live: Arc::clone(&self.live),
            contain: Arc::clone(&self.contain),
        });
        let pool = (native.warm_pool > 0).then(|| Pool::start(Arc::clone(&launcher)));
        Ok(NativeBackend {
            info: BackendInfo {
                name: spec.name.clone(),
                kind: BackendKind::Native,
                version: spec.version.clone(),
                digest: command_digest(&native.command),
                description: spec.description.clone(),
            },
            launcher,
            pool,
        })
    }

    /// Live worker processes (sessions, warm pools, starting).
    pub fn live_workers(&self) -> usize {
        self.live.count()
    }

    /// The containment in force: `cgroup` or `subreaper`.
    pub fn containment(&self) -> &'static str {
        self.contain.name()
    }

    /// Kills every worker still alive: the last step of gateway shutdown,
    /// after sessions have been closed.
    pub fn shutdown(&self) {
        let killed = self.live.kill_all();
        if killed > 0 {
            tracing::info!(killed, "killed the remaining native workers");
        }
    }

    /// Removes this gateway's state directory (after `shutdown`).
    pub fn remove_state(&self) {
        self.contain.remove();
        self.state.remove();
    }
}

/// Raises the soft limit on open descriptors to the hard limit: each
/// native session holds a socket and a pipe in the gateway, and the usual
/// soft limit of 1024 would cap a gateway at a few hundred of them.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write `limit`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                tracing::debug!(
                    from = limit.rlim_cur,
                    to = limit.rlim_max,
                    "raised the open file limit"
                );
            }
        }
    }
}

/// `sha256:` of the command line (NUL-separated).
fn command_digest(command: &[String]) -> String {
    let mut h = Sha256::new();
    for arg in command {
        h.update(arg.as_bytes());
        h.update([0]);
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// A native backend: a command line and its warm pool.
pub struct NativeBackend {
    info: BackendInfo,
    launcher: Arc<Launcher>,
    pool: Option<Arc<Pool>>,
}

impl Drop for NativeBackend {
    fn drop(&mut self) {
        if let Some(pool) = &self.pool {
            pool.stop();
        }
    }
}

#[async_trait]
impl Backend for NativeBackend {
    fn info(&self) -> &BackendInfo {
        &self.info
    }

    /// The warm workers go now: new opens use the new version's pool, and
    /// a pinned open of this one starts its worker cold.
    fn retire(&self) {
        if let Some(pool) = &self.pool {
            pool.stop();
        }
    }

    async fn start(
        &self,
        request: StartRequest,
        progress: Progress<'_>,
    ) -> Result<Box<dyn Worker>, StartError> {
        progress(StartPhase::StartingWorker);
        let began = Instant::now();
        let warm = self.pool.as_ref().and_then(|p| p.take());
        let from_pool = warm.is_some();
        let worker = match warm {
            Some(warm) => warm,
            None => {
                self.launcher
                    .launch(Some(&request.session_id), Some(progress))
                    .await?
            }
        };
        // Workers start with the backend's limit; a tenant's may be lower.
        if request.policy.memory_limit < self.launcher.memory_limit
            && let Some(pid) = worker.pid()
            && let Err(e) = Rlimits::for_limit(request.policy.memory_limit)
                .lower(pid)
                .and_then(|()| worker.lower_memory_limit(request.policy.memory_limit))
        {
            if from_pool && let Some(pool) = &self.pool {
                pool.replenish();
            }
            return Err(StartError::Failed(Fault::crashed(
                FaultCode::SpawnFailed,
                format!("lowering the worker's memory limit: {e}"),
            )));
        }
        progress(StartPhase::InitializingWorker);
        // Only a worker that said it keeps state is sent one.
        let restore = match &request.restore {
            Some(r) if worker.stateful() => Some(pb::Restore {
                state: r.snapshot.bytes.clone(),
                from_version: r.snapshot.version.clone(),
            }),
            _ => None,
        };
        let open = pb::Open {
            session_id: request.session_id.to_string(),
            tenant: request.tenant.clone(),
            backend: request.backend.clone(),
            config: request.config.clone().into_iter().collect(),
            restore,
        };
        let attach = Attach {
            open,
            events: EventSink::new(Arc::clone(&request.events), request.policy.max_event_bytes),
            reporter: request.faults.clone(),
            max_reply_bytes: request.policy.max_reply_bytes,
            open_timeout: request
                .open_timeout
                .min(self.launcher.native.startup_timeout),
            cpu: request.cpu.clone(),
        };
        // On an error the worker is dropped, which kills the process.
        let opened = worker.open(attach).await;
        if from_pool && let Some(pool) = &self.pool {
            pool.replenish();
        }
        let worker = opened?;
        tracing::debug!(
            session_id = %request.session_id,
            pid = ?worker.pid(),
            from_pool,
            start_us = began.elapsed().as_micros() as u64,
            "native worker opened"
        );
        Ok(Box::new(worker))
    }
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;

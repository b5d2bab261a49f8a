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
//! STARTING_WORKER     starting the process (spawn.rs, launch.rs)
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

mod launch;
mod pool;
pub mod protocol;
pub mod reaper;
mod spawn;
mod worker;

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use self::pool::Pool;
use self::protocol::{FrameError, pb};
use self::reaper::StateDir;
use self::spawn::{LiveSet, Proc, SpawnSpec};
use self::worker::{Attach, Timing};
use super::{Backend, BackendInfo, Fault, StartError, StartRequest, Worker};
use crate::config::{BackendKind, BackendSpec, NativeSpec, Runner};
use crate::registry::state::SessionState;

pub use self::protocol::PROTOCOL_VERSION;
pub use self::worker::NativeWorker;

/// Frames buffered between a worker's reader task and its session task.
const FRAME_QUEUE: usize = 64;

/// The environment variables a worker gets (the SDK reads them).
pub mod env {
    /// The number of the inherited socket descriptor.
    pub const FD: &str = "GATEHOUSE_WORKER_FD";
    /// The nonce the hello must carry: 64 hex digits.
    pub const NONCE: &str = "GATEHOUSE_NONCE";
    /// The protocol version the gateway speaks.
    pub const PROTOCOL_VERSION: &str = "GATEHOUSE_PROTOCOL_VERSION";
    /// The session id (empty for a warm-pool worker; the open carries it).
    pub const SESSION_ID: &str = "GATEHOUSE_SESSION_ID";
    /// The backend's name.
    pub const BACKEND: &str = "GATEHOUSE_BACKEND";
    /// The gateway's heartbeat interval, in milliseconds.
    pub const HEARTBEAT_INTERVAL_MS: &str = "GATEHOUSE_HEARTBEAT_INTERVAL_MS";
    /// The heartbeat grace, in milliseconds.
    pub const HEARTBEAT_GRACE_MS: &str = "GATEHOUSE_HEARTBEAT_GRACE_MS";
    /// The frame cap, in bytes.
    pub const MAX_FRAME_BYTES: &str = "GATEHOUSE_MAX_FRAME_BYTES";
}

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
        Ok(Self {
            state: Arc::new(state),
            live: Arc::default(),
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
            state: Arc::clone(&self.state),
            live: Arc::clone(&self.live),
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

    async fn start(
        &self,
        request: StartRequest,
        progress: &(dyn Fn(SessionState) + Send + Sync),
    ) -> Result<Box<dyn Worker>, StartError> {
        progress(SessionState::StartingWorker);
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
        progress(SessionState::InitializingWorker);
        let open = pb::Open {
            session_id: request.session_id.to_string(),
            tenant: request.tenant.clone(),
            backend: request.backend.clone(),
            config: request.config.clone().into_iter().collect(),
        };
        let attach = Attach {
            open,
            events: Arc::clone(&request.events),
            reporter: request.faults.clone(),
            max_event_bytes: request.policy.max_event_bytes,
            max_reply_bytes: request.policy.max_reply_bytes,
            open_timeout: request
                .open_timeout
                .min(self.launcher.native.startup_timeout),
        };
        // On an error, dropping `worker` kills the process.
        let opened = worker.open(attach).await;
        if from_pool && let Some(pool) = &self.pool {
            pool.replenish();
        }
        opened?;
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

/// Spawns and handshakes workers of one backend.
struct Launcher {
    backend: String,
    native: NativeSpec,
    env: Vec<(String, String)>,
    state: Arc<StateDir>,
    live: Arc<LiveSet>,
}

/// Kills a process unless disarmed: start-up that is cancelled (its future
/// dropped) or fails leaves nothing behind.
struct KillGuard(Option<Arc<Proc>>);

impl Drop for KillGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            p.kill();
        }
    }
}

impl Launcher {
    fn timing(&self) -> Timing {
        Timing {
            heartbeat_interval: self.native.heartbeat_interval,
            heartbeat_grace: self.native.heartbeat_grace,
            max_frame: self.native.max_frame_bytes,
        }
    }

    /// Spawns a worker and checks its hello, reporting the start-up states
    /// to `progress`. `session_id` is `None` for a warm-pool worker.
    async fn launch(
        &self,
        session_id: Option<&str>,
        progress: Option<&(dyn Fn(SessionState) + Send + Sync)>,
    ) -> Result<NativeWorker, StartError> {
        let report = |s| {
            if let Some(p) = progress {
                p(s);
            }
        };
        let began = Instant::now();
        let until = began + self.native.startup_timeout;
        let failed = |code: &str, detail: String| StartError::Failed(Fault::crashed(code, detail));

        let (ours, theirs) = std::os::unix::net::UnixStream::pair()
            .map_err(|e| failed("spawn-failed", format!("creating the socket pair: {e}")))?;
        let theirs = above_stdio(OwnedFd::from(theirs))
            .map_err(|e| failed("spawn-failed", format!("preparing the socket: {e}")))?;
        ours.set_nonblocking(true)
            .map_err(|e| failed("spawn-failed", e.to_string()))?;
        let ours = tokio::net::UnixStream::from_std(ours)
            .map_err(|e| failed("spawn-failed", e.to_string()))?;

        let mut nonce = [0u8; 32];
        rand::rng().fill_bytes(&mut nonce);
        let nonce = hex::encode(nonce);
        let fd = std::os::fd::AsRawFd::as_raw_fd(&theirs);
        let env = self
            .env
            .iter()
            .cloned()
            .chain([
                (env::FD.to_string(), fd.to_string()),
                (env::NONCE.to_string(), nonce.clone()),
                (
                    env::PROTOCOL_VERSION.to_string(),
                    PROTOCOL_VERSION.to_string(),
                ),
                (
                    env::SESSION_ID.to_string(),
                    session_id.unwrap_or_default().to_string(),
                ),
                (env::BACKEND.to_string(), self.backend.clone()),
                (
                    env::HEARTBEAT_INTERVAL_MS.to_string(),
                    self.native.heartbeat_interval.as_millis().to_string(),
                ),
                (
                    env::HEARTBEAT_GRACE_MS.to_string(),
                    self.native.heartbeat_grace.as_millis().to_string(),
                ),
                (
                    env::MAX_FRAME_BYTES.to_string(),
                    self.native.max_frame_bytes.to_string(),
                ),
            ])
            .collect();
        let spec = SpawnSpec {
            command: self.native.command.clone(),
            env,
            child_end: theirs,
            backend: self.backend.clone(),
        };
        let proc = spawn::spawn(spec, Arc::clone(&self.state), Arc::clone(&self.live))
            .await
            .map_err(|e| {
                failed(
                    "spawn-failed",
                    format!("starting {:?}: {e}", self.native.command[0]),
                )
            })?;
        let mut guard = KillGuard(Some(Arc::clone(&proc)));
        report(SessionState::WaitingForWorker);

        let (reader, writer) = ours.into_split();
        let (frames_tx, mut frames) = mpsc::channel(FRAME_QUEUE);
        tokio::spawn(read_frames(reader, self.native.max_frame_bytes, frames_tx));

        let first = tokio::select! {
            biased;
            status = proc.exited() => {
                return Err(failed("worker-exited", format!("the worker exited before its hello: {status}")));
            }
            frame = frames.recv() => frame,
            _ = tokio::time::sleep_until(until.into()) => {
                return Err(failed(
                    "startup-timeout",
                    format!("no hello from the worker within {} ms", self.native.startup_timeout.as_millis()),
                ));
            }
        };
        report(SessionState::Handshaking);
        let hello = match first {
            Some(Ok(msg)) => protocol::check_hello(msg, &nonce).map_err(StartError::Failed)?,
            Some(Err(e)) => return Err(StartError::Failed(e.fault())),
            None => {
                return Err(failed(
                    "worker-exited",
                    "the worker closed its socket before its hello".into(),
                ));
            }
        };
        if hello.pid != proc.pid {
            tracing::debug!(
                spawned = proc.pid,
                hello = hello.pid,
                "the worker's hello names another pid (a wrapper?); the spawned pid is the one watched"
            );
        }
        tracing::debug!(
            backend = %self.backend,
            pid = proc.pid,
            handshake_ms = began.elapsed().as_millis() as u64,
            "native worker handshaken"
        );
        guard.0 = None;
        Ok(NativeWorker::spawn(
            proc,
            writer,
            frames,
            self.timing(),
            &self.backend,
        ))
    }
}

/// Reads a worker's frames until the socket ends or a frame is bad.
async fn read_frames(
    mut reader: tokio::net::unix::OwnedReadHalf,
    max_frame: usize,
    tx: mpsc::Sender<Result<pb::FromWorker, FrameError>>,
) {
    loop {
        match protocol::read::<pb::FromWorker, _>(&mut reader, max_frame).await {
            Ok(Some(msg)) => {
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
    }
}

/// Moves a descriptor to 3 or above: a gateway started with a closed
/// stdin/stdout/stderr may get 0-2 from `socketpair`, and the child's stdio
/// setup would overwrite those.
fn above_stdio(fd: OwnedFd) -> std::io::Result<OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd};
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: fcntl on a descriptor we own; the result is a new descriptor
    // we then own.
    let dup = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if dup < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `dup` is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(dup) })
}

/// How long a pool waits before retrying after a failed start.
const POOL_BACKOFF: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests;

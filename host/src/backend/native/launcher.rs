//! The launcher: spawns one backend's worker processes and checks their
//! hello (nonce, protocol version), reporting the start-up phases. What it
//! returns is an [`IdleWorker`], handshaken and serving no session yet.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Instant;

use rand::RngCore;
use tokio::sync::mpsc;

use super::contain::Containment;
use super::env;
use super::process::{self, LiveSet, Proc, SpawnSpec};
use super::protocol::{self, FrameError, PROTOCOL_VERSION, pb};
use super::session::{Timing, exit_fault};
use super::state_dir::StateDir;
use super::worker::IdleWorker;
use crate::backend::guest_log::LogLimiter;
use crate::backend::{Fault, FaultCode, Progress, StartError, StartPhase};
use crate::config::NativeSpec;

/// Frames buffered between a worker's reader task and its session task.
const FRAME_QUEUE: usize = 64;

/// Spawns and handshakes workers of one backend.
pub(super) struct Launcher {
    /// The backend's name.
    pub(super) backend: String,
    /// Its command line and timings.
    pub(super) native: NativeSpec,
    /// The backend's `grants.env`.
    pub(super) env: Vec<(String, String)>,
    /// The rate of the backend's log lines per worker: `log_burst`,
    /// `log_lines_per_sec`.
    pub(super) log_rate: (u32, u32),
    /// The backend's `memory_limit`, set on every worker it starts.
    pub(super) memory_limit: usize,
    pub(super) state: Arc<StateDir>,
    pub(super) live: Arc<LiveSet>,
    pub(super) contain: Arc<Containment>,
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
    pub(super) async fn launch(
        &self,
        session_id: Option<&str>,
        progress: Option<Progress<'_>>,
    ) -> Result<IdleWorker, StartError> {
        let report = |s| {
            if let Some(p) = progress {
                p(s);
            }
        };
        let began = Instant::now();
        let until = began + self.native.startup_timeout;
        let failed =
            |code: FaultCode, detail: String| StartError::Failed(Fault::crashed(code, detail));

        let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(|e| {
            failed(
                FaultCode::SpawnFailed,
                format!("creating the socket pair: {e}"),
            )
        })?;
        let theirs = above_stdio(OwnedFd::from(theirs))
            .map_err(|e| failed(FaultCode::SpawnFailed, format!("preparing the socket: {e}")))?;
        ours.set_nonblocking(true)
            .map_err(|e| failed(FaultCode::SpawnFailed, e.to_string()))?;
        let ours = tokio::net::UnixStream::from_std(ours)
            .map_err(|e| failed(FaultCode::SpawnFailed, e.to_string()))?;

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
            log: Arc::new(LogLimiter::new(self.log_rate.0, self.log_rate.1)),
            memory_limit: Some(self.memory_limit),
            max_processes: Some(self.native.max_processes),
            marker: nonce.clone(),
        };
        let proc = process::spawn(
            spec,
            Arc::clone(&self.state),
            Arc::clone(&self.live),
            Arc::clone(&self.contain),
        )
        .await
        .map_err(|e| {
            failed(
                FaultCode::SpawnFailed,
                format!("starting {:?}: {e}", self.native.command[0]),
            )
        })?;
        let mut guard = KillGuard(Some(Arc::clone(&proc)));
        report(StartPhase::WaitingForWorker);

        let (reader, writer) = ours.into_split();
        let (frames_tx, mut frames) = mpsc::channel(FRAME_QUEUE);
        tokio::spawn(read_frames(reader, self.native.max_frame_bytes, frames_tx));

        let first = tokio::select! {
            biased;
            status = proc.exited() => {
                return Err(StartError::Failed(exit_fault(&proc, status, " before its hello").await));
            }
            frame = frames.recv() => frame,
            _ = tokio::time::sleep_until(until.into()) => {
                return Err(failed(
                    FaultCode::StartupTimeout,
                    format!("no hello from the worker within {} ms", self.native.startup_timeout.as_millis()),
                ));
            }
        };
        report(StartPhase::Handshaking);
        let hello = match first {
            Some(Ok(msg)) => protocol::check_hello(msg, &nonce).map_err(StartError::Failed)?,
            Some(Err(e)) => return Err(StartError::Failed(Fault::from(&e))),
            None => {
                return Err(failed(
                    FaultCode::WorkerExited,
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
        Ok(IdleWorker::spawn(
            proc,
            writer,
            frames,
            self.timing(),
            &self.backend,
            hello.stateful,
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

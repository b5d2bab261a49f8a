//! Spawning worker processes so that none outlives the gateway, and reaping
//! every one of them.
//!
//! - Every worker is forked by one dedicated, never-ending spawner thread.
//!   `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits,
//!   not the process; tokio's blocking threads exit when idle, so forking
//!   from one of them would kill healthy workers at random.
//! - In the child, before `exec`: the parent-death signal is set to
//!   SIGKILL, then `getppid()` is compared with the gateway's pid, which
//!   closes the race of the gateway dying between `fork` and `prctl`; only
//!   the worker's end of the socket pair has its close-on-exec flag
//!   cleared, so it is the one descriptor the program inherits.
//! - The child leads its own process group, so the gateway kills the worker
//!   and anything it started with one `kill(-pgid, SIGKILL)`, and a Ctrl-C
//!   in the gateway's terminal does not hit workers directly.
//! - A task per child waits for its exit (no zombies), sweeps its process
//!   group, and removes its state-directory record.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc as std_mpsc};
use std::thread;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::sync::{oneshot, watch};

use super::reaper::StateDir;

/// Longest worker output line kept in the gateway's log.
const MAX_LOG_LINE: usize = 4096;

/// Variables a worker inherits from the gateway's environment.
const PASS_ENV: &[&str] = &["PATH", "HOME", "LANG", "TZ", "RUST_LOG", "RUST_BACKTRACE"];

type Job = Box<dyn FnOnce() + Send>;

/// The spawner thread's queue, started on first use, never stopped.
fn spawner() -> &'static Mutex<std_mpsc::Sender<Job>> {
    static SPAWNER: OnceLock<Mutex<std_mpsc::Sender<Job>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = std_mpsc::channel::<Job>();
        thread::Builder::new()
            .name("gatehouse-spawner".into())
            .spawn(move || {
                // Lives as long as the process: the sender is in a static.
                while let Ok(job) = rx.recv() {
                    job();
                }
            })
            .expect("starting the worker spawner thread");
        Mutex::new(tx)
    })
}

/// A worker process: its pid (= its process group) and its exit.
#[derive(Debug)]
pub struct Proc {
    /// The worker's pid, which is also its process group id.
    pub pid: u32,
    reaped: AtomicBool,
    exit: watch::Receiver<Option<ExitStatus>>,
}

impl Proc {
    /// Kills the worker's whole process group at once. A no-op once the
    /// worker has been reaped (its pid may belong to someone else by then).
    pub fn kill(&self) {
        if self.reaped.load(Ordering::Acquire) {
            return;
        }
        kill_group(self.pid);
    }

    /// Whether the worker has exited and been reaped.
    pub fn exited_status(&self) -> Option<ExitStatus> {
        *self.exit.borrow()
    }

    /// Resolves with the worker's exit status once it has been reaped.
    pub async fn exited(&self) -> ExitStatus {
        let mut rx = self.exit.clone();
        loop {
            if let Some(status) = *rx.borrow_and_update() {
                return status;
            }
            if rx.changed().await.is_err() {
                // The waiter task is gone (the runtime is shutting down):
                // the child was killed when it was dropped.
                return std::os::unix::process::ExitStatusExt::from_raw(libc::SIGKILL);
            }
        }
    }
}

fn kill_group(pid: u32) {
    if let Ok(pid) = i32::try_from(pid)
        && pid > 1
    {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
}

/// Every live worker of the gateway, so shutdown can kill what is left.
#[derive(Debug, Default)]
pub struct LiveSet {
    procs: Mutex<HashMap<u32, Arc<Proc>>>,
}

impl LiveSet {
    /// Kills every live worker.
    pub fn kill_all(&self) -> usize {
        let procs: Vec<Arc<Proc>> = self
            .procs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for p in &procs {
            p.kill();
        }
        procs.len()
    }

    /// Live workers.
    pub fn count(&self) -> usize {
        self.procs.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// What to start.
pub struct SpawnSpec {
    /// The program and its arguments.
    pub command: Vec<String>,
    /// Extra environment (the backend's `grants.env` and the protocol's
    /// `GATEHOUSE_*` variables).
    pub env: Vec<(String, String)>,
    /// The worker's end of the socket pair.
    pub child_end: OwnedFd,
    /// For log lines.
    pub backend: String,
}

/// Starts a worker from the spawner thread and sets up its reaping.
pub async fn spawn(
    spec: SpawnSpec,
    state: Arc<StateDir>,
    live: Arc<LiveSet>,
) -> io::Result<Arc<Proc>> {
    let (tx, rx) = oneshot::channel();
    let handle = tokio::runtime::Handle::current();
    let recorder = Arc::clone(&state);
    let job: Job = Box::new(move || {
        // tokio's process support needs a runtime context; the fork itself
        // happens on this thread.
        let _guard = handle.enter();
        let began = std::time::Instant::now();
        let result = spawn_here(&spec).inspect(|(child, _)| {
            if let Some(pid) = child.id() {
                tracing::debug!(
                    pid,
                    spawn_us = began.elapsed().as_micros() as u64,
                    "worker spawned"
                );
                recorder.record(pid);
            }
        });
        drop(spec.child_end);
        let _ = tx.send(result.map(|child| (child, spec.backend)));
    });
    spawner()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send(job)
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    let ((child, output), backend) = rx
        .await
        .map_err(|_| io::Error::other("the spawner thread dropped the request"))??;
    let pid = child
        .id()
        .ok_or_else(|| io::Error::other("the worker exited before it had a pid"))?;

    match tokio::net::unix::pipe::Receiver::from_owned_fd(output) {
        Ok(output) => {
            tokio::spawn(forward_output(output, backend, pid));
        }
        Err(e) => tracing::warn!(pid, "the worker's output will not be logged: {e}"),
    }

    let (exit_tx, exit_rx) = watch::channel(None);
    let proc = Arc::new(Proc {
        pid,
        reaped: AtomicBool::new(false),
        exit: exit_rx,
    });
    live.procs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(pid, Arc::clone(&proc));
    let waiter = Arc::clone(&proc);
    let mut child = child;
    tokio::spawn(async move {
        let status = child.wait().await;
        // Anything the worker started in its group goes with it. The group
        // id cannot have been reused yet: this runs right after the reap.
        kill_group(pid);
        waiter.reaped.store(true, Ordering::Release);
        state.forget(pid);
        live.procs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&pid);
        let status = status.unwrap_or_else(|e| {
            tracing::warn!(pid, "waiting for a worker: {e}");
            std::os::unix::process::ExitStatusExt::from_raw(libc::SIGKILL)
        });
        tracing::debug!(pid, %status, "worker reaped");
        let _ = exit_tx.send(Some(status));
    });
    Ok(proc)
}

/// Forks and execs, on the spawner thread. Returns the child and the read
/// end of the pipe that is its stdout and stderr.
fn spawn_here(spec: &SpawnSpec) -> io::Result<(tokio::process::Child, OwnedFd)> {
    let (program, args) = spec
        .command
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
    let fd = spec.child_end.as_raw_fd();
    // One pipe for stdout and stderr: one descriptor and one task per
    // worker in the gateway, and the lines stay in order.
    let (output, output_writer) = io::pipe()?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(passed_env())
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::from(output_writer.try_clone()?))
        .stderr(Stdio::from(output_writer))
        .process_group(0)
        .kill_on_drop(true);
    // SAFETY: getpid is async-signal-safe and called before the fork.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure runs in the child between fork and exec and only
    // makes async-signal-safe calls (prctl, getppid, fcntl); it allocates
    // nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The gateway may have died before prctl took effect; then the
            // signal will never come, so do not start at all.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // The parent's copies of the write end close with `cmd`, so the read
    // end sees end-of-file when the worker (and its children) exit.
    let child = cmd.spawn()?;
    Ok((child, OwnedFd::from(output)))
}

fn passed_env() -> Vec<(OsString, OsString)> {
    std::env::vars_os()
        .filter(|(k, _)| {
            k.to_str()
                .is_some_and(|k| PASS_ENV.contains(&k) || k.starts_with("LC_"))
        })
        .collect()
}

/// Forwards a worker's stdout and stderr to the gateway's log, a line at a
/// time.
async fn forward_output(out: impl AsyncRead + Unpin, backend: String, pid: u32) {
    let mut lines = BufReader::new(out);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut lines)
            .take(MAX_LOG_LINE as u64)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end();
                if !text.is_empty() {
                    tracing::info!(target: "gatehouse::worker", %backend, pid, "{text}");
                }
            }
        }
    }
}

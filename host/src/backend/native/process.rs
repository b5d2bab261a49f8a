//! Worker processes: the spawner thread that starts them so that none
//! outlives the gateway, the set of live ones, and reaping every one.
//!
//! - Every worker is started by one dedicated, never-ending spawner thread
//!   (with `clone(CLONE_VM | CLONE_VFORK)`, child.rs, not `fork`).
//!   `PR_SET_PDEATHSIG` fires when the *thread* that created the child
//!   exits, not the process; tokio's blocking threads exit when idle, so
//!   spawning from one of them would kill healthy workers at random.
//! - In the child, before `exec`: the parent-death signal is set to
//!   SIGKILL, then `getppid()` is compared with the gateway's pid, which
//!   closes the race of the gateway dying between the clone and `prctl`; only
//!   the worker's end of the socket pair has its close-on-exec flag
//!   cleared, so it is the one descriptor the program inherits.
//! - The child leads its own process group, so the gateway kills the worker
//!   and anything it started with one `kill(-pgid, SIGKILL)`, and a Ctrl-C
//!   in the gateway's terminal does not hit workers directly.
//! - Each child is in its containment cell (contain/, a cgroup per worker
//!   or the subreaper fallback), joined before `exec`; killing a worker
//!   kills its cell, and a cell that ran into `max_processes` or its memory
//!   cgroup's limit ends the worker with that as the reason.
//! - A task per child waits for its exit on a pidfd and reaps it (no
//!   zombies), sweeps its process group and cell, and removes its
//!   state-directory record.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc as std_mpsc};
use std::thread;

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::sync::{oneshot, watch};
use tracing::Instrument;

use super::child::Launch;
use super::contain::{Breach, Cell, Containment, Limits, subreaper};
use super::memory_limit::{Rlimits, is_allocation_failure};
use super::state_dir::StateDir;
use crate::backend::guest_log::{LogLimiter, MAX_LINE, log_line};
use crate::backend::handle::Process;

/// Variables a worker inherits from the gateway's environment.
const PASS_ENV: &[&str] = &["PATH", "HOME", "LANG", "TZ", "RUST_LOG", "RUST_BACKTRACE"];

type Job = Box<dyn FnOnce() + Send>;

/// The spawner thread's queue: the thread starts on first use and is never
/// stopped. A failure to start it is returned to that spawn, and the next
/// spawn tries again.
fn spawner() -> io::Result<std_mpsc::Sender<Job>> {
    static SPAWNER: Mutex<Option<std_mpsc::Sender<Job>>> = Mutex::new(None);
    let mut slot = SPAWNER.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(tx) = slot.as_ref() {
        return Ok(tx.clone());
    }
    let (tx, rx) = std_mpsc::channel::<Job>();
    thread::Builder::new()
        .name("gatehouse-spawner".into())
        .spawn(move || {
            // Lives as long as the process: the sender is in a static.
            while let Ok(job) = rx.recv() {
                job();
            }
        })
        .map_err(|e| io::Error::other(format!("starting the worker spawner thread: {e}")))?;
    *slot = Some(tx.clone());
    Ok(tx)
}

/// A worker process: its pid (= its process group) and its exit.
#[derive(Debug)]
pub struct Proc {
    /// The worker's pid, which is also its process group id.
    pub pid: u32,
    reaped: AtomicBool,
    exit: watch::Receiver<Option<ExitStatus>>,
    /// The session it serves, for its log lines; unset while it idles in
    /// the warm pool.
    session: OnceLock<Arc<str>>,
    /// Whether its output said an allocation failed.
    allocation_failed: AtomicBool,
    /// Becomes true once its output reached end-of-file.
    output_closed: watch::Receiver<bool>,
    /// Its containment: everything it starts ends with it.
    cell: Cell,
    /// The limit its cell ran into, which ended it.
    breach: OnceLock<Breach>,
}

impl Proc {
    /// Tags the worker's output with the session it now serves.
    pub fn serve_session(&self, session_id: Arc<str>) {
        let _ = self.session.set(session_id);
    }

    /// Kills the worker's whole process group at once. A no-op once the
    /// worker has been reaped (its pid may belong to someone else by then).
    pub fn kill(&self) {
        if self.reaped.load(Ordering::Acquire) {
            return;
        }
        kill_group(self.pid);
        self.cell.kill();
    }

    /// The limit (`max_processes`, the cgroup's memory limit) that ended
    /// the worker, if one did.
    pub fn breach(&self) -> Option<Breach> {
        // The cell itself too: the socket may break before the waiter saw
        // the worker's OOM kill.
        self.breach.get().copied().or_else(|| self.cell.breach())
    }

    /// Lowers the memory limit of the worker's cell (its rlimits are
    /// lowered separately).
    pub fn lower_memory_limit(&self, limit: usize) -> io::Result<()> {
        self.cell.lower_memory(limit)
    }

    /// Records a breach and ends the worker for it.
    fn breached(&self, breach: Breach) {
        let _ = self.breach.set(breach);
        self.kill();
    }

    /// The CPU time (user and system) the worker and the children it
    /// waited for have used, from `/proc`; `None` once it is reaped (its
    /// pid may be someone else's) or where `/proc` cannot be read.
    pub fn cpu_time(&self) -> Option<std::time::Duration> {
        if self.reaped.load(Ordering::Acquire) {
            return None;
        }
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        proc_stat_cpu(&stat)
    }

    /// Whether the worker has exited and been reaped.
    pub fn exited_status(&self) -> Option<ExitStatus> {
        *self.exit.borrow()
    }

    /// Whether the worker reported an allocation failure on its way out:
    /// its memory limit, most likely. Waits a little for its output to be
    /// read to the end, which may lag behind its exit.
    pub async fn ran_out_of_memory(&self) -> bool {
        let mut closed = self.output_closed.clone();
        let _ = tokio::time::timeout(
            std::time::Duration::from_millis(250),
            closed.wait_for(|c| *c),
        )
        .await;
        self.allocation_failed.load(Ordering::Acquire)
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

impl Process for Proc {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn kill(&self) {
        Proc::kill(self);
    }

    fn is_running(&self) -> bool {
        self.exited_status().is_none()
    }

    fn processes(&self) -> Option<u64> {
        self.cell.processes()
    }
}

/// utime + stime + cutime + cstime of a `/proc/PID/stat` line.
fn proc_stat_cpu(stat: &str) -> Option<std::time::Duration> {
    // The command name may hold spaces and parentheses: fields are counted
    // from after its closing parenthesis, which is field 2's end.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is fields[0]; utime is field 14.
    let ticks: u64 = fields
        .get(11..15)?
        .iter()
        .map(|f| f.parse::<u64>().ok())
        .sum::<Option<u64>>()?;
    // SAFETY: sysconf has no preconditions.
    let per_sec = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .ok()
        .filter(|t| *t > 0)?;
    Some(std::time::Duration::from_nanos(
        ticks.saturating_mul(1_000_000_000) / per_sec,
    ))
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
    /// The rate limit of the worker's output lines.
    pub log: Arc<LogLimiter>,
    /// The worker's `memory_limit`, set as resource limits before `exec`.
    pub memory_limit: Option<usize>,
    /// `max_processes`.
    pub max_processes: Option<u32>,
    /// The worker's nonce: marks its descendants where only the subreaper
    /// contains them.
    pub marker: String,
}

/// How often a worker's cell is checked for a limit it ran into.
const BREACH_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// Starts a worker from the spawner thread and sets up its reaping.
pub async fn spawn(
    spec: SpawnSpec,
    state: Arc<StateDir>,
    live: Arc<LiveSet>,
    contain: Arc<Containment>,
) -> io::Result<Arc<Proc>> {
    let (tx, rx) = oneshot::channel();
    let recorder = Arc::clone(&state);
    let job: Job = Box::new(move || {
        let began = std::time::Instant::now();
        let limits = Limits {
            max_processes: spec.max_processes,
            memory_limit: spec.memory_limit,
        };
        let result = contain
            .cell(limits, spec.marker.clone())
            .and_then(|mut cell| {
                let spawned = spawn_here(&spec, &cell);
                cell.spawned();
                match spawned {
                    Ok(child) => Ok((child, cell)),
                    Err(e) => {
                        cell.release();
                        Err(e)
                    }
                }
            })
            .inspect(|((pid, _), _)| {
                subreaper::register_worker(*pid);
                tracing::debug!(
                    pid,
                    spawn_us = began.elapsed().as_micros() as u64,
                    "worker spawned"
                );
                recorder.record(*pid);
            });
        drop(spec.child_end);
        if let Err(Ok((((pid, _), cell), _))) =
            tx.send(result.map(|child| (child, (spec.backend, spec.log))))
        {
            // The open was abandoned while the worker started: nobody
            // will ever wait for it, so end it here.
            end_unwatched(pid, &cell, &recorder);
        }
    });
    spawner()?
        .send(job)
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    let (((pid, output), cell), (backend, log)) = rx
        .await
        .map_err(|_| io::Error::other("the spawner thread dropped the request"))??;
    // Until the waiter below owns it, a failure here must not leave the
    // child running unreaped.
    let exit = match ExitWatch::new(pid) {
        Ok(exit) => exit,
        Err(e) => {
            end_unwatched(pid, &cell, &state);
            return Err(e);
        }
    };

    let (exit_tx, exit_rx) = watch::channel(None);
    let (closed_tx, closed_rx) = watch::channel(false);
    let proc = Arc::new(Proc {
        pid,
        reaped: AtomicBool::new(false),
        exit: exit_rx,
        session: OnceLock::new(),
        allocation_failed: AtomicBool::new(false),
        output_closed: closed_rx,
        cell,
        breach: OnceLock::new(),
    });
    match tokio::net::unix::pipe::Receiver::from_owned_fd(output) {
        Ok(pipe) => {
            let output = Output {
                proc: Arc::clone(&proc),
                limiter: log,
                closed: closed_tx,
            };
            let span = tracing::info_span!(parent: None, "worker", %backend, pid);
            tokio::spawn(output.forward(pipe).instrument(span));
        }
        Err(e) => {
            let _ = closed_tx.send(true);
            tracing::warn!(pid, "the worker's output will not be logged: {e}");
        }
    }
    live.procs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(pid, Arc::clone(&proc));
    let waiter = Arc::clone(&proc);
    tokio::spawn(async move {
        let exited = exit.wait();
        tokio::pin!(exited);
        let mut poll = tokio::time::interval(BREACH_POLL);
        // No ticks for a cell with nothing to watch.
        let watched = waiter.cell.has_limits();
        let status = loop {
            tokio::select! {
                status = &mut exited => break status,
                _ = poll.tick(), if watched => {
                    if waiter.breach.get().is_none() && let Some(breach) = waiter.cell.breach() {
                        tracing::info!(pid, ?breach, "the worker ran into a limit of its cell");
                        waiter.breached(breach);
                    }
                }
            }
        };
        // Anything the worker started in its group goes with it. The group
        // id cannot have been reused yet: this runs right after the reap.
        kill_group(pid);
        subreaper::forget_worker(pid);
        // An OOM kill of the worker itself shows only now.
        if waiter.breach.get().is_none()
            && let Some(breach) = waiter.cell.breach()
        {
            let _ = waiter.breach.set(breach);
        }
        waiter.reaped.store(true, Ordering::Release);
        // Everything else in its cell goes too, and the cell with it.
        let releaser = Arc::clone(&waiter);
        let _ = tokio::task::spawn_blocking(move || releaser.cell.release()).await;
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

/// Starts the worker, on the spawner thread. Returns its pid and the read
/// end of the pipe that is its stdout and stderr.
fn spawn_here(spec: &SpawnSpec, cell: &Cell) -> io::Result<(u32, OwnedFd)> {
    let (program, args) = spec
        .command
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
    // One pipe for stdout and stderr: one descriptor and one task per
    // worker in the gateway, and the lines stay in order.
    let (output, output_writer) = io::pipe()?;
    let stdin = std::fs::File::open("/dev/null")?;
    let mut env = passed_env();
    env.extend(
        spec.env
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v))),
    );
    let mut launch = Launch::new(
        program,
        args,
        &env,
        (
            stdin.as_raw_fd(),
            output_writer.as_raw_fd(),
            spec.child_end.as_raw_fd(),
        ),
    )?;
    launch.rlimits = spec.memory_limit.map(Rlimits::for_limit);
    launch.join = cell.join_fds();
    let pid = launch.spawn()?;
    // The gateway's copy of the write end closes here, so the read end
    // sees end-of-file when the worker (and its children) exit.
    drop(output_writer);
    let pid = u32::try_from(pid).map_err(|_| io::Error::other("a negative pid"))?;
    Ok((pid, OwnedFd::from(output)))
}

/// A child's exit, awaited through a pidfd (readable once it has exited)
/// and then reaped. Dropped before that (the runtime is shutting down),
/// it kills the child's group, as `kill_on_drop` would.
struct ExitWatch {
    pid: u32,
    pidfd: Option<AsyncFd<OwnedFd>>,
    reaped: bool,
}

impl ExitWatch {
    fn new(pid: u32) -> io::Result<Self> {
        let raw = i32::try_from(pid).map_err(|_| io::Error::other("a negative pid"))?;
        // SAFETY: pidfd_open takes a pid and flags and returns a new
        // descriptor or -1. The child is not reaped yet, so the pid is ours.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, raw, 0) };
        let pidfd = if fd >= 0 {
            // SAFETY: a fresh descriptor nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
            // SAFETY: the AsyncFd owns the descriptor, which stays open
            // and the same until it is dropped.
            Some(unsafe { AsyncFd::register(fd) }?)
        } else {
            // Kernels before 5.3: wait on a blocking thread instead.
            None
        };
        Ok(Self {
            pid,
            pidfd,
            reaped: false,
        })
    }

    async fn wait(mut self) -> io::Result<ExitStatus> {
        let status = match &self.pidfd {
            Some(fd) => {
                let _ready = fd.readable().await?;
                waitpid(self.pid)
            }
            None => {
                let pid = self.pid;
                tokio::task::spawn_blocking(move || waitpid(pid))
                    .await
                    .map_err(io::Error::other)?
            }
        };
        self.reaped = true;
        status
    }
}

impl Drop for ExitWatch {
    fn drop(&mut self) {
        if !self.reaped {
            kill_group(self.pid);
        }
    }
}

/// Waits for our child `pid` to exit and reaps it.
fn waitpid(pid: u32) -> io::Result<ExitStatus> {
    let pid = i32::try_from(pid).map_err(|_| io::Error::other("a negative pid"))?;
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child; `status` is a valid out pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return Ok(std::os::unix::process::ExitStatusExt::from_raw(status));
        }
        let e = io::Error::last_os_error();
        if r < 0 && e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Ends a started worker nothing will watch: kills its group and cell,
/// reaps it on the calling thread and forgets its state-directory record.
fn end_unwatched(pid: u32, cell: &Cell, state: &StateDir) {
    kill_group(pid);
    cell.kill();
    let _ = waitpid(pid);
    subreaper::forget_worker(pid);
    cell.release();
    state.forget(pid);
}

fn passed_env() -> Vec<(OsString, OsString)> {
    std::env::vars_os()
        .filter(|(k, _)| {
            k.to_str()
                .is_some_and(|k| PASS_ENV.contains(&k) || k.starts_with("LC_"))
        })
        .collect()
}

/// Where a worker's output lines go.
struct Output {
    proc: Arc<Proc>,
    limiter: Arc<LogLimiter>,
    /// Told at end-of-file.
    closed: watch::Sender<bool>,
}

impl Output {
    /// Forwards a worker's stdout and stderr to the gateway's log, a line
    /// at a time, through the same rate-limited, session-tagged path as a
    /// wasm guest's output. Ends at end-of-file: when the worker and
    /// everything it started have exited.
    async fn forward(self, out: impl AsyncRead + Unpin) {
        let mut lines = BufReader::new(out);
        let mut line = Vec::new();
        loop {
            line.clear();
            match (&mut lines)
                .take(MAX_LINE as u64)
                .read_until(b'\n', &mut line)
                .await
            {
                Ok(0) | Err(_) => {
                    let _ = self.closed.send(true);
                    return;
                }
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line);
                    let text = text.trim_end();
                    if text.is_empty() {
                        continue;
                    }
                    // Checked before the rate limit, which may drop the line.
                    if is_allocation_failure(text) {
                        self.proc.allocation_failed.store(true, Ordering::Release);
                    }
                    let session = self.proc.session.get().map_or("", |s| &**s);
                    log_line(session, "worker", tracing::Level::INFO, &self.limiter, text);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_past_a_command_name_with_spaces() {
        // SAFETY: sysconf has no preconditions.
        let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap();
        let stat = format!(
            "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 {} {} {} {} 20 0 1 0",
            hz,
            hz / 2,
            hz * 2,
            0
        );
        assert_eq!(
            proc_stat_cpu(&stat),
            Some(std::time::Duration::from_millis(3500))
        );
        assert_eq!(proc_stat_cpu("42 (x) S 1"), None);
        // Our own process has used some CPU by now.
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(proc_stat_cpu(&own).is_some());
    }
}

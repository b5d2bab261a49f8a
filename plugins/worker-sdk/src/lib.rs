//! The SDK for gatehouse **native workers**: backends that run as their own
//! process, one per session, because they cannot run in wasm (hardware,
//! vendor SDKs, threads, devices).
//!
//! Implement [`Worker`] and call [`run`] from `main`:
//!
//! ```no_run
//! use gatehouse_worker::{Command, CommandError, EventSender, SessionContext, Worker};
//!
//! struct Counter {
//!     n: u64,
//!     events: EventSender,
//! }
//!
//! impl Worker for Counter {
//!     fn open(_ctx: &SessionContext, events: EventSender) -> Result<Self, String> {
//!         Ok(Counter { n: 0, events })
//!     }
//!
//!     fn handle(&mut self, command: Command) -> Result<Vec<u8>, CommandError> {
//!         match command.name.as_str() {
//!             "count" => {
//!                 self.n += 1;
//!                 // Any clone of the sender, on any thread, may emit at any time.
//!                 let _ = self.events.emit("counted", self.n.to_string());
//!                 Ok(self.n.to_string().into_bytes())
//!             }
//!             other => Err(CommandError::UnknownCommand(other.to_string())),
//!         }
//!     }
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     gatehouse_worker::run::<Counter>()
//! }
//! ```
//!
//! The SDK does the rest: it picks up the private socket the gateway handed
//! the process, says hello with the nonce, frames every message, heartbeats
//! on a thread of its own, and exits when the gateway goes away (its socket
//! closes or it stops heartbeating). Commands arrive one at a time on the
//! thread that called [`run`]; a command that runs too long is the gateway's
//! business (its command timeout kills the process).

#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::panic::{self, AssertUnwindSafe};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use gatehouse_worker_protocol::FrameError;
use prost::Message;

/// The generated messages of `gatehouse.worker.v1`
/// (`proto/gatehouse/worker/v1/worker.proto`), the protocol version and the
/// environment the gateway sets for a worker: the shared wire crate.
pub use gatehouse_worker_protocol::{PROTOCOL_VERSION, env, pb as proto};

use proto::{from_worker, to_worker};

/// What a session told the worker when it opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionContext {
    /// The session id.
    pub session_id: String,
    /// The owning tenant.
    pub tenant: String,
    /// The backend's name.
    pub backend: String,
    /// The open request's config merged over the backend's config.
    pub config: BTreeMap<String, String>,
}

/// One client command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The command's name.
    pub name: String,
    /// The command's payload.
    pub payload: Vec<u8>,
}

/// A command the worker refused or failed; the session stays usable and the
/// client gets the error inside an OK response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    /// No command of that name.
    UnknownCommand(String),
    /// The payload could not be understood.
    InvalidPayload(String),
    /// The command failed.
    Failed(String),
}

/// A native worker: one value per session.
pub trait Worker: Sized {
    /// Called once when a session takes this process. `events` may be
    /// cloned and moved to any thread. An `Err` refuses the session (the
    /// client sees `FAILED_PRECONDITION`) and the process exits.
    fn open(ctx: &SessionContext, events: EventSender) -> Result<Self, String>;

    /// Runs one command. Commands arrive one at a time, in order.
    fn handle(&mut self, command: Command) -> Result<Vec<u8>, CommandError>;

    /// Called once on a graceful close, before the process exits.
    fn close(&mut self) {}

    /// Whether this worker keeps its session's state across restarts and
    /// upgrades. Set it to `true` and implement [`snapshot`](Self::snapshot)
    /// and [`restore`](Self::restore); the gateway then asks for snapshots
    /// between commands and hands the latest to the session's next worker.
    const STATEFUL: bool = false;

    /// The session's state, in a format of your choosing (version it: a
    /// newer worker restores what an older one saved). Called between
    /// commands, never during one.
    fn snapshot(&mut self) -> Vec<u8> {
        Vec::new()
    }

    /// Replaces the state `open` set up with `state`, which a worker of
    /// backend version `from_version` saved. Called right after `open` on a
    /// restarted or upgraded session. An `Err` keeps the session where it
    /// was (an upgrade leaves the old version serving).
    fn restore(&mut self, state: &[u8], from_version: &str) -> Result<(), String> {
        let _ = (state, from_version);
        Err("this worker keeps no state".into())
    }
}

/// Why an event could not be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// The session is closing or the gateway is gone.
    Closed,
    /// The event is larger than a frame may be.
    TooLarge {
        /// The encoded size.
        size: usize,
        /// The cap.
        limit: usize,
    },
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Closed => f.write_str("the session is closed"),
            SendError::TooLarge { size, limit } => {
                write!(
                    f,
                    "an event of {size} bytes is over the frame cap of {limit}"
                )
            }
        }
    }
}

impl std::error::Error for SendError {}

/// Emits events to the session's event stream. `Clone + Send + Sync`: any
/// thread may emit at any time, before or after a command, while the main
/// thread is busy or idle.
#[derive(Clone)]
pub struct EventSender {
    link: Arc<Link>,
}

impl fmt::Debug for EventSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventSender")
            .field("open", &self.is_open())
            .finish()
    }
}

impl EventSender {
    /// Appends an event to the session's stream.
    pub fn emit(
        &self,
        name: impl Into<String>,
        payload: impl Into<Vec<u8>>,
    ) -> Result<(), SendError> {
        if !self.is_open() {
            return Err(SendError::Closed);
        }
        let msg = from_worker::Msg::Event(proto::Event {
            name: name.into(),
            payload: payload.into(),
        });
        self.link.send(msg)
    }

    /// Whether events can still be sent (false once the session closes or
    /// the gateway goes away). Background threads can poll this to stop.
    pub fn is_open(&self) -> bool {
        !self.link.closed.load(Ordering::Acquire)
    }
}

/// Why [`try_run`] failed.
#[derive(Debug)]
pub enum RunError {
    /// The process was not started by a gatehouse gateway (a variable is
    /// missing or malformed).
    NotAWorker(String),
    /// The gateway speaks another protocol version.
    Version {
        /// The gateway's.
        gateway: u32,
        /// Ours.
        ours: u32,
    },
    /// The socket failed.
    Io(io::Error),
    /// The gateway broke the protocol.
    Protocol(String),
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::NotAWorker(m) => write!(
                f,
                "not started by a gatehouse gateway ({m}); native workers are spawned by `gatehouse serve`"
            ),
            RunError::Version { gateway, ours } => write!(
                f,
                "the gateway speaks worker protocol {gateway}, this worker speaks {ours}"
            ),
            RunError::Io(e) => write!(f, "worker socket: {e}"),
            RunError::Protocol(m) => write!(f, "protocol error: {m}"),
        }
    }
}

impl std::error::Error for RunError {}

impl From<io::Error> for RunError {
    fn from(e: io::Error) -> Self {
        RunError::Io(e)
    }
}

/// Runs a worker until its session closes or the gateway goes away, and
/// returns the process exit code. Errors are printed to stderr (which the
/// gateway logs).
pub fn run<W: Worker>() -> ExitCode {
    match try_run::<W>() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gatehouse worker: {e}");
            ExitCode::from(2)
        }
    }
}

/// Like [`run`], returning the error instead of printing it.
pub fn try_run<W: Worker>() -> Result<(), RunError> {
    run_with::<W>(Settings::from_env()?)
}

fn run_with<W: Worker>(settings: Settings) -> Result<(), RunError> {
    // SAFETY: the gateway handed us this descriptor for exactly this use and
    // nothing else in the process owns it. It is duplicated with
    // close-on-exec (so programs this worker starts do not inherit the
    // session's socket) and the original is closed.
    let inherited = unsafe { UnixStream::from_raw_fd(settings.fd) };
    let stream = inherited.try_clone()?;
    drop(inherited);
    let reader = stream.try_clone()?;
    let link = Arc::new(Link {
        stream: Mutex::new(stream),
        max_frame: settings.max_frame,
        closed: AtomicBool::new(false),
        shutting_down: AtomicBool::new(false),
        started: Instant::now(),
        last_heard_ms: AtomicU64::new(0),
    });
    link.send(from_worker::Msg::Hello(proto::Hello {
        nonce: settings.nonce.clone(),
        protocol_version: PROTOCOL_VERSION,
        pid: std::process::id(),
        stateful: W::STATEFUL,
    }))
    .map_err(|e| RunError::Protocol(format!("sending hello: {e}")))?;

    let (tx, rx) = mpsc::channel();
    spawn_reader(Arc::clone(&link), reader, tx)?;
    spawn_heartbeat(Arc::clone(&link), settings.interval, settings.grace)?;
    let result = serve::<W>(&link, &rx);
    // The worker is finishing on its own terms: the background threads must
    // not exit the process under the caller of `run`.
    link.shutting_down.store(true, Ordering::Release);
    link.closed.store(true, Ordering::Release);
    result
}

/// The main loop: open, commands in order, shutdown.
fn serve<W: Worker>(link: &Arc<Link>, rx: &mpsc::Receiver<to_worker::Msg>) -> Result<(), RunError> {
    let events = EventSender {
        link: Arc::clone(link),
    };
    let mut worker: Option<W> = None;
    while let Ok(msg) = rx.recv() {
        match msg {
            to_worker::Msg::Open(open) => {
                if worker.is_some() {
                    return Err(fatal(link, "protocol", "a second open"));
                }
                let ctx = SessionContext {
                    session_id: open.session_id,
                    tenant: open.tenant,
                    backend: open.backend,
                    config: open.config.into_iter().collect(),
                };
                let opened = guard(link, || {
                    let mut w = W::open(&ctx, events.clone()).map_err(|e| (e, false))?;
                    if let Some(r) = open.restore.filter(|_| W::STATEFUL) {
                        w.restore(&r.state, &r.from_version)
                            .map_err(|e| (e, true))?;
                    }
                    Ok(w)
                });
                match opened {
                    Ok(w) => {
                        worker = Some(w);
                        let _ = link.send(from_worker::Msg::Opened(proto::Opened {
                            ok: true,
                            error: String::new(),
                            restore_failed: false,
                        }));
                    }
                    Err((error, restore_failed)) => {
                        link.closed.store(true, Ordering::Release);
                        let _ = link.send(from_worker::Msg::Opened(proto::Opened {
                            ok: false,
                            error,
                            restore_failed,
                        }));
                        return Ok(());
                    }
                }
            }
            to_worker::Msg::Snapshot(snapshot) => {
                let Some(w) = worker.as_mut() else {
                    return Err(fatal(link, "protocol", "a snapshot before open"));
                };
                let state = guard(link, || w.snapshot());
                if let Err(e) = link.send(from_worker::Msg::State(proto::State {
                    id: snapshot.id,
                    state,
                })) {
                    return Err(fatal(link, "snapshot", &format!("sending the state: {e}")));
                }
            }
            to_worker::Msg::Command(cmd) => {
                let Some(w) = worker.as_mut() else {
                    return Err(fatal(link, "protocol", "a command before open"));
                };
                let id = cmd.id;
                let command = Command {
                    name: cmd.name,
                    payload: cmd.payload,
                };
                let result = guard(link, || w.handle(command));
                let result = match result {
                    Ok(payload) => proto::reply::Result::Payload(payload),
                    Err(e) => {
                        use proto::command_error::Kind;
                        let (kind, message) = match e {
                            CommandError::UnknownCommand(m) => (Kind::UnknownCommand, m),
                            CommandError::InvalidPayload(m) => (Kind::InvalidPayload, m),
                            CommandError::Failed(m) => (Kind::Failed, m),
                        };
                        proto::reply::Result::Error(proto::CommandError {
                            kind: kind as i32,
                            message,
                        })
                    }
                };
                let reply = proto::Reply {
                    id,
                    result: Some(result),
                };
                if let Err(SendError::TooLarge { size, limit }) =
                    link.send(from_worker::Msg::Reply(reply))
                {
                    let _ = link.send(from_worker::Msg::Reply(proto::Reply {
                        id,
                        result: Some(proto::reply::Result::Error(proto::CommandError {
                            kind: proto::command_error::Kind::Failed as i32,
                            message: format!(
                                "reply of {size} bytes is over the frame cap of {limit}"
                            ),
                        })),
                    }));
                }
            }
            to_worker::Msg::Shutdown(_) => {
                link.shutting_down.store(true, Ordering::Release);
                link.closed.store(true, Ordering::Release);
                if let Some(mut w) = worker.take() {
                    guard(link, || w.close());
                }
                return Ok(());
            }
            // The reader thread keeps heartbeats to itself.
            to_worker::Msg::Heartbeat(_) => {}
        }
    }
    // The reader stopped: the gateway is gone.
    Ok(())
}

/// Runs worker code; a panic is reported to the gateway as a fault and the
/// process exits.
fn guard<T>(link: &Link, f: impl FnOnce() -> T) -> T {
    match panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(payload) => {
            let detail = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".to_string());
            let _ = fatal(link, "panic", &detail);
            std::process::exit(101);
        }
    }
}

/// Reports a fatal error to the gateway and returns it as an error.
fn fatal(link: &Link, code: &str, detail: &str) -> RunError {
    link.closed.store(true, Ordering::Release);
    let _ = link.send(from_worker::Msg::Fault(proto::Fault {
        code: code.to_string(),
        detail: detail.to_string(),
    }));
    RunError::Protocol(format!("{code}: {detail}"))
}

struct Settings {
    fd: i32,
    nonce: String,
    interval: Duration,
    grace: Duration,
    max_frame: usize,
}

impl Settings {
    fn from_env() -> Result<Self, RunError> {
        let var = |name: &str| {
            std::env::var(name).map_err(|_| RunError::NotAWorker(format!("{name} is not set")))
        };
        let number = |name: &str, default: Option<u64>| -> Result<u64, RunError> {
            match std::env::var(name) {
                Ok(v) => v
                    .parse()
                    .map_err(|_| RunError::NotAWorker(format!("{name}={v:?} is not a number"))),
                Err(_) => default.ok_or_else(|| RunError::NotAWorker(format!("{name} is not set"))),
            }
        };
        let fd = i32::try_from(number(env::FD, None)?)
            .map_err(|_| RunError::NotAWorker(format!("{} is out of range", env::FD)))?;
        let nonce = var(env::NONCE)?;
        let version = number(env::PROTOCOL_VERSION, None)?;
        if version != u64::from(PROTOCOL_VERSION) {
            return Err(RunError::Version {
                gateway: u32::try_from(version).unwrap_or(u32::MAX),
                ours: PROTOCOL_VERSION,
            });
        }
        let interval =
            Duration::from_millis(number(env::HEARTBEAT_INTERVAL_MS, Some(1000))?.max(1));
        let grace = Duration::from_millis(number(env::HEARTBEAT_GRACE_MS, Some(5000))?.max(1));
        let max_frame =
            usize::try_from(number(env::MAX_FRAME_BYTES, Some(4 << 20))?).unwrap_or(usize::MAX);
        Ok(Self {
            fd,
            nonce,
            interval,
            grace,
            max_frame,
        })
    }
}

/// The write side of the socket, shared by every thread, plus liveness.
struct Link {
    stream: Mutex<UnixStream>,
    max_frame: usize,
    /// No more events: the session closed or the gateway is gone.
    closed: AtomicBool,
    /// The worker is finishing (a shutdown, a refused open, `run`
    /// returning): the background threads stop instead of exiting the
    /// process.
    shutting_down: AtomicBool,
    started: Instant,
    /// When the gateway was last heard from, in ms since `started`.
    last_heard_ms: AtomicU64,
}

impl Link {
    fn send(&self, msg: from_worker::Msg) -> Result<(), SendError> {
        let frame = encode_frame(&proto::FromWorker { msg: Some(msg) }, self.max_frame)?;
        let mut stream = self.stream.lock().unwrap_or_else(|e| e.into_inner());
        stream.write_all(&frame).map_err(|_| {
            self.closed.store(true, Ordering::Release);
            SendError::Closed
        })
    }

    fn heard(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_heard_ms.store(ms, Ordering::Release);
    }

    fn silent_for(&self) -> Duration {
        let now = self.started.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_heard_ms.load(Ordering::Acquire)))
    }
}

/// Encodes one frame: a 4-byte big-endian length, then the message.
pub fn encode_frame<M: Message>(msg: &M, max_frame: usize) -> Result<Vec<u8>, SendError> {
    gatehouse_worker_protocol::encode(msg, max_frame).map_err(|e| match e {
        FrameError::TooLarge { size, limit } => SendError::TooLarge { size, limit },
        _ => SendError::Closed,
    })
}

/// Reads one frame, checking its length against `max_frame` before
/// allocating. `Ok(None)` is a clean end of stream between frames.
pub fn read_frame<M: Message + Default>(
    r: &mut impl Read,
    max_frame: usize,
) -> io::Result<Option<M>> {
    gatehouse_worker_protocol::read(r, max_frame).map_err(|e| match e {
        FrameError::Io(e) => e,
        FrameError::Truncated => io::ErrorKind::UnexpectedEof.into(),
        other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
    })
}

/// Reads frames from the gateway and hands everything but heartbeats to
/// the main loop. When the gateway goes away the process exits (unless the
/// worker's `close` is running, which then finishes).
fn spawn_reader(
    link: Arc<Link>,
    mut reader: UnixStream,
    tx: mpsc::Sender<to_worker::Msg>,
) -> io::Result<()> {
    thread::Builder::new()
        .name("gatehouse-reader".into())
        .spawn(move || {
            loop {
                match read_frame::<proto::ToWorker>(&mut reader, link.max_frame) {
                    Ok(Some(frame)) => {
                        link.heard();
                        match frame.msg {
                            Some(to_worker::Msg::Heartbeat(_)) | None => {}
                            Some(msg) => {
                                if tx.send(msg).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    Ok(None) | Err(_) => {
                        link.closed.store(true, Ordering::Release);
                        if !link.shutting_down.load(Ordering::Acquire) {
                            // The gateway is gone; nobody will ever read a
                            // reply. Do not linger in a long command.
                            std::process::exit(0);
                        }
                        return;
                    }
                }
            }
        })
        .map(drop)
}

/// Heartbeats every `interval`, and exits the process if the gateway has
/// been silent for longer than `grace`.
fn spawn_heartbeat(link: Arc<Link>, interval: Duration, grace: Duration) -> io::Result<()> {
    thread::Builder::new()
        .name("gatehouse-heartbeat".into())
        .spawn(move || {
            let mut sequence = 0u64;
            loop {
                thread::sleep(interval);
                if link.shutting_down.load(Ordering::Acquire) {
                    // The worker's close is running; the process exits next.
                    return;
                }
                if link.silent_for() > grace {
                    eprintln!(
                        "gatehouse worker: the gateway has been silent for {} ms; exiting",
                        link.silent_for().as_millis()
                    );
                    std::process::exit(3);
                }
                sequence += 1;
                let beat = from_worker::Msg::Heartbeat(proto::Heartbeat { sequence });
                if link.send(beat).is_err() && !link.shutting_down.load(Ordering::Acquire) {
                    std::process::exit(0);
                }
            }
        })
        .map(drop)
}

#[cfg(test)]
mod tests;

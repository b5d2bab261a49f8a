//! The task that owns one worker process's socket: it opens the session,
//! runs commands one at a time with their deadlines, turns events into the
//! session's event log, heartbeats both ways, watches the process, and
//! closes gracefully or kills.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::protocol::{self, FrameError, pb};
use super::spawn::Proc;
use crate::backend::{
    CloseOutcome, Command, CommandError, Fault, FaultReporter, Outcome, StartError,
    Worker as WorkerTrait,
};
use crate::events::{EmitError, EventLog};

/// Requests queued for a worker's task.
const QUEUE: usize = 64;
/// How long to wait for an exit status after the worker closed its socket.
const EXIT_AFTER_EOF: Duration = Duration::from_millis(500);

/// Timings and limits of one worker's conversation.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How often the gateway heartbeats.
    pub heartbeat_interval: Duration,
    /// Silence from the worker that faults it.
    pub heartbeat_grace: Duration,
    /// The frame cap.
    pub max_frame: usize,
}

/// What a session hands the worker when it takes it.
pub struct Attach {
    /// The open message.
    pub open: pb::Open,
    /// Where events go.
    pub events: Arc<EventLog>,
    /// Where out-of-band faults go.
    pub reporter: FaultReporter,
    /// Largest event payload.
    pub max_event_bytes: usize,
    /// Largest reply payload.
    pub max_reply_bytes: usize,
    /// How long the worker's open may take.
    pub open_timeout: Duration,
}

enum Request {
    Open {
        attach: Box<Attach>,
        reply: oneshot::Sender<Result<(), StartError>>,
    },
    Invoke {
        commands: Vec<Command>,
        timeout: Duration,
        deadline: Option<Instant>,
        reply: oneshot::Sender<Result<Vec<Outcome>, Fault>>,
    },
}

/// A close request: grace, and who to tell when it is done. On a channel of
/// its own, so a close is heard even while a command runs.
type CloseRequest = (Duration, oneshot::Sender<()>);

/// The handle for one worker process: idle (in the warm pool, or between
/// handshake and open) or serving a session.
pub struct NativeWorker {
    tx: mpsc::Sender<Request>,
    close_tx: mpsc::Sender<CloseRequest>,
    task: JoinHandle<()>,
    fault: Arc<OnceLock<Fault>>,
    proc: Arc<Proc>,
}

impl NativeWorker {
    /// Starts the task for a worker that passed its handshake. `frames`
    /// carries what the worker's reader task decoded.
    pub(super) fn spawn(
        proc: Arc<Proc>,
        writer: OwnedWriteHalf,
        frames: mpsc::Receiver<Result<pb::FromWorker, FrameError>>,
        timing: Timing,
        backend: &str,
    ) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (close_tx, close_rx) = mpsc::channel(4);
        let fault = Arc::new(OnceLock::new());
        let now = Instant::now();
        let task = Task {
            proc: Arc::clone(&proc),
            writer,
            frames,
            rx,
            close_rx,
            fault: Arc::clone(&fault),
            timing,
            attach: None,
            last_heard: now,
            next_heartbeat: now + timing.heartbeat_interval,
            heartbeats_sent: 0,
            next_id: 0,
            phase: Phase::Idle,
            eof_at: None,
        };
        let span = tracing::info_span!("worker", backend = %backend, pid = proc.pid);
        let task = tokio::spawn(task.run().instrument(span));
        Self {
            tx,
            close_tx,
            task,
            fault,
            proc,
        }
    }

    /// Whether the worker is still usable (for the warm pool).
    pub(super) fn is_alive(&self) -> bool {
        self.fault.get().is_none()
            && self.proc.exited_status().is_none()
            && !self.task.is_finished()
            && !self.tx.is_closed()
    }

    /// Opens the session on this worker.
    pub(super) async fn open(&self, attach: Attach) -> Result<(), StartError> {
        let (reply, rx) = oneshot::channel();
        let request = Request::Open {
            attach: Box::new(attach),
            reply,
        };
        if self.tx.send(request).await.is_err() {
            return Err(StartError::Failed(self.gone()));
        }
        rx.await
            .unwrap_or_else(|_| Err(StartError::Failed(self.gone())))
    }

    fn gone(&self) -> Fault {
        self.fault
            .get()
            .cloned()
            .unwrap_or_else(|| Fault::crashed("worker-stopped", "the session's worker has stopped"))
    }
}

impl Drop for NativeWorker {
    fn drop(&mut self) {
        // Never leak a process: dropping the handle kills it.
        self.proc.kill();
        self.task.abort();
    }
}

#[async_trait]
impl WorkerTrait for NativeWorker {
    async fn invoke(
        &self,
        commands: Vec<Command>,
        timeout: Duration,
        deadline: Option<Instant>,
    ) -> Result<Vec<Outcome>, Fault> {
        let (reply, rx) = oneshot::channel();
        let request = Request::Invoke {
            commands,
            timeout,
            deadline,
            reply,
        };
        self.tx.send(request).await.map_err(|_| self.gone())?;
        rx.await.map_err(|_| self.gone())?
    }

    async fn close(&self, grace: Duration) -> CloseOutcome {
        let (reply, rx) = oneshot::channel();
        if self.close_tx.send((grace, reply)).await.is_ok()
            && tokio::time::timeout(grace + Duration::from_millis(50), rx)
                .await
                .is_ok()
        {
            return CloseOutcome::Graceful;
        }
        self.kill();
        CloseOutcome::Killed
    }

    fn kill(&self) {
        self.proc.kill();
    }

    fn pid(&self) -> Option<u32> {
        Some(self.proc.pid)
    }
}

/// What the task is doing.
enum Phase {
    /// Handshaken, no session yet.
    Idle,
    /// The worker's open is running.
    Opening {
        reply: oneshot::Sender<Result<(), StartError>>,
        until: Instant,
    },
    /// Serving; `None` between commands.
    Ready(Option<Box<Pending>>),
    /// A graceful close: waiting for the process to exit.
    Closing {
        reply: oneshot::Sender<()>,
        until: Instant,
    },
}

/// An invoke in progress.
struct Pending {
    queue: VecDeque<Command>,
    outcomes: Vec<Outcome>,
    timeout: Duration,
    deadline: Option<Instant>,
    reply: oneshot::Sender<Result<Vec<Outcome>, Fault>>,
    /// The command on the wire: id, name, started, must answer by.
    current: Option<(u64, String, Instant, Instant)>,
}

struct Task {
    proc: Arc<Proc>,
    writer: OwnedWriteHalf,
    frames: mpsc::Receiver<Result<pb::FromWorker, FrameError>>,
    rx: mpsc::Receiver<Request>,
    close_rx: mpsc::Receiver<CloseRequest>,
    fault: Arc<OnceLock<Fault>>,
    timing: Timing,
    attach: Option<Box<Attach>>,
    last_heard: Instant,
    next_heartbeat: Instant,
    heartbeats_sent: u64,
    next_id: u64,
    phase: Phase,
    /// When the worker closed its socket.
    eof_at: Option<Instant>,
}

/// How the loop goes on after handling something.
type Step = Result<(), Fault>;

impl Task {
    async fn run(mut self) {
        loop {
            let accepting = matches!(self.phase, Phase::Idle | Phase::Ready(None));
            let closing = matches!(self.phase, Phase::Closing { .. });
            let wake = self.next_wake();
            let step = tokio::select! {
                biased;
                status = self.proc.exited() => {
                    if let Phase::Closing { .. } = self.phase {
                        self.finish_close();
                        return;
                    }
                    Err(Fault::crashed("worker-exited", format!("the worker exited: {status}")))
                }
                frame = self.frames.recv(), if self.eof_at.is_none() => match frame {
                    Some(Ok(msg)) => {
                        self.last_heard = Instant::now();
                        self.on_frame(msg)
                    }
                    Some(Err(e)) => Err(e.fault()),
                    None => {
                        self.eof_at = Some(Instant::now());
                        Ok(())
                    }
                },
                close = self.close_rx.recv(), if !closing => match close {
                    Some((grace, reply)) => self.begin_close(grace, reply).await,
                    None => {
                        // Every handle is gone.
                        self.proc.kill();
                        return;
                    }
                },
                request = self.rx.recv(), if accepting => match request {
                    Some(request) => self.on_request(request).await,
                    None => {
                        // Every handle is gone.
                        self.proc.kill();
                        return;
                    }
                },
                _ = tokio::time::sleep_until(wake.into()) => self.on_timer().await,
            };
            // A reply came in: send the next command of the batch, or
            // answer the invoke.
            let step = match step {
                Ok(()) if self.has_reply_ready() => self.next_command().await,
                other => other,
            };
            if let Err(fault) = step {
                self.fail(fault);
                return;
            }
            if let Phase::Closing { until, .. } = &mut self.phase
                && Instant::now() >= *until
            {
                self.proc.kill();
                // Reaped right away; the exit branch finishes the close.
                // Until then, do not spin.
                *until = Instant::now() + EXIT_AFTER_EOF;
            }
        }
    }

    fn next_wake(&self) -> Instant {
        let mut wake = self.next_heartbeat;
        match &self.phase {
            Phase::Opening { until, .. } | Phase::Closing { until, .. } => wake = wake.min(*until),
            Phase::Ready(Some(p)) => {
                if let Some((_, _, _, until)) = &p.current {
                    wake = wake.min(*until);
                }
            }
            _ => {}
        }
        if let Some(eof) = self.eof_at {
            wake = wake.min(eof + EXIT_AFTER_EOF);
        }
        wake
    }

    async fn send(&mut self, msg: pb::to_worker::Msg) -> Step {
        let frame = pb::ToWorker { msg: Some(msg) };
        // A worker that stops reading must not wedge its session: a write
        // that cannot finish within the grace is the same as silence.
        match tokio::time::timeout(
            self.timing.heartbeat_grace,
            protocol::write(&mut self.writer, &frame, self.timing.max_frame),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(FrameError::TooLarge { size, limit })) => Err(Fault::crashed(
                "frame-too-large",
                format!("a frame of {size} bytes is over the cap of {limit}"),
            )),
            Ok(Err(e)) => Err(e.fault()),
            Err(_) => Err(Fault::crashed(
                "heartbeat-timeout",
                format!(
                    "the worker stopped reading for {} ms",
                    self.timing.heartbeat_grace.as_millis()
                ),
            )),
        }
    }

    async fn on_request(&mut self, request: Request) -> Step {
        match request {
            Request::Open { attach, reply } => {
                if !matches!(self.phase, Phase::Idle) {
                    let _ = reply.send(Err(StartError::Failed(Fault::crashed(
                        "internal",
                        "the worker was opened twice",
                    ))));
                    return Ok(());
                }
                let until = Instant::now() + attach.open_timeout;
                let open = attach.open.clone();
                self.attach = Some(attach);
                self.phase = Phase::Opening { reply, until };
                self.send(pb::to_worker::Msg::Open(open)).await
            }
            Request::Invoke {
                commands,
                timeout,
                deadline,
                reply,
            } => {
                if reply.is_closed() {
                    // The caller gave up while the request was queued.
                    return Ok(());
                }
                if !matches!(self.phase, Phase::Ready(None)) {
                    let _ = reply.send(Err(Fault::crashed(
                        "internal",
                        "a command for a worker that is not serving a session",
                    )));
                    return Ok(());
                }
                let pending = Box::new(Pending {
                    queue: commands.into(),
                    outcomes: Vec::new(),
                    timeout,
                    deadline,
                    reply,
                    current: None,
                });
                self.phase = Phase::Ready(Some(pending));
                self.next_command().await
            }
        }
    }

    /// Asks the worker to close and exit; the exit (or the grace running
    /// out, then a kill) finishes the close.
    async fn begin_close(&mut self, grace: Duration, reply: oneshot::Sender<()>) -> Step {
        let until = Instant::now() + grace;
        match std::mem::replace(&mut self.phase, Phase::Closing { reply, until }) {
            Phase::Ready(Some(pending)) => {
                // The command in flight will not be answered.
                let _ = pending.reply.send(Err(Fault::crashed(
                    "worker-stopped",
                    "the session was closed while the command ran",
                )));
            }
            Phase::Opening { reply, .. } => {
                let _ = reply.send(Err(StartError::Failed(Fault::crashed(
                    "worker-stopped",
                    "closed while opening",
                ))));
            }
            _ => {}
        }
        // Later requests find the worker gone.
        self.rx.close();
        let shutdown = pb::to_worker::Msg::Shutdown(pb::Shutdown {
            reason: "close".into(),
        });
        if self.send(shutdown).await.is_err() {
            // It cannot hear us: stop it now.
            self.proc.kill();
        }
        Ok(())
    }

    /// Sends the next queued command, or answers the invoke when done.
    async fn next_command(&mut self) -> Step {
        let max_frame = self.timing.max_frame;
        let Phase::Ready(Some(pending)) = &mut self.phase else {
            return Ok(());
        };
        let msg = loop {
            let Some(command) = pending.queue.pop_front() else {
                let Phase::Ready(Some(pending)) =
                    std::mem::replace(&mut self.phase, Phase::Ready(None))
                else {
                    unreachable!("checked above");
                };
                let _ = pending.reply.send(Ok(pending.outcomes));
                return Ok(());
            };
            let start = Instant::now();
            let mut until = start + pending.timeout;
            if let Some(d) = pending.deadline {
                until = until.min(d);
            }
            if until <= start {
                return Err(Fault::deadline(
                    "the gRPC deadline passed before the command ran",
                ));
            }
            self.next_id += 1;
            let id = self.next_id;
            let name = command.name.clone();
            let msg = pb::ToWorker {
                msg: Some(pb::to_worker::Msg::Command(pb::Command {
                    id,
                    name: command.name,
                    payload: command.payload,
                })),
            };
            // A command the worker's frame cap cannot carry is the client's
            // error, not the worker's: the session stays usable.
            let size = prost::Message::encoded_len(&msg);
            if size > max_frame {
                pending
                    .outcomes
                    .push(Outcome::Error(CommandError::InvalidPayload(format!(
                        "the command is {size} bytes framed, over the worker's frame cap of {max_frame}"
                    ))));
                continue;
            }
            tracing::debug!(id, command = %name, "command sent");
            pending.current = Some((id, name, start, until));
            break msg;
        };
        let Some(msg) = msg.msg else {
            return Ok(());
        };
        self.send(msg).await
    }

    fn on_frame(&mut self, msg: pb::FromWorker) -> Step {
        use pb::from_worker::Msg;
        let Some(msg) = msg.msg else {
            return Err(violation("an empty message"));
        };
        match msg {
            Msg::Heartbeat(_) => Ok(()),
            Msg::Hello(_) => Err(violation("a second hello")),
            Msg::Fault(f) => Err(Fault::crashed(
                "worker-fault",
                format!("{}: {}", f.code, f.detail),
            )),
            Msg::Event(event) => self.on_event(event),
            Msg::Opened(opened) => {
                let Phase::Opening { .. } = self.phase else {
                    return Err(violation("an opened message without an open"));
                };
                let Phase::Opening { reply, .. } =
                    std::mem::replace(&mut self.phase, Phase::Ready(None))
                else {
                    unreachable!("checked above");
                };
                if opened.ok {
                    if reply.send(Ok(())).is_err() {
                        // The opener went away (cancelled): nobody owns
                        // this session.
                        return Err(Fault::crashed("worker-stopped", "the open was cancelled"));
                    }
                    Ok(())
                } else {
                    let _ = reply.send(Err(StartError::Refused(opened.error)));
                    self.phase = Phase::Idle;
                    self.proc.kill();
                    let _ = self.fault.set(Fault::crashed("open-refused", "refused"));
                    self.rx.close();
                    Ok(())
                }
            }
            Msg::Reply(reply) => {
                let Phase::Ready(Some(pending)) = &mut self.phase else {
                    if matches!(self.phase, Phase::Closing { .. }) {
                        return Ok(());
                    }
                    return Err(violation("a reply without a command"));
                };
                match &pending.current {
                    Some((id, ..)) if *id == reply.id => {}
                    _ => {
                        return Err(violation(&format!(
                            "a reply to unknown command {}",
                            reply.id
                        )));
                    }
                }
                pending.current = None;
                let max = self
                    .attach
                    .as_ref()
                    .map_or(usize::MAX, |a| a.max_reply_bytes);
                let outcome = match reply.result {
                    Some(pb::reply::Result::Payload(p)) if p.len() > max => {
                        Outcome::ReplyTooLarge {
                            size: p.len(),
                            limit: max,
                        }
                    }
                    Some(pb::reply::Result::Payload(p)) => Outcome::Reply(p),
                    Some(pb::reply::Result::Error(e)) => Outcome::Error(command_error(e)),
                    None => Outcome::Reply(Vec::new()),
                };
                pending.outcomes.push(outcome);
                // The next command is sent from the loop (it is async).
                Ok(())
            }
        }
    }

    fn on_event(&mut self, event: pb::Event) -> Step {
        let Some(attach) = &self.attach else {
            return Err(violation("an event before open"));
        };
        if event.payload.len() > attach.max_event_bytes {
            return Err(Fault::crashed(
                "event-too-large",
                format!(
                    "an event of {} bytes is over the limit of {}",
                    event.payload.len(),
                    attach.max_event_bytes
                ),
            ));
        }
        match attach.events.emit(event.name, event.payload) {
            Ok(_) | Err(EmitError::Closed) => Ok(()),
            Err(EmitError::Overflow) => {
                Err(Fault::crashed("event-overflow", "the event queue is full"))
            }
        }
    }

    async fn on_timer(&mut self) -> Step {
        let now = Instant::now();
        if let Some(eof) = self.eof_at
            && now >= eof + EXIT_AFTER_EOF
        {
            if let Phase::Closing { .. } = self.phase {
                self.proc.kill();
                self.eof_at = None;
                return Ok(());
            }
            return Err(Fault::crashed(
                "worker-exited",
                "the worker closed its socket but did not exit; killed",
            ));
        }
        match &self.phase {
            Phase::Opening { until, .. } if now >= *until => {
                return Err(Fault::crashed(
                    "startup-timeout",
                    format!(
                        "the worker's open did not answer within {} ms",
                        self.attach
                            .as_ref()
                            .map_or(0, |a| a.open_timeout.as_millis())
                    ),
                ));
            }
            Phase::Ready(Some(p)) => {
                if let Some((_, name, started, until)) = &p.current
                    && now >= *until
                {
                    return Err(Fault::deadline(format!(
                        "command {name:?} ran past its {} ms deadline",
                        until.duration_since(*started).as_millis()
                    )));
                }
            }
            _ => {}
        }
        if now >= self.next_heartbeat {
            let silent = now.duration_since(self.last_heard);
            if silent > self.timing.heartbeat_grace && !matches!(self.phase, Phase::Closing { .. })
            {
                return Err(Fault::crashed(
                    "heartbeat-timeout",
                    format!(
                        "no frame from the worker for {} ms (grace {} ms)",
                        silent.as_millis(),
                        self.timing.heartbeat_grace.as_millis()
                    ),
                ));
            }
            self.next_heartbeat = now + self.timing.heartbeat_interval;
            self.heartbeats_sent += 1;
            let beat = pb::to_worker::Msg::Heartbeat(pb::Heartbeat {
                sequence: self.heartbeats_sent,
            });
            if let Err(fault) = self.send(beat).await {
                if matches!(self.phase, Phase::Closing { .. }) {
                    return Ok(());
                }
                return Err(fault);
            }
        }
        Ok(())
    }

    fn finish_close(&mut self) {
        if let Phase::Closing { reply, .. } = std::mem::replace(&mut self.phase, Phase::Idle) {
            let _ = reply.send(());
        }
    }

    /// Kills the worker and tells whoever is waiting why.
    fn fail(&mut self, fault: Fault) {
        tracing::warn!(%fault, "native worker failed");
        self.proc.kill();
        let _ = self.fault.set(fault.clone());
        self.rx.close();
        match std::mem::replace(&mut self.phase, Phase::Idle) {
            Phase::Opening { reply, .. } => {
                let _ = reply.send(Err(StartError::Failed(fault)));
            }
            Phase::Ready(pending) => {
                if let Some(p) = pending {
                    let _ = p.reply.send(Err(fault.clone()));
                }
                // The caller may have gone away mid-command, or there was
                // none; the registry still has to hear about the fault.
                if let Some(a) = &self.attach {
                    a.reporter.report(fault);
                }
            }
            Phase::Closing { reply, .. } => {
                let _ = reply.send(());
            }
            Phase::Idle => {}
        }
    }
}

impl Task {
    /// Whether an invoke is waiting for its next command to be sent.
    fn has_reply_ready(&self) -> bool {
        matches!(&self.phase, Phase::Ready(Some(p)) if p.current.is_none())
    }
}

fn violation(what: &str) -> Fault {
    Fault::crashed("protocol-violation", format!("the worker sent {what}"))
}

fn command_error(e: pb::CommandError) -> CommandError {
    use pb::command_error::Kind;
    match Kind::try_from(e.kind).unwrap_or(Kind::Failed) {
        Kind::UnknownCommand => CommandError::UnknownCommand(e.message),
        Kind::InvalidPayload => CommandError::InvalidPayload(e.message),
        Kind::Failed | Kind::Unspecified => CommandError::Failed(e.message),
    }
}

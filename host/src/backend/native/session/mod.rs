//! The state machine of one worker process's conversation: it opens the
//! session, runs commands one at a time with their deadlines, turns events
//! into the session's event log, heartbeats both ways, watches the process,
//! and closes gracefully or kills. It runs as the task behind a
//! [`WorkerHandle`](crate::backend::handle::WorkerHandle), serving its
//! [`Inbox`], plus the open request of the idle worker (worker.rs).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot};

mod snapshot;

use super::contain::Breach;
use super::process::Proc;
use super::protocol::{self, FrameError, pb};
use crate::backend::budget::{Budget, CommandClock};
use crate::backend::cpu::CpuAccount;
use crate::backend::event_sink::EventSink;
use crate::backend::handle::{CloseRequest, Inbox, InvokeRequest, Request, SnapshotRequest};
use crate::backend::{
    CloseOutcome, Command, CommandError, Fault, FaultCode, FaultReporter, Outcome, StartError,
};

/// How often a reply reads the worker's CPU time from `/proc` at most; the
/// heartbeat, a close and a fault read it too. A read costs a file read,
/// not to be paid on every command of a fast worker.
const CPU_READ_INTERVAL: Duration = Duration::from_millis(50);

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
    pub events: EventSink,
    /// Where out-of-band faults go.
    pub reporter: FaultReporter,
    /// Largest reply payload.
    pub max_reply_bytes: usize,
    /// How long the worker's open may take.
    pub open_timeout: Duration,
    /// What the worker's CPU time is charged to.
    pub cpu: CpuAccount,
}

/// Opening a session on an idle worker.
pub struct OpenRequest {
    /// The session.
    pub attach: Box<Attach>,
    /// Whether the worker's open succeeded.
    pub reply: oneshot::Sender<Result<(), StartError>>,
}

/// Frames decoded by the worker's reader task.
pub type Frames = mpsc::Receiver<Result<pb::FromWorker, FrameError>>;

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
    /// Waiting for the State that answers snapshot `id`.
    Snapshotting {
        request: Box<SnapshotRequest>,
        id: u64,
        clock: CommandClock,
    },
    /// A graceful close: waiting for the process to exit.
    Closing {
        reply: oneshot::Sender<CloseOutcome>,
        until: Instant,
        /// Whether the grace ran out and the process was killed.
        killed: bool,
    },
}

/// An invoke in progress.
struct Pending {
    queue: VecDeque<Command>,
    outcomes: Vec<Outcome>,
    budget: Budget,
    reply: oneshot::Sender<Result<Vec<Outcome>, Fault>>,
    /// The command on the wire, if one is.
    current: Option<InFlight>,
}

/// The one command the worker is running.
struct InFlight {
    /// Its wire id, which the reply must carry.
    id: u64,
    /// Its name, for the deadline fault.
    name: String,
    /// When it started and must answer by.
    clock: CommandClock,
}

/// The task serving one worker process.
pub struct Conversation {
    proc: Arc<Proc>,
    writer: OwnedWriteHalf,
    frames: Frames,
    inbox: Inbox,
    /// The idle worker's open request; `None` once its sender is gone.
    opens: Option<mpsc::Receiver<OpenRequest>>,
    timing: Timing,
    attach: Option<Box<Attach>>,
    last_heard: Instant,
    next_heartbeat: Instant,
    heartbeats_sent: u64,
    next_id: u64,
    phase: Phase,
    /// When the worker closed its socket.
    eof_at: Option<Instant>,
    /// The worker's CPU time when it was last charged; from the session's
    /// open on, so a pooled worker's start-up is not the session's.
    cpu_seen: Option<Duration>,
    /// When `cpu_seen` was read.
    cpu_read_at: Instant,
}

/// How the loop goes on after handling something.
type Step = Result<(), Fault>;

impl Conversation {
    /// A conversation with a worker that passed its handshake.
    pub fn new(
        proc: Arc<Proc>,
        writer: OwnedWriteHalf,
        frames: Frames,
        inbox: Inbox,
        opens: mpsc::Receiver<OpenRequest>,
        timing: Timing,
    ) -> Self {
        let now = Instant::now();
        Self {
            proc,
            writer,
            frames,
            inbox,
            opens: Some(opens),
            timing,
            attach: None,
            last_heard: now,
            next_heartbeat: now + timing.heartbeat_interval,
            heartbeats_sent: 0,
            next_id: 0,
            phase: Phase::Idle,
            eof_at: None,
            cpu_seen: None,
            cpu_read_at: now,
        }
    }

    /// Serves until the worker is closed, fails, or every handle is gone.
    pub async fn run(mut self) {
        loop {
            let idle = matches!(self.phase, Phase::Idle) && self.opens.is_some();
            let between_commands = matches!(self.phase, Phase::Ready(None));
            let closing = matches!(self.phase, Phase::Closing { .. });
            let wake = self.next_wake();
            let step = tokio::select! {
                biased;
                status = self.proc.exited() => {
                    if let Phase::Closing { .. } = self.phase {
                        self.finish_close();
                        return;
                    }
                    Err(exit_fault(&self.proc, status, "").await)
                }
                frame = self.frames.recv(), if self.eof_at.is_none() => match frame {
                    Some(Ok(msg)) => {
                        self.last_heard = Instant::now();
                        self.on_frame(msg)
                    }
                    Some(Err(e)) => Err(breach_fault(&self.proc, "").unwrap_or_else(|| Fault::from(&e))),
                    None => {
                        self.eof_at = Some(Instant::now());
                        Ok(())
                    }
                },
                close = self.inbox.closes.recv(), if !closing => match close {
                    Some(close) => self.begin_close(close).await,
                    None => {
                        // Every handle is gone.
                        self.proc.kill();
                        return;
                    }
                },
                open = recv_open(&mut self.opens), if idle => match open {
                    Some(open) => self.on_open(open).await,
                    None => {
                        // The idle worker became a session's, or was
                        // dropped (then so was the handle: see above).
                        self.opens = None;
                        Ok(())
                    }
                },
                invoke = self.inbox.invokes.recv(), if between_commands => match invoke {
                    Some(Request::Invoke(invoke)) => self.on_invoke(invoke).await,
                    Some(Request::Snapshot(snapshot)) => self.on_snapshot(snapshot).await,
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
            if let Phase::Closing { until, killed, .. } = &mut self.phase
                && Instant::now() >= *until
            {
                self.proc.kill();
                *killed = true;
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
                if let Some(c) = &p.current {
                    wake = wake.min(c.clock.until);
                }
            }
            Phase::Snapshotting { clock, .. } => wake = wake.min(clock.until),
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
                FaultCode::FrameTooLarge,
                format!("a frame of {size} bytes is over the cap of {limit}"),
            )),
            // A worker its cell's limit killed breaks the socket too; the
            // limit is the better explanation (as for a read).
            Ok(Err(e)) => Err(breach_fault(&self.proc, "").unwrap_or_else(|| Fault::from(&e))),
            Err(_) => Err(Fault::crashed(
                FaultCode::HeartbeatTimeout,
                format!(
                    "the worker stopped reading for {} ms",
                    self.timing.heartbeat_grace.as_millis()
                ),
            )),
        }
    }

    async fn on_open(&mut self, OpenRequest { attach, reply }: OpenRequest) -> Step {
        let until = Instant::now() + attach.open_timeout;
        let open = attach.open.clone();
        self.proc.serve_session(open.session_id.as_str().into());
        self.cpu_seen = self.proc.cpu_time();
        self.cpu_read_at = Instant::now();
        self.attach = Some(attach);
        self.phase = Phase::Opening { reply, until };
        self.send(pb::to_worker::Msg::Open(open)).await
    }

    async fn on_invoke(&mut self, invoke: InvokeRequest) -> Step {
        if invoke.reply.is_closed() {
            // The caller gave up while the request was queued.
            return Ok(());
        }
        let pending = Box::new(Pending {
            queue: invoke.commands.into(),
            outcomes: Vec::new(),
            budget: invoke.budget,
            reply: invoke.reply,
            current: None,
        });
        self.phase = Phase::Ready(Some(pending));
        self.next_command().await
    }

    /// Asks the worker to close and exit; the exit (or the grace running
    /// out, then a kill) finishes the close.
    async fn begin_close(&mut self, CloseRequest { grace, reply }: CloseRequest) -> Step {
        self.meter_cpu();
        let until = Instant::now() + grace;
        let closing = Phase::Closing {
            reply,
            until,
            killed: false,
        };
        match std::mem::replace(&mut self.phase, closing) {
            Phase::Ready(Some(pending)) => {
                // The command in flight will not be answered.
                let _ = pending.reply.send(Err(Fault::crashed(
                    FaultCode::WorkerStopped,
                    "the session was closed while the command ran",
                )));
            }
            Phase::Opening { reply, .. } => {
                let _ = reply.send(Err(StartError::Failed(Fault::crashed(
                    FaultCode::WorkerStopped,
                    "closed while opening",
                ))));
            }
            Phase::Snapshotting { request, .. } => request.fail(&Fault::crashed(
                FaultCode::WorkerStopped,
                "the session was closed while its state was being saved",
            )),
            _ => {}
        }
        // Later requests find the worker gone.
        self.inbox.stop_accepting();
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
            let clock = pending.budget.start(Instant::now())?;
            self.next_id += 1;
            let id = self.next_id;
            let name = command.name.clone();
            let frame = pb::ToWorker {
                msg: Some(pb::to_worker::Msg::Command(pb::Command {
                    id,
                    name: command.name,
                    payload: command.payload,
                })),
            };
            // A command the worker's frame cap cannot carry is the client's
            // error, not the worker's: the session stays usable.
            let size = prost::Message::encoded_len(&frame);
            if size > max_frame {
                pending
                    .outcomes
                    .push(Outcome::Error(CommandError::InvalidPayload(format!(
                        "the command is {size} bytes framed, over the worker's frame cap of {max_frame}"
                    ))));
                continue;
            }
            tracing::debug!(id, command = %name, "command sent");
            pending.current = Some(InFlight { id, name, clock });
            break frame.msg;
        };
        match msg {
            Some(msg) => self.send(msg).await,
            None => Ok(()),
        }
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
                FaultCode::WorkerFault,
                format!("{}: {}", f.code, f.detail),
            )),
            Msg::Event(event) => self.on_event(event),
            Msg::Opened(opened) => self.on_opened(opened),
            Msg::Reply(reply) => self.on_reply(reply),
            Msg::State(state) => self.on_state(state),
        }
    }

    fn on_opened(&mut self, opened: pb::Opened) -> Step {
        let Phase::Opening { .. } = self.phase else {
            return Err(violation("an opened message without an open"));
        };
        let Phase::Opening { reply, .. } = std::mem::replace(&mut self.phase, Phase::Ready(None))
        else {
            unreachable!("checked above");
        };
        if opened.ok {
            if reply.send(Ok(())).is_err() {
                // The opener went away (cancelled): nobody owns this
                // session.
                return Err(Fault::crashed(
                    FaultCode::WorkerStopped,
                    "the open was cancelled",
                ));
            }
            return Ok(());
        }
        let _ = reply.send(Err(if opened.restore_failed {
            StartError::RestoreFailed(opened.error)
        } else {
            StartError::Refused(opened.error)
        }));
        self.phase = Phase::Idle;
        self.proc.kill();
        self.inbox.fail(&Fault::crashed(
            FaultCode::OpenRefused,
            "the worker refused the session",
        ));
        Ok(())
    }

    fn on_reply(&mut self, reply: pb::Reply) -> Step {
        if self.cpu_read_at.elapsed() >= CPU_READ_INTERVAL {
            self.meter_cpu();
        }
        let Phase::Ready(Some(pending)) = &mut self.phase else {
            if matches!(self.phase, Phase::Closing { .. }) {
                return Ok(());
            }
            return Err(violation("a reply without a command"));
        };
        match &pending.current {
            Some(c) if c.id == reply.id => {}
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
            Some(pb::reply::Result::Payload(p)) => Outcome::reply(p, max),
            Some(pb::reply::Result::Error(e)) => Outcome::Error(e.into()),
            None => Outcome::Reply(Vec::new()),
        };
        pending.outcomes.push(outcome);
        // The next command is sent from the loop (it is async).
        Ok(())
    }

    fn on_event(&mut self, event: pb::Event) -> Step {
        let Some(attach) = &self.attach else {
            return Err(violation("an event before open"));
        };
        attach
            .events
            .emit(event.name, event.payload)
            .map_err(|refused| refused.fault())
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
                FaultCode::WorkerExited,
                "the worker closed its socket but did not exit; killed",
            ));
        }
        match &self.phase {
            Phase::Opening { until, .. } if now >= *until => {
                return Err(Fault::crashed(
                    FaultCode::StartupTimeout,
                    format!(
                        "the worker's open did not answer within {} ms",
                        self.attach
                            .as_ref()
                            .map_or(0, |a| a.open_timeout.as_millis())
                    ),
                ));
            }
            Phase::Ready(Some(p)) => {
                if let Some(c) = &p.current
                    && c.clock.expired(now)
                {
                    return Err(c.clock.overrun(&c.name));
                }
            }
            Phase::Snapshotting { clock, .. } if clock.expired(now) => {
                return Err(clock.overrun("snapshot"));
            }
            _ => {}
        }
        if now >= self.next_heartbeat {
            self.meter_cpu();
            let silent = now.duration_since(self.last_heard);
            if silent > self.timing.heartbeat_grace && !matches!(self.phase, Phase::Closing { .. })
            {
                return Err(Fault::crashed(
                    FaultCode::HeartbeatTimeout,
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
        if let Phase::Closing { reply, killed, .. } =
            std::mem::replace(&mut self.phase, Phase::Idle)
        {
            let _ = reply.send(if killed {
                CloseOutcome::Killed
            } else {
                CloseOutcome::Graceful
            });
        }
    }

    /// Charges the CPU the worker used since the last reading to the
    /// session. Read at replies (at most every [`CPU_READ_INTERVAL`]),
    /// heartbeats, a close and a fault: what a worker uses after its last
    /// reading before it exits goes uncounted.
    fn meter_cpu(&mut self) {
        let (Some(attach), Some(seen)) = (&self.attach, self.cpu_seen) else {
            return;
        };
        self.cpu_read_at = Instant::now();
        if let Some(now) = self.proc.cpu_time() {
            attach.cpu.charge(now.saturating_sub(seen));
            self.cpu_seen = Some(now.max(seen));
        }
    }

    /// Kills the worker and tells whoever is waiting why.
    fn fail(&mut self, fault: Fault) {
        tracing::warn!(%fault, "native worker failed");
        self.meter_cpu();
        self.proc.kill();
        self.inbox.fail(&fault);
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
            Phase::Snapshotting { request, .. } => {
                request.fail(&fault);
                if let Some(a) = &self.attach {
                    a.reporter.report(fault);
                }
            }
            Phase::Closing { reply, .. } => {
                let _ = reply.send(CloseOutcome::Graceful);
            }
            Phase::Idle => {}
        }
    }

    /// Whether an invoke is waiting for its next command to be sent.
    fn has_reply_ready(&self) -> bool {
        matches!(&self.phase, Phase::Ready(Some(p)) if p.current.is_none())
    }
}

/// The next open request, or never once there can be none.
async fn recv_open(opens: &mut Option<mpsc::Receiver<OpenRequest>>) -> Option<OpenRequest> {
    match opens {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn violation(what: &str) -> Fault {
    Fault::crashed(
        FaultCode::ProtocolViolation,
        format!("the worker sent {what}"),
    )
}

/// The fault of a worker that exited by itself: `memory-limit` if it said
/// an allocation failed before it died, else `worker-exited`. `when` is
/// added to the detail, as in " before its hello".
pub(super) async fn exit_fault(proc: &Proc, status: std::process::ExitStatus, when: &str) -> Fault {
    if let Some(fault) = breach_fault(proc, &format!("{when}: {status}")) {
        return fault;
    }
    if proc.ran_out_of_memory().await {
        Fault::crashed(
            FaultCode::MemoryLimit,
            format!("the worker ran out of its memory_limit and exited{when}: {status}"),
        )
    } else {
        Fault::crashed(
            FaultCode::WorkerExited,
            format!("the worker exited{when}: {status}"),
        )
    }
}

/// The fault of a worker whose cell ran into a limit (`max_processes`, the
/// cgroup's memory limit), if it did: that explains an exit or a reset
/// socket better than the exit itself.
pub(super) fn breach_fault(proc: &Proc, detail: &str) -> Option<Fault> {
    Some(match proc.breach()? {
        Breach::ProcessLimit => Fault::crashed(
            FaultCode::ProcessLimit,
            format!("the worker ran more processes than its max_processes and was killed{detail}"),
        ),
        Breach::MemoryLimit => Fault::crashed(
            FaultCode::MemoryLimit,
            format!("the worker's cgroup ran out of its memory_limit (an OOM kill){detail}"),
        ),
    })
}

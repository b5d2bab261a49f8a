//! The task that owns one session's `Store` and serves its commands and
//! ticks, in order.

use std::cmp::Reverse;
use std::time::{Duration, Instant};

use tracing::Instrument;
use wasmtime::Store;

use super::bindings::gatehouse::backend::types;
use super::exports::Exports;
use super::guest_cpu;
use super::host::{LimitHit, SessionData};
use super::reply::Reply;
use crate::backend::budget::Budget;
use crate::backend::handle::{
    CloseRequest, Inbox, InvokeRequest, Request, SnapshotRequest, WorkerHandle,
};
use crate::backend::{
    CloseOutcome, Command, CommandError, Fault, FaultCode, FaultReporter, Outcome, SnapshotRefused,
    StartRequest, TrapCode,
};

/// How a session task ended.
enum Exit {
    /// Every handle was dropped.
    Quiet,
    /// A command or tick faulted.
    Faulted {
        reply: Option<tokio::sync::oneshot::Sender<Result<Vec<Outcome>, Fault>>>,
        fault: Fault,
    },
    /// A close request was served.
    Closed {
        reply: tokio::sync::oneshot::Sender<CloseOutcome>,
        outcome: CloseOutcome,
    },
}

/// Starts the task that owns a session's store and returns its handle.
pub(super) fn spawn(instance: Instance, request: &StartRequest) -> WorkerHandle {
    // A root span: the session outlives the OpenSession call that started
    // it, so that call is linked (follows-from) rather than a parent.
    let span = tracing::info_span!(parent: None, "session", session_id = %request.session_id, tenant = %request.tenant, backend = %request.backend);
    span.follows_from(tracing::Span::current());
    let command_timeout = request.policy.command_timeout;
    let reporter = request.faults.clone();
    let stateful = instance.exports.state.is_some();
    WorkerHandle::spawn(None, move |inbox| {
        let task = SessionTask {
            instance,
            inbox,
            reporter,
            command_timeout,
        };
        task.run().instrument(span)
    })
    .with_state(stateful)
}

/// One live instance: its store and the functions it exports, with what
/// running a command or a close on it takes. The session task and the
/// inline worker of a one-shot call both drive an instance through these,
/// so a command runs the same way wherever it runs.
pub(super) struct Instance {
    pub store: Store<SessionData>,
    pub exports: Exports,
    pub max_reply_bytes: usize,
}

struct SessionTask {
    instance: Instance,
    inbox: Inbox,
    reporter: FaultReporter,
    command_timeout: Duration,
}

impl SessionTask {
    /// Serves until the session ends, then frees the instance *before*
    /// telling anyone: the registry releases the session's slot as soon as
    /// it hears, and the pool slot must be free by then.
    async fn run(mut self) {
        let exit = self.serve().await;
        let SessionTask {
            instance, reporter, ..
        } = self;
        drop(instance);
        match exit {
            Exit::Quiet => {}
            Exit::Faulted { reply, fault } => {
                if let Some(reply) = reply {
                    let _ = reply.send(Err(fault.clone()));
                }
                // The caller may have gone away mid-command; the registry
                // still has to hear about the fault.
                reporter.report(fault);
            }
            Exit::Closed { reply, outcome } => {
                let _ = reply.send(outcome);
            }
        }
    }

    async fn serve(&mut self) -> Exit {
        loop {
            let next_tick = self.instance.store.data().ticks.peek().map(|Reverse(t)| *t);
            // Invokes before closes: a close waits for the commands the
            // registry queued before it. A running command is never
            // interrupted by a close; past the grace the handle aborts us.
            let request = tokio::select! {
                biased;
                invoke = self.inbox.invokes.recv() => match invoke {
                    Some(invoke) => Ok(invoke),
                    None => match self.inbox.closes.recv().await {
                        Some(close) => Err(close),
                        None => return Exit::Quiet,
                    },
                },
                close = self.inbox.closes.recv() => match close {
                    Some(close) => Err(close),
                    None => return Exit::Quiet,
                },
                _ = tokio::time::sleep_until(next_tick.unwrap_or_else(Instant::now).into()), if next_tick.is_some() => {
                    let data = self.instance.store.data_mut();
                    let due = data.ticks.pop();
                    // Over its tenant's CPU budget, the tick is put off
                    // until the refill; the task goes on serving closes
                    // (and invokes, which wait for the budget themselves).
                    if let (Some(Reverse(due)), Some(wait)) = (due, data.cpu.account().tick_delay()) {
                        data.ticks.push(Reverse(due.max(Instant::now() + wait)));
                        continue;
                    }
                    if let Err(fault) = self.tick().await {
                        tracing::warn!(%fault, "session faulted in a timer tick");
                        self.inbox.fail(&fault);
                        return Exit::Faulted { reply: None, fault };
                    }
                    continue;
                }
            };
            match request {
                Ok(Request::Snapshot(snapshot)) => {
                    if let Err(fault) = self.snapshot(snapshot).await {
                        tracing::warn!(%fault, "session faulted taking a state snapshot");
                        self.inbox.fail(&fault);
                        return Exit::Faulted { reply: None, fault };
                    }
                }
                Ok(Request::Invoke(InvokeRequest {
                    commands,
                    budget,
                    reply,
                })) => {
                    if reply.is_closed() {
                        // The caller gave up while the request was queued.
                        continue;
                    }
                    match self.instance.invoke(commands, budget).await {
                        Ok(outcomes) => {
                            let _ = reply.send(Ok(outcomes));
                        }
                        Err(fault) => {
                            tracing::warn!(%fault, "session faulted in a command");
                            self.inbox.fail(&fault);
                            return Exit::Faulted {
                                reply: Some(reply),
                                fault,
                            };
                        }
                    }
                }
                Err(CloseRequest { grace, reply }) => {
                    self.inbox.stop_accepting();
                    let outcome = self.instance.close(grace).await;
                    return Exit::Closed { reply, outcome };
                }
            }
        }
    }

    async fn tick(&mut self) -> Result<(), Fault> {
        let instance = &mut self.instance;
        guest_cpu::enter(&mut instance.store).await;
        instance.arm(Instant::now() + self.command_timeout);
        let result = instance
            .exports
            .tick
            .call_async(&mut instance.store, ())
            .await;
        guest_cpu::leave(&mut instance.store);
        instance.store.data_mut().deadline = None;
        result.map_err(|e| classify(&e))
    }

    /// Calls `state.snapshot` within the request's time limit and stores
    /// what it returns. A trap or an overrun faults the session like a
    /// command would; a snapshot over the cap is only refused.
    async fn snapshot(&mut self, request: SnapshotRequest) -> Result<(), Fault> {
        let instance = &mut self.instance;
        let Some(snapshot) = instance.exports.state.as_ref().map(|s| s.snapshot) else {
            request.fail(&Fault::crashed(
                FaultCode::Internal,
                "the backend keeps no state",
            ));
            return Ok(());
        };
        let clock = match request.budget.start(Instant::now()) {
            Ok(clock) => clock,
            Err(fault) => {
                request.fail(&fault);
                return Ok(());
            }
        };
        guest_cpu::enter(&mut instance.store).await;
        instance.arm(clock.until);
        let result = snapshot.call_async(&mut instance.store, ()).await;
        guest_cpu::leave(&mut instance.store);
        instance.store.data_mut().deadline = None;
        match result {
            Ok((bytes,)) => {
                match bytes.value {
                    Reply::Bytes(bytes) => request.store(bytes),
                    Reply::TooLarge(size) => {
                        let limit = request.into.max_bytes();
                        let refused = request
                            .into
                            .refused(SnapshotRefused::TooLarge { size, limit });
                        request.refuse(refused);
                    }
                }
                Ok(())
            }
            Err(e) => {
                let fault = classify(&e);
                let fault = if fault.code == FaultCode::Deadline {
                    clock.overrun("state.snapshot")
                } else {
                    fault
                };
                request.fail(&fault);
                Err(fault)
            }
        }
    }
}

impl Instance {
    /// Arms the epoch deadline: past `deadline`, the next tick traps.
    fn arm(&mut self, deadline: Instant) {
        self.store.data_mut().deadline = Some(deadline);
        self.store.set_epoch_deadline(1);
    }

    /// Runs the plugin's `close` within `grace`; an overrun is a kill.
    pub async fn close(&mut self, grace: Duration) -> CloseOutcome {
        guest_cpu::enter(&mut self.store).await;
        self.arm(Instant::now() + grace);
        let closed = self.exports.close.call_async(&mut self.store, ()).await;
        guest_cpu::leave(&mut self.store);
        match closed {
            Ok(()) => CloseOutcome::Graceful,
            Err(e) => {
                let fault = classify(&e);
                tracing::debug!(%fault, "plugin close failed");
                if fault.code == FaultCode::Deadline {
                    CloseOutcome::Killed
                } else {
                    CloseOutcome::Graceful
                }
            }
        }
    }

    /// Runs `commands` in order, each within `budget`. A fault ends the
    /// instance: the caller must not use it again.
    pub async fn invoke(
        &mut self,
        commands: Vec<Command>,
        budget: Budget,
    ) -> Result<Vec<Outcome>, Fault> {
        let mut outcomes = Vec::with_capacity(commands.len());
        for command in commands {
            // The turn first: a command's time runs from when it can run.
            guest_cpu::enter(&mut self.store).await;
            let clock = match budget.start(Instant::now()) {
                Ok(clock) => clock,
                Err(fault) => {
                    guest_cpu::leave(&mut self.store);
                    return Err(fault);
                }
            };
            self.arm(clock.until);
            let name = command.name.clone();
            let cmd = types::Command {
                name: command.name,
                payload: command.payload,
            };
            let result = self
                .exports
                .handle
                .call_async(&mut self.store, (cmd,))
                .await;
            guest_cpu::leave(&mut self.store);
            self.store.data_mut().deadline = None;
            let outcome = match result.map(|(r,)| r.map(|bytes| bytes.value)) {
                Ok(Ok(Reply::TooLarge(size))) => Outcome::ReplyTooLarge {
                    size,
                    limit: self.max_reply_bytes,
                },
                Ok(Ok(Reply::Bytes(reply))) => Outcome::reply(reply, self.max_reply_bytes),
                Ok(Err(e)) => Outcome::Error(e.into()),
                Err(e) => {
                    let fault = classify(&e);
                    return Err(if fault.code == FaultCode::Deadline {
                        clock.overrun(&name)
                    } else {
                        fault
                    });
                }
            };
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }
}

/// The one mapping of the WIT command error into the host's.
impl From<types::CommandError> for CommandError {
    fn from(e: types::CommandError) -> Self {
        match e {
            types::CommandError::UnknownCommand(m) => CommandError::UnknownCommand(m),
            types::CommandError::InvalidPayload(m) => CommandError::InvalidPayload(m),
            types::CommandError::Failed(m) => CommandError::Failed(m),
        }
    }
}

/// Turns a wasmtime error into a fault with a stable code.
pub(super) fn classify(error: &wasmtime::Error) -> Fault {
    if let Some(hit) = error.downcast_ref::<LimitHit>() {
        return match hit {
            LimitHit::Deadline => Fault::deadline(hit.to_string()),
            other => Fault::crashed(other.code(), other.to_string()),
        };
    }
    if let Some(trap) = error.downcast_ref::<wasmtime::Trap>() {
        use wasmtime::Trap;
        let code = match trap {
            Trap::StackOverflow => FaultCode::StackOverflow,
            Trap::Interrupt => return Fault::deadline("interrupted"),
            Trap::UnreachableCodeReached => FaultCode::Trap(TrapCode::Unreachable),
            Trap::MemoryOutOfBounds => FaultCode::Trap(TrapCode::MemoryOutOfBounds),
            Trap::IntegerDivisionByZero => FaultCode::Trap(TrapCode::IntegerDivisionByZero),
            Trap::IndirectCallToNull => FaultCode::Trap(TrapCode::IndirectCallToNull),
            Trap::BadSignature => FaultCode::Trap(TrapCode::BadSignature),
            Trap::IntegerOverflow => FaultCode::Trap(TrapCode::IntegerOverflow),
            Trap::BadConversionToInteger => FaultCode::Trap(TrapCode::BadConversionToInteger),
            Trap::TableOutOfBounds => FaultCode::Trap(TrapCode::TableOutOfBounds),
            Trap::HeapMisaligned => FaultCode::Trap(TrapCode::HeapMisaligned),
            // The detail names the trap.
            _ => FaultCode::Trap(TrapCode::Other),
        };
        return Fault::crashed(code, format!("{error:?}"));
    }
    if error
        .downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
        .is_some()
    {
        return Fault::crashed(FaultCode::PoolExhausted, format!("{error:#}"));
    }
    Fault::crashed(FaultCode::Trap(TrapCode::Other), format!("{error:#}"))
}

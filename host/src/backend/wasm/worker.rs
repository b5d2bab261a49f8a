//! The task that owns one session's `Store` and serves its commands and
//! ticks, in order.

use std::cmp::Reverse;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::Instrument;
use wasmtime::Store;
use wasmtime::component::TypedFunc;

use super::bindings::Backend as Instance;
use super::bindings::gatehouse::backend::types;
use super::host::{LimitHit, SessionData};
use super::reply::Reply;

/// `session.handle`, lifting its reply as a [`Reply`] so an oversized one is
/// never copied out of the instance.
pub(super) type HandleFunc = TypedFunc<(types::Command,), (Result<Reply, types::CommandError>,)>;
use crate::backend::{
    CloseOutcome, Command, CommandError, Fault, FaultReporter, Outcome, StartRequest, Worker,
};

/// Requests queued for a session's task.
const QUEUE: usize = 64;

enum Request {
    Invoke {
        commands: Vec<Command>,
        timeout: Duration,
        deadline: Option<Instant>,
        reply: oneshot::Sender<Result<Vec<Outcome>, Fault>>,
    },
    Close {
        grace: Duration,
        reply: oneshot::Sender<CloseOutcome>,
    },
}

/// How a session task ended.
enum Exit {
    /// The handle was dropped.
    Quiet,
    /// A command or tick faulted.
    Faulted {
        reply: Option<oneshot::Sender<Result<Vec<Outcome>, Fault>>>,
        fault: Fault,
    },
    /// A close request was served.
    Closed {
        reply: oneshot::Sender<CloseOutcome>,
        outcome: CloseOutcome,
    },
}

/// The handle the registry holds for a wasm session.
pub struct WasmWorker {
    tx: mpsc::Sender<Request>,
    task: JoinHandle<()>,
    fault: Arc<OnceLock<Fault>>,
}

impl WasmWorker {
    pub(super) fn spawn(
        store: Store<SessionData>,
        instance: Instance,
        handle: HandleFunc,
        request: StartRequest,
    ) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let fault = Arc::new(OnceLock::new());
        // A root span: the session outlives the OpenSession call that started
        // it, so that call is linked (follows-from) rather than a parent.
        let span = tracing::info_span!(parent: None, "session", session_id = %request.session_id, tenant = %request.tenant, backend = %request.backend);
        span.follows_from(tracing::Span::current());
        let task = SessionTask {
            store,
            instance,
            handle,
            rx,
            fault: Arc::clone(&fault),
            reporter: request.faults,
            command_timeout: request.policy.command_timeout,
            max_reply_bytes: request.policy.max_reply_bytes,
        };
        let task = tokio::spawn(task.run().instrument(span));
        Self { tx, task, fault }
    }

    fn gone(&self) -> Fault {
        self.fault
            .get()
            .cloned()
            .unwrap_or_else(|| Fault::crashed("worker-stopped", "the session's worker has stopped"))
    }
}

impl Drop for WasmWorker {
    fn drop(&mut self) {
        // Never leak an instance: dropping the handle ends the task.
        self.task.abort();
    }
}

#[async_trait]
impl Worker for WasmWorker {
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
        if self.tx.send(Request::Close { grace, reply }).await.is_err() {
            // Already stopped (faulted): nothing left to close.
            return CloseOutcome::Graceful;
        }
        // A running command delays the close; past the grace period the
        // worker is stopped wherever it is.
        match tokio::time::timeout(grace + Duration::from_millis(50), rx).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => CloseOutcome::Graceful,
            Err(_) => {
                self.kill();
                CloseOutcome::Killed
            }
        }
    }

    fn kill(&self) {
        self.task.abort();
    }

    fn pid(&self) -> Option<u32> {
        None
    }
}

struct SessionTask {
    store: Store<SessionData>,
    instance: Instance,
    handle: HandleFunc,
    rx: mpsc::Receiver<Request>,
    fault: Arc<OnceLock<Fault>>,
    reporter: FaultReporter,
    command_timeout: Duration,
    max_reply_bytes: usize,
}

impl SessionTask {
    /// Serves until the session ends, then frees the instance *before*
    /// telling anyone: the registry releases the session's slot as soon as
    /// it hears, and the pool slot must be free by then.
    async fn run(mut self) {
        let exit = self.serve().await;
        let SessionTask {
            store, reporter, ..
        } = self;
        drop(store);
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
            let next_tick = self.store.data().ticks.peek().map(|Reverse(t)| *t);
            let request = tokio::select! {
                biased;
                request = self.rx.recv() => request,
                _ = tokio::time::sleep_until(next_tick.unwrap_or_else(Instant::now).into()), if next_tick.is_some() => {
                    self.store.data_mut().ticks.pop();
                    if let Err(fault) = self.tick().await {
                        tracing::warn!(%fault, "session faulted in a timer tick");
                        self.fail(fault.clone());
                        return Exit::Faulted { reply: None, fault };
                    }
                    continue;
                }
            };
            match request {
                None => return Exit::Quiet,
                Some(Request::Invoke {
                    commands,
                    timeout,
                    deadline,
                    reply,
                }) => {
                    if reply.is_closed() {
                        // The caller gave up while the request was queued.
                        continue;
                    }
                    match self.invoke(commands, timeout, deadline).await {
                        Ok(outcomes) => {
                            let _ = reply.send(Ok(outcomes));
                        }
                        Err(fault) => {
                            tracing::warn!(%fault, "session faulted in a command");
                            self.fail(fault.clone());
                            return Exit::Faulted {
                                reply: Some(reply),
                                fault,
                            };
                        }
                    }
                }
                Some(Request::Close { grace, reply }) => {
                    self.arm(Instant::now() + grace);
                    let closed = self
                        .instance
                        .gatehouse_backend_session()
                        .call_close(&mut self.store)
                        .await;
                    let outcome = match closed {
                        Ok(()) => CloseOutcome::Graceful,
                        Err(e) => {
                            let fault = classify(&e);
                            tracing::debug!(%fault, "plugin close failed");
                            if fault.code == "deadline" {
                                CloseOutcome::Killed
                            } else {
                                CloseOutcome::Graceful
                            }
                        }
                    };
                    return Exit::Closed { reply, outcome };
                }
            }
        }
    }

    fn fail(&mut self, fault: Fault) {
        let _ = self.fault.set(fault);
        // Wake queued callers: they see the recorded fault.
        self.rx.close();
    }

    fn arm(&mut self, deadline: Instant) {
        self.store.data_mut().deadline = Some(deadline);
        self.store.set_epoch_deadline(1);
    }

    async fn invoke(
        &mut self,
        commands: Vec<Command>,
        timeout: Duration,
        deadline: Option<Instant>,
    ) -> Result<Vec<Outcome>, Fault> {
        let mut outcomes = Vec::with_capacity(commands.len());
        for command in commands {
            let start = Instant::now();
            let mut until = start + timeout;
            if let Some(d) = deadline {
                until = until.min(d);
            }
            if until <= start {
                return Err(Fault::deadline(
                    "the gRPC deadline passed before the command ran",
                ));
            }
            self.arm(until);
            let name = command.name.clone();
            let cmd = types::Command {
                name: command.name,
                payload: command.payload,
            };
            let result = self.handle.call_async(&mut self.store, (cmd,)).await;
            self.store.data_mut().deadline = None;
            let too_large = |size| Outcome::ReplyTooLarge {
                size,
                limit: self.max_reply_bytes,
            };
            let outcome = match result {
                Ok((Ok(Reply::TooLarge(size)),)) => too_large(size),
                Ok((Ok(Reply::Bytes(reply)),)) if reply.len() > self.max_reply_bytes => {
                    too_large(reply.len())
                }
                Ok((Ok(Reply::Bytes(reply)),)) => Outcome::Reply(reply),
                Ok((Err(e),)) => Outcome::Error(match e {
                    types::CommandError::UnknownCommand(m) => CommandError::UnknownCommand(m),
                    types::CommandError::InvalidPayload(m) => CommandError::InvalidPayload(m),
                    types::CommandError::Failed(m) => CommandError::Failed(m),
                }),
                Err(e) => {
                    let mut fault = classify(&e);
                    if fault.code == "deadline" {
                        fault.detail = format!(
                            "command {:?} ran past its {} ms deadline",
                            name,
                            until.duration_since(start).as_millis()
                        );
                    }
                    return Err(fault);
                }
            };
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    async fn tick(&mut self) -> Result<(), Fault> {
        self.arm(Instant::now() + self.command_timeout);
        let result = self
            .instance
            .gatehouse_backend_session()
            .call_tick(&mut self.store)
            .await;
        self.store.data_mut().deadline = None;
        result.map_err(|e| classify(&e))
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
            Trap::StackOverflow => "stack-overflow".to_string(),
            Trap::Interrupt => return Fault::deadline("interrupted"),
            Trap::UnreachableCodeReached => "trap: unreachable".to_string(),
            Trap::MemoryOutOfBounds => "trap: memory out of bounds".to_string(),
            Trap::IntegerDivisionByZero => "trap: integer division by zero".to_string(),
            Trap::IndirectCallToNull => "trap: indirect call to null".to_string(),
            Trap::BadSignature => "trap: bad signature".to_string(),
            Trap::IntegerOverflow => "trap: integer overflow".to_string(),
            Trap::BadConversionToInteger => "trap: bad conversion to integer".to_string(),
            Trap::TableOutOfBounds => "trap: table out of bounds".to_string(),
            Trap::HeapMisaligned => "trap: heap misaligned".to_string(),
            other => format!("trap: {other}"),
        };
        return Fault::crashed(code, format!("{error:?}"));
    }
    let text = format!("{error:#}");
    if text.contains("maximum concurrent") || text.contains("pooling") {
        return Fault::crashed("pool-exhausted", text);
    }
    Fault::crashed("trap", text)
}

//! A wasm session's side of the CPU scheduler: metering its guest's wasm
//! time from the store's call hooks, and taking turns of the runtime's
//! threads around every call and at every epoch tick.
//!
//! Wasm time is thread CPU time between entering wasm (a call, or a return
//! from a host call) and leaving it (a return, or a call into the host).
//! The epoch callback runs as a host call, so time a guest spends yielded
//! or waiting for its next turn is not wasm time; and a fiber that resumes
//! on another thread re-reads that thread's clock when it re-enters wasm.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::{CallHook, Store};

use crate::backend::cpu::fair::Turn;
use crate::backend::cpu::{CpuAccount, thread_cpu_time};

/// The turn a guest holds, shared with the future that takes the next one
/// at a slice boundary (it cannot reach the store).
type TurnSlot = Arc<Mutex<Option<Turn>>>;

/// One store's meter and turn.
#[derive(Debug)]
pub struct GuestCpu {
    account: CpuAccount,
    /// The thread's CPU clock when the guest last entered wasm; `None`
    /// while it is not in wasm.
    entered: Option<Duration>,
    /// Wasm time measured but not yet charged.
    pending: Duration,
    /// Wasm time since the current turn began: what the turn costs.
    this_turn: Duration,
    turn: TurnSlot,
}

impl GuestCpu {
    /// A meter charging `account`.
    pub fn new(account: CpuAccount) -> Self {
        Self {
            account,
            entered: None,
            pending: Duration::ZERO,
            this_turn: Duration::ZERO,
            turn: Arc::default(),
        }
    }

    /// The call hook: adds up wasm time, host calls excluded, and charges
    /// it when the call into the plugin returns.
    pub fn hook(&mut self, hook: CallHook) {
        match hook {
            CallHook::CallingWasm | CallHook::ReturningFromHost => {
                self.entered = thread_cpu_time();
            }
            CallHook::ReturningFromWasm | CallHook::CallingHost => {
                if let (Some(entered), Some(now)) = (self.entered.take(), thread_cpu_time()) {
                    let used = now.saturating_sub(entered);
                    self.pending += used;
                    self.this_turn += used;
                }
                if matches!(hook, CallHook::ReturningFromWasm) {
                    self.flush();
                }
            }
        }
    }

    fn flush(&mut self) {
        self.account.charge(std::mem::take(&mut self.pending));
    }

    /// Holds `turn` for the call about to start (giving back any other).
    fn hold(&mut self, turn: Turn) {
        self.this_turn = Duration::ZERO;
        let old = self
            .turn
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(turn);
        drop(old);
    }

    /// Gives the turn back when the call is done, charging what it used.
    fn release(&mut self) {
        self.flush();
        let cost = std::mem::take(&mut self.this_turn);
        let turn = self.turn.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(turn) = turn {
            turn.finish(cost);
        }
    }

    /// At an epoch tick (a slice boundary): charges the slice, gives the
    /// turn back and returns the future the guest waits on before it goes
    /// on: a yield to tokio's queue (to its back, unlike
    /// `UpdateDeadline::Yield`, which tokio runs again at once from its
    /// LIFO slot), then the next turn, if the guest held one.
    pub fn slice_end(&mut self) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        self.flush();
        let turn = self.turn.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(turn) = turn else {
            return Box::pin(tokio::task::yield_now());
        };
        let next = turn.renew(std::mem::take(&mut self.this_turn));
        let slot = Arc::clone(&self.turn);
        Box::pin(async move {
            tokio::task::yield_now().await;
            let turn = next.wait().await;
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(turn);
        })
    }

    /// The session's CPU account (a timer tick waits on its budget).
    pub fn account(&self) -> &CpuAccount {
        &self.account
    }
}

/// A store's data that carries a guest's meter (the session's data): what
/// the functions below need of it.
pub(super) trait Metered: Send + 'static {
    /// The store's meter and turn.
    fn guest_cpu(&mut self) -> &mut GuestCpu;
}

/// Takes a turn of the runtime's threads for a call into the plugin.
pub(super) async fn enter<T: Metered>(store: &mut Store<T>) {
    let turn = store.data_mut().guest_cpu().account.turn().await;
    store.data_mut().guest_cpu().hold(turn);
}

/// Gives the call's turn back, charging the wasm time it used.
pub(super) fn leave<T: Metered>(store: &mut Store<T>) {
    store.data_mut().guest_cpu().release();
}

/// Installs the metering call hook on a session's store.
pub(super) fn install<T: Metered>(store: &mut Store<T>) {
    store.call_hook(|mut ctx, hook| {
        ctx.data_mut().guest_cpu().hook(hook);
        Ok(())
    });
}

//! The per-session `Store` data: WASI context, limits, and the `host`
//! interface the plugin imports.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::gatehouse::backend::{host, types};
use super::{
    MAX_CORE_INSTANCES_PER_COMPONENT, MAX_MEMORIES_PER_COMPONENT, MAX_TABLES_PER_COMPONENT,
};
use crate::backend::FaultCode;
use crate::backend::event_sink::{EventRefused, EventSink};
use crate::backend::guest_log::{LogLimiter, MAX_LINE, log_line};
use crate::memory_budget::{MemoryAccount, MemoryKind, OverBudget, Reservation};

/// Longest delay a plugin may ask for in `schedule-tick`.
const MAX_TICK_DELAY: Duration = Duration::from_secs(24 * 3600);

/// A limit a guest hit; carried as the trap's error so the fault can say
/// which limit it was.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LimitHit {
    /// The command ran past its deadline.
    #[error("the call ran past its deadline")]
    Deadline,
    /// Linear memory would grow past the session's limit.
    #[error("memory would grow to {desired} bytes, over the limit of {limit}")]
    Memory {
        /// Requested size.
        desired: usize,
        /// The limit.
        limit: usize,
    },
    /// A table would grow past its limit.
    #[error("a table would grow to {desired} elements, over the limit of {limit}")]
    Table {
        /// Requested size.
        desired: usize,
        /// The limit.
        limit: usize,
    },
    /// A memory or table growth did not fit the memory budget.
    #[error("{what} would grow by {bytes} bytes: {refused}")]
    Budget {
        /// `memory` or `table`.
        what: &'static str,
        /// The growth.
        bytes: usize,
        /// Which budget refused it.
        refused: OverBudget,
    },
    /// An event was refused (too large, or the queue full under the
    /// `fault` overflow policy).
    #[error(transparent)]
    Event(EventRefused),
    /// More ticks were scheduled than `max_pending_ticks`.
    #[error("more than {0} ticks scheduled at once")]
    TooManyTicks(usize),
}

impl LimitHit {
    /// The fault code for this limit.
    pub fn code(&self) -> FaultCode {
        match self {
            LimitHit::Deadline => FaultCode::Deadline,
            LimitHit::Memory { .. } => FaultCode::MemoryLimit,
            LimitHit::Table { .. } => FaultCode::TableLimit,
            LimitHit::Budget { .. } => FaultCode::MemoryBudget,
            LimitHit::Event(refused) => refused.code(),
            LimitHit::TooManyTicks(_) => FaultCode::TooManyTicks,
        }
    }
}

/// Bytes a table element is charged: one pointer.
const TABLE_ELEMENT_BYTES: usize = std::mem::size_of::<usize>();

/// Resource limits of one store, and the store's share of the memory
/// budget: every byte of memory and table growth is reserved before it is
/// allowed, and the reservations go with the store.
pub struct Limits {
    /// Bytes of linear memory per memory.
    pub memory: usize,
    /// Elements per table.
    pub table_elements: usize,
    /// The memories' bytes, reserved against the budget.
    pub memory_reserved: Reservation,
    /// The tables' bytes, reserved against the budget.
    pub table_reserved: Reservation,
    /// The last approved growth of each kind, given back if the growth
    /// then fails.
    pending: (usize, usize),
}

impl Limits {
    /// Limits of `memory` bytes per memory and `table_elements` per table,
    /// reserving growth through `account`.
    pub fn new(memory: usize, table_elements: usize, account: &MemoryAccount) -> Self {
        Self {
            memory,
            table_elements,
            memory_reserved: account.reservation(MemoryKind::WasmMemory),
            table_reserved: account.reservation(MemoryKind::WasmTable),
            pending: (0, 0),
        }
    }
}

impl ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory {
            return Err(LimitHit::Memory {
                desired,
                limit: self.memory,
            }
            .into());
        }
        // Called with current = 0 when a memory is created, so an
        // instance's initial memory is reserved too.
        let bytes = desired.saturating_sub(current);
        self.memory_reserved
            .try_grow(bytes)
            .map_err(|refused| LimitHit::Budget {
                what: "memory",
                bytes,
                refused,
            })?;
        self.pending.0 = bytes;
        Ok(true)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.memory_reserved
            .shrink(std::mem::take(&mut self.pending.0));
        tracing::debug!("a memory growth failed after it was allowed: {error:#}");
        Ok(())
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.table_elements {
            return Err(LimitHit::Table {
                desired,
                limit: self.table_elements,
            }
            .into());
        }
        let bytes = desired.saturating_sub(current) * TABLE_ELEMENT_BYTES;
        self.table_reserved
            .try_grow(bytes)
            .map_err(|refused| LimitHit::Budget {
                what: "table",
                bytes,
                refused,
            })?;
        self.pending.1 = bytes;
        Ok(true)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.table_reserved
            .shrink(std::mem::take(&mut self.pending.1));
        tracing::debug!("a table growth failed after it was allowed: {error:#}");
        Ok(())
    }

    fn instances(&self) -> usize {
        // A component has several core instances (the module plus shims).
        MAX_CORE_INSTANCES_PER_COMPONENT as usize
    }

    fn tables(&self) -> usize {
        MAX_TABLES_PER_COMPONENT as usize
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES_PER_COMPONENT as usize
    }
}

/// Everything a session's `Store` holds.
pub struct SessionData {
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) limits: Limits,
    pub(super) session_id: Arc<str>,
    pub(super) events: EventSink,
    pub(super) log_limiter: Arc<LogLimiter>,
    /// Due times of the ticks the plugin asked for, soonest first.
    pub(super) ticks: BinaryHeap<Reverse<Instant>>,
    pub(super) max_pending_ticks: usize,
    /// When the call in progress must stop; read by the epoch callback.
    pub(super) deadline: Option<Instant>,
    /// The guest's CPU meter and its turn of the runtime's threads.
    pub(super) cpu: super::guest_cpu::GuestCpu,
}

impl WasiView for SessionData {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for SessionData {}

impl host::Host for SessionData {
    fn emit(&mut self, event: types::Event) -> wasmtime::Result<()> {
        self.events
            .emit(event.name, event.payload)
            .map_err(|refused| LimitHit::Event(refused).into())
    }

    fn log(&mut self, level: types::LogLevel, message: String) -> wasmtime::Result<()> {
        let level = match level {
            types::LogLevel::Trace => tracing::Level::TRACE,
            types::LogLevel::Debug => tracing::Level::DEBUG,
            types::LogLevel::Info => tracing::Level::INFO,
            types::LogLevel::Warn => tracing::Level::WARN,
            types::LogLevel::Error => tracing::Level::ERROR,
        };
        let message: String = message.chars().take(MAX_LINE).collect();
        log_line(&self.session_id, "log", level, &self.log_limiter, &message);
        Ok(())
    }

    fn schedule_tick(&mut self, delay_ms: u64) -> wasmtime::Result<()> {
        if self.ticks.len() >= self.max_pending_ticks {
            return Err(LimitHit::TooManyTicks(self.max_pending_ticks).into());
        }
        let delay = Duration::from_millis(delay_ms).min(MAX_TICK_DELAY);
        self.ticks.push(Reverse(Instant::now() + delay));
        Ok(())
    }
}

/// Links `gatehouse:backend/host@0.1.0` (and its type-only `types`), so
/// components built for 0.1.0 keep loading: the same functions as 0.2.0's,
/// whose types are structurally the same.
pub(super) fn add_v0_1_to_linker(
    linker: &mut wasmtime::component::Linker<SessionData>,
) -> wasmtime::Result<()> {
    use host::Host;
    use wasmtime::StoreContextMut;
    linker.instance("gatehouse:backend/types@0.1.0")?;
    let mut v1 = linker.instance("gatehouse:backend/host@0.1.0")?;
    v1.func_wrap(
        "emit",
        |mut cx: StoreContextMut<'_, SessionData>, (event,): (types::Event,)| {
            cx.data_mut().emit(event)
        },
    )?;
    v1.func_wrap(
        "log",
        |mut cx: StoreContextMut<'_, SessionData>, (level, message): (types::LogLevel, String)| {
            cx.data_mut().log(level, message)
        },
    )?;
    v1.func_wrap(
        "schedule-tick",
        |mut cx: StoreContextMut<'_, SessionData>, (delay_ms,): (u64,)| {
            cx.data_mut().schedule_tick(delay_ms)
        },
    )?;
    Ok(())
}

impl super::guest_cpu::Metered for SessionData {
    fn guest_cpu(&mut self) -> &mut super::guest_cpu::GuestCpu {
        &mut self.cpu
    }
}

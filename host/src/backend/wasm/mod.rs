//! wasm backends: one component instance per session, in its own `Store`.
//!
//! One [`WasmRuntime`] (engine, linker, epoch ticker) serves every wasm
//! backend. Each component is compiled once and pre-instantiated; a session
//! costs a `Store` and an instantiation from the pooling allocator, with
//! copy-on-write memory images.

mod bindings;
pub mod cache;
pub mod check;
mod exports;
mod guest_cpu;
mod host;
mod inline;
mod reply;
mod start_memory;
mod stdio;
mod ticker;
mod worker;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, InstancePre, Linker};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, UpdateDeadline,
};
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder};

use self::bindings::BackendPre;
use self::exports::ExportIndices;
use self::host::{LimitHit, Limits, SessionData};
use self::stdio::{GuestOutput, Source};
use super::event_sink::EventSink;
use super::guest_log::LogLimiter;
use super::{
    Backend, BackendInfo, Fault, FaultCode, Progress, StartError, StartPhase, StartRequest, Worker,
};
use crate::config::{BackendKind, BackendSpec, Grants, NetRule};

/// Table elements a session's tables may grow to.
const MAX_TABLE_ELEMENTS: usize = 100_000;
/// Core instances one component may create; the store's limiter allows the
/// same, so the pool and the limiter can never disagree.
pub(super) const MAX_CORE_INSTANCES_PER_COMPONENT: u32 = 32;
/// Memories one component may have.
pub(super) const MAX_MEMORIES_PER_COMPONENT: u32 = 2;
/// Tables one component may have.
pub(super) const MAX_TABLES_PER_COMPONENT: u32 = 8;
/// Virtual address space the memory pool may reserve in all.
const MEMORY_POOL_BUDGET: u64 = 32 << 40;

/// Settings of the shared wasm runtime.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Live sessions the pooling allocator must hold.
    pub max_sessions: usize,
    /// The largest memory limit of any backend.
    pub max_memory_bytes: usize,
    /// How often the epoch advances: the granularity of deadlines.
    pub epoch_tick: Duration,
    /// The largest reply of any backend; larger replies are never copied
    /// out of an instance. Process-wide: the last runtime created sets it.
    pub max_reply_bytes: usize,
    /// The largest state snapshot of any backend, likewise.
    pub max_snapshot_bytes: usize,
}

/// Why a component could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The runtime could not be created.
    #[error("creating the wasm engine: {0}")]
    Engine(String),
    /// The bytes are not a valid component.
    #[error("compiling the component: {0}")]
    Compile(String),
    /// The component's memory at start is over what the engine allows.
    #[error("{0}")]
    Memory(String),
    /// The component needs imports gatehouse does not provide, or does not
    /// export the `gatehouse:backend` world.
    #[error("the component does not fit the gatehouse:backend world: {0}")]
    Link(String),
}

/// The engine, linker and epoch ticker shared by all wasm backends.
///
/// Every backend it loads holds a clone of the engine, and the ticker runs
/// for as long as any clone lives: the runtime itself may be dropped once
/// its backends are loaded.
pub struct WasmRuntime {
    engine: Engine,
    linker: Linker<SessionData>,
}

/// `sha256:<hex>` of a component's bytes, as its backend's digest reads.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

impl WasmRuntime {
    /// Creates the engine with a pooling allocator sized for
    /// `options.max_sessions` and starts the epoch ticker.
    pub fn new(options: &RuntimeOptions) -> Result<Self, LoadError> {
        let engine = Engine::new(&engine_config(options))
            .map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        let linker = new_linker(&engine).map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        reply::set_reply_cap(options.max_reply_bytes);
        reply::set_snapshot_cap(options.max_snapshot_bytes);
        // Detached: it ends by itself once the last engine handle is gone.
        ticker::spawn(&engine, options.epoch_tick);
        Ok(Self { engine, linker })
    }

    /// Compiles a component and pre-instantiates it for `spec`.
    pub fn load(&self, spec: &BackendSpec, bytes: &[u8]) -> Result<WasmBackend, LoadError> {
        self.load_with(spec, bytes, None).map(|(b, _)| b)
    }

    /// Like [`load`](Self::load), reading and filling the compile `cache`.
    pub fn load_with(
        &self,
        spec: &BackendSpec,
        bytes: &[u8],
        cache: Option<&cache::ArtifactCache>,
    ) -> Result<(WasmBackend, cache::Source), LoadError> {
        let digest = hex::encode(Sha256::digest(bytes));
        let (component, source) = match cache {
            Some(cache) => cache.load(&self.engine, bytes, &digest),
            None => Component::new(&self.engine, bytes).map(|c| (c, cache::Source::Compiled)),
        }
        .map_err(|e| {
            let message = format!("{e:#}");
            match start_memory::refused_at_load(&message, spec.policy.memory_limit) {
                Some(plain) => LoadError::Memory(plain),
                None => LoadError::Compile(message),
            }
        })?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Link(format!("{e:#}")))?;
        let exports = ExportIndices::find(&component).map_err(LoadError::Link)?;
        Ok((
            WasmBackend {
                info: BackendInfo {
                    name: spec.name.clone(),
                    kind: BackendKind::Wasm,
                    version: spec.version.clone(),
                    digest: format!("sha256:{digest}"),
                    description: spec.description.clone(),
                },
                env: spec
                    .grants
                    .env
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                grants: spec.grants.clone(),
                engine: self.engine.clone(),
                pre,
                exports,
            },
            source,
        ))
    }

    /// A compile cache in `dir` for this runtime's engine.
    pub fn cache(&self, dir: &std::path::Path) -> cache::ArtifactCache {
        cache::ArtifactCache::new(dir, &self.engine)
    }
}

/// The linker every session is instantiated with: WASI preview 2 and the
/// gatehouse `host` interface, at every world version the gateway loads.
fn new_linker(engine: &Engine) -> wasmtime::Result<Linker<SessionData>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    bindings::Backend::add_to_linker::<SessionData, HasSelf<SessionData>>(&mut linker, |d| d)?;
    host::add_v0_1_to_linker(&mut linker)?;
    Ok(linker)
}

fn engine_config(options: &RuntimeOptions) -> Config {
    // Headroom over the session cap: a killed worker's instance returns to
    // the pool when its task unwinds, which may be just after the registry
    // has handed the session's slot to a new open.
    let cap = u32::try_from(options.max_sessions).unwrap_or(u32::MAX);
    let sessions = cap.saturating_add((cap / 64).clamp(4, 64));
    let memories = sessions.saturating_mul(MAX_MEMORIES_PER_COMPONENT);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(sessions)
        .total_core_instances(sessions.saturating_mul(MAX_CORE_INSTANCES_PER_COMPONENT))
        .total_memories(memories)
        .total_tables(sessions.saturating_mul(MAX_TABLES_PER_COMPONENT))
        // Every live async store keeps its fiber stack.
        .total_stacks(sessions)
        .max_core_instances_per_component(MAX_CORE_INSTANCES_PER_COMPONENT)
        .max_memories_per_component(MAX_MEMORIES_PER_COMPONENT)
        .max_tables_per_component(MAX_TABLES_PER_COMPONENT)
        .table_elements(MAX_TABLE_ELEMENTS)
        .max_memory_size(options.max_memory_bytes);

    let mut config = Config::new();
    config
        .epoch_interruption(true)
        // Component-model async is not used; it would slow every call.
        .concurrency_support(false)
        .memory_init_cow(true)
        .cranelift_opt_level(wasmtime::OptLevel::Speed)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    // Large pools cannot give every memory a 4GiB reservation; fall back to
    // smaller reservations (with bounds checks) past the budget.
    let per_memory = MEMORY_POOL_BUDGET / u64::from(memories.max(1));
    if per_memory < (4 << 30) {
        let reservation = per_memory.max(options.max_memory_bytes as u64);
        config
            .memory_reservation(reservation)
            .memory_guard_size(64 << 10);
    }
    config
}

/// A wasm backend: one compiled, pre-instantiated component.
pub struct WasmBackend {
    info: BackendInfo,
    env: Vec<(String, String)>,
    grants: Grants,
    engine: Engine,
    pre: InstancePre<SessionData>,
    /// The component's functions, resolved once at load instead of by
    /// name on every open.
    exports: ExportIndices,
}

impl WasmBackend {
    /// Whether the component exports `gatehouse:backend/state` (keeps its
    /// state across restarts and upgrades).
    pub fn stateful(&self) -> bool {
        self.exports.stateful()
    }

    /// The `gatehouse:backend` world version the component implements.
    pub fn world_version(&self) -> &'static str {
        self.exports.version
    }

    /// TCP connects to the allow-list only; nothing else (no listening, no
    /// UDP, no name lookup). Without a grant, TCP is off entirely.
    fn grant_network(&self, wasi: &mut WasiCtxBuilder) {
        if self.grants.network.is_empty() {
            wasi.allow_tcp(false);
            return;
        }
        let rules: Arc<[NetRule]> = self.grants.network.clone().into();
        wasi.allow_tcp(true).socket_addr_check(move |addr, use_| {
            let allowed = match use_ {
                SocketAddrUse::TcpConnect => rules.iter().any(|r| r.allows(addr)),
                // A connect first binds implicitly to the wildcard address.
                SocketAddrUse::TcpBind => addr.ip().is_unspecified() && addr.port() == 0,
                _ => false,
            };
            Box::pin(async move { allowed })
        });
    }
}

#[async_trait]
impl Backend for WasmBackend {
    fn info(&self) -> &BackendInfo {
        &self.info
    }

    async fn start(
        &self,
        request: StartRequest,
        progress: Progress<'_>,
    ) -> Result<Box<dyn Worker>, StartError> {
        let instance = self.instantiate(&request, progress).await?;
        Ok(Box::new(worker::spawn(instance, &request)))
    }

    async fn start_one_shot(
        &self,
        request: StartRequest,
        progress: Progress<'_>,
    ) -> Result<Box<dyn Worker>, StartError> {
        let instance = self.instantiate(&request, progress).await?;
        Ok(Box::new(inline::InlineWorker::new(instance)))
    }
}

impl WasmBackend {
    /// Builds a session's store with its limits, instantiates the
    /// component in it and runs the plugin's `open` (and `restore`), all
    /// within the request's open timeout.
    async fn instantiate(
        &self,
        request: &StartRequest,
        progress: Progress<'_>,
    ) -> Result<worker::Instance, StartError> {
        progress(StartPhase::StartingWorker);
        let log_limiter = Arc::new(LogLimiter::new(
            request.policy.log_burst,
            request.policy.log_lines_per_sec,
        ));
        let mut wasi = WasiCtx::builder();
        wasi.stdout(GuestOutput::new(
            Arc::clone(&request.session_id),
            Source::Stdout,
            Arc::clone(&log_limiter),
        ))
        .stderr(GuestOutput::new(
            Arc::clone(&request.session_id),
            Source::Stderr,
            Arc::clone(&log_limiter),
        ))
        .envs(&self.env)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
        self.grant_network(&mut wasi);
        for p in &self.grants.preopens {
            let perms = if p.writable {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            wasi.preopened_dir(&p.host, &p.guest, perms).map_err(|e| {
                StartError::Failed(Fault::crashed(
                    FaultCode::PreopenFailed,
                    format!("{}: {e:#}", p.host.display()),
                ))
            })?;
        }

        let policy = &request.policy;
        let data = SessionData {
            wasi: wasi.build(),
            table: Default::default(),
            limits: Limits::new(policy.memory_limit, MAX_TABLE_ELEMENTS, &request.memory),
            session_id: Arc::clone(&request.session_id),
            events: EventSink::new(Arc::clone(&request.events), policy.max_event_bytes),
            log_limiter,
            ticks: Default::default(),
            max_pending_ticks: policy.max_pending_ticks,
            deadline: Some(Instant::now() + request.open_timeout),
            cpu: guest_cpu::GuestCpu::new(request.cpu.clone()),
        };
        let mut store = Store::new(&self.engine, data);
        store.limiter(|d| &mut d.limits);
        guest_cpu::install(&mut store);
        // Every tick, a running guest either traps (past its deadline) or
        // gives its turn back and yields through tokio's queue, so other
        // sessions (and other tenants first) run.
        store.epoch_deadline_callback(|mut ctx| match ctx.data().deadline {
            Some(d) if Instant::now() >= d => Err(LimitHit::Deadline.into()),
            _ => Ok(UpdateDeadline::YieldCustom(
                1,
                ctx.data_mut().cpu.slice_end(),
            )),
        });
        store.set_epoch_deadline(1);

        let instantiated = match self.pre.instantiate_async(&mut store).await {
            Ok(raw) => self.exports.load(&mut store, &raw),
            Err(e) => Err(e),
        };
        let exports = match instantiated {
            Ok(i) => i,
            Err(e) => {
                if let Some(fault) = start_memory::refused_at_start(&e) {
                    return Err(StartError::Failed(fault));
                }
                let fault = worker::classify(&e);
                // Both may pass: a session that closes frees pool slots and
                // budget, so these are RESOURCE_EXHAUSTED with a retry hint.
                return Err(match fault.code {
                    FaultCode::PoolExhausted => {
                        StartError::Exhausted(Fault::crashed(FaultCode::NoCapacity, fault.detail))
                    }
                    FaultCode::MemoryBudget => StartError::Exhausted(fault),
                    _ => StartError::Failed(fault),
                });
            }
        };

        progress(StartPhase::InitializingWorker);
        let ctx = bindings::gatehouse::backend::types::SessionContext {
            session_id: request.session_id.to_string(),
            tenant: request.tenant.clone(),
            backend: request.backend.clone(),
            config: request.config.clone().into_iter().collect(),
        };
        store.set_epoch_deadline(1);
        guest_cpu::enter(&mut store).await;
        let opened = exports.open.call_async(&mut store, (ctx,)).await;
        guest_cpu::leave(&mut store);
        match opened {
            Ok((Ok(()),)) => {}
            Ok((Err(message),)) => return Err(StartError::Refused(message)),
            Err(e) => return Err(StartError::Failed(worker::classify(&e))),
        }
        // A restart or an upgrade: the state of the instance it replaces,
        // within what is left of the open's deadline.
        if let (Some(restore), Some(state)) = (&request.restore, &exports.state) {
            let from = (
                restore.snapshot.bytes.clone(),
                restore.snapshot.version.clone(),
            );
            guest_cpu::enter(&mut store).await;
            let restored = state.restore.call_async(&mut store, from).await;
            guest_cpu::leave(&mut store);
            match restored {
                Ok((Ok(()),)) => {}
                Ok((Err(message),)) => return Err(StartError::RestoreFailed(message)),
                Err(e) => return Err(StartError::Failed(worker::classify(&e))),
            }
        }
        store.data_mut().deadline = None;
        Ok(worker::Instance {
            store,
            exports,
            max_reply_bytes: policy.max_reply_bytes,
        })
    }
}

#[cfg(test)]
mod tests;

/// Bare wasmtime, for benchmarks: the same engine and component as a
/// [`WasmBackend`], without the gateway around it.
#[doc(hidden)]
pub mod baseline {
    use super::*;
    use crate::config::OverflowPolicy;
    use crate::events::{EventLimits, EventLog, NoObserver};

    /// A component pre-instantiated on the runtime's engine.
    pub struct Bare {
        engine: Engine,
        pre: BackendPre<SessionData>,
    }

    /// One bare instance.
    pub struct BareInstance {
        store: Store<SessionData>,
        instance: bindings::Backend,
    }

    impl WasmRuntime {
        /// Compiles `bytes` for a bare baseline.
        pub fn bare(&self, bytes: &[u8]) -> wasmtime::Result<Bare> {
            let component = Component::new(&self.engine, bytes)?;
            let pre = BackendPre::new(self.linker.instantiate_pre(&component)?)?;
            Ok(Bare {
                engine: self.engine.clone(),
                pre,
            })
        }
    }

    impl Bare {
        /// `Store::new`, instantiate, and call `open`: nothing else.
        pub async fn open(&self) -> wasmtime::Result<BareInstance> {
            let data = SessionData {
                wasi: WasiCtx::builder().build(),
                table: Default::default(),
                limits: Limits::new(
                    64 << 20,
                    MAX_TABLE_ELEMENTS,
                    &crate::memory_budget::MemoryAccount::unlimited(),
                ),
                session_id: "bare".into(),
                events: EventSink::new(
                    Arc::new(EventLog::new(
                        EventLimits {
                            queue: 1024,
                            replay: 0,
                            overflow: OverflowPolicy::DropOldest,
                            max_subscribers: 1,
                        },
                        Arc::new(NoObserver),
                    )),
                    1 << 16,
                ),
                log_limiter: Arc::new(LogLimiter::new(1, 1)),
                ticks: Default::default(),
                max_pending_ticks: 1,
                deadline: None,
                cpu: guest_cpu::GuestCpu::new(crate::backend::cpu::CpuAccount::unlimited()),
            };
            let mut store = Store::new(&self.engine, data);
            store.set_epoch_deadline(u64::MAX / 2);
            let instance = self.pre.instantiate_async(&mut store).await?;
            let ctx = bindings::gatehouse::backend::types::SessionContext {
                session_id: "bare".into(),
                tenant: "bench".into(),
                backend: "bare".into(),
                config: Vec::new(),
            };
            instance
                .gatehouse_backend_session()
                .call_open(&mut store, &ctx)
                .await?
                .map_err(|e| wasmtime::format_err!("open: {e}"))?;
            Ok(BareInstance { store, instance })
        }
    }

    impl BareInstance {
        /// A direct typed call of `handle`.
        pub async fn call(&mut self, name: &str, payload: &[u8]) -> wasmtime::Result<Vec<u8>> {
            let cmd = bindings::gatehouse::backend::types::Command {
                name: name.to_string(),
                payload: payload.to_vec(),
            };
            self.instance
                .gatehouse_backend_session()
                .call_handle(&mut self.store, &cmd)
                .await?
                .map_err(|e| wasmtime::format_err!("handle: {e:?}"))
        }
    }
}

//! The Prometheus metrics model: every family and its labels. The HTTP
//! port that serves it as text on `/metrics` (with health and the web
//! console) is the server's wiring (`server/http.rs`).
//!
//! Every gauge returns to its baseline once sessions close; the integration
//! tests check that.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::events::EventObserver;
use crate::memory_budget::{BudgetGauges, MemoryKind};

/// Labels: backend.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabel {
    /// Backend name.
    pub backend: String,
}

/// Labels: backend and close reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Backend name.
    pub backend: String,
    /// A close reason or kill reason.
    pub reason: String,
}

/// Labels: backend and fault code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// Backend name.
    pub backend: String,
    /// A fault code.
    pub code: String,
}

/// Labels: backend and how a one-shot `Call` ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// Backend name.
    pub backend: String,
    /// `ok`, `command-error`, `refused`, `start-failed`, `faulted` or
    /// `cancelled`.
    pub outcome: String,
}

/// Labels: tenant.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabel {
    /// Tenant name.
    pub tenant: String,
}

/// Labels: tenant and backend.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantBackendLabel {
    /// Tenant name.
    pub tenant: String,
    /// Backend name.
    pub backend: String,
}

/// A counter of seconds.
pub type SecondsCounter = Counter<f64, std::sync::atomic::AtomicU64>;

/// Labels: what memory is reserved for.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// A [`MemoryKind`] label: `wasm-memory`, `wasm-table` or `events`.
    pub kind: String,
}

/// Labels: tenant and which of its rates.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RateLabel {
    /// Tenant name.
    pub tenant: String,
    /// `requests` or `opens`.
    pub kind: String,
}

/// Labels: an admin action, e.g. `key.create`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabel {
    /// The audit log's action name.
    pub action: String,
}

fn latency_histogram() -> Histogram {
    // 1us .. ~33s
    Histogram::new(exponential_buckets(1e-6, 2.0, 26))
}

/// All of the gateway's metrics.
pub struct Metrics {
    registry: Registry,
    /// Sessions holding a slot (starting, ready or closing).
    pub open_sessions: Family<BackendLabel, Gauge>,
    /// Sessions that reached READY.
    pub sessions_opened: Family<BackendLabel, Counter>,
    /// Sessions that ended, by reason.
    pub sessions_closed: Family<ReasonLabel, Counter>,
    /// Faults (failed opens and worker faults), by code.
    pub faults: Family<CodeLabel, Counter>,
    /// Workers stopped by force, by reason.
    pub workers_killed: Family<ReasonLabel, Counter>,
    /// Time for one Invoke or InvokeBatch through the worker.
    pub invoke_seconds: Family<BackendLabel, Histogram, fn() -> Histogram>,
    /// Time to start a worker (wasm: instantiate and `open`).
    pub instantiate_seconds: Family<BackendLabel, Histogram, fn() -> Histogram>,
    /// Events emitted by workers.
    pub events_emitted: Family<BackendLabel, Counter>,
    /// Events dropped by the overflow policy.
    pub events_dropped: Family<BackendLabel, Counter>,
    /// Sessions holding a slot of a tenant's quota.
    pub tenant_open_sessions: Family<TenantLabel, Gauge>,
    /// Connections and TLS.
    pub transport: TransportMetrics,
    /// Config reloads (SIGHUP or the Admin Reload RPC), by result.
    pub reloads: Family<ResultLabel, Counter>,
    /// Canary rollouts rolled back by their faults, by backend.
    pub rollbacks: Family<BackendLabel, Counter>,
    /// Session restarts, by backend and outcome (`restored`, `fresh`,
    /// `failed`).
    pub restarts: Family<ReasonLabel, Counter>,
    /// Time from a fault (or a RestartSession call) to READY again.
    pub restart_seconds: Family<BackendLabel, Histogram, fn() -> Histogram>,
    /// Sessions moved to another version (UpgradeSession or
    /// `upgrade_sessions`), by backend and outcome (`ok`, `failed`).
    pub upgrades: Family<ReasonLabel, Counter>,
    /// State snapshots refused (over `max_bytes` or the memory budget), by
    /// backend and reason.
    pub snapshots_refused: Family<ReasonLabel, Counter>,
    /// `server.memory_budget`, in bytes.
    pub memory_budget: Gauge,
    /// Bytes sessions reserve of the memory budget, in all.
    pub memory_reserved_total: Gauge,
    /// Bytes sessions reserve of the memory budget, by kind.
    pub memory_reserved: Family<KindLabel, Gauge>,
    /// Bytes a tenant's sessions reserve of the memory budget.
    pub tenant_memory_reserved: Family<TenantLabel, Gauge>,
    /// Reservations refused by the memory budget or a tenant's
    /// `max_memory`, by kind.
    pub memory_refusals: Family<KindLabel, Counter>,
    /// Calls refused for being over a tenant's rate, by tenant and rate.
    pub rate_limited: Family<RateLabel, Counter>,
    /// CPU time guests used (wasm time, or a native worker's process CPU).
    pub guest_cpu_seconds: Family<TenantBackendLabel, SecondsCounter>,
    /// Commands and calls refused over a tenant's `max_cpu_per_sec`.
    pub cpu_throttled: Family<TenantLabel, Counter>,
    /// Time commands, calls and ticks waited for a tenant's CPU budget.
    pub cpu_wait_seconds: Family<TenantLabel, SecondsCounter>,
    /// wasm guests that may run at once (`server.guest_threads`).
    pub guest_threads: Gauge,
    /// Calls refused `UNAUTHENTICATED` (and console sign-ins refused) after
    /// their credentials were checked.
    pub auth_failures: Counter,
    /// Calls refused `UNAUTHENTICATED` (and console sign-ins refused)
    /// unchecked: their peer address was over its failed-authentication
    /// budget.
    pub auth_throttled: Counter,
    /// Keys in the key store that authenticate calls (not revoked or
    /// expired).
    pub store_keys_active: Gauge,
    /// Admin actions recorded in the audit log, by action.
    pub admin_actions: Family<ActionLabel, Counter>,
    /// One-shot `Call`s, by backend and outcome.
    pub calls: Family<OutcomeLabel, Counter>,
    /// Time for one `Call`: start, command, close.
    pub call_seconds: Family<BackendLabel, Histogram, fn() -> Histogram>,
    /// Events a `Call`'s plugin emitted, dropped unread (a call has no
    /// stream).
    pub call_events_dropped: Family<BackendLabel, Counter>,
    /// `[cluster]`: the shared state, leases and drain.
    pub cluster: ClusterMetrics,
}

/// The metrics of `[cluster]` (docs/cluster.md).
#[derive(Debug, Clone, Default)]
pub struct ClusterMetrics {
    /// Redis operations of the shared slots that failed or timed out, by
    /// operation (`take`, `release`, `publish`, `renew`, `leave`, `view`).
    pub redis_errors: Family<OpLabel, Counter>,
    /// Node lease renewals, by result (`ok`, `error`).
    pub renewals: Family<ResultLabel, Counter>,
    /// Slots this node holds in Redis.
    pub slots_held: Gauge,
    /// `cluster.node_lease`, in seconds (0 without Redis).
    pub node_lease_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// `cluster.max_sessions` (0: none).
    pub max_sessions: Gauge,
    /// `cluster.drain_timeout`, in seconds.
    pub drain_timeout_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// 1 while the node drains (`gatehouse drain`), else 0.
    pub draining: Gauge,
}

impl ClusterMetrics {
    fn register(&self, registry: &mut Registry) {
        let cluster = registry.sub_registry_with_prefix("cluster");
        cluster.register(
            "redis_errors",
            "Redis operations of the shared slots that failed or timed out, by operation",
            self.redis_errors.clone(),
        );
        cluster.register(
            "renewals",
            "Node lease renewals in Redis, by result",
            self.renewals.clone(),
        );
        cluster.register(
            "slots_held",
            "Session slots this node holds in Redis",
            self.slots_held.clone(),
        );
        cluster.register(
            "node_lease_seconds",
            "cluster.node_lease: how long a node's slots outlive its last renewal",
            self.node_lease_seconds.clone(),
        );
        cluster.register(
            "max_sessions",
            "cluster.max_sessions: live sessions in the whole cluster (0: no cap)",
            self.max_sessions.clone(),
        );
        cluster.register(
            "drain_timeout_seconds",
            "cluster.drain_timeout: how long a drain lets sessions go on",
            self.drain_timeout_seconds.clone(),
        );
        cluster.register(
            "draining",
            "1 while this node drains",
            self.draining.clone(),
        );
    }
}

/// Labels: op (a Redis operation of the cluster's shared state).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    /// `take`, `release`, `publish`, `renew`, `leave` or `view`.
    pub op: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("gatehouse");
        let m = Self {
            open_sessions: Family::default(),
            sessions_opened: Family::default(),
            sessions_closed: Family::default(),
            faults: Family::default(),
            workers_killed: Family::default(),
            invoke_seconds: Family::new_with_constructor(latency_histogram),
            instantiate_seconds: Family::new_with_constructor(latency_histogram),
            events_emitted: Family::default(),
            events_dropped: Family::default(),
            tenant_open_sessions: Family::default(),
            transport: TransportMetrics::default(),
            reloads: Family::default(),
            rollbacks: Family::default(),
            restarts: Family::default(),
            restart_seconds: Family::new_with_constructor(latency_histogram),
            upgrades: Family::default(),
            snapshots_refused: Family::default(),
            memory_budget: Gauge::default(),
            memory_reserved_total: Gauge::default(),
            memory_reserved: Family::default(),
            tenant_memory_reserved: Family::default(),
            memory_refusals: Family::default(),
            rate_limited: Family::default(),
            guest_cpu_seconds: Family::default(),
            cpu_throttled: Family::default(),
            cpu_wait_seconds: Family::default(),
            guest_threads: Gauge::default(),
            auth_failures: Counter::default(),
            auth_throttled: Counter::default(),
            store_keys_active: Gauge::default(),
            admin_actions: Family::default(),
            calls: Family::default(),
            call_seconds: Family::new_with_constructor(latency_histogram),
            call_events_dropped: Family::default(),
            cluster: ClusterMetrics::default(),
            registry: Registry::default(),
        };
        registry.register(
            "open_sessions",
            "Sessions holding a slot",
            m.open_sessions.clone(),
        );
        registry.register(
            "sessions_opened",
            "Sessions that reached READY",
            m.sessions_opened.clone(),
        );
        registry.register(
            "sessions_closed",
            "Sessions that ended, by reason",
            m.sessions_closed.clone(),
        );
        registry.register(
            "faults",
            "Failed opens and worker faults, by code",
            m.faults.clone(),
        );
        registry.register(
            "workers_killed",
            "Workers stopped by force, by reason",
            m.workers_killed.clone(),
        );
        registry.register(
            "invoke_seconds",
            "Invoke latency through the worker",
            m.invoke_seconds.clone(),
        );
        registry.register(
            "instantiate_seconds",
            "Worker start latency",
            m.instantiate_seconds.clone(),
        );
        registry.register(
            "events_emitted",
            "Events emitted by workers",
            m.events_emitted.clone(),
        );
        registry.register(
            "events_dropped",
            "Events dropped by the overflow policy",
            m.events_dropped.clone(),
        );
        registry.register(
            "tenant_open_sessions",
            "Sessions holding a slot, by tenant",
            m.tenant_open_sessions.clone(),
        );
        m.transport.register(&mut registry);
        m.cluster.register(&mut registry);
        registry.register("calls", "One-shot Calls, by outcome", m.calls.clone());
        registry.register(
            "call_seconds",
            "Call latency: start, command and close",
            m.call_seconds.clone(),
        );
        registry.register(
            "call_events_dropped",
            "Events emitted during a Call, dropped unread",
            m.call_events_dropped.clone(),
        );
        registry.register(
            "reloads",
            "Config reloads (SIGHUP or the Admin Reload RPC), by result",
            m.reloads.clone(),
        );
        registry.register(
            "rollbacks",
            "Canary rollouts rolled back by their faults, by backend",
            m.rollbacks.clone(),
        );
        registry.register(
            "session_restarts",
            "Session restarts, by backend and outcome (reason: restored, fresh, failed)",
            m.restarts.clone(),
        );
        registry.register(
            "session_restart_seconds",
            "Time from a fault or a RestartSession call to READY again",
            m.restart_seconds.clone(),
        );
        registry.register(
            "session_upgrades",
            "Sessions moved to another backend version, by outcome (reason: ok, failed)",
            m.upgrades.clone(),
        );
        registry.register(
            "snapshots_refused",
            "State snapshots not kept, by reason (too-large, memory-budget)",
            m.snapshots_refused.clone(),
        );
        registry.register(
            "memory_budget_bytes",
            "The memory budget (server.memory_budget)",
            m.memory_budget.clone(),
        );
        registry.register(
            "memory_budget_reserved_bytes",
            "Bytes sessions reserve of the memory budget, in all",
            m.memory_reserved_total.clone(),
        );
        registry.register(
            "memory_reserved_bytes",
            "Bytes sessions reserve of the memory budget, by kind",
            m.memory_reserved.clone(),
        );
        registry.register(
            "tenant_memory_reserved_bytes",
            "Bytes sessions reserve of the memory budget, by tenant",
            m.tenant_memory_reserved.clone(),
        );
        registry.register(
            "memory_refusals",
            "Reservations refused by the memory budget or a tenant's max_memory, by kind",
            m.memory_refusals.clone(),
        );
        registry.register(
            "rate_limited",
            "Calls refused over a tenant's rate, by tenant and kind",
            m.rate_limited.clone(),
        );
        registry.register(
            "guest_cpu_seconds",
            "CPU time guests used, by tenant and backend (wasm time excluding host calls; a native worker's process CPU)",
            m.guest_cpu_seconds.clone(),
        );
        registry.register(
            "guest_threads",
            "wasm guests that may run at once: server.guest_threads, or the runtime's threads",
            m.guest_threads.clone(),
        );
        registry.register(
            "cpu_throttled",
            "Commands and calls refused RESOURCE_EXHAUSTED over a tenant's max_cpu_per_sec",
            m.cpu_throttled.clone(),
        );
        registry.register(
            "cpu_wait_seconds",
            "Time commands, calls and ticks waited for a tenant's CPU budget to refill",
            m.cpu_wait_seconds.clone(),
        );
        registry.register(
            "auth_failures",
            "Calls refused UNAUTHENTICATED, and console sign-ins refused, after checking their key",
            m.auth_failures.clone(),
        );
        registry.register(
            "auth_throttled",
            "Calls (and console sign-ins) refused unchecked: their address failed too often",
            m.auth_throttled.clone(),
        );
        registry.register(
            "store_keys_active",
            "Keys in the key store that authenticate calls (not revoked or expired)",
            m.store_keys_active.clone(),
        );
        registry.register(
            "admin_actions",
            "Admin actions recorded in the audit log, by action",
            m.admin_actions.clone(),
        );
        Self { registry, ..m }
    }

    /// The gauges and counters a [`MemoryBudget`] of `limit` bytes reports
    /// into; sets the budget gauge.
    pub fn budget_gauges(&self, limit: usize) -> BudgetGauges {
        self.memory_budget
            .set(i64::try_from(limit).unwrap_or(i64::MAX));
        let kind = |k: MemoryKind| KindLabel {
            kind: k.as_str().into(),
        };
        let tenants = self.tenant_memory_reserved.clone();
        BudgetGauges {
            total: self.memory_reserved_total.clone(),
            by_kind: MemoryKind::ALL.map(|k| self.memory_reserved.get_or_create(&kind(k)).clone()),
            refusals: MemoryKind::ALL.map(|k| self.memory_refusals.get_or_create(&kind(k)).clone()),
            tenant: Some(Box::new(move |name: &str| {
                tenants
                    .get_or_create(&TenantLabel {
                        tenant: name.to_string(),
                    })
                    .clone()
            })),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// An event observer counting into this backend's event metrics.
    pub fn event_observer(&self, backend: &str) -> Arc<dyn EventObserver> {
        let label = BackendLabel {
            backend: backend.to_string(),
        };
        Arc::new(BackendEvents {
            emitted: self.events_emitted.get_or_create(&label).clone(),
            dropped: self.events_dropped.get_or_create(&label).clone(),
        })
    }
}

struct BackendEvents {
    emitted: Counter,
    dropped: Counter,
}

impl EventObserver for BackendEvents {
    fn emitted(&self, n: u64) {
        self.emitted.inc_by(n);
    }

    fn dropped(&self, n: u64) {
        self.dropped.inc_by(n);
    }
}

/// Labels: result (`ok` or `error`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `ok` or `error`.
    pub result: String,
}

/// Labels: port (`grpc` or `http`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PortLabel {
    /// Which listener.
    pub port: String,
}

/// Labels: port and why.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PortReasonLabel {
    /// Which listener.
    pub port: String,
    /// Why.
    pub reason: String,
}

/// Labels: port and result (`ok` or `error`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PortResultLabel {
    /// Which listener.
    pub port: String,
    /// `ok` or `error`.
    pub result: String,
}

/// Connections and TLS, per listening port.
#[derive(Clone, Default)]
pub struct TransportMetrics {
    /// Connections open now.
    pub connections_open: Family<PortLabel, Gauge>,
    /// Connections closed at accept because `server.max_connections` were open.
    pub connections_refused: Family<PortLabel, Counter>,
    /// Connections closed at accept because their address held
    /// `server.max_connections_per_address`.
    pub connections_refused_per_address: Family<PortLabel, Counter>,
    /// Connections admitted on the health reserve (`server.health_connections`)
    /// while the port was full.
    pub health_connections_admitted: Family<PortLabel, Counter>,
    /// Connections closed by their deadlines, by port and reason
    /// (`first-request`, `idle`).
    pub connections_timed_out: Family<PortReasonLabel, Counter>,
    /// HTTP-port requests refused for a `Host` it does not answer to.
    pub http_host_refused: Counter,
    /// TLS handshakes that failed or timed out.
    pub tls_handshake_failures: Family<PortLabel, Counter>,
    /// Certificate reloads (SIGHUP or a changed file), by result.
    pub tls_reloads: Family<PortResultLabel, Counter>,
    /// When the served certificate expires, as a Unix timestamp.
    pub tls_certificate_expiry: Family<PortLabel, Gauge>,
}

impl TransportMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "connections_open",
            "Connections open, by port",
            self.connections_open.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections closed at accept beyond server.max_connections, by port",
            self.connections_refused.clone(),
        );
        registry.register(
            "connections_refused_per_address",
            "Connections closed at accept beyond server.max_connections_per_address, by port",
            self.connections_refused_per_address.clone(),
        );
        registry.register(
            "health_connections_admitted",
            "Connections admitted on the health reserve of a full port, by port",
            self.health_connections_admitted.clone(),
        );
        registry.register(
            "connections_timed_out",
            "Connections closed without a request before server.first_request_timeout or idle past server.idle_timeout, by port and reason",
            self.connections_timed_out.clone(),
        );
        registry.register(
            "http_host_refused",
            "HTTP-port requests refused 421 for a Host that is not an address, localhost or in server.http_hosts",
            self.http_host_refused.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out, by port",
            self.tls_handshake_failures.clone(),
        );
        registry.register(
            "tls_reloads",
            "Certificate reloads, by port and result",
            self.tls_reloads.clone(),
        );
        registry.register(
            "tls_certificate_expiry_timestamp_seconds",
            "When the served certificate expires (Unix time), by port",
            self.tls_certificate_expiry.clone(),
        );
    }
}

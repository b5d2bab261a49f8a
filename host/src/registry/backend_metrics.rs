//! One backend's metric handles, resolved once at registry creation.

use std::sync::{Arc, OnceLock};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use crate::backend::FaultCode;
use crate::events::EventObserver;
use crate::metrics::{BackendLabel, CodeLabel, Metrics, OutcomeLabel, ReasonLabel};
use crate::registry::CloseReason;

/// One backend's metric handles, resolved once instead of by label on every
/// call. Each session holds its backend's, so the hot paths (open, invoke)
/// never look a backend up by name.
pub(crate) struct BackendMetrics {
    pub(super) open_sessions: Gauge,
    pub(super) sessions_opened: Counter,
    pub(super) invoke_seconds: Histogram,
    pub(super) instantiate_seconds: Histogram,
    pub(super) events: Arc<dyn EventObserver>,
    pub(super) snapshot_refusals: crate::backend::RefusalCounters,
    pub(super) restart_seconds: Histogram,
    /// Faults, kills, closes, restarts, upgrades, rollbacks and calls.
    pub(super) lifecycle: Lifecycle,
}

/// A counter of one label set, resolved on first use and cached: a series
/// appears only once something happened, as with a label built at the
/// call site.
struct Lazy<L> {
    family: Family<L, Counter>,
    label: L,
    counter: OnceLock<Counter>,
}

impl<L> Lazy<L>
where
    L: Clone
        + std::hash::Hash
        + Eq
        + prometheus_client::encoding::EncodeLabelSet
        + Send
        + Sync
        + std::fmt::Debug
        + 'static,
{
    fn new(family: &Family<L, Counter>, label: L) -> Self {
        Self {
            family: family.clone(),
            label,
            counter: OnceLock::new(),
        }
    }

    fn get(&self) -> &Counter {
        self.counter
            .get_or_init(|| self.family.get_or_create(&self.label).clone())
    }

    fn inc(&self) {
        self.get().inc();
    }
}

/// Why a worker was stopped by force: `gatehouse_workers_killed_total`'s
/// `reason`.
#[derive(Debug, Clone, Copy)]
pub(super) enum Kill {
    /// Its close took longer than the grace.
    CloseTimeout,
    /// It faulted on a deadline.
    Deadline,
    /// It faulted otherwise.
    Fault,
    /// A shutdown's closes ran out of time.
    Shutdown,
}

/// A replacement's outcome: `gatehouse_restarts_total` and
/// `gatehouse_upgrades_total`'s `reason`.
#[derive(Debug, Clone, Copy)]
pub(super) enum Replaced {
    /// A restart or an upgrade whose next worker did not start.
    RestartFailed,
    /// A restart from a snapshot.
    Restored,
    /// A restart without one.
    Fresh,
    /// An upgrade that did not happen.
    UpgradeFailed,
    /// An upgrade done.
    Upgraded,
}

/// One backend's lifecycle counters. The only place their labels are
/// written: call sites name what happened, not a label.
pub(super) struct Lifecycle {
    backend: String,
    faults: Family<CodeLabel, Counter>,
    closes: Family<ReasonLabel, Counter>,
    calls: Family<OutcomeLabel, Counter>,
    killed: [Lazy<ReasonLabel>; 4],
    replaced: [Lazy<ReasonLabel>; 5],
    rollbacks: Lazy<BackendLabel>,
    call_seconds: Family<BackendLabel, Histogram, fn() -> Histogram>,
    call_events_dropped: Lazy<BackendLabel>,
}

impl Lifecycle {
    fn new(metrics: &Metrics, backend: &str) -> Self {
        let reason = |r: &str| ReasonLabel {
            backend: backend.to_string(),
            reason: r.into(),
        };
        let label = BackendLabel {
            backend: backend.to_string(),
        };
        let killed = |r| Lazy::new(&metrics.workers_killed, reason(r));
        let restarts = |r| Lazy::new(&metrics.restarts, reason(r));
        let upgrades = |r| Lazy::new(&metrics.upgrades, reason(r));
        Self {
            backend: backend.to_string(),
            faults: metrics.faults.clone(),
            closes: metrics.sessions_closed.clone(),
            calls: metrics.calls.clone(),
            killed: [
                killed("close-timeout"),
                killed("deadline"),
                killed("fault"),
                killed("shutdown"),
            ],
            replaced: [
                restarts("failed"),
                restarts("restored"),
                restarts("fresh"),
                upgrades("failed"),
                upgrades("ok"),
            ],
            rollbacks: Lazy::new(&metrics.rollbacks, label.clone()),
            call_seconds: metrics.call_seconds.clone(),
            call_events_dropped: Lazy::new(&metrics.call_events_dropped, label),
        }
    }

    /// A fault (a failed open, a worker's fault, a call's).
    pub(super) fn fault(&self, code: FaultCode) {
        self.faults
            .get_or_create(&CodeLabel {
                backend: self.backend.clone(),
                code: code.as_str().into(),
            })
            .inc();
    }

    /// A session ended for `reason`.
    pub(super) fn closed(&self, reason: CloseReason) {
        self.closes
            .get_or_create(&ReasonLabel {
                backend: self.backend.clone(),
                reason: reason.as_str().into(),
            })
            .inc();
    }

    /// A worker stopped by force.
    pub(super) fn killed(&self, why: Kill) {
        self.killed[why as usize].inc();
    }

    /// A restart's or an upgrade's outcome.
    pub(super) fn replaced(&self, outcome: Replaced) {
        self.replaced[outcome as usize].inc();
    }

    /// A canary rolled back by its faults.
    pub(super) fn rolled_back(&self) {
        self.rollbacks.inc();
    }

    /// A call ended with `outcome` after `seconds`.
    pub(super) fn call(&self, outcome: &'static str, seconds: f64) {
        self.calls
            .get_or_create(&OutcomeLabel {
                backend: self.backend.clone(),
                outcome: outcome.into(),
            })
            .inc();
        self.call_seconds
            .get_or_create(&BackendLabel {
                backend: self.backend.clone(),
            })
            .observe(seconds);
    }

    /// The counter of a call's events, dropped unread.
    pub(super) fn call_events_dropped(&self) -> Counter {
        self.call_events_dropped.get().clone()
    }
}

impl BackendMetrics {
    /// The handles labelled with `backend`.
    pub(super) fn new(metrics: &Metrics, backend: &str) -> Self {
        let label = BackendLabel {
            backend: backend.to_string(),
        };
        let refused = |reason: &str| {
            metrics
                .snapshots_refused
                .get_or_create(&crate::metrics::ReasonLabel {
                    backend: backend.to_string(),
                    reason: reason.into(),
                })
                .clone()
        };
        Self {
            open_sessions: metrics.open_sessions.get_or_create(&label).clone(),
            sessions_opened: metrics.sessions_opened.get_or_create(&label).clone(),
            invoke_seconds: metrics.invoke_seconds.get_or_create(&label).clone(),
            instantiate_seconds: metrics.instantiate_seconds.get_or_create(&label).clone(),
            events: metrics.event_observer(backend),
            snapshot_refusals: crate::backend::RefusalCounters {
                too_large: refused("too-large"),
                over_budget: refused("memory-budget"),
            },
            restart_seconds: metrics.restart_seconds.get_or_create(&label).clone(),
            lifecycle: Lifecycle::new(metrics, backend),
        }
    }
}

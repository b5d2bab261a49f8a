//! One backend's metric handles, resolved once at registry creation.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use crate::events::EventObserver;
use crate::metrics::{BackendLabel, Metrics};

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
        }
    }
}

//! `gatehouse drain` on the server: health NOT_SERVING first (a proxy's
//! checks then send opens to other nodes), then the registry's drain on a
//! task of its own (see `registry::drain`).

use std::sync::Arc;
use std::time::Duration;

use crate::api::{Drain, DrainOutcome};
use crate::metrics::ClusterMetrics;
use crate::registry::{KeepUntilEnd, Registry, SessionMover};
use crate::server::health::Health;

/// Drains one gateway.
pub struct Drainer {
    registry: Arc<Registry>,
    health: Health,
    /// `cluster.drain_timeout`.
    timeout: Duration,
    /// `server.shutdown_timeout`: how long the final closes may take.
    close_within: Duration,
    mover: Arc<dyn SessionMover>,
}

impl Drainer {
    /// A drainer of `registry` that moves no session elsewhere.
    pub fn new(
        registry: Arc<Registry>,
        health: Health,
        timeout: Duration,
        close_within: Duration,
        metrics: ClusterMetrics,
    ) -> Self {
        metrics.drain_timeout_seconds.set(timeout.as_secs_f64());
        Self {
            registry,
            health,
            timeout,
            close_within,
            mover: Arc::new(KeepUntilEnd),
        }
    }
}

#[async_trait::async_trait]
impl Drain for Drainer {
    async fn drain(&self, timeout: Option<Duration>) -> DrainOutcome {
        let timeout = timeout.unwrap_or(self.timeout);
        let sessions = self.registry.live_count();
        if !self.registry.begin_drain() {
            return DrainOutcome {
                sessions,
                timeout,
                already_draining: true,
            };
        }
        self.health.draining().await;
        // Not STOPPING=1: systemd would then wait for an exit no one asked
        // for and kill the process at TimeoutStopSec.
        crate::notify::status("draining: opens go elsewhere, sessions go on");
        tracing::info!(
            sessions,
            ?timeout,
            "draining: opens go elsewhere, sessions go on"
        );
        let registry = Arc::clone(&self.registry);
        let mover = Arc::clone(&self.mover);
        let close_within = self.close_within;
        tokio::spawn(async move {
            registry.drain(timeout, close_within, mover.as_ref()).await;
            tracing::info!("drained: no session is left; stop the gateway when convenient");
        });
        DrainOutcome {
            sessions,
            timeout,
            already_draining: false,
        }
    }
}

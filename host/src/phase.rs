//! Where the gateway is in its life: starting, serving, draining, shutting
//! down. Owned here, once, and only moved forward; the registry (which
//! starts it refuses), health (gRPC status and `/readyz`), the drain (a
//! second `gatehouse drain`) and the `draining` gauge read it.

use std::sync::Arc;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;

/// The gateway's phase, in the order it goes through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Loading backends: not ready.
    Starting,
    /// Ready for sessions.
    Serving,
    /// `gatehouse drain`: new opens go elsewhere, live sessions go on.
    Draining,
    /// Stopping: closing sessions, refusing new ones.
    ShuttingDown,
}

impl Phase {
    /// `starting`, `serving`, `draining` or `shutting-down`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Serving => "serving",
            Phase::Draining => "draining",
            Phase::ShuttingDown => "shutting-down",
        }
    }
}

/// The one record of the gateway's phase; clones share it.
#[derive(Clone)]
pub struct GatewayPhase {
    phase: Arc<watch::Sender<Phase>>,
    /// `gatehouse_cluster_draining`: 1 once a drain began.
    draining: Gauge,
}

impl Default for GatewayPhase {
    /// Starting, with a gauge nobody scrapes (tests).
    fn default() -> Self {
        Self::new(Gauge::default())
    }
}

impl std::fmt::Debug for GatewayPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("GatewayPhase").field(&self.get()).finish()
    }
}

impl GatewayPhase {
    /// A gateway starting, setting `draining` when a drain begins.
    pub fn new(draining: Gauge) -> Self {
        Self {
            phase: Arc::new(watch::channel(Phase::Starting).0),
            draining,
        }
    }

    /// The phase now.
    pub fn get(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Follows phase changes.
    pub fn subscribe(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    /// Moves to `to` if that is forward; `true` when this call moved it.
    fn advance(&self, to: Phase) -> bool {
        self.phase.send_if_modified(|p| {
            let forward = *p < to;
            if forward {
                *p = to;
            }
            forward
        })
    }

    /// Backends are loaded: serving, only from starting (a shutdown is
    /// never walked back).
    pub fn serve(&self) -> bool {
        self.advance(Phase::Serving)
    }

    /// `gatehouse drain` began; `false` when a drain or a shutdown had
    /// begun already.
    pub fn drain(&self) -> bool {
        let began = self.advance(Phase::Draining);
        if began {
            self.draining.set(1);
        }
        began
    }

    /// A shutdown began; `false` when one had begun already.
    pub fn shut_down(&self) -> bool {
        self.advance(Phase::ShuttingDown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_phase_only_moves_forward() {
        let gauge = Gauge::default();
        let phase = GatewayPhase::new(gauge.clone());
        assert_eq!(phase.get(), Phase::Starting);
        assert!(phase.serve());
        assert!(!phase.serve());
        assert!(phase.drain());
        assert_eq!(gauge.get(), 1);
        assert!(!phase.drain(), "a second drain is not a new one");
        assert!(phase.shut_down());
        assert!(!phase.serve() && !phase.drain() && !phase.shut_down());
        assert_eq!(phase.get(), Phase::ShuttingDown);
    }
}

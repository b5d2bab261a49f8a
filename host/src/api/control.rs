//! What the Admin service hands its calls to: a reload ([`Reload`]) and a
//! drain ([`Drain`]), done by the server's wiring once the backends are
//! loaded, and what each reports. Its own file so that the Admin service
//! and the gateway's live parts (`live.rs`) both name them and neither
//! names the other.

use std::time::Duration;

use crate::registry::Changes;

/// What a reload did.
#[derive(Debug, Clone, Default)]
pub struct ReloadOutcome {
    /// Backends added, updated, removed and unchanged.
    pub changes: Changes,
    /// Tenants in the new config.
    pub tenants: usize,
    /// `[server]` keys whose new value needs a restart; the running value
    /// stays.
    pub restart_required: Vec<String>,
}

/// Why a reload changed nothing.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReloadFailure {
    /// The gateway runs without `--config`: there is no file to read again.
    #[error("the gateway was started without --config: there is no file to reload")]
    NoConfigFile,
    /// The new config, a backend or a certificate is unusable; the old
    /// config keeps serving.
    #[error("{0}; nothing was changed")]
    Rejected(String),
    /// The backends are still loading.
    #[error("the gateway is still starting")]
    Starting,
}

/// Re-reads the config and applies it whole, or not at all.
#[async_trait::async_trait]
pub trait Reload: Send + Sync {
    /// One reload; concurrent calls run one after the other.
    async fn reload(&self) -> Result<ReloadOutcome, ReloadFailure>;

    /// Ends `backend`'s canary rollout by hand: `promote` makes the canary
    /// the current version, else it retires.
    async fn end_rollout(
        &self,
        backend: &str,
        promote: bool,
    ) -> Result<ReloadOutcome, ReloadFailure>;
}

/// What a drain request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainOutcome {
    /// Sessions live when it began.
    pub sessions: usize,
    /// How long they may go on.
    pub timeout: Duration,
    /// A drain had begun already; nothing changed.
    pub already_draining: bool,
}

/// Drains the gateway (`gatehouse drain`, docs/cluster.md).
#[async_trait::async_trait]
pub trait Drain: Send + Sync {
    /// Begins a drain of at most `timeout` (else the configured one) and
    /// returns once health says NOT_SERVING.
    async fn drain(&self, timeout: Option<Duration>) -> DrainOutcome;
}

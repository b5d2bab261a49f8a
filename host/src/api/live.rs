//! What exists only once the backends are loaded: the registry, the
//! Gateway service over it, and the reloader and drainer the Admin service
//! hands its calls to. They appear together, in one step ([`LiveCell::set`]),
//! when the server has built them; until then every reader (the gate in
//! front of the Gateway service, the Admin service, the console) sees the
//! same "still starting". The gateway's phase after that (serving,
//! draining, shutting down) is `crate::phase`'s.

use std::sync::{Arc, OnceLock};

use super::auth::Authenticated;
use super::control::{Drain, Reload};
use super::gateway::GatewayService;
use crate::proto::v1::gateway_server::GatewayServer;
use crate::registry::Registry;

/// The Gateway service as it is served: with its limits and authentication.
pub type GatewayApi = Authenticated<GatewayServer<GatewayService>>;

/// The parts of a gateway that exist once its backends are loaded.
pub struct Live {
    /// The session registry.
    pub registry: Arc<Registry>,
    /// The Gateway service over it.
    pub gateway: GatewayApi,
    /// Where Admin `Reload` goes (and SIGHUP).
    pub reloader: Arc<dyn Reload>,
    /// Where Admin `Drain` goes.
    pub drainer: Arc<dyn Drain>,
}

/// Where the live parts appear; clones share it. Empty while the backends
/// load.
#[derive(Clone, Default)]
pub struct LiveCell(Arc<OnceLock<Arc<Live>>>);

impl LiveCell {
    /// An empty cell: the gateway is starting.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts the live parts in, once; a second call changes nothing.
    pub fn set(&self, live: Live) {
        let _ = self.0.set(Arc::new(live));
    }

    /// The live parts, once the backends are loaded.
    pub fn get(&self) -> Option<&Arc<Live>> {
        self.0.get()
    }
}

//! The gRPC API: the `gatehouse.v1.Gateway` service, health and
//! reflection. Errors are mapped to gRPC statuses here and nowhere else.

mod auth;
mod convert;
mod gateway;
mod oversize;
mod status;
mod trace;

use std::sync::Arc;

pub use self::auth::Authenticator;
pub use self::gateway::GatewayService;
pub use self::oversize::OversizeLayer;
pub use self::status::to_status;
pub use self::trace::CORRELATION_HEADER;

use crate::proto::v1::gateway_server::GatewayServer;
use crate::registry::Registry;

/// Limits the API enforces on requests.
#[derive(Debug, Clone, Copy)]
pub struct ApiLimits {
    /// Largest message decoded or encoded.
    pub max_message_bytes: usize,
    /// Most commands in one `InvokeBatch`.
    pub max_batch_commands: usize,
    /// Event streams end with `UNAVAILABLE` this long after they start (the
    /// client resumes); `None` keeps them open.
    pub max_event_stream_age: Option<std::time::Duration>,
}

/// The Gateway service wrapped with its message size limits.
pub fn gateway_server(
    registry: Arc<Registry>,
    auth: Authenticator,
    limits: ApiLimits,
) -> GatewayServer<GatewayService> {
    GatewayServer::new(GatewayService::new(registry, auth, limits))
        .max_decoding_message_size(limits.max_message_bytes)
        .max_encoding_message_size(limits.max_message_bytes)
}

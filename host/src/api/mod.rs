//! The gRPC API: the `gatehouse.v1.Gateway` service, health and
//! reflection. Errors are mapped to gRPC statuses here and nowhere else.

mod auth;
mod convert;
mod gateway;
mod oversize;
mod status;

use std::sync::Arc;

pub use self::auth::{AuthError, Authenticated, Authenticator, required_scope};
pub use self::gateway::GatewayService;
pub use self::oversize::OversizeLayer;
pub use self::status::{auth_status, to_status};

use crate::proto::v1::gateway_server::GatewayServer;
use crate::registry::Registry;

/// Limits the API enforces on requests.
#[derive(Debug, Clone, Copy)]
pub struct ApiLimits {
    /// Largest message decoded or encoded.
    pub max_message_bytes: usize,
    /// Most commands in one `InvokeBatch`.
    pub max_batch_commands: usize,
}

/// The Gateway service wrapped with its message size limits and with
/// authentication.
pub fn gateway_server(
    registry: Arc<Registry>,
    auth: Authenticator,
    limits: ApiLimits,
) -> Authenticated<GatewayServer<GatewayService>> {
    let server = GatewayServer::new(GatewayService::new(registry, auth.clone(), limits))
        .max_decoding_message_size(limits.max_message_bytes)
        .max_encoding_message_size(limits.max_message_bytes);
    Authenticated::new(server, auth)
}

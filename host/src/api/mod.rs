//! The gRPC API: the `gatehouse.v1.Gateway`, `gatehouse.v1.Admin` and
//! `gatehouse.admin.v1.Admin` services, health and reflection. Errors are mapped to gRPC statuses here and nowhere else.

mod admin;
mod auth;
mod auth_error;
mod control;
mod convert;
#[cfg(test)]
mod fuzz;
mod gateway;
mod input;
mod keys_admin;
mod live;
mod revocation;
mod standard_status;
mod status;
mod throttle;
mod trace;

use std::sync::Arc;

pub use self::admin::{AdminService, admin_server};
pub use self::auth::{Authenticated, Authenticator, ConfigKey, required_scope};
pub use self::auth_error::AuthError;
pub use self::control::{Drain, DrainOutcome, Reload, ReloadFailure, ReloadOutcome};
pub use self::convert::{backend_version, session_info};
pub use self::gateway::GatewayService;
pub use self::keys_admin::{KeyAdmin, KeysAdminService, Via, actor, keys_admin_server};
pub use self::live::{GatewayApi, Live, LiveCell};
pub use self::revocation::Revocable;
pub use self::standard_status::StandardStatusLayer;
pub use self::status::{auth_status, to_status};
pub use self::throttle::{FailureThrottle, LOG_EVERY, MAX_PEERS};
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
    /// How much earlier than the client's gRPC deadline a command is
    /// stopped, so the gateway's DEADLINE_EXCEEDED (and the session's fault)
    /// beats tonic's own timer: one epoch tick plus scheduling slack.
    pub deadline_margin: std::time::Duration,
    /// Event streams end with `UNAVAILABLE` this long after they start (the
    /// client resumes); `None` keeps them open.
    pub max_event_stream_age: Option<std::time::Duration>,
}

/// The Gateway service wrapped with its message size limits and with
/// authentication, failures counted by `throttle`: the one every
/// authenticated service and the console's sign-in share, so an address
/// gets one budget of guesses.
pub fn gateway_server(
    registry: Arc<Registry>,
    auth: Authenticator,
    limits: ApiLimits,
    throttle: Option<Arc<FailureThrottle>>,
) -> Authenticated<GatewayServer<GatewayService>> {
    let server = GatewayServer::new(GatewayService::new(registry, auth.clone(), limits))
        .max_decoding_message_size(limits.max_message_bytes)
        .max_encoding_message_size(limits.max_message_bytes);
    Authenticated::new(server, auth).with_throttle(throttle)
}

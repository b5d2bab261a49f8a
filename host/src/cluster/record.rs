//! What other nodes see of a session: the facts fixed at open, kept in
//! Redis while the session holds its slot.

use serde::{Deserialize, Serialize};

/// A live session as the cluster view shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The session id (`<node>.<32 hex>`).
    pub id: String,
    /// The node that holds it.
    pub node: String,
    /// Its tenant.
    pub tenant: String,
    /// Backend name.
    pub backend: String,
    /// `wasm` or `native`.
    pub kind: String,
    /// Backend version and digest at open.
    pub version: String,
    /// The digest of that version.
    pub digest: String,
    /// The client's name and correlation id.
    pub client_session_name: String,
    /// The client's correlation id.
    pub client_correlation_id: String,
    /// When it opened, in milliseconds since the Unix epoch.
    pub opened_at_ms: u64,
    /// Its command timeout and lease, in milliseconds.
    pub command_timeout_ms: u64,
    /// Its lease, in milliseconds.
    pub lease_ms: u64,
}

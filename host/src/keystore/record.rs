//! What the key store holds: keys (never their secret, only its hash) and
//! audit events.

use crate::keys::{KeyHash, Scope, Scopes};

/// A key of the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    /// `key_` and 16 hex digits: how the API, logs and sessions name it.
    pub id: String,
    /// The tenant it authenticates as.
    pub tenant: String,
    /// Optional label.
    pub name: Option<String>,
    /// What it may do.
    pub scopes: Scopes,
    /// SHA-256 of the secret.
    pub hash: KeyHash,
    /// Unix seconds.
    pub created: i64,
    /// Unix seconds; `None` never expires.
    pub expires: Option<i64>,
    /// Unix seconds of the last authenticated call, as last written.
    pub last_used: Option<i64>,
    /// Unix seconds of the revocation.
    pub revoked: Option<i64>,
    /// Guest CPU, in nanoseconds, of the sessions and calls the key
    /// opened, as last written.
    pub cpu_ns: i64,
}

impl StoredKey {
    /// Whether the key authenticates calls at `now` (Unix seconds).
    pub fn is_active(&self, now: i64) -> bool {
        self.revoked.is_none() && !self.is_expired(now)
    }

    /// Whether the key's expiry has passed at `now`.
    pub fn is_expired(&self, now: i64) -> bool {
        self.expires.is_some_and(|e| now >= e)
    }
}

/// A key to create.
#[derive(Debug, Clone)]
pub struct NewKey {
    /// A tenant of the config.
    pub tenant: String,
    /// Optional label.
    pub name: Option<String>,
    /// At least one scope.
    pub scopes: Scopes,
    /// Seconds from now until it expires.
    pub expires_in: Option<u64>,
}

/// Who did an admin action, and through what.
#[derive(Debug, Clone)]
pub struct Actor {
    /// The credential's label: a key id, a config key's label or a
    /// certificate's.
    pub label: String,
    /// Its tenant.
    pub tenant: String,
    /// `api` or `console`.
    pub via: &'static str,
}

/// An admin action to record.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    /// What was done, e.g. `key.create`.
    pub action: &'static str,
    /// What it was done to.
    pub target: String,
    /// Free-form detail.
    pub detail: String,
}

/// A recorded admin action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// Increasing.
    pub id: i64,
    /// Unix seconds.
    pub at: i64,
    /// [`Actor::label`].
    pub actor: String,
    /// [`Actor::tenant`].
    pub tenant: String,
    /// [`AuditEntry::action`].
    pub action: String,
    /// [`AuditEntry::target`].
    pub target: String,
    /// [`AuditEntry::detail`].
    pub detail: String,
    /// [`Actor::via`].
    pub via: String,
}

/// Scopes as the store writes them: `sessions:open,sessions:use`.
pub fn scopes_text(scopes: Scopes) -> String {
    scopes.to_string()
}

/// Scopes as the store wrote them; an unknown name (from a newer gatehouse
/// sharing the file) grants nothing rather than failing the whole table.
pub fn parse_scopes(text: &str) -> Scopes {
    text.split(',')
        .filter_map(|s| Scope::parse(s.trim()).ok())
        .collect()
}

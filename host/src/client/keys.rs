//! The operator calls of `gatehouse.admin.v1.Admin`: keys in the gateway's
//! key store and the audit log. Every call needs an `admin` key.

use std::time::Duration;

use super::{Error, Gateway};
use crate::proto::admin::v1 as pb;

/// A key to create with [`Gateway::create_key`].
#[derive(Debug, Clone, Default)]
pub struct NewKey {
    /// A tenant of the gateway's config.
    pub tenant: String,
    /// Scope names, e.g. `sessions:open`.
    pub scopes: Vec<String>,
    /// Optional label.
    pub name: Option<String>,
    /// The key stops working this long after creation.
    pub expires_in: Option<Duration>,
}

impl Gateway {
    /// Creates a key in the gateway's key store. The response's `key` is
    /// the secret: it is returned only this once.
    pub async fn create_key(&self, key: NewKey) -> Result<pb::CreateKeyResponse, Error> {
        let request = pb::CreateKeyRequest {
            tenant: key.tenant,
            scopes: key.scopes,
            name: key.name.unwrap_or_default(),
            expires_in: key.expires_in.map(crate::api_duration),
        };
        let mut client = self.keys.clone();
        Ok(client.create_key(request).await?.into_inner())
    }

    /// Lists the gateway's keys (store and config), never their hashes.
    pub async fn keys(&self, request: pb::ListKeysRequest) -> Result<Vec<pb::KeyInfo>, Error> {
        let mut client = self.keys.clone();
        Ok(client.list_keys(request).await?.into_inner().keys)
    }

    /// Revokes a store key: refused from the next call on.
    pub async fn revoke_key(&self, id: impl Into<String>) -> Result<pb::RevokeKeyResponse, Error> {
        let mut client = self.keys.clone();
        Ok(client
            .revoke_key(pb::RevokeKeyRequest { id: id.into() })
            .await?
            .into_inner())
    }

    /// The audit log, newest first.
    pub async fn audit_events(
        &self,
        request: pb::ListAuditEventsRequest,
    ) -> Result<Vec<pb::AuditEvent>, Error> {
        let mut client = self.keys.clone();
        Ok(client.list_audit_events(request).await?.into_inner().events)
    }
}

//! Why a call was refused before it reached a service. Its own module so
//! that the authenticator, the failure throttle and the status mapping
//! each depend on it, and not on one another in a circle.

use std::time::Duration;

use crate::keys::Scope;

/// Why a call was refused before it reached the service.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `authorization` header.
    #[error("missing API key: send the metadata `authorization: Bearer <key>`")]
    Missing,
    /// An `authorization` header that is not `Bearer <key>`.
    #[error("malformed authorization metadata: expected `Bearer <key>`")]
    Malformed,
    /// A well-formed key that matches no configured key.
    #[error("unknown API key")]
    UnknownKey,
    /// A key of the key store that was revoked.
    #[error("this API key was revoked")]
    Revoked,
    /// A key of the key store past its expiry.
    #[error("this API key has expired")]
    Expired,
    /// A client certificate (signed by the client CA) that no
    /// `[[tenants.certs]]` entry names, and no key.
    #[error(
        "the client certificate {subject} names no tenant; send an API key or add it to [[tenants.certs]]"
    )]
    UnknownCertificate {
        /// The certificate's subject.
        subject: String,
    },
    /// A key and a certificate of different tenants.
    #[error("the API key and the client certificate belong to different tenants")]
    TenantMismatch,
    /// The peer address failed to authenticate too often; its key was not
    /// looked at.
    #[error(
        "too many failed authentications from this address: calls are refused unchecked for {}ms",
        .retry_after.as_millis().max(1)
    )]
    Throttled {
        /// When the address may try again.
        retry_after: Duration,
    },
    /// A valid key without the scope the RPC needs.
    #[error("{method} needs the {scope} scope, which this key does not have")]
    MissingScope {
        /// The scope the RPC needs.
        scope: Scope,
        /// The RPC, e.g. `OpenSession`.
        method: String,
        /// The key's tenant, for the log and the audit (not the message).
        tenant: String,
        /// The key's id or label.
        key: String,
    },
}

impl AuthError {
    /// Whether this is a credential that did not authenticate (rather than
    /// a valid one without the scope): what the throttle counts.
    pub fn is_unauthenticated(&self) -> bool {
        matches!(
            self,
            AuthError::Missing
                | AuthError::Malformed
                | AuthError::UnknownKey
                | AuthError::Revoked
                | AuthError::Expired
                | AuthError::UnknownCertificate { .. }
                | AuthError::TenantMismatch
        )
    }
}

//! Who is calling. In local development mode (no keys configured) every call
//! is the anonymous tenant `default`.

use tonic::Status;

use crate::registry::Caller;

/// Resolves the caller of each RPC from its metadata.
#[derive(Debug, Clone, Default)]
pub struct Authenticator {
    _private: (),
}

impl Authenticator {
    /// Local development mode: anonymous calls as tenant `default`.
    pub fn local() -> Self {
        Self::default()
    }

    /// The caller of a request.
    pub fn caller<T>(&self, _request: &tonic::Request<T>) -> Result<Caller, Status> {
        Ok(Caller::local())
    }
}

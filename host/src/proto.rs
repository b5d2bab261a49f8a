//! Generated protobuf and gRPC code for `gatehouse.v1`. The native worker
//! protocol's messages are in the `gatehouse-worker-protocol` crate.

#![allow(missing_docs, clippy::all)]

/// The metadata header that names the session a call is for, sent with
/// every call that names one. A proxy in front of several gateways routes
/// on it (docs/cluster.md); the gateway refuses a call whose header and
/// body disagree (`INVALID_ARGUMENT`). Here, with the messages, because
/// the client sends it and the server reads it.
pub const SESSION_HEADER: &str = "x-gatehouse-session";

/// The upper-snake name of a gRPC code, as the wire spells it:
/// `NOT_FOUND`, `DEADLINE_EXCEEDED`.
pub fn code_name(code: tonic::Code) -> String {
    format!("{code:?}")
        .chars()
        .enumerate()
        .flat_map(|(i, c)| {
            let sep = (i > 0 && c.is_uppercase()).then_some('_');
            sep.into_iter()
                .chain(std::iter::once(c.to_ascii_uppercase()))
        })
        .collect()
}

/// A request message that names a session.
pub trait SessionMessage {
    /// The session it names.
    fn session_id(&self) -> &str;
}

macro_rules! session_messages {
    ($($t:ident),*) => {$(
        impl SessionMessage for v1::$t {
            fn session_id(&self) -> &str {
                &self.session_id
            }
        }
    )*};
}
session_messages!(
    InvokeRequest,
    InvokeBatchRequest,
    StreamEventsRequest,
    RenewLeaseRequest,
    GetSessionRequest,
    CloseSessionRequest,
    RestartSessionRequest,
    UpgradeSessionRequest
);

/// `gatehouse.v1`: the client API.
pub mod v1 {
    tonic::include_proto!("gatehouse.v1");
}

/// `gatehouse.admin.v1`: the operator API (keys and the audit log).
pub mod admin {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("gatehouse.admin.v1");
    }
}

/// The encoded `FileDescriptorSet` of the API, for gRPC server reflection.
#[cfg(feature = "server")]
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/gatehouse_descriptor.bin"));

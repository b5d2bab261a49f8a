//! Generated protobuf and gRPC code for `gatehouse.v1`. The native worker
//! protocol's messages are in the `gatehouse-worker-protocol` crate.

#![allow(missing_docs, clippy::all)]

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

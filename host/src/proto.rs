//! Generated protobuf and gRPC code for `gatehouse.v1`, and the native
//! worker protocol messages of `gatehouse.worker.v1`.

#![allow(missing_docs, clippy::all)]

/// `gatehouse.v1`: the client API.
pub mod v1 {
    tonic::include_proto!("gatehouse.v1");
}

/// `gatehouse.worker.v1`: the native worker protocol (messages only).
#[cfg(feature = "server")]
pub mod worker {
    tonic::include_proto!("gatehouse.worker.v1");
}

/// The encoded `FileDescriptorSet` of the API, for gRPC server reflection.
#[cfg(feature = "server")]
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/gatehouse_descriptor.bin"));

//! Generated protobuf and gRPC code for `ferry.v1` (see `proto/ferry/v1/`).

#![allow(missing_docs, clippy::all)]

/// The `ferry.v1` package: tunnel and management services.
pub mod v1 {
    tonic::include_proto!("ferry.v1");
}

/// The compiled descriptors of every Ferry `.proto` file (with their
/// comments), for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ferry_descriptor.bin"));

//! Generated protobuf and gRPC code for `ferry.v1` (see `proto/ferry/v1/`).

#![allow(missing_docs, clippy::all)]

/// The `ferry.v1` package: tunnel and management services.
pub mod v1 {
    tonic::include_proto!("ferry.v1");
}

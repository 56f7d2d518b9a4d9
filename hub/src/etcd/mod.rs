//! etcd, for several hub replicas behind one address (`--store
//! etcd://...`, docs/ha.md).
//!
//! - [`client`]: the etcd v3 calls the hub makes, over its own generated
//!   gRPC client (`proto/etcd/`, compiled by protox: no `protoc`).
//! - [`keys`]: where everything lives under the key prefix.
//! - [`store`]: [`EtcdStore`], the [`Store`](crate::store::Store) on etcd.
//! - [`replicas`]: the replica registry (who is up, which agents each
//!   holds), under leases.

pub mod client;
pub mod keys;
pub mod replicas;
pub mod store;

/// Generated etcd v3 API (the subset in `hub/proto/etcd/`).
pub(crate) mod proto {
    #![allow(missing_docs, clippy::all)]

    /// `etcdserverpb`: KV, Watch, Lease.
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }

    /// `mvccpb`: keys and events.
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
}

pub use client::{DEFAULT_PREFIX, EtcdClient, EtcdConfig, EtcdError, EtcdTls};
pub use store::EtcdStore;

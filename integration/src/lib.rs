//! Ferry's integration crate: in-process and out-of-process test doubles
//! for end-to-end tests.
//!
//! - [`apiserver`]: an in-memory stand-in for kube-apiserver that the real
//!   `kubectl` and kube-rs can talk to, recording every request it receives.
//! - [`etcd`]: a throwaway etcd member for tests of the etcd store and of
//!   several hub replicas.

pub mod apiserver;
pub mod etcd;

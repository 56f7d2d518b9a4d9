//! A [`Store`] that times every operation for
//! `ferry_hub_store_operation_duration_seconds` and counts failures.

use std::sync::Arc;
use std::time::Instant;

use ferry::ids::{ClusterId, TokenId};

use crate::metrics::HubMetrics;
use crate::store::{
    ClusterList, ClusterRecord, ClusterUpdate, ClusterWatch, GrantRecord, Store, StoreError, Subject,
    TokenRecord,
};

/// Wraps a store; every call is timed under its operation name.
pub struct MeteredStore {
    inner: Arc<dyn Store>,
    metrics: Arc<HubMetrics>,
}

impl MeteredStore {
    /// Times `inner`'s operations into `metrics`.
    pub fn new(inner: Arc<dyn Store>, metrics: Arc<HubMetrics>) -> Self {
        MeteredStore { inner, metrics }
    }

    fn done<T>(
        &self,
        operation: &'static str,
        started: Instant,
        r: Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // A missing record or a compacted revision is an answer, not a
        // failure of the store.
        let failed = matches!(&r, Err(StoreError::Io(_) | StoreError::Corrupt(_)));
        self.metrics.store_op(operation, started.elapsed(), failed);
        r
    }
}

macro_rules! timed {
    ($self:ident, $op:literal, $call:expr) => {{
        let started = Instant::now();
        let r = $call.await;
        $self.done($op, started, r)
    }};
}

#[tonic::async_trait]
impl Store for MeteredStore {
    async fn cluster(&self, name: &str) -> Result<Option<ClusterRecord>, StoreError> {
        timed!(self, "cluster", self.inner.cluster(name))
    }
    async fn cluster_by_id(&self, id: ClusterId) -> Result<Option<ClusterRecord>, StoreError> {
        timed!(self, "cluster_by_id", self.inner.cluster_by_id(id))
    }
    async fn clusters(&self) -> Result<Vec<ClusterRecord>, StoreError> {
        timed!(self, "clusters", self.inner.clusters())
    }
    async fn list_clusters(&self) -> Result<ClusterList, StoreError> {
        timed!(self, "list_clusters", self.inner.list_clusters())
    }
    async fn watch_clusters(&self, revision: u64) -> Result<ClusterWatch, StoreError> {
        timed!(self, "watch_clusters", self.inner.watch_clusters(revision))
    }
    async fn create_cluster(&self, record: ClusterRecord) -> Result<ClusterRecord, StoreError> {
        timed!(self, "create_cluster", self.inner.create_cluster(record))
    }
    async fn update_cluster(
        &self,
        name: &str,
        update: ClusterUpdate<'_>,
    ) -> Result<ClusterRecord, StoreError> {
        timed!(self, "update_cluster", self.inner.update_cluster(name, update))
    }
    async fn delete_cluster(&self, name: &str) -> Result<Option<ClusterRecord>, StoreError> {
        timed!(self, "delete_cluster", self.inner.delete_cluster(name))
    }
    async fn token(&self, id: TokenId) -> Result<Option<TokenRecord>, StoreError> {
        timed!(self, "token", self.inner.token(id))
    }
    async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        timed!(self, "tokens", self.inner.tokens())
    }
    async fn create_token(&self, token: TokenRecord) -> Result<(), StoreError> {
        timed!(self, "create_token", self.inner.create_token(token))
    }
    async fn delete_token(&self, id: TokenId) -> Result<Option<TokenRecord>, StoreError> {
        timed!(self, "delete_token", self.inner.delete_token(id))
    }
    async fn grants(&self) -> Result<Vec<GrantRecord>, StoreError> {
        timed!(self, "grants", self.inner.grants())
    }
    async fn put_grant(&self, grant: GrantRecord) -> Result<(), StoreError> {
        timed!(self, "put_grant", self.inner.put_grant(grant))
    }
    async fn delete_grant(
        &self,
        cluster: &str,
        subject: &Subject,
    ) -> Result<Option<GrantRecord>, StoreError> {
        timed!(self, "delete_grant", self.inner.delete_grant(cluster, subject))
    }
    async fn ping(&self) -> Result<(), StoreError> {
        timed!(self, "ping", self.inner.ping())
    }
}

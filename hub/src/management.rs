//! `ferry.v1.Management`: register clusters, issue kubeconfigs, list and
//! wait for clusters. Callers authenticate with hub-issued client
//! certificates; admin calls need the [`ADMIN_GROUP`].

use std::sync::Arc;
use std::time::Duration;

use ferry::identity::{DENIED_GROUPS, Identity};
use ferry::ids::ClusterId;
use ferry::proto::v1::management_server::Management;
use ferry::proto::v1::{
    Cluster, IssueKubeconfigRequest, IssueKubeconfigResponse, ListClustersRequest, ListClustersResponse,
    RegisterClusterRequest, RegisterClusterResponse, WaitClusterRequest,
};
use ferry::secret::{TokenKind, generate_token};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::auth::{ADMIN_GROUP, Caller, is_admin};
use crate::kubeconfig::{KubeconfigSpec, render};
use crate::state::HubState;
use crate::store::{ClusterRecord, StoreError};

/// Longest wait a `WaitCluster` call may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(600);

/// The `Management` service.
#[derive(Clone)]
pub struct ManagementService {
    state: Arc<HubState>,
}

impl ManagementService {
    /// A service over the hub's shared state.
    pub fn new(state: Arc<HubState>) -> Self {
        ManagementService { state }
    }

    async fn cluster(&self, name: &str) -> Result<ClusterRecord, Status> {
        self.state
            .store
            .cluster_by_name(name)
            .await
            .map_err(store_error)?
            .ok_or_else(|| Status::not_found(format!("cluster {name:?} is not registered")))
    }

    fn to_proto(&self, r: &ClusterRecord) -> Cluster {
        let live = self.state.registry.get(&r.name);
        let agents = live.as_ref().map(|l| l.session_count()).unwrap_or(0) as u32;
        Cluster {
            name: r.name.clone(),
            id: r.id.clone(),
            connected: agents > 0,
            agents,
            kubernetes_version: live.map(|l| l.kubernetes_version()).unwrap_or_default(),
            created_at_unix: r.created_at,
        }
    }
}

fn store_error(e: StoreError) -> Status {
    warn!(error = %e, "store failure");
    Status::unavailable("hub store unavailable")
}

/// The caller of a management call. Credentials scoped to clusters (issued
/// kubeconfigs) are for the gateway only: with them a user could otherwise
/// mint a kubeconfig for another cluster.
fn caller<T>(req: &Request<T>) -> Result<Identity, Status> {
    let caller = req
        .extensions()
        .get::<Caller>()
        .and_then(|c| c.0.clone())
        .ok_or_else(|| Status::unauthenticated("a client certificate from the hub CA is required"))?;
    if caller.clusters.is_some() {
        return Err(Status::permission_denied(
            "this credential is scoped to a cluster and cannot use the management API",
        ));
    }
    Ok(caller.identity)
}

fn admin<T>(req: &Request<T>) -> Result<Identity, Status> {
    let id = caller(req)?;
    if is_admin(&id) {
        Ok(id)
    } else {
        Err(Status::permission_denied(format!("user {:?} is not in group {ADMIN_GROUP:?}", id.user)))
    }
}

/// Whether `name` can be a cluster name: a DNS label.
pub fn valid_cluster_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

#[tonic::async_trait]
impl Management for ManagementService {
    async fn register_cluster(
        &self,
        request: Request<RegisterClusterRequest>,
    ) -> Result<Response<RegisterClusterResponse>, Status> {
        let who = admin(&request)?;
        let req = request.into_inner();
        if !valid_cluster_name(&req.name) {
            return Err(Status::invalid_argument(format!(
                "cluster name {:?} must be a DNS label (lower-case letters, digits, '-', at most 63)",
                req.name
            )));
        }
        let record = self.state.store.ensure_cluster(&req.name).await.map_err(store_error)?;
        let id = ClusterId::parse(&record.id).ok_or_else(|| Status::internal("corrupt cluster id"))?;
        let token =
            generate_token(TokenKind::Bootstrap, id).map_err(|_| Status::internal("no randomness"))?;
        let ttl = match req.token_ttl_seconds {
            0 => self.state.limits.bootstrap_ttl,
            s => Duration::from_secs(u64::from(s)),
        };
        self.state.store.set_bootstrap(id, token.hash(), ttl).await.map_err(store_error)?;
        info!(cluster = %record.name, by = %who.user, "bootstrap token issued");
        Ok(Response::new(RegisterClusterResponse {
            cluster: Some(self.to_proto(&record)),
            bootstrap_token: token.expose().to_owned(),
            hub_ca_pem: self.state.ca.cert_pem().to_owned(),
            hub_url: self.state.advertise_url.clone(),
        }))
    }

    async fn issue_kubeconfig(
        &self,
        request: Request<IssueKubeconfigRequest>,
    ) -> Result<Response<IssueKubeconfigResponse>, Status> {
        let who = caller(&request)?;
        let req = request.into_inner();
        let target = if req.user.is_empty() && req.groups.is_empty() {
            who.clone()
        } else {
            let user = if req.user.is_empty() { who.user.clone() } else { req.user.clone() };
            Identity { user, groups: req.groups.clone(), ..Default::default() }
        };
        if target != who && !is_admin(&who) {
            return Err(Status::permission_denied(format!(
                "only members of {ADMIN_GROUP:?} may issue kubeconfigs for another identity"
            )));
        }
        if let Some(g) = target.groups.iter().find(|g| DENIED_GROUPS.contains(&g.as_str())) {
            return Err(Status::invalid_argument(format!("group {g:?} may not be used through Ferry")));
        }
        if target.user.is_empty() || target.user.starts_with("system:") {
            return Err(Status::invalid_argument(format!("user name {:?} is not allowed", target.user)));
        }
        let record = self.cluster(&req.cluster).await?;
        let issued = self.state.ca.client_cert(&target, std::slice::from_ref(&record.name)).map_err(|e| {
            warn!(error = %e, "client certificate issuance failed");
            Status::internal("could not issue a client certificate")
        })?;
        let server = format!("{}/clusters/{}", self.state.advertise_url.trim_end_matches('/'), record.name);
        let kubeconfig = render(&KubeconfigSpec {
            name: &record.name,
            server: &server,
            ca_pem: self.state.ca.cert_pem(),
            cert_pem: &issued.cert_pem,
            key_pem: issued.key_pem.expose(),
        });
        info!(cluster = %record.name, user = %target.user, by = %who.user, "kubeconfig issued");
        Ok(Response::new(IssueKubeconfigResponse { kubeconfig }))
    }

    async fn list_clusters(
        &self,
        request: Request<ListClustersRequest>,
    ) -> Result<Response<ListClustersResponse>, Status> {
        admin(&request)?;
        let records = self.state.store.list().await.map_err(store_error)?;
        Ok(Response::new(ListClustersResponse {
            clusters: records.iter().map(|r| self.to_proto(r)).collect(),
        }))
    }

    async fn wait_cluster(&self, request: Request<WaitClusterRequest>) -> Result<Response<Cluster>, Status> {
        admin(&request)?;
        let req = request.into_inner();
        let record = self.cluster(&req.name).await?;
        let id = ClusterId::parse(&record.id).ok_or_else(|| Status::internal("corrupt cluster id"))?;
        let live = self.state.registry.cluster(&record.name, id);
        let mut sessions = live.watch_sessions();
        let timeout = Duration::from_secs(u64::from(req.timeout_seconds)).min(MAX_WAIT);
        let want = req.connected;
        let reached = tokio::time::timeout(timeout, sessions.wait_for(|n| (*n > 0) == want)).await;
        match reached {
            Ok(Ok(_)) => Ok(Response::new(self.to_proto(&record))),
            Ok(Err(_)) => Err(Status::unavailable("hub shutting down")),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "cluster {:?} did not become {} within {}s",
                record.name,
                if want { "connected" } else { "disconnected" },
                timeout.as_secs()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::valid_cluster_name;

    #[test]
    fn cluster_names_are_dns_labels() {
        assert!(valid_cluster_name("edge-1"));
        assert!(!valid_cluster_name("Edge"));
        assert!(!valid_cluster_name("-a"));
        assert!(!valid_cluster_name("a/b"));
        assert!(!valid_cluster_name(""));
        assert!(!valid_cluster_name(&"a".repeat(64)));
    }
}

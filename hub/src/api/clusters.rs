//! `ferry.v1.Clusters`: register, approve, deny, delete, label, get, list,
//! watch and wait for clusters. Phases come from [`crate::status`], the
//! shape of each answer from [`super::view`], watches from [`super::watch`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine as _;
use ferry::ids::ClusterId;
use ferry::proto::v1::clusters_server::Clusters;
use ferry::proto::v1::{
    ApprovalMode as PbApprovalMode, Cluster, ClusterNameRequest, ClusterPhase, DeleteClusterResponse,
    GetClusterRequest, ListClustersRequest, ListClustersResponse, RegisterRequest, RegisterResponse,
    UpdateLabelsRequest, WaitClusterRequest, WatchClustersRequest,
};
use ferry::secret::{TokenKind, generate_token};
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};
use tracing::info;

use super::selector::Selector;
use super::view::live as view;
use super::watch::{self, EventStream, MAX_WATCHES};
use super::{Actor, admin, audit, caller, lifetime, store_error, unknown_cluster, valid_cluster_name};
use crate::access;
use crate::auth::Authenticated;
use crate::config::MAX_BOOTSTRAP_TTL;
use crate::manifest::{self, ManifestSpec};
use crate::state::HubState;
use crate::store::{
    Approval, ApprovalMode, BootstrapToken, ClusterRecord, ObservedStatus, StoreError, unix_now,
};

/// Longest wait a `Wait` call may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(600);
/// How often a wait looks again at a cluster whose agents another hub
/// replica holds: what that replica records reaches this one through the
/// store, which wakes no local waiter.
pub const WAIT_RECHECK: Duration = Duration::from_millis(500);
/// Labels one cluster may carry.
pub const MAX_LABELS: usize = 64;
/// Clusters per `List` page when the caller names no size.
pub const DEFAULT_PAGE_SIZE: usize = 500;
/// Most clusters per `List` page (about 2 KiB each, well below gRPC's 4 MiB
/// message limit).
pub const MAX_PAGE_SIZE: usize = 1000;
/// Prefix of page tokens (a version, should their format change).
const PAGE_TOKEN_PREFIX: &str = "v1:";

/// The `Clusters` service.
#[derive(Clone)]
pub struct ClustersService {
    state: Arc<HubState>,
    watches: Arc<Semaphore>,
}

impl ClustersService {
    /// A service over the hub's shared state.
    pub fn new(state: Arc<HubState>) -> Self {
        ClustersService { state, watches: Arc::new(Semaphore::new(MAX_WATCHES)) }
    }

    async fn record(&self, name: &str) -> Result<ClusterRecord, Status> {
        self.state.store.cluster(name).await.map_err(store_error)?.ok_or_else(|| unknown_cluster(name))
    }

    /// A cluster the caller may see: admins see all, users those they hold
    /// a grant for.
    async fn visible(&self, who: &Authenticated, name: &str) -> Result<ClusterRecord, Status> {
        let record = self.record(name).await?;
        if access::check(self.state.store.as_ref(), who, name).await.map_err(store_error)?.is_none() {
            return Err(Status::permission_denied(access::no_grant_message(who, name)));
        }
        Ok(record)
    }

    /// Sets the approval state of cluster `name`.
    async fn set_approval(&self, name: &str, approval: Approval) -> Result<ClusterRecord, Status> {
        let record: ClusterRecord = self
            .state
            .store
            .update_cluster(name, &mut |r| {
                let changed = r.approval != approval;
                r.approval = approval.clone();
                changed
            })
            .await
            .map_err(|e| match e {
                StoreError::NotFound => unknown_cluster(name),
                e => store_error(e),
            })?;
        if let Some(live) = self.state.registry.get(name) {
            live.changed();
        }
        self.state.registry.touch(name);
        Ok(record)
    }
}

/// The page token that continues after cluster `name`.
fn page_token(name: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{PAGE_TOKEN_PREFIX}{name}"))
}

/// The cluster name a page token continues after.
fn page_after(token: &str) -> Result<String, Status> {
    let bad =
        || Status::invalid_argument("invalid page_token: pass the next_page_token of the previous page");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    text.strip_prefix(PAGE_TOKEN_PREFIX).map(str::to_owned).ok_or_else(bad)
}

/// Checks labels as Kubernetes does for keys and values (simplified: an
/// optional DNS prefix, then a name of alphanumerics, `-`, `_`, `.`).
pub fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), String> {
    if labels.len() > MAX_LABELS {
        return Err(format!("at most {MAX_LABELS} labels"));
    }
    let name_ok = |s: &str, allow_empty: bool| {
        (allow_empty && s.is_empty())
            || (!s.is_empty()
                && s.len() <= 63
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                && s.as_bytes()[0].is_ascii_alphanumeric()
                && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric())
    };
    for (k, v) in labels {
        let (prefix, name) = k.rsplit_once('/').unwrap_or(("", k));
        let prefix_ok = prefix.is_empty()
            || (prefix.len() <= 253
                && prefix.split('.').all(|p| {
                    !p.is_empty()
                        && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                }));
        if !prefix_ok || !name_ok(name, false) {
            return Err(format!("invalid label key {k:?}"));
        }
        if !name_ok(v, true) {
            return Err(format!("invalid value {v:?} for label {k:?}"));
        }
    }
    Ok(())
}

#[tonic::async_trait]
impl Clusters for ClustersService {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let who = admin(&self.state, &request).await?;
        let actor = Actor::of(&request, &who);
        let req = request.into_inner();
        if !valid_cluster_name(&req.name) {
            return Err(Status::invalid_argument(format!(
                "cluster name {:?} must be a DNS label (lower-case letters, digits, '-', at most 63)",
                req.name
            )));
        }
        let labels: BTreeMap<String, String> = req.labels.into_iter().collect();
        validate_labels(&labels).map_err(Status::invalid_argument)?;
        let mode = match PbApprovalMode::try_from(req.approval).unwrap_or(PbApprovalMode::Unspecified) {
            PbApprovalMode::Manual => Some(ApprovalMode::Manual),
            PbApprovalMode::Auto => Some(ApprovalMode::Auto),
            PbApprovalMode::Unspecified => None,
        };
        let admin_group = req.admin_group.trim();
        if !admin_group.is_empty() && self.state.identity_policy.denies_group(admin_group) {
            return Err(Status::invalid_argument(format!(
                "group {admin_group:?} may not be used through Ferry"
            )));
        }
        let ttl = lifetime(
            req.token_ttl_seconds,
            self.state.limits.bootstrap_ttl,
            MAX_BOOTSTRAP_TTL,
            "bootstrap token",
        )?;
        let now = unix_now();
        let fresh = ClusterRecord {
            name: req.name.clone(),
            id: ClusterId::new().to_string(),
            created_at: now,
            labels: labels.clone(),
            approval_mode: mode.unwrap_or_default(),
            approval: match mode.unwrap_or_default() {
                ApprovalMode::Auto => Approval::Approved,
                ApprovalMode::Manual => Approval::Pending,
            },
            bootstrap_tokens: Vec::new(),
            agent_certs: Vec::new(),
            status: ObservedStatus::default(),
            revision: 0,
        };
        let record = match self.state.store.create_cluster(fresh).await {
            Ok(r) => r,
            Err(StoreError::AlreadyExists) => self.record(&req.name).await?,
            Err(e) => return Err(store_error(e)),
        };
        let id = record.cluster_id().ok_or_else(|| Status::internal("corrupt cluster id"))?;
        let token =
            generate_token(TokenKind::Bootstrap, &id).map_err(|_| Status::internal("no randomness"))?;
        let expires_at = now + ttl.as_secs();
        let entry =
            BootstrapToken { hash: token.hash(), issued_at: now, expires_at, used: None, superseded: false };
        let record = self
            .state
            .store
            .update_cluster(&req.name, &mut |r| {
                for t in r.bootstrap_tokens.iter_mut().filter(|t| t.used.is_none()) {
                    t.superseded = true;
                }
                r.bootstrap_tokens.push(entry.clone());
                if !labels.is_empty() {
                    r.labels = labels.clone();
                }
                if let Some(mode) = mode {
                    r.approval_mode = mode;
                }
                true
            })
            .await
            .map_err(store_error)?;
        let expires =
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(expires_at)).to_string();
        let child_group = (!admin_group.is_empty()).then(|| self.state.identity_policy.group(admin_group));
        let hub_urls = self.state.agent_hub_urls().await;
        let manifest = manifest::render(&ManifestSpec {
            cluster: &record.name,
            hub_url: &hub_urls,
            hub_ca_pem: self.state.ca.cert_pem(),
            token: token.expose(),
            token_expires: &expires,
            image: &self.state.agent_image,
            admin_group: child_group.as_deref(),
        });
        self.state.registry.touch(&record.name);
        info!(cluster = %record.name, by = %who.identity.user, expires = %expires, "bootstrap token issued");
        self.state.metrics.registered();
        audit(
            &self.state,
            &actor,
            "cluster.register",
            &record.name,
            format!("bootstrap token expiring {expires}"),
        );
        Ok(Response::new(RegisterResponse {
            cluster: Some(view(&self.state, &record)),
            bootstrap_token: token.expose().to_owned(),
            hub_ca_pem: self.state.ca.cert_pem().to_owned(),
            hub_url: self.state.advertise_url.clone(),
            manifest,
            token_expires_at_unix: expires_at,
        }))
    }

    async fn get(&self, request: Request<GetClusterRequest>) -> Result<Response<Cluster>, Status> {
        let who = caller(&self.state, &request).await?;
        let record = self.visible(&who, &request.get_ref().name).await?;
        Ok(Response::new(view(&self.state, &record)))
    }

    async fn list(
        &self,
        request: Request<ListClustersRequest>,
    ) -> Result<Response<ListClustersResponse>, Status> {
        let who = caller(&self.state, &request).await?;
        let req = request.into_inner();
        let selector = Selector::parse(&req.label_selector).map_err(Status::invalid_argument)?;
        let size = match req.page_size as usize {
            0 => DEFAULT_PAGE_SIZE,
            n if n > MAX_PAGE_SIZE => {
                return Err(Status::invalid_argument(format!(
                    "page_size {n} is above the limit of {MAX_PAGE_SIZE}"
                )));
            }
            n => n,
        };
        let after = if req.page_token.is_empty() { None } else { Some(page_after(&req.page_token)?) };
        let list = self.state.store.list_clusters().await.map_err(store_error)?;
        let grants =
            if who.is_admin() { Vec::new() } else { self.state.store.grants().await.map_err(store_error)? };
        let mut matching = list
            .clusters
            .iter()
            .filter(|r| after.as_ref().is_none_or(|a| r.name > *a))
            .filter(|r| selector.matches(&r.labels))
            .filter(|r| {
                who.is_admin() || grants.iter().any(|g| access::grant_applies(g, &r.name, &who.identity))
            });
        let page: Vec<&ClusterRecord> = matching.by_ref().take(size).collect();
        let next_page_token = match (matching.next(), page.last()) {
            (Some(_), Some(last)) => page_token(&last.name),
            _ => String::new(),
        };
        Ok(Response::new(ListClustersResponse {
            clusters: page.into_iter().map(|r| view(&self.state, r)).collect(),
            next_page_token,
            revision: list.revision,
        }))
    }

    type WatchStream = EventStream;

    async fn watch(&self, request: Request<WatchClustersRequest>) -> Result<Response<EventStream>, Status> {
        let who = caller(&self.state, &request).await?;
        let req = request.into_inner();
        if !req.name.is_empty() && self.state.store.cluster(&req.name).await.map_err(store_error)?.is_some() {
            self.visible(&who, &req.name).await?;
        }
        let permit = self.watches.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "the hub serves {MAX_WATCHES} watches already; try again later"
            ))
        })?;
        let stream = watch::start(self.state.clone(), who, req, permit).await?;
        Ok(Response::new(stream))
    }

    async fn update_labels(
        &self,
        request: Request<UpdateLabelsRequest>,
    ) -> Result<Response<Cluster>, Status> {
        let who = admin(&self.state, &request).await?;
        let actor = Actor::of(&request, &who);
        let req = request.into_inner();
        if let Some(k) = req.remove.iter().find(|k| req.set.contains_key(*k)) {
            return Err(Status::invalid_argument(format!("label {k:?} is both set and removed")));
        }
        let record = self.record(&req.name).await?;
        let mut labels = record.labels.clone();
        for k in &req.remove {
            labels.remove(k);
        }
        labels.extend(req.set.clone());
        validate_labels(&labels).map_err(Status::invalid_argument)?;
        let record = self
            .state
            .store
            .update_cluster(&req.name, &mut |r| {
                if r.id != record.id {
                    return false;
                }
                for k in &req.remove {
                    r.labels.remove(k);
                }
                r.labels.extend(req.set.clone());
                true
            })
            .await
            .map_err(|e| match e {
                StoreError::NotFound => unknown_cluster(&req.name),
                e => store_error(e),
            })?;
        info!(cluster = %record.name, by = %who.identity.user, labels = ?record.labels, "labels updated");
        let labels: Vec<String> = record.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        audit(&self.state, &actor, "cluster.labels", &record.name, labels.join(","));
        Ok(Response::new(view(&self.state, &record)))
    }

    async fn wait(&self, request: Request<WaitClusterRequest>) -> Result<Response<Cluster>, Status> {
        let who = caller(&self.state, &request).await?;
        let req = request.into_inner();
        let record = self.visible(&who, &req.name).await?;
        let id = record.cluster_id().ok_or_else(|| Status::internal("corrupt cluster id"))?;
        let live = self.state.registry.cluster(&record.name, id);
        let mut changes = live.watch_changes();
        let timeout = Duration::from_secs(u64::from(req.timeout_seconds)).min(MAX_WAIT);
        let phase = ClusterPhase::try_from(req.phase).unwrap_or(ClusterPhase::Unspecified);
        let want = |c: &Cluster| match phase {
            ClusterPhase::Unspecified => c.connected == req.connected,
            p => c.phase == p as i32,
        };
        let reached = tokio::time::timeout(timeout, async {
            loop {
                changes.borrow_and_update();
                // The approval lives in the store: read it afresh each time.
                let current = self.record(&record.name).await?;
                let view = view(&self.state, &current);
                if want(&view) {
                    return Ok(view);
                }
                let recheck = self.state.replicas.is_some();
                tokio::select! {
                    r = changes.changed() => if r.is_err() {
                        return Err(Status::unavailable("hub shutting down"));
                    },
                    () = tokio::time::sleep(WAIT_RECHECK), if recheck => {}
                }
            }
        })
        .await;
        match reached {
            Ok(result) => result.map(Response::new),
            Err(_) => {
                let what = match phase {
                    ClusterPhase::Unspecified if req.connected => "connected".to_owned(),
                    ClusterPhase::Unspecified => "disconnected".to_owned(),
                    p => p.as_str_name().trim_start_matches("CLUSTER_PHASE_").to_lowercase(),
                };
                Err(Status::deadline_exceeded(format!(
                    "cluster {:?} did not become {what} within {}s",
                    record.name,
                    timeout.as_secs()
                )))
            }
        }
    }

    async fn approve(&self, request: Request<ClusterNameRequest>) -> Result<Response<Cluster>, Status> {
        let who = admin(&self.state, &request).await?;
        let actor = Actor::of(&request, &who);
        let record = self.set_approval(&request.get_ref().name, Approval::Approved).await?;
        info!(cluster = %record.name, by = %who.identity.user, "cluster approved");
        self.state.metrics.decided(true);
        audit(&self.state, &actor, "cluster.approve", &record.name, String::new());
        Ok(Response::new(view(&self.state, &record)))
    }

    async fn deny(&self, request: Request<ClusterNameRequest>) -> Result<Response<Cluster>, Status> {
        let who = admin(&self.state, &request).await?;
        let actor = Actor::of(&request, &who);
        let denied = Approval::Denied { by: who.identity.user.clone(), at: unix_now() };
        let record = self.set_approval(&request.get_ref().name, denied).await?;
        if let Some(id) = record.cluster_id() {
            let ended = self.state.registry.disconnect(&record.name, id, false);
            info!(cluster = %record.name, by = %who.identity.user, disconnected = ended, "cluster denied");
        }
        self.state.metrics.decided(false);
        audit(&self.state, &actor, "cluster.deny", &record.name, String::new());
        Ok(Response::new(view(&self.state, &record)))
    }

    async fn delete(
        &self,
        request: Request<ClusterNameRequest>,
    ) -> Result<Response<DeleteClusterResponse>, Status> {
        let who = admin(&self.state, &request).await?;
        let actor = Actor::of(&request, &who);
        let name = request.into_inner().name;
        let record = self
            .state
            .store
            .delete_cluster(&name)
            .await
            .map_err(store_error)?
            .ok_or_else(|| unknown_cluster(&name))?;
        let before = view(&self.state, &record);
        let ended =
            record.cluster_id().map(|id| self.state.registry.disconnect(&name, id, true)).unwrap_or(0);
        info!(cluster = %name, by = %who.identity.user, disconnected = ended, "cluster deleted");
        audit(&self.state, &actor, "cluster.delete", &name, format!("{ended} agent session(s) disconnected"));
        Ok(Response::new(DeleteClusterResponse { cluster: Some(before), disconnected_agents: ended as u32 }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_checked_like_kubernetes_labels() {
        let ok = BTreeMap::from([
            ("env".to_owned(), "prod".to_owned()),
            ("topology.kubernetes.io/region".to_owned(), "eu-west-1".to_owned()),
            ("empty".to_owned(), String::new()),
        ]);
        assert_eq!(validate_labels(&ok), Ok(()));
        for (k, v) in [
            ("", "x"),
            ("-a", "x"),
            ("a", "-x"),
            ("Bad_Prefix/a", "x"),
            ("a", "has space"),
            ("a", &"v".repeat(64)),
        ] {
            let one = BTreeMap::from([(k.to_owned(), v.to_owned())]);
            assert!(validate_labels(&one).is_err(), "{k:?}={v:?}");
        }
    }
}

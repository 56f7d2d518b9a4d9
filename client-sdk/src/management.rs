//! [`Hub`]: the typed client of the hub's management API
//! (`ferry.v1.Clusters` and `ferry.v1.Access`), and the types its calls
//! take and return.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry::ids::ClusterId;
use ferry::proto::v1 as pb;
use ferry::secret::Secret;
use pb::access_client::AccessClient;
use pb::clusters_client::ClustersClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::diagnose;
use crate::duration::format_duration;
use crate::error::ManagementError;
use crate::kubeconfig::{HubConfig, HubCredential};

/// How long to wait for TCP + TLS to the hub before giving up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Deadline for calls that should answer at once (everything but waits).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Extra time a wait is given beyond its own timeout, so the hub's
/// `DEADLINE_EXCEEDED` (with its message) normally arrives before ours.
pub const WAIT_GRACE: Duration = Duration::from_secs(10);

/// A cluster's phase as the hub derives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClusterPhase {
    /// Awaits an admin's approval: no traffic.
    Pending,
    /// An agent is connected and its apiserver answers.
    Ready,
    /// An agent is connected but cannot reach its apiserver.
    NotReady,
    /// No agent is connected.
    Offline,
    /// Denied by an admin: agents refused, no traffic.
    Denied,
    /// A phase this client does not know (a newer hub).
    Unknown,
}

impl ClusterPhase {
    /// `Ready`, `NotReady`, ... as shown in tables.
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterPhase::Pending => "Pending",
            ClusterPhase::Ready => "Ready",
            ClusterPhase::NotReady => "NotReady",
            ClusterPhase::Offline => "Offline",
            ClusterPhase::Denied => "Denied",
            ClusterPhase::Unknown => "Unknown",
        }
    }

    pub(crate) fn from_proto(p: i32) -> Self {
        match pb::ClusterPhase::try_from(p) {
            Ok(pb::ClusterPhase::Pending) => ClusterPhase::Pending,
            Ok(pb::ClusterPhase::Ready) => ClusterPhase::Ready,
            Ok(pb::ClusterPhase::NotReady) => ClusterPhase::NotReady,
            Ok(pb::ClusterPhase::Offline) => ClusterPhase::Offline,
            Ok(pb::ClusterPhase::Denied) => ClusterPhase::Denied,
            _ => ClusterPhase::Unknown,
        }
    }
}

impl fmt::Display for ClusterPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a newly enrolled cluster becomes usable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ApprovalMode {
    /// As soon as an agent enrolls.
    #[default]
    Auto,
    /// After `ferryctl approve`.
    Manual,
}

impl ApprovalMode {
    /// `auto` or `manual`.
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalMode::Auto => "auto",
            ApprovalMode::Manual => "manual",
        }
    }

    fn to_proto(self) -> i32 {
        match self {
            ApprovalMode::Auto => pb::ApprovalMode::Auto as i32,
            ApprovalMode::Manual => pb::ApprovalMode::Manual as i32,
        }
    }
}

/// Whether one of the apiserver's health endpoints passes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum HealthState {
    /// Not checked (or no agent has reported).
    #[default]
    Unknown,
    /// Passing.
    Ok,
    /// Failing.
    Failed,
}

impl HealthState {
    /// `Unknown`, `Ok` or `Failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Unknown => "Unknown",
            HealthState::Ok => "Ok",
            HealthState::Failed => "Failed",
        }
    }
}

/// An apiserver health endpoint (`/readyz`, `/livez`) as an agent found it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HealthCheck {
    /// Passing or not.
    pub state: HealthState,
    /// For a failing one: what failed (e.g. `[-]etcd failed: reason withheld`).
    pub detail: String,
}

impl From<Option<pb::HealthCheck>> for HealthCheck {
    fn from(c: Option<pb::HealthCheck>) -> Self {
        let c = c.unwrap_or_default();
        let state = match pb::HealthState::try_from(c.state) {
            Ok(pb::HealthState::Ok) => HealthState::Ok,
            Ok(pb::HealthState::Failed) => HealthState::Failed,
            _ => HealthState::Unknown,
        };
        HealthCheck { state, detail: c.detail }
    }
}

/// Nodes of a cluster by their `Ready` condition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeCounts {
    /// Ready nodes.
    pub ready: u32,
    /// Nodes not Ready.
    pub not_ready: u32,
}

/// CPU and memory summed over a cluster's nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    /// CPU in millicores.
    pub cpu_millis: u64,
    /// Memory in bytes.
    pub memory_bytes: u64,
}

impl From<pb::Resources> for Resources {
    fn from(r: pb::Resources) -> Self {
        Resources { cpu_millis: r.cpu_millis, memory_bytes: r.memory_bytes }
    }
}

/// One connected agent replica of a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentReplica {
    /// The agent instance's id (in a pod, its uid).
    pub agent_id: String,
    /// Its software version.
    pub agent_version: String,
    /// Its session id.
    pub session_id: String,
    /// When its session started (hub clock).
    pub connected_at: Option<SystemTime>,
    /// When the hub last heard from it (hub clock).
    pub last_heartbeat: Option<SystemTime>,
    /// Round trip of its last answered heartbeat, as it measured it.
    pub heartbeat_rtt: Option<Duration>,
    /// When it took its last status report (agent clock).
    pub reported_at: Option<SystemTime>,
    /// Whether it reached its apiserver then.
    pub apiserver_reachable: bool,
    /// Why not, when it did not.
    pub apiserver_error: String,
}

/// One phase change of a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PhaseTransition {
    /// The phase entered.
    pub phase: ClusterPhase,
    /// Why.
    pub reason: String,
    /// When.
    pub at: Option<SystemTime>,
}

/// A registered cluster as the hub reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Cluster {
    /// The name it was registered under.
    pub name: String,
    /// The hub's id for it (credentials are bound to this).
    pub id: ClusterId,
    /// Its phase.
    pub phase: ClusterPhase,
    /// Why it is in that phase (empty when Ready).
    pub reason: String,
    /// Whether an agent is connected.
    pub connected: bool,
    /// Connected agent sessions (replicas).
    pub agents: u32,
    /// The child cluster's Kubernetes version (e.g. `v1.31.2`), `None` until
    /// an agent has reported it.
    pub kubernetes_version: Option<String>,
    /// The apiserver's platform (e.g. `linux/amd64`), if known.
    pub platform: Option<String>,
    /// When it was registered, `None` if the hub did not say.
    pub created_at: Option<SystemTime>,
    /// Its approval mode.
    pub approval: ApprovalMode,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Last time an agent was heard from, `None` if never.
    pub last_seen: Option<SystemTime>,
    /// Node counts, `None` when unknown.
    pub nodes: Option<NodeCounts>,
    /// Summed node capacity, `None` when unknown.
    pub capacity: Option<Resources>,
    /// Summed node allocatable resources, `None` when unknown.
    pub allocatable: Option<Resources>,
    /// The apiserver's `/readyz`.
    pub readyz: HealthCheck,
    /// The apiserver's `/livez`.
    pub livez: HealthCheck,
    /// Permissions the agents lack in the cluster.
    pub missing_permissions: Vec<String>,
    /// The connected agents (from `get` and `list`; empty in watch events).
    pub replicas: Vec<AgentReplica>,
    /// The last phase changes, oldest first.
    pub history: Vec<PhaseTransition>,
    /// When the cluster entered its phase, if known.
    pub phase_since: Option<SystemTime>,
    /// The hub's revision of the cluster's last stored change.
    pub revision: u64,
}

fn unix(secs: u64) -> Option<SystemTime> {
    (secs > 0).then(|| UNIX_EPOCH + Duration::from_secs(secs))
}

fn unix_ms(ms: u64) -> Option<SystemTime> {
    (ms > 0).then(|| UNIX_EPOCH + Duration::from_millis(ms))
}

impl TryFrom<pb::Cluster> for Cluster {
    type Error = ManagementError;

    fn try_from(c: pb::Cluster) -> Result<Self, ManagementError> {
        let id = ClusterId::parse(&c.id).ok_or_else(|| {
            ManagementError::InvalidResponse(format!("cluster {:?} has malformed id {:?}", c.name, c.id))
        })?;
        Ok(Cluster {
            name: c.name,
            id,
            phase: ClusterPhase::from_proto(c.phase),
            reason: c.reason,
            connected: c.connected,
            agents: c.agents,
            kubernetes_version: Some(c.kubernetes_version).filter(|v| !v.is_empty()),
            platform: Some(c.platform).filter(|v| !v.is_empty()),
            created_at: unix(c.created_at_unix),
            approval: if c.approval == pb::ApprovalMode::Manual as i32 {
                ApprovalMode::Manual
            } else {
                ApprovalMode::Auto
            },
            labels: c.labels.into_iter().collect(),
            last_seen: unix(c.last_seen_unix),
            nodes: c.nodes.map(|n| NodeCounts { ready: n.ready, not_ready: n.not_ready }),
            capacity: c.capacity.map(Into::into),
            allocatable: c.allocatable.map(Into::into),
            readyz: c.readyz.into(),
            livez: c.livez.into(),
            missing_permissions: c.missing_permissions,
            replicas: c
                .replicas
                .into_iter()
                .map(|r| AgentReplica {
                    agent_id: r.agent_id,
                    agent_version: r.agent_version,
                    session_id: r.session_id,
                    connected_at: unix(r.connected_at_unix),
                    last_heartbeat: unix_ms(r.last_heartbeat_unix_ms),
                    heartbeat_rtt: (r.heartbeat_rtt_micros > 0)
                        .then(|| Duration::from_micros(r.heartbeat_rtt_micros)),
                    reported_at: unix_ms(r.reported_at_unix_ms),
                    apiserver_reachable: r.apiserver_reachable,
                    apiserver_error: r.apiserver_error,
                })
                .collect(),
            history: c
                .history
                .into_iter()
                .map(|h| PhaseTransition {
                    phase: ClusterPhase::from_proto(h.phase),
                    reason: h.reason,
                    at: unix(h.at_unix),
                })
                .collect(),
            phase_since: unix(c.phase_since_unix),
            revision: c.revision,
        })
    }
}

/// What [`Hub::list_clusters_with`] lists.
#[derive(Clone, Debug, Default)]
pub struct ListOptions {
    /// A Kubernetes label selector (`env=prod,tier in (a,b),!deprecated`);
    /// `None`: every cluster.
    pub label_selector: Option<String>,
    /// Clusters per page; `None`: the hub's default (500; at most 1000).
    pub page_size: Option<u32>,
    /// The previous page's [`ClusterPage::next_page_token`].
    pub page_token: Option<String>,
}

/// One page of clusters.
#[derive(Clone, Debug, Default)]
pub struct ClusterPage {
    /// Clusters, by name.
    pub clusters: Vec<Cluster>,
    /// Pass as [`ListOptions::page_token`] for the next page; `None` on the
    /// last.
    pub next_page_token: Option<String>,
    /// The hub's revision when the page was read.
    pub revision: u64,
}

/// Options of [`Hub::register_cluster_with`].
#[derive(Clone, Debug, Default)]
pub struct RegisterOptions {
    /// How long the bootstrap token stays usable; `None`: the hub default
    /// (24 h).
    pub token_ttl: Option<Duration>,
    /// Approval mode; `None` keeps an existing cluster's (new ones: auto).
    pub approval: Option<ApprovalMode>,
    /// Labels (replace the stored ones when not empty).
    pub labels: BTreeMap<String, String>,
    /// A hub group to bind to `cluster-admin` in the manifest.
    pub admin_group: Option<String>,
}

/// What registering a cluster yields: everything an agent needs to enroll.
#[derive(Clone, Debug)]
pub struct Registration {
    /// The cluster, created or existing.
    pub cluster: Cluster,
    /// Single-use bootstrap token for the agent.
    pub bootstrap_token: Secret,
    /// The hub CA (PEM) the agent must pin.
    pub hub_ca_pem: String,
    /// The URL agents dial.
    pub hub_url: String,
    /// `agent.yaml`, to apply in the child cluster (it carries the token).
    pub manifest: Secret,
    /// When the token expires.
    pub token_expires_at: Option<SystemTime>,
}

/// How an issued kubeconfig authenticates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CredentialKind {
    /// A client certificate (the default).
    #[default]
    Cert,
    /// A hub bearer token.
    Token,
}

/// What [`Hub::issue_kubeconfig_with`] issues.
#[derive(Clone, Debug, Default)]
pub struct KubeconfigRequest {
    /// The cluster.
    pub cluster: String,
    /// For whom (admins only); `None`: the caller.
    pub user: Option<String>,
    /// That user's groups.
    pub groups: Vec<String>,
    /// Certificate or token.
    pub kind: CredentialKind,
    /// Lifetime; `None`: the hub default (30 days).
    pub ttl: Option<Duration>,
}

/// An issued kubeconfig.
#[derive(Clone, Debug)]
pub struct IssuedKubeconfig {
    /// The YAML document (it carries a private key or token).
    pub yaml: Secret,
    /// When its credential expires.
    pub expires_at: Option<SystemTime>,
}

/// A bearer token as the hub lists it (never its secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenInfo {
    /// Its id (`ferryctl token revoke ID`).
    pub id: String,
    /// The user it authenticates.
    pub user: String,
    /// The user's groups.
    pub groups: Vec<String>,
    /// The one cluster it is bound to, if any.
    pub cluster: Option<String>,
    /// When it was created.
    pub created_at: Option<SystemTime>,
    /// When it expires.
    pub expires_at: Option<SystemTime>,
    /// Who created it.
    pub created_by: String,
}

impl From<pb::Token> for TokenInfo {
    fn from(t: pb::Token) -> Self {
        TokenInfo {
            id: t.id,
            user: t.user,
            groups: t.groups,
            cluster: Some(t.cluster).filter(|c| !c.is_empty()),
            created_at: unix(t.created_at_unix),
            expires_at: unix(t.expires_at_unix),
            created_by: t.created_by,
        }
    }
}

/// A new token and its secret (shown once).
#[derive(Clone, Debug)]
pub struct NewToken {
    /// The token as listed.
    pub info: TokenInfo,
    /// The token itself.
    pub secret: Secret,
}

/// Who a grant is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum GrantSubject {
    /// One user.
    User(String),
    /// A group.
    Group(String),
}

impl fmt::Display for GrantSubject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GrantSubject::User(u) => write!(f, "user:{u}"),
            GrantSubject::Group(g) => write!(f, "group:{g}"),
        }
    }
}

impl GrantSubject {
    fn split(&self) -> (String, String) {
        match self {
            GrantSubject::User(u) => (u.clone(), String::new()),
            GrantSubject::Group(g) => (String::new(), g.clone()),
        }
    }
}

/// A grant: who may reach which cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// A cluster name, or `*`.
    pub cluster: String,
    /// User or group.
    pub subject: GrantSubject,
    /// Whether `kubectl --as` is allowed.
    pub allow_impersonate: bool,
    /// When it was made.
    pub created_at: Option<SystemTime>,
    /// Who made it.
    pub created_by: String,
}

impl From<pb::Grant> for Grant {
    fn from(g: pb::Grant) -> Self {
        let subject =
            if g.user.is_empty() { GrantSubject::Group(g.group) } else { GrantSubject::User(g.user) };
        Grant {
            cluster: g.cluster,
            subject,
            allow_impersonate: g.allow_impersonate,
            created_at: unix(g.created_at_unix),
            created_by: g.created_by,
        }
    }
}

/// The caller as the hub sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WhoAmI {
    /// User name.
    pub user: String,
    /// Groups.
    pub groups: Vec<String>,
    /// Whether a hub administrator.
    pub admin: bool,
    /// `cert` or `token`.
    pub auth_method: String,
}

/// Adds `authorization: Bearer <token>` to every call when the caller
/// authenticates with a token (client certificates travel in TLS).
#[derive(Clone)]
pub struct BearerAuth(Option<MetadataValue<Ascii>>);

impl Interceptor for BearerAuth {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

pub(crate) type Transport = InterceptedService<Channel, BearerAuth>;

/// A connection to a Ferry hub, authenticated with the caller's client
/// certificate or bearer token: every management call, cluster watches
/// ([`Hub::watch_clusters`]) and `kube::Client`s that reach a child cluster
/// through the hub ([`Hub::kube_client`]). Cheap to clone; clones share the
/// connection.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use ferry_client_sdk::{Hub, HubConfig};
///
/// let hub = Hub::connect(&HubConfig::load("ferry-data/admin.kubeconfig")?).await?;
/// for cluster in hub.list_clusters().await? {
///     println!("{} {}", cluster.name, cluster.phase);
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Hub {
    clusters: ClustersClient<Transport>,
    access: AccessClient<Transport>,
    transport: Transport,
    hub: String,
    /// Kept to diagnose transport failures (see `diagnose`) and to build
    /// kube clients; `None` for clients built on someone else's channel.
    config: Option<Arc<HubConfig>>,
}

/// The former name of [`Hub`].
pub type ManagementClient = Hub;

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub").field("hub", &self.hub).finish_non_exhaustive()
    }
}

impl Hub {
    /// Connects to the hub described by `config` over TLS, trusting only the
    /// hub CA and presenting the caller's credential.
    ///
    /// The connection is opened eagerly so an unreachable hub is reported
    /// here. A hub that rejects the certificate may only say so on the first
    /// call (TLS 1.3 finishes the client's handshake first).
    pub async fn connect(config: &HubConfig) -> Result<Self, ManagementError> {
        let (endpoint, hub) = endpoint(config)?;
        tracing::debug!(%hub, "connecting to the hub");
        let auth = bearer(config)?;
        let config = Some(Arc::new(config.clone()));
        match endpoint.connect().await {
            Ok(channel) => Ok(Self::build(channel, auth, hub, config)),
            Err(e) => {
                let err = ManagementError::from_transport_error(&e, &hub);
                Err(explain_transport_failure(err, config.as_deref(), &hub).await)
            }
        }
    }

    /// Wraps an existing channel (e.g. an in-process one in tests); `hub`
    /// names the hub in error messages.
    pub fn from_channel(channel: Channel, hub: impl Into<String>) -> Self {
        Self::build(channel, BearerAuth(None), hub.into(), None)
    }

    fn build(channel: Channel, auth: BearerAuth, hub: String, config: Option<Arc<HubConfig>>) -> Self {
        Self {
            clusters: ClustersClient::with_interceptor(channel.clone(), auth.clone()),
            access: AccessClient::with_interceptor(channel.clone(), auth.clone()),
            transport: InterceptedService::new(channel, auth),
            hub,
            config,
        }
    }

    /// Creates cluster `name` if needed and returns a fresh bootstrap token
    /// and the agent manifest carrying it. `token_ttl` is how long the token
    /// stays usable (whole seconds, rounded up); `None` takes the hub
    /// default (24 h).
    pub async fn register_cluster(
        &self,
        name: &str,
        token_ttl: Option<Duration>,
    ) -> Result<Registration, ManagementError> {
        self.register_cluster_with(name, &RegisterOptions { token_ttl, ..Default::default() }).await
    }

    /// [`register_cluster`](Self::register_cluster) with every option.
    pub async fn register_cluster_with(
        &self,
        name: &str,
        options: &RegisterOptions,
    ) -> Result<Registration, ManagementError> {
        let token_ttl_seconds = optional_seconds(options.token_ttl, "token TTL")?;
        let request = pb::RegisterRequest {
            name: name.to_owned(),
            token_ttl_seconds,
            approval: options.approval.map_or(0, ApprovalMode::to_proto),
            labels: options.labels.clone().into_iter().collect(),
            admin_group: options.admin_group.clone().unwrap_or_default(),
        };
        let mut c = self.clusters.clone();
        let response = self.run(CALL_TIMEOUT, async move { c.register(request).await }).await?;
        let cluster = response
            .cluster
            .ok_or_else(|| ManagementError::InvalidResponse("registration carries no cluster".into()))?;
        if response.bootstrap_token.is_empty() {
            return Err(ManagementError::InvalidResponse("registration carries no bootstrap token".into()));
        }
        Ok(Registration {
            cluster: cluster.try_into()?,
            bootstrap_token: Secret::new(response.bootstrap_token),
            hub_ca_pem: response.hub_ca_pem,
            hub_url: response.hub_url,
            manifest: Secret::new(response.manifest),
            token_expires_at: unix(response.token_expires_at_unix),
        })
    }

    /// One cluster.
    pub async fn get_cluster(&self, name: &str) -> Result<Cluster, ManagementError> {
        let mut c = self.clusters.clone();
        let request = pb::GetClusterRequest { name: name.to_owned() };
        self.run(CALL_TIMEOUT, async move { c.get(request).await }).await?.try_into()
    }

    /// Clusters the caller may see, by name (every page).
    pub async fn list_clusters(&self) -> Result<Vec<Cluster>, ManagementError> {
        let mut out = Vec::new();
        let mut page_token = String::new();
        loop {
            let mut c = self.clusters.clone();
            let request = pb::ListClustersRequest { page_token, ..Default::default() };
            let response = self.run(CALL_TIMEOUT, async move { c.list(request).await }).await?;
            for cluster in response.clusters {
                out.push(Cluster::try_from(cluster)?);
            }
            if response.next_page_token.is_empty() {
                return Ok(out);
            }
            page_token = response.next_page_token;
        }
    }

    /// One page of clusters the caller may see, by name, filtered by
    /// `options`; follow [`ClusterPage::next_page_token`] for the next.
    pub async fn list_clusters_with(&self, options: &ListOptions) -> Result<ClusterPage, ManagementError> {
        let request = pb::ListClustersRequest {
            label_selector: options.label_selector.clone().unwrap_or_default(),
            page_size: options.page_size.unwrap_or(0),
            page_token: options.page_token.clone().unwrap_or_default(),
        };
        let mut c = self.clusters.clone();
        let response = self.run(CALL_TIMEOUT, async move { c.list(request).await }).await?;
        Ok(ClusterPage {
            clusters: response.clusters.into_iter().map(Cluster::try_from).collect::<Result<_, _>>()?,
            next_page_token: Some(response.next_page_token).filter(|t| !t.is_empty()),
            revision: response.revision,
        })
    }

    /// Every cluster matching `label_selector` (all pages), with the
    /// revision of the first page: watch from it to follow every change
    /// after the list.
    pub async fn list_all_clusters(
        &self,
        label_selector: Option<&str>,
    ) -> Result<ClusterPage, ManagementError> {
        let mut options =
            ListOptions { label_selector: label_selector.map(str::to_owned), ..Default::default() };
        let mut all = self.list_clusters_with(&options).await?;
        while let Some(token) = all.next_page_token.take() {
            options.page_token = Some(token);
            let page = self.list_clusters_with(&options).await?;
            all.clusters.extend(page.clusters);
            all.next_page_token = page.next_page_token;
        }
        Ok(all)
    }

    /// Sets and removes labels of cluster `name` (admins).
    pub async fn update_labels(
        &self,
        name: &str,
        set: &BTreeMap<String, String>,
        remove: &[String],
    ) -> Result<Cluster, ManagementError> {
        let request = pb::UpdateLabelsRequest {
            name: name.to_owned(),
            set: set.clone().into_iter().collect(),
            remove: remove.to_vec(),
        };
        let mut c = self.clusters.clone();
        self.run(CALL_TIMEOUT, async move { c.update_labels(request).await }).await?.try_into()
    }

    /// Lets traffic reach a cluster registered with manual approval (or a
    /// denied one).
    pub async fn approve_cluster(&self, name: &str) -> Result<Cluster, ManagementError> {
        let mut c = self.clusters.clone();
        let request = pb::ClusterNameRequest { name: name.to_owned() };
        self.run(CALL_TIMEOUT, async move { c.approve(request).await }).await?.try_into()
    }

    /// Denies a cluster: its agents are disconnected and refused.
    pub async fn deny_cluster(&self, name: &str) -> Result<Cluster, ManagementError> {
        let mut c = self.clusters.clone();
        let request = pb::ClusterNameRequest { name: name.to_owned() };
        self.run(CALL_TIMEOUT, async move { c.deny(request).await }).await?.try_into()
    }

    /// Deletes a cluster; returns it as it was and how many agent sessions
    /// were disconnected.
    pub async fn delete_cluster(&self, name: &str) -> Result<(Cluster, u32), ManagementError> {
        let mut c = self.clusters.clone();
        let request = pb::ClusterNameRequest { name: name.to_owned() };
        let response = self.run(CALL_TIMEOUT, async move { c.delete(request).await }).await?;
        let cluster = response
            .cluster
            .ok_or_else(|| ManagementError::InvalidResponse("the deletion names no cluster".into()))?;
        Ok((cluster.try_into()?, response.disconnected_agents))
    }

    /// Waits until cluster `name` is connected (`connected == true`) or
    /// disconnected, for at most `timeout` (whole seconds, rounded up). The
    /// hub does the waiting; on timeout this returns
    /// [`ManagementError::Timeout`].
    pub async fn wait_cluster(
        &self,
        name: &str,
        connected: bool,
        timeout: Duration,
    ) -> Result<Cluster, ManagementError> {
        let timeout_seconds = whole_seconds(timeout, "wait timeout")?;
        let request = pb::WaitClusterRequest { name: name.to_owned(), connected, timeout_seconds, phase: 0 };
        let deadline = Duration::from_secs(u64::from(timeout_seconds)) + WAIT_GRACE;
        let mut c = self.clusters.clone();
        match self.run(deadline, async move { c.wait(request).await }).await {
            Ok(cluster) => cluster.try_into(),
            Err(ManagementError::Timeout(_)) => Err(ManagementError::Timeout(format!(
                "timed out after {} waiting for cluster {name:?} to be {}",
                format_duration(timeout),
                if connected { "connected" } else { "disconnected" }
            ))),
            Err(e) => Err(e),
        }
    }

    /// Waits until cluster `name` is in `phase` (e.g. Ready after
    /// `kubectl apply -f agent.yaml`), for at most `timeout`.
    pub async fn wait_cluster_phase(
        &self,
        name: &str,
        phase: ClusterPhase,
        timeout: Duration,
    ) -> Result<Cluster, ManagementError> {
        let timeout_seconds = whole_seconds(timeout, "wait timeout")?;
        let wire = match phase {
            ClusterPhase::Pending => pb::ClusterPhase::Pending,
            ClusterPhase::Ready => pb::ClusterPhase::Ready,
            ClusterPhase::NotReady => pb::ClusterPhase::NotReady,
            ClusterPhase::Offline => pb::ClusterPhase::Offline,
            ClusterPhase::Denied => pb::ClusterPhase::Denied,
            ClusterPhase::Unknown => {
                return Err(ManagementError::InvalidArgument("cannot wait for an unknown phase".into()));
            }
        };
        let request = pb::WaitClusterRequest {
            name: name.to_owned(),
            connected: false,
            timeout_seconds,
            phase: wire as i32,
        };
        let deadline = Duration::from_secs(u64::from(timeout_seconds)) + WAIT_GRACE;
        let mut c = self.clusters.clone();
        match self.run(deadline, async move { c.wait(request).await }).await {
            Ok(cluster) => cluster.try_into(),
            Err(ManagementError::Timeout(_)) => Err(ManagementError::Timeout(format!(
                "timed out after {} waiting for cluster {name:?} to be {phase}",
                format_duration(timeout)
            ))),
            Err(e) => Err(e),
        }
    }

    /// The caller as the hub sees it.
    pub async fn who_am_i(&self) -> Result<WhoAmI, ManagementError> {
        let mut a = self.access.clone();
        let r = self.run(CALL_TIMEOUT, async move { a.who_am_i(pb::WhoAmIRequest {}).await }).await?;
        Ok(WhoAmI { user: r.user, groups: r.groups, admin: r.admin, auth_method: r.auth_method })
    }

    /// Issues a kubeconfig (YAML) with a client certificate for `cluster`:
    /// for the caller when `user` is `None`, otherwise (admins only) for
    /// `user` with `groups`. It carries a private key, hence [`Secret`];
    /// pass it to [`kube_client`](crate::kube_client) or write it to a file.
    pub async fn issue_kubeconfig(
        &self,
        cluster: &str,
        user: Option<&str>,
        groups: &[String],
    ) -> Result<Secret, ManagementError> {
        let request = KubeconfigRequest {
            cluster: cluster.to_owned(),
            user: user.map(str::to_owned),
            groups: groups.to_vec(),
            ..Default::default()
        };
        Ok(self.issue_kubeconfig_with(&request).await?.yaml)
    }

    /// Issues a kubeconfig with every option (certificate or token,
    /// lifetime).
    pub async fn issue_kubeconfig_with(
        &self,
        request: &KubeconfigRequest,
    ) -> Result<IssuedKubeconfig, ManagementError> {
        let request = pb::IssueKubeconfigRequest {
            cluster: request.cluster.clone(),
            user: request.user.clone().unwrap_or_default(),
            groups: request.groups.clone(),
            kind: match request.kind {
                CredentialKind::Cert => pb::CredentialKind::Cert,
                CredentialKind::Token => pb::CredentialKind::Token,
            } as i32,
            ttl_seconds: optional_seconds(request.ttl, "lifetime")?,
        };
        let mut a = self.access.clone();
        let response = self.run(CALL_TIMEOUT, async move { a.issue_kubeconfig(request).await }).await?;
        if response.kubeconfig.is_empty() {
            return Err(ManagementError::InvalidResponse("the issued kubeconfig is empty".into()));
        }
        Ok(IssuedKubeconfig {
            yaml: Secret::new(response.kubeconfig),
            expires_at: unix(response.expires_at_unix),
        })
    }

    /// Creates a bearer token for `user` (admins); bound to `cluster` when
    /// given.
    pub async fn create_token(
        &self,
        user: &str,
        groups: &[String],
        ttl: Option<Duration>,
        cluster: Option<&str>,
    ) -> Result<NewToken, ManagementError> {
        let request = pb::CreateTokenRequest {
            user: user.to_owned(),
            groups: groups.to_vec(),
            ttl_seconds: optional_seconds(ttl, "token TTL")?,
            cluster: cluster.unwrap_or_default().to_owned(),
        };
        let mut a = self.access.clone();
        let response = self.run(CALL_TIMEOUT, async move { a.create_token(request).await }).await?;
        let info = response
            .token
            .ok_or_else(|| ManagementError::InvalidResponse("no token in the answer".into()))?;
        Ok(NewToken { info: info.into(), secret: Secret::new(response.secret) })
    }

    /// Tokens (admins), oldest first.
    pub async fn list_tokens(&self) -> Result<Vec<TokenInfo>, ManagementError> {
        let mut a = self.access.clone();
        let response =
            self.run(CALL_TIMEOUT, async move { a.list_tokens(pb::ListTokensRequest {}).await }).await?;
        Ok(response.tokens.into_iter().map(Into::into).collect())
    }

    /// Revokes a token (admins); returns it.
    pub async fn revoke_token(&self, id: &str) -> Result<TokenInfo, ManagementError> {
        let mut a = self.access.clone();
        let request = pb::RevokeTokenRequest { id: id.to_owned() };
        Ok(self.run(CALL_TIMEOUT, async move { a.revoke_token(request).await }).await?.into())
    }

    /// Lets `subject` reach `cluster` (a name or `*`) (admins).
    pub async fn grant(
        &self,
        cluster: &str,
        subject: &GrantSubject,
        allow_impersonate: bool,
    ) -> Result<Grant, ManagementError> {
        let (user, group) = subject.split();
        let request = pb::GrantRequest { cluster: cluster.to_owned(), user, group, allow_impersonate };
        let mut a = self.access.clone();
        Ok(self.run(CALL_TIMEOUT, async move { a.grant(request).await }).await?.into())
    }

    /// Removes a grant (admins); returns it.
    pub async fn revoke_grant(
        &self,
        cluster: &str,
        subject: &GrantSubject,
    ) -> Result<Grant, ManagementError> {
        let (user, group) = subject.split();
        let request = pb::RevokeRequest { cluster: cluster.to_owned(), user, group };
        let mut a = self.access.clone();
        let response = self.run(CALL_TIMEOUT, async move { a.revoke(request).await }).await?;
        response
            .grant
            .map(Into::into)
            .ok_or_else(|| ManagementError::InvalidResponse("no grant in the answer".into()))
    }

    /// Grants (admins: all; users: their own), for one cluster when given.
    pub async fn list_grants(&self, cluster: Option<&str>) -> Result<Vec<Grant>, ManagementError> {
        let request = pb::ListGrantsRequest { cluster: cluster.unwrap_or_default().to_owned() };
        let mut a = self.access.clone();
        let response = self.run(CALL_TIMEOUT, async move { a.list_grants(request).await }).await?;
        Ok(response.grants.into_iter().map(Into::into).collect())
    }

    /// The configuration this hub was connected with (`None` for clients
    /// built with [`Hub::from_channel`]).
    pub fn config(&self) -> Option<&HubConfig> {
        self.config.as_deref()
    }

    /// The hub's URL, as errors name it.
    pub fn url(&self) -> &str {
        &self.hub
    }

    pub(crate) fn clusters_client(&self) -> ClustersClient<Transport> {
        self.clusters.clone()
    }

    /// The authenticated connection, for the other services' clients.
    pub(crate) fn transport(&self) -> Transport {
        self.transport.clone()
    }

    /// Maps a failed call's status once, as every call does.
    pub(crate) async fn error(&self, status: &tonic::Status) -> ManagementError {
        let mut err = ManagementError::from_status(status, &self.hub);
        if std::error::Error::source(status).is_some() {
            err = explain_transport_failure(err, self.config.as_deref(), &self.hub).await;
        }
        err
    }

    /// Runs one call bounded by `deadline`, mapping failures once.
    async fn run<T>(
        &self,
        deadline: Duration,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, ManagementError> {
        match tokio::time::timeout(deadline, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => {
                let err = self.error(&status).await;
                tracing::debug!(code = ?status.code(), error = %err, "management call failed");
                Err(err)
            }
            Err(_) => Err(ManagementError::Timeout(format!(
                "the hub at {} did not answer within {}",
                self.hub,
                format_duration(deadline)
            ))),
        }
    }
}

/// A transport failure that is only "cannot connect" may hide a TLS
/// rejection; ask [`diagnose`] for something more specific.
async fn explain_transport_failure(
    err: ManagementError,
    config: Option<&HubConfig>,
    hub: &str,
) -> ManagementError {
    match (&err, config) {
        (ManagementError::Connection { .. }, Some(config)) => {
            diagnose::tls_failure(config, hub).await.unwrap_or(err)
        }
        _ => err,
    }
}

fn bearer(config: &HubConfig) -> Result<BearerAuth, ManagementError> {
    match &config.credential {
        HubCredential::ClientCert { .. } => Ok(BearerAuth(None)),
        HubCredential::Token(token) => {
            let mut value = MetadataValue::try_from(format!("Bearer {}", token.expose()))
                .map_err(|_| ManagementError::Config("the token is not valid header text".into()))?;
            value.set_sensitive(true);
            Ok(BearerAuth(Some(value)))
        }
    }
}

/// Builds the TLS endpoint: scheme and authority of the server URL, the hub
/// CA as the only root, the client identity (if a certificate), SNI and
/// verification name from `tls_server_name` or the URL host.
fn endpoint(config: &HubConfig) -> Result<(Endpoint, String), ManagementError> {
    let invalid = ManagementError::Config;
    let server = &config.server;
    if server.scheme_str() != Some("https") {
        return Err(invalid(format!("hub URL {server} must use https")));
    }
    let authority = server.authority().ok_or_else(|| invalid(format!("hub URL {server} has no host")))?;
    // gRPC paths are absolute (`/ferry.v1.Clusters/...`): any path in the
    // kubeconfig's server URL is not part of the API address.
    let hub = format!("https://{authority}");
    let domain = match &config.tls_server_name {
        Some(name) => name.clone(),
        // `host()` keeps IPv6 brackets; certificates name the bare address.
        None => authority.host().trim_start_matches('[').trim_end_matches(']').to_owned(),
    };
    let mut tls =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&config.ca_pem)).domain_name(domain);
    if let HubCredential::ClientCert { cert_pem, key_pem } = &config.credential {
        tls = tls.identity(Identity::from_pem(cert_pem, key_pem.expose()));
    }
    let endpoint = Endpoint::from_shared(hub.clone())
        .map_err(|e| invalid(format!("hub URL {hub}: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tls_config(tls)
        .map_err(|e| invalid(format!("TLS settings from the kubeconfig: {}", chain(&e))))?;
    Ok((endpoint, hub))
}

/// An error and its sources joined with `: `, as `ferryctl` prints them.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

/// Whole seconds for the wire, rounded up; zero and overflows are refused
/// here because the hub reads 0 as "use the default".
fn whole_seconds(d: Duration, what: &str) -> Result<u32, ManagementError> {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    if secs == 0 {
        return Err(ManagementError::InvalidArgument(format!("{what} must be at least 1s")));
    }
    u32::try_from(secs).map_err(|_| {
        ManagementError::InvalidArgument(format!("{what} of {} is too long", format_duration(d)))
    })
}

fn optional_seconds(d: Option<Duration>, what: &str) -> Result<u32, ManagementError> {
    d.map_or(Ok(0), |d| whole_seconds(d, what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_from_proto() {
        let id = ClusterId::new();
        let c = Cluster::try_from(pb::Cluster {
            name: "edge-1".into(),
            id: id.to_string(),
            connected: true,
            agents: 2,
            kubernetes_version: "v1.31.2".into(),
            created_at_unix: 1_700_000_000,
            phase: pb::ClusterPhase::Ready as i32,
            approval: pb::ApprovalMode::Manual as i32,
            labels: [("env".to_owned(), "prod".to_owned())].into_iter().collect(),
            ..Default::default()
        })
        .expect("valid");
        assert_eq!(c.id, id);
        assert_eq!(c.phase, ClusterPhase::Ready);
        assert_eq!(c.approval, ApprovalMode::Manual);
        assert_eq!(c.labels["env"], "prod");
        assert_eq!(c.kubernetes_version.as_deref(), Some("v1.31.2"));
        assert_eq!(c.created_at, Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000)));
        assert_eq!(c.last_seen, None);

        let c = Cluster::try_from(pb::Cluster { name: "x".into(), id: id.to_string(), ..Default::default() })
            .expect("valid");
        assert_eq!((c.phase, c.kubernetes_version, c.created_at), (ClusterPhase::Unknown, None, None));

        let bad =
            Cluster::try_from(pb::Cluster { name: "x".into(), id: "nope".into(), ..Default::default() });
        assert!(matches!(bad, Err(ManagementError::InvalidResponse(_))));
    }

    #[test]
    fn seconds_round_up_and_refuse_zero() {
        assert_eq!(whole_seconds(Duration::from_millis(1500), "t"), Ok(2));
        assert_eq!(whole_seconds(Duration::from_secs(60), "t"), Ok(60));
        assert!(matches!(whole_seconds(Duration::ZERO, "t"), Err(ManagementError::InvalidArgument(_))));
        assert!(matches!(
            whole_seconds(Duration::from_secs(u64::from(u32::MAX) + 1), "t"),
            Err(ManagementError::InvalidArgument(_))
        ));
        assert_eq!(optional_seconds(None, "t"), Ok(0));
    }

    fn hub(server: &str, tls_server_name: Option<&str>) -> HubConfig {
        HubConfig {
            server: server.parse().expect("uri"),
            tls_server_name: tls_server_name.map(str::to_owned),
            ca_pem: String::new(),
            credential: HubCredential::ClientCert { cert_pem: String::new(), key_pem: Secret::new("") },
        }
    }

    #[tokio::test]
    async fn endpoint_drops_the_path_and_needs_https() {
        // Empty PEMs fail when the TLS connector is built; URL checks come first.
        let e = endpoint(&hub("http://127.0.0.1:8443", None)).err();
        assert!(matches!(&e, Some(ManagementError::Config(m)) if m.contains("must use https")));
        let e = endpoint(&hub("https://127.0.0.1:8443/clusters/a", None)).err();
        assert!(matches!(&e, Some(ManagementError::Config(m)) if m.contains("TLS settings")), "{e:?}");
    }

    #[test]
    fn tokens_travel_as_sensitive_metadata() {
        let mut config = hub("https://127.0.0.1:8443", None);
        config.credential = HubCredential::Token(Secret::new("ferryuser.a.b"));
        let mut auth = bearer(&config).expect("auth");
        let req = auth.call(tonic::Request::new(())).expect("call");
        let v = req.metadata().get("authorization").expect("set");
        assert_eq!(v, "Bearer ferryuser.a.b");
        assert!(v.is_sensitive());
    }
}

//! Typed client for the hub's `ferry.v1.Management` gRPC service.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry::ids::ClusterId;
use ferry::proto::v1 as pb;
use ferry::secret::Secret;
use pb::management_client::ManagementClient as GrpcClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::diagnose;
use crate::duration::format_duration;
use crate::error::ManagementError;
use crate::kubeconfig::HubConfig;

/// How long to wait for TCP + TLS to the hub before giving up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Deadline for calls that should answer at once (everything but waits).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Extra time a wait is given beyond its own timeout, so the hub's
/// `DEADLINE_EXCEEDED` (with its message) normally arrives before ours.
pub const WAIT_GRACE: Duration = Duration::from_secs(10);

/// Whether a cluster has an agent connected to the hub.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClusterStatus {
    /// At least one agent session is connected.
    Connected,
    /// No agent is connected.
    Disconnected,
}

impl ClusterStatus {
    /// `Connected` or `Disconnected`, as shown in tables.
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterStatus::Connected => "Connected",
            ClusterStatus::Disconnected => "Disconnected",
        }
    }
}

impl fmt::Display for ClusterStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A registered cluster as the hub reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    /// The name it was registered under.
    pub name: String,
    /// The hub's id for it (credentials are bound to this).
    pub id: ClusterId,
    /// Whether an agent is connected.
    pub status: ClusterStatus,
    /// Connected agent sessions (replicas).
    pub agents: u32,
    /// The child cluster's Kubernetes version (e.g. `v1.31.2`), `None` until
    /// an agent has reported it.
    pub kubernetes_version: Option<String>,
    /// When it was registered, `None` if the hub did not say.
    pub created_at: Option<SystemTime>,
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
            status: if c.connected { ClusterStatus::Connected } else { ClusterStatus::Disconnected },
            agents: c.agents,
            kubernetes_version: Some(c.kubernetes_version).filter(|v| !v.is_empty()),
            created_at: (c.created_at_unix > 0).then(|| UNIX_EPOCH + Duration::from_secs(c.created_at_unix)),
        })
    }
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
}

/// A connection to the hub's management API, authenticated with the
/// caller's client certificate. Cheap to clone; clones share the connection.
#[derive(Clone, Debug)]
pub struct ManagementClient {
    inner: GrpcClient<Channel>,
    hub: String,
    /// Kept to diagnose transport failures (see `diagnose`); `None` for
    /// clients built on someone else's channel.
    config: Option<Arc<HubConfig>>,
}

impl ManagementClient {
    /// Connects to the hub described by `config` over TLS, trusting only the
    /// hub CA and presenting the client certificate.
    ///
    /// The connection is opened eagerly so an unreachable hub is reported
    /// here. A hub that rejects the certificate may only say so on the first
    /// call (TLS 1.3 finishes the client's handshake first).
    pub async fn connect(config: &HubConfig) -> Result<Self, ManagementError> {
        let (endpoint, hub) = endpoint(config)?;
        tracing::debug!(%hub, "connecting to the hub");
        let config = Some(Arc::new(config.clone()));
        match endpoint.connect().await {
            Ok(channel) => Ok(Self { inner: GrpcClient::new(channel), hub, config }),
            Err(e) => {
                let err = ManagementError::from_transport_error(&e, &hub);
                Err(explain_transport_failure(err, config.as_deref(), &hub).await)
            }
        }
    }

    /// Wraps an existing channel (e.g. an in-process one in tests); `hub`
    /// names the hub in error messages.
    pub fn from_channel(channel: Channel, hub: impl Into<String>) -> Self {
        Self { inner: GrpcClient::new(channel), hub: hub.into(), config: None }
    }

    /// Creates cluster `name` if needed and returns a fresh bootstrap token
    /// for its agent. `token_ttl` is how long the token stays usable (whole
    /// seconds, rounded up); `None` takes the hub default (24 h).
    pub async fn register_cluster(
        &self,
        name: &str,
        token_ttl: Option<Duration>,
    ) -> Result<Registration, ManagementError> {
        let token_ttl_seconds = match token_ttl {
            None => 0,
            Some(ttl) => whole_seconds(ttl, "token TTL")?,
        };
        let request = pb::RegisterClusterRequest { name: name.to_owned(), token_ttl_seconds };
        let response =
            self.call(CALL_TIMEOUT, |mut c| async move { c.register_cluster(request).await }).await?;
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
        })
    }

    /// Issues a kubeconfig (YAML) for `cluster`: for the caller when `user`
    /// is `None`, otherwise (admins only) for `user` with `groups`. It
    /// carries a private key, hence [`Secret`]; pass it to
    /// [`kube_client`](crate::kube_client) or write it to a file.
    pub async fn issue_kubeconfig(
        &self,
        cluster: &str,
        user: Option<&str>,
        groups: &[String],
    ) -> Result<Secret, ManagementError> {
        let request = pb::IssueKubeconfigRequest {
            cluster: cluster.to_owned(),
            user: user.unwrap_or_default().to_owned(),
            groups: groups.to_vec(),
        };
        let response =
            self.call(CALL_TIMEOUT, |mut c| async move { c.issue_kubeconfig(request).await }).await?;
        if response.kubeconfig.is_empty() {
            return Err(ManagementError::InvalidResponse("the issued kubeconfig is empty".into()));
        }
        Ok(Secret::new(response.kubeconfig))
    }

    /// Lists registered clusters, in the hub's order.
    pub async fn list_clusters(&self) -> Result<Vec<Cluster>, ManagementError> {
        let request = pb::ListClustersRequest {};
        let response = self.call(CALL_TIMEOUT, |mut c| async move { c.list_clusters(request).await }).await?;
        response.clusters.into_iter().map(Cluster::try_from).collect()
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
        let request = pb::WaitClusterRequest { name: name.to_owned(), connected, timeout_seconds };
        let deadline = Duration::from_secs(u64::from(timeout_seconds)) + WAIT_GRACE;
        let result = self.call(deadline, |mut c| async move { c.wait_cluster(request).await }).await;
        match result {
            Ok(cluster) => cluster.try_into(),
            Err(ManagementError::Timeout(_)) => {
                let state = if connected { ClusterStatus::Connected } else { ClusterStatus::Disconnected };
                Err(ManagementError::Timeout(format!(
                    "timed out after {} waiting for cluster {name:?} to be {}",
                    format_duration(timeout),
                    state.as_str().to_lowercase()
                )))
            }
            Err(e) => Err(e),
        }
    }

    /// Runs one unary call on a clone of the client (tonic clients are
    /// cheap handles), bounded by `deadline`, mapping failures once.
    async fn call<T, F, Fut>(&self, deadline: Duration, f: F) -> Result<T, ManagementError>
    where
        F: FnOnce(GrpcClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        match tokio::time::timeout(deadline, f(self.inner.clone())).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => {
                let mut err = ManagementError::from_status(&status, &self.hub);
                if std::error::Error::source(&status).is_some() {
                    err = explain_transport_failure(err, self.config.as_deref(), &self.hub).await;
                }
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

/// Builds the TLS endpoint: scheme and authority of the server URL, the hub
/// CA as the only root, the client identity, SNI/verification name from
/// `tls_server_name` or the URL host.
fn endpoint(config: &HubConfig) -> Result<(Endpoint, String), ManagementError> {
    let invalid = ManagementError::Config;
    let server = &config.server;
    if server.scheme_str() != Some("https") {
        return Err(invalid(format!("hub URL {server} must use https")));
    }
    let authority = server.authority().ok_or_else(|| invalid(format!("hub URL {server} has no host")))?;
    // gRPC paths are absolute (`/ferry.v1.Management/...`): any path in the
    // kubeconfig's server URL is not part of the API address.
    let hub = format!("https://{authority}");
    let domain = match &config.tls_server_name {
        Some(name) => name.clone(),
        // `host()` keeps IPv6 brackets; certificates name the bare address.
        None => authority.host().trim_start_matches('[').trim_end_matches(']').to_owned(),
    };
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&config.ca_pem))
        .identity(Identity::from_pem(&config.client_cert_pem, config.client_key_pem.expose()))
        .domain_name(domain);
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
        })
        .expect("valid");
        assert_eq!(c.id, id);
        assert_eq!(c.status, ClusterStatus::Connected);
        assert_eq!(c.kubernetes_version.as_deref(), Some("v1.31.2"));
        assert_eq!(c.created_at, Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000)));

        let c = Cluster::try_from(pb::Cluster { name: "x".into(), id: id.to_string(), ..Default::default() })
            .expect("valid");
        assert_eq!((c.status, c.kubernetes_version, c.created_at), (ClusterStatus::Disconnected, None, None));

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
    }

    fn hub(server: &str, tls_server_name: Option<&str>) -> HubConfig {
        HubConfig {
            server: server.parse().expect("uri"),
            tls_server_name: tls_server_name.map(str::to_owned),
            ca_pem: String::new(),
            client_cert_pem: String::new(),
            client_key_pem: Secret::new(""),
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
}

//! Hub configuration: where state lives, where to listen, named limits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ferry::identity::IdentityPolicy;
use ferry::limits;

/// Default data dir.
pub const DEFAULT_DATA_DIR: &str = "./ferry-data";
/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";
/// Default bootstrap token lifetime.
pub const DEFAULT_BOOTSTRAP_TTL: Duration = Duration::from_secs(24 * 3600);
/// Default lifetime of agent client certificates; agents renew them over
/// the control stream when two thirds of it have passed.
pub const DEFAULT_AGENT_CERT_TTL: Duration = Duration::from_secs(24 * 3600);
/// Shortest agent certificate lifetime the hub accepts (tests shorten it).
pub const MIN_AGENT_CERT_TTL: Duration = Duration::from_secs(5);
/// Default lifetime of issued kubeconfig credentials and bearer tokens.
pub const DEFAULT_CREDENTIAL_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Longest lifetime a caller may ask for a kubeconfig credential or token.
pub const MAX_CREDENTIAL_TTL: Duration = Duration::from_secs(366 * 24 * 3600);
/// Longest lifetime a caller may ask for a bootstrap token.
pub const MAX_BOOTSTRAP_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Default concurrent requests one caller may have to one cluster: half of
/// the cluster's default, so a single caller cannot take every slot (a
/// management plane with thousands of watches still fits).
pub const DEFAULT_MAX_STREAMS_PER_CALLER: u32 = 10_000;
/// Default agent sessions one cluster may hold at once (replicas, and
/// reconnects overlapping their old sessions for a moment).
pub const DEFAULT_MAX_AGENT_SESSIONS: u32 = 64;
/// Default idle timeout of upgraded connections (exec, attach,
/// port-forward): the kubelet's own streaming idle timeout.
pub const DEFAULT_UPGRADE_IDLE_TIMEOUT: Duration = Duration::from_secs(4 * 3600);

/// Shortest heartbeat interval the hub may ask of agents (agents refuse
/// less than 100 ms; tests use one second).
pub const MIN_HEARTBEAT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);
/// Longest heartbeat interval: agents are declared Offline after three, and
/// NAT and firewall idle timeouts are often a few minutes.
pub const MAX_HEARTBEAT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);
/// Agent image put in `agent.yaml` unless `--agent-image` says otherwise.
pub const DEFAULT_AGENT_IMAGE: &str = concat!("ghcr.io/ferry-dev/ferry-agent:", env!("CARGO_PKG_VERSION"));

/// Everything the hub needs to start; loading it binds nothing.
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// Directory for the CA, the embedded store and the admin kubeconfig.
    pub data_dir: PathBuf,
    /// Address for gRPC and HTTPS (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Base URL agents and kubectl use; defaults to `https://` + the bound
    /// address.
    pub advertise_url: Option<String>,
    /// Named limits.
    pub limits: Limits,
    /// The agent image `agent.yaml` runs (users mirror it).
    pub agent_image: String,
    /// How caller identities are mapped for child clusters.
    pub identity_policy: IdentityPolicy,
    /// A plain-text address serving only `grpc.health.v1` and `/healthz`
    /// (for Kubernetes probes); `None`: none.
    pub health_listen: Option<SocketAddr>,
    /// Where `/metrics` is served.
    pub metrics_listen: MetricsListen,
    /// Where audit events go.
    pub audit: crate::audit::Sink,
}

/// Where the hub serves its metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsListen {
    /// Nowhere.
    Off,
    /// The default address: skipped with a warning when it is taken, so a
    /// second hub on the machine still starts.
    Default(SocketAddr),
    /// An address asked for: failing to bind it fails the start.
    At(SocketAddr),
}

/// Bounds on what callers and agents can make the hub hold.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest request body forwarded to a cluster.
    pub max_request_body: u64,
    /// Concurrent proxied requests per cluster.
    pub max_streams_per_cluster: u32,
    /// Concurrent proxied requests per caller (user) per cluster.
    pub max_streams_per_caller: u32,
    /// Agent sessions per cluster.
    pub max_agent_sessions: u32,
    /// Parked streams each agent keeps.
    pub pool_size: u32,
    /// Heartbeat period on control streams.
    pub heartbeat_interval: Duration,
    /// How long a request waits for a parked stream.
    pub stream_wait: Duration,
    /// Bootstrap token lifetime when the caller gives none.
    pub bootstrap_ttl: Duration,
    /// Lifetime of agent client certificates.
    pub agent_cert_ttl: Duration,
    /// Lifetime of issued kubeconfig credentials and tokens when the caller
    /// gives none.
    pub credential_ttl: Duration,
    /// Largest total size of a caller's request headers (capped by
    /// [`limits::MAX_HEADER_BYTES`], the protocol's own bound).
    pub max_header_bytes: usize,
    /// Close an upgraded connection (exec, attach, port-forward) after this
    /// long without a byte either way; `None` never does. The default is
    /// [`DEFAULT_UPGRADE_IDLE_TIMEOUT`], so a forgotten session cannot hold
    /// its slot forever.
    pub upgrade_idle_timeout: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_body: limits::DEFAULT_MAX_REQUEST_BODY,
            max_streams_per_cluster: limits::DEFAULT_MAX_STREAMS_PER_AGENT,
            max_streams_per_caller: DEFAULT_MAX_STREAMS_PER_CALLER,
            max_agent_sessions: DEFAULT_MAX_AGENT_SESSIONS,
            pool_size: limits::DEFAULT_POOL_SIZE,
            heartbeat_interval: limits::HEARTBEAT_INTERVAL,
            stream_wait: limits::STREAM_WAIT,
            bootstrap_ttl: DEFAULT_BOOTSTRAP_TTL,
            agent_cert_ttl: DEFAULT_AGENT_CERT_TTL,
            credential_ttl: DEFAULT_CREDENTIAL_TTL,
            max_header_bytes: limits::MAX_HEADER_BYTES,
            upgrade_idle_timeout: Some(DEFAULT_UPGRADE_IDLE_TIMEOUT),
        }
    }
}

impl HubConfig {
    /// A config with defaults for everything but the data dir and address.
    pub fn new(data_dir: impl Into<PathBuf>, listen: SocketAddr) -> Self {
        HubConfig {
            data_dir: data_dir.into(),
            listen,
            advertise_url: None,
            limits: Limits::default(),
            agent_image: DEFAULT_AGENT_IMAGE.to_owned(),
            identity_policy: IdentityPolicy::default(),
            health_listen: None,
            metrics_listen: MetricsListen::Off,
            audit: crate::audit::Sink::Off,
        }
    }
}

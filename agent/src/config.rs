//! Command line and the validated configuration the agent runs with.
//!
//! Parsing and validation read files (the hub CA) but bind nothing and dial
//! nothing, so a bad flag fails before any connection is attempted.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use clap::Parser;
use ferry::ids::AgentId;
use ferry::secret::Secret;
use http::Uri;

use crate::status::MIN_STATUS_INTERVAL;

/// Most sessions `--hub-connections` may ask for: each costs the agent a
/// connection, its parked streams and a status probe of the apiserver
/// every status interval.
pub const MAX_HUB_CONNECTIONS: u8 = 8;

/// Default directory holding the agent's credential, cluster name and id.
pub const DEFAULT_STATE_DIR: &str = "./ferry-agent-state";

/// `ferry-agent` command-line arguments (a user-facing contract: keep the
/// flag names and environment variables stable).
#[derive(Clone, Debug, Parser)]
#[command(
    name = "ferry-agent",
    version,
    about = "Dials a Ferry hub and serves its cluster's apiserver through it."
)]
pub struct Args {
    /// URL of the hub's agent endpoint, e.g. `https://hub.example.com:8443`;
    /// several replicas comma-separated (`https://a:8443,https://b:8443`):
    /// the agent moves to the next one when a connection fails.
    #[arg(long, env = "FERRY_HUB", value_name = "URL[,URL...]")]
    pub hub: String,
    /// How many sessions to keep, each on a different hub replica (default
    /// 1). With more, the hub spreads requests over all of them and a
    /// replica's failure leaves the others serving while a replacement is
    /// dialled: first the other `--hub` URLs, then the replicas the hub
    /// names in its welcome. With fewer live replicas than N, the agent
    /// holds one session on each.
    #[arg(
        long = "hub-connections",
        env = "FERRY_HUB_CONNECTIONS",
        value_name = "N",
        default_value_t = 1,
        value_parser = clap::value_parser!(u8).range(1..=MAX_HUB_CONNECTIONS as i64)
    )]
    pub hub_connections: u8,
    /// PEM file with the CA that signed the hub's certificate; the only CA
    /// trusted for the hub connection.
    #[arg(long = "hub-ca", env = "FERRY_HUB_CA", value_name = "FILE")]
    pub hub_ca: PathBuf,
    /// Single-use bootstrap token from `ferryctl register`; only needed
    /// until the agent has enrolled. Prefer `--token-file` or `FERRY_TOKEN`:
    /// an argument is visible to every user in `ps`.
    #[arg(long, env = "FERRY_TOKEN", value_name = "TOKEN", hide_env_values = true, value_parser = parse_secret)]
    pub token: Option<Secret>,
    /// File holding the bootstrap token (re-read at every enrollment
    /// attempt, so a replaced Secret is picked up).
    #[arg(long = "token-file", env = "FERRY_TOKEN_FILE", value_name = "FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// Kubeconfig for the local apiserver; the in-cluster service account
    /// is used when omitted.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Directory where the credential, the cluster name and the agent id
    /// are kept across restarts (unless `--credential-secret` is given).
    #[arg(long = "state-dir", value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Keep the credential in this Secret (`NAMESPACE/NAME`) of the local
    /// cluster instead of the state dir; every replica shares it.
    #[arg(long = "credential-secret", env = "FERRY_CREDENTIAL_SECRET", value_name = "NAMESPACE/NAME", value_parser = parse_secret_ref)]
    pub credential_secret: Option<SecretRef>,
    /// This agent instance's id (a uuid; in a pod, its uid). Default: kept
    /// in the state dir, or made fresh at each start with
    /// `--credential-secret`.
    #[arg(long = "agent-id", env = "FERRY_AGENT_ID", value_name = "UUID", value_parser = parse_agent_id)]
    pub agent_id: Option<AgentId>,
    /// Serve `/healthz` and `/readyz` over plain HTTP on this address (for
    /// Kubernetes probes); off by default.
    #[arg(long = "health-listen", env = "FERRY_HEALTH_LISTEN", value_name = "ADDR")]
    pub health_listen: Option<std::net::SocketAddr>,
    /// Serve Prometheus metrics at http://ADDR/metrics (plain HTTP; port 0
    /// picks one); off by default.
    #[arg(long = "metrics-listen", env = "FERRY_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Log format on stderr: `text` or `json` (one object per line).
    #[arg(long = "log-format", env = "FERRY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Span export (`--otlp-endpoint`, with the `otlp` feature).
    #[command(flatten)]
    pub export: ferry::logging::ExportArgs,
    /// A Kubernetes system user or group (`system:...`) the agent may
    /// impersonate after all; a trailing `*` matches any rest (e.g.
    /// `system:serviceaccount:ci:*`). Repeat for several. By default it
    /// impersonates none but `system:authenticated`.
    #[arg(long = "allow-system-identity", value_name = "NAME")]
    pub allow_system_identity: Vec<String>,
    /// How often to report the cluster's status to the hub (version,
    /// `/readyz`, `/livez`, nodes), e.g. `10s`.
    #[arg(
        long = "status-interval",
        env = "FERRY_STATUS_INTERVAL",
        value_name = "DURATION",
        default_value = "10s",
        value_parser = parse_status_interval
    )]
    pub status_interval: Duration,
}

pub use ferry::logging::LogFormat;

fn parse_status_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| e.to_string())?;
    if d < MIN_STATUS_INTERVAL {
        return Err(format!("must be at least {MIN_STATUS_INTERVAL:?}"));
    }
    Ok(d)
}

/// A Secret in the local cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl std::fmt::Display for SecretRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

fn parse_secret_ref(s: &str) -> Result<SecretRef, String> {
    let (namespace, name) = s.split_once('/').ok_or("must be NAMESPACE/NAME")?;
    let label = |p: &str| {
        !p.is_empty()
            && p.len() <= 253
            && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    if !label(namespace) || !label(name) {
        return Err("must be NAMESPACE/NAME with lower-case DNS names".into());
    }
    Ok(SecretRef { namespace: namespace.into(), name: name.into() })
}

fn parse_agent_id(s: &str) -> Result<AgentId, String> {
    AgentId::parse(s.trim()).ok_or_else(|| "must be a uuid".to_owned())
}

fn parse_secret(s: &str) -> Result<Secret, String> {
    let s = s.trim();
    if s.is_empty() { Err("must not be empty".to_owned()) } else { Ok(Secret::new(s)) }
}

/// Why the command line cannot be turned into a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No hub URL was given.
    #[error("no hub URL given")]
    NoHubUrl,
    /// The hub URL does not parse or is not `https://host[:port]`.
    #[error("invalid hub URL {url:?}: {reason}")]
    HubUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The hub CA file cannot be read.
    #[error("cannot read hub CA {path:?}")]
    HubCa {
        /// The file as given.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The hub CA file holds no PEM certificate.
    #[error("hub CA {0:?} contains no PEM certificate")]
    HubCaNotPem(PathBuf),
}

/// Where the bootstrap token comes from.
#[derive(Clone, Debug)]
pub enum TokenSource {
    /// Given on the command line or in `FERRY_TOKEN`.
    Value(Secret),
    /// A file, read at each enrollment attempt.
    File(PathBuf),
}

impl TokenSource {
    /// The token now; `None` when the file is missing or empty.
    pub fn read(&self) -> Option<Secret> {
        match self {
            TokenSource::Value(s) => Some(s.clone()),
            TokenSource::File(path) => {
                let text = std::fs::read_to_string(path).ok()?;
                let token = text.trim();
                (!token.is_empty()).then(|| Secret::new(token))
            }
        }
    }
}

/// Validated agent configuration.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The hub's agent endpoints (`https`) and which one is in use.
    pub hubs: HubUrls,
    /// Sessions to keep on distinct hub replicas (`--hub-connections`).
    pub hub_connections: usize,
    /// PEM bundle of the CA trusted for the hub connection.
    pub hub_ca_pem: Vec<u8>,
    /// Bootstrap token, used only when no usable credential is stored.
    pub bootstrap_token: Option<TokenSource>,
    /// Kubeconfig for the local apiserver (`None`: in-cluster).
    pub kubeconfig: Option<PathBuf>,
    /// Where the credential and agent id live (without a credential Secret).
    pub state_dir: PathBuf,
    /// The Secret holding the credential, if the agent keeps it there.
    pub credential_secret: Option<SecretRef>,
    /// This instance's id, if given.
    pub agent_id: Option<AgentId>,
    /// Address of the health endpoint, if any.
    pub health_listen: Option<std::net::SocketAddr>,
    /// Address of the metrics endpoint, if any.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Which system identities the agent may impersonate.
    pub system_identities: ferry::identity::SystemIdentityPolicy,
    /// How often the cluster's status is taken and reported.
    pub status_interval: Duration,
}

impl Args {
    /// Validates the arguments and reads the hub CA.
    pub fn into_config(self) -> Result<AgentConfig, ConfigError> {
        let hubs = parse_hub_urls(&self.hub)?;
        let hub_ca_pem = std::fs::read(&self.hub_ca)
            .map_err(|source| ConfigError::HubCa { path: self.hub_ca.clone(), source })?;
        if !String::from_utf8_lossy(&hub_ca_pem).contains("-----BEGIN CERTIFICATE-----") {
            return Err(ConfigError::HubCaNotPem(self.hub_ca));
        }
        let bootstrap_token = match (self.token, self.token_file) {
            (Some(t), _) => Some(TokenSource::Value(t)),
            (None, Some(f)) => Some(TokenSource::File(f)),
            (None, None) => None,
        };
        Ok(AgentConfig {
            hubs,
            hub_connections: usize::from(self.hub_connections),
            hub_ca_pem,
            bootstrap_token,
            kubeconfig: self.kubeconfig,
            state_dir: self.state_dir,
            credential_secret: self.credential_secret,
            agent_id: self.agent_id,
            health_listen: self.health_listen,
            metrics_listen: self.metrics_listen,
            system_identities: ferry::identity::SystemIdentityPolicy { allowed: self.allow_system_identity },
            status_interval: self.status_interval,
        })
    }
}

/// Parses a comma-separated list of hub URLs (see [`parse_hub_url`]).
pub fn parse_hub_urls(list: &str) -> Result<HubUrls, ConfigError> {
    let urls = list
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(parse_hub_url)
        .collect::<Result<Vec<_>, _>>()?;
    HubUrls::new(urls).ok_or(ConfigError::NoHubUrl)
}

/// The hub replicas an agent may dial, in order, and the one in use. Clones
/// share the position, so every part of the agent dials the same replica.
#[derive(Clone, Debug)]
pub struct HubUrls {
    urls: Arc<[Uri]>,
    current: Arc<AtomicUsize>,
}

impl HubUrls {
    /// The list (`None` when empty); the first URL is used first.
    pub fn new(urls: Vec<Uri>) -> Option<Self> {
        (!urls.is_empty()).then(|| Self { urls: urls.into(), current: Arc::new(AtomicUsize::new(0)) })
    }

    /// The URL to dial now.
    pub fn current(&self) -> Uri {
        self.urls[self.current.load(Ordering::Relaxed) % self.urls.len()].clone()
    }

    /// Every URL, the current one first, then the others in turn.
    pub fn from_current(&self) -> Vec<Uri> {
        let start = self.current.load(Ordering::Relaxed) % self.urls.len();
        self.urls[start..].iter().chain(&self.urls[..start]).cloned().collect()
    }

    /// Makes `url` the current one, if it is in the list.
    pub fn set_current(&self, url: &Uri) {
        if let Some(i) = self.urls.iter().position(|u| u == url) {
            self.current.store(i, Ordering::Relaxed);
        }
    }

    /// Moves on to the next URL (wrapping around); returns it.
    pub fn advance(&self) -> Uri {
        let next = (self.current.load(Ordering::Relaxed) + 1) % self.urls.len();
        self.current.store(next, Ordering::Relaxed);
        self.urls[next].clone()
    }

    /// How many URLs there are.
    pub fn len(&self) -> usize {
        self.urls.len()
    }

    /// Never true (a list has at least one URL); for clippy's sake.
    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }
}

impl std::fmt::Display for HubUrls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list: Vec<String> =
            self.urls.iter().map(|u| u.to_string().trim_end_matches('/').to_owned()).collect();
        f.write_str(&list.join(","))
    }
}

/// Parses the hub URL: `https`, a host, no path beyond `/`.
pub fn parse_hub_url(url: &str) -> Result<Uri, ConfigError> {
    let bad = |reason| ConfigError::HubUrl { url: url.to_owned(), reason };
    let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
    if uri.scheme_str() != Some("https") {
        return Err(bad("the scheme must be https"));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if uri.path_and_query().is_some_and(|pq| pq.as_str() != "/") {
        return Err(bad("the hub URL takes no path or query"));
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_contract() {
        let args = Args::try_parse_from([
            "ferry-agent",
            "--hub",
            "https://hub.example.com:8443",
            "--hub-ca",
            "/etc/ferry/ca.pem",
            "--token",
            "ferryboot.x.y",
            "--kubeconfig",
            "/kc",
        ])
        .expect("valid command line");
        assert_eq!(args.hub, "https://hub.example.com:8443");
        assert_eq!(args.hub_connections, 1, "one session by default, as before");
        assert_eq!(args.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(args.token.as_ref().map(Secret::expose), Some("ferryboot.x.y"));
        assert!(!format!("{args:?}").contains("ferryboot"), "the token never shows in Debug");
        let args = Args::try_parse_from([
            "ferry-agent",
            "--hub",
            "https://hub:8443",
            "--hub-ca",
            "/ca",
            "--token-file",
            "/etc/ferry/bootstrap/token",
            "--credential-secret",
            "ferry-system/ferry-agent-credential",
            "--agent-id",
            "6f1c5a2e-0d53-4a0b-9f57-2b8f2f1e9c11",
            "--health-listen",
            "0.0.0.0:8081",
        ])
        .expect("in-cluster command line");
        assert_eq!(
            args.credential_secret,
            Some(SecretRef { namespace: "ferry-system".into(), name: "ferry-agent-credential".into() })
        );
        assert!(
            Args::try_parse_from([
                "ferry-agent",
                "--hub",
                "h",
                "--hub-ca",
                "c",
                "--credential-secret",
                "nope"
            ])
            .is_err()
        );
        let with = |n: &str| {
            Args::try_parse_from(["ferry-agent", "--hub", "h", "--hub-ca", "c", "--hub-connections", n])
        };
        assert_eq!(with("2").expect("two sessions").hub_connections, 2);
        assert!(with("0").is_err(), "at least one session");
        assert!(with("9").is_err(), "at most {MAX_HUB_CONNECTIONS}");
        assert!(
            Args::try_parse_from([
                "ferry-agent",
                "--hub",
                "h",
                "--hub-ca",
                "c",
                "--token",
                "t",
                "--token-file",
                "f"
            ])
            .is_err(),
            "one token source"
        );
    }

    #[test]
    fn a_token_file_is_read_when_needed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("token");
        let source = TokenSource::File(file.clone());
        assert!(source.read().is_none(), "missing file: no token yet");
        std::fs::write(&file, "ferryboot.a.b\n").expect("write");
        assert_eq!(source.read().map(|s| s.expose().to_owned()), Some("ferryboot.a.b".into()));
    }

    #[test]
    fn hub_url_must_be_https_without_path() {
        assert!(parse_hub_url("https://hub:8443").is_ok());
        assert!(parse_hub_url("https://hub:8443/").is_ok());
        assert!(parse_hub_url("http://hub:8443").is_err());
        assert!(parse_hub_url("https://hub/agents").is_err());
        assert!(parse_hub_url("hub:8443").is_err());
    }

    #[test]
    fn several_hub_urls_are_tried_in_turn() {
        let hubs = parse_hub_urls("https://a:8443, https://b:8443,").expect("two URLs");
        assert_eq!(hubs.len(), 2);
        assert_eq!(hubs.to_string(), "https://a:8443,https://b:8443");
        let shared = hubs.clone();
        assert_eq!(hubs.current(), Uri::from_static("https://a:8443"));
        assert_eq!(hubs.advance(), Uri::from_static("https://b:8443"));
        assert_eq!(shared.current(), Uri::from_static("https://b:8443"), "clones share the position");
        assert_eq!(
            hubs.from_current(),
            [Uri::from_static("https://b:8443"), Uri::from_static("https://a:8443")]
        );
        assert_eq!(shared.advance(), Uri::from_static("https://a:8443"), "wraps around");
        hubs.set_current(&Uri::from_static("https://b:8443"));
        assert_eq!(shared.current(), Uri::from_static("https://b:8443"));
        assert!(matches!(parse_hub_urls(" , "), Err(ConfigError::NoHubUrl)));
        assert!(matches!(parse_hub_urls("https://a,http://b"), Err(ConfigError::HubUrl { .. })));
        let one = parse_hub_urls("https://only:8443").expect("one URL");
        assert_eq!(one.advance(), one.current(), "one URL stays");
    }

    #[test]
    fn hub_ca_must_be_pem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "garbage").expect("write");
        let args = Args {
            hub: "https://hub".into(),
            hub_connections: 1,
            hub_ca: ca,
            token: None,
            token_file: None,
            kubeconfig: None,
            state_dir: dir.path().into(),
            credential_secret: None,
            agent_id: None,
            health_listen: None,
            metrics_listen: None,
            log_format: LogFormat::Text,
            export: Default::default(),
            allow_system_identity: Vec::new(),
            status_interval: Duration::from_secs(10),
        };
        assert!(matches!(args.into_config(), Err(ConfigError::HubCaNotPem(_))));
    }
}

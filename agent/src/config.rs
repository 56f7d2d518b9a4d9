//! Command line and the validated configuration the agent runs with.
//!
//! Parsing and validation read files (the hub CA) but bind nothing and dial
//! nothing, so a bad flag fails before any connection is attempted.

use std::path::PathBuf;

use clap::Parser;
use ferry::secret::Secret;
use http::Uri;

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
    /// URL of the hub's agent endpoint, e.g. `https://hub.example.com:8443`.
    #[arg(long, env = "FERRY_HUB", value_name = "URL")]
    pub hub: String,
    /// PEM file with the CA that signed the hub's certificate; the only CA
    /// trusted for the hub connection.
    #[arg(long = "hub-ca", env = "FERRY_HUB_CA", value_name = "FILE")]
    pub hub_ca: PathBuf,
    /// Single-use bootstrap token from `ferryctl register`; only needed
    /// until the agent has enrolled.
    #[arg(long, env = "FERRY_TOKEN", value_name = "TOKEN", hide_env_values = true, value_parser = parse_secret)]
    pub token: Option<Secret>,
    /// Kubeconfig for the local apiserver; the in-cluster service account
    /// is used when omitted.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Directory where the credential, the cluster name and the agent id
    /// are kept across restarts.
    #[arg(long = "state-dir", value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

fn parse_secret(s: &str) -> Result<Secret, String> {
    let s = s.trim();
    if s.is_empty() { Err("must not be empty".to_owned()) } else { Ok(Secret::new(s)) }
}

/// Why the command line cannot be turned into a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
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

/// Validated agent configuration.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The hub's agent endpoint (`https`).
    pub hub_url: Uri,
    /// PEM bundle of the CA trusted for the hub connection.
    pub hub_ca_pem: Vec<u8>,
    /// Bootstrap token, used only when no credential is stored yet.
    pub bootstrap_token: Option<Secret>,
    /// Kubeconfig for the local apiserver (`None`: in-cluster).
    pub kubeconfig: Option<PathBuf>,
    /// Where the credential and agent id live.
    pub state_dir: PathBuf,
}

impl Args {
    /// Validates the arguments and reads the hub CA.
    pub fn into_config(self) -> Result<AgentConfig, ConfigError> {
        let hub_url = parse_hub_url(&self.hub)?;
        let hub_ca_pem = std::fs::read(&self.hub_ca)
            .map_err(|source| ConfigError::HubCa { path: self.hub_ca.clone(), source })?;
        if !String::from_utf8_lossy(&hub_ca_pem).contains("-----BEGIN CERTIFICATE-----") {
            return Err(ConfigError::HubCaNotPem(self.hub_ca));
        }
        Ok(AgentConfig {
            hub_url,
            hub_ca_pem,
            bootstrap_token: self.token,
            kubeconfig: self.kubeconfig,
            state_dir: self.state_dir,
        })
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
        assert_eq!(args.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(args.token.as_ref().map(Secret::expose), Some("ferryboot.x.y"));
        assert!(!format!("{args:?}").contains("ferryboot"), "the token never shows in Debug");
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
    fn hub_ca_must_be_pem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "garbage").expect("write");
        let args = Args {
            hub: "https://hub".into(),
            hub_ca: ca,
            token: None,
            kubeconfig: None,
            state_dir: dir.path().into(),
        };
        assert!(matches!(args.into_config(), Err(ConfigError::HubCaNotPem(_))));
    }
}

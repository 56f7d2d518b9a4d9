//! The agent's lifecycle: enroll once, then keep a hub session up,
//! reconnecting with backoff, until shut down or refused.

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::backoff::{Backoff, HEALTHY_AFTER};
use crate::config::AgentConfig;
use crate::credential::{CREDENTIAL_FILE, StateDir};
use crate::enroll;
use crate::error::AgentError;
use crate::session::{self, SessionParams};
use crate::upstream::Upstream;

/// Where the agent is in its lifecycle (observable through
/// [`Agent::state`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentState {
    /// Loading configuration and state.
    Starting,
    /// Exchanging the bootstrap token for a credential.
    Enrolling,
    /// Dialling the hub or waiting for its welcome.
    Connecting,
    /// Session established.
    Connected {
        /// Cluster name from the hub's welcome.
        cluster: String,
        /// Session id from the hub's welcome.
        session_id: String,
    },
    /// Session lost; waiting before reconnecting.
    Disconnected,
    /// The agent has stopped.
    Stopped,
}

/// The agent: owns its configuration and publishes its state.
#[derive(Debug)]
pub struct Agent {
    config: AgentConfig,
    state: watch::Sender<AgentState>,
}

impl Agent {
    /// An agent for `config` (nothing is dialled until [`Agent::run`]).
    pub fn new(config: AgentConfig) -> Self {
        Self { config, state: watch::Sender::new(AgentState::Starting) }
    }

    /// Follows the agent's state (e.g. to wait until it is connected).
    pub fn state(&self) -> watch::Receiver<AgentState> {
        self.state.subscribe()
    }

    /// Runs until `shutdown` fires (`Ok`) or something retrying cannot fix
    /// happens: a refused bootstrap token or credential, unusable state
    /// directory or kubeconfig (`Err`).
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), AgentError> {
        let result = self.run_inner(&shutdown).await;
        self.state.send_replace(AgentState::Stopped);
        result
    }

    async fn run_inner(&self, shutdown: &CancellationToken) -> Result<(), AgentError> {
        install_crypto_provider();
        let state_dir = StateDir::new(&self.config.state_dir);
        state_dir.ensure()?;
        let agent_id = state_dir.agent_id()?;
        let upstream = Arc::new(Upstream::load(self.config.kubeconfig.as_deref()).await?);
        info!(
            %agent_id,
            hub = %self.config.hub_url,
            apiserver = %upstream.base(),
            version = ferry::FERRY_VERSION,
            "ferry-agent starting"
        );

        self.state.send_replace(AgentState::Enrolling);
        let Some(stored) = enroll::ensure_credential(&self.config, &state_dir, agent_id, shutdown).await?
        else {
            return Ok(());
        };

        let params =
            SessionParams { config: self.config.clone(), credential: stored.credential, agent_id, upstream };
        let mut backoff = Backoff::reconnect();
        loop {
            let end = session::run(&params, &self.state, shutdown).await;
            self.state.send_replace(AgentState::Disconnected);
            let error = match end.result {
                Ok(()) => {
                    info!("ferry-agent stopped");
                    return Ok(());
                }
                Err(e) if e.is_fatal() => {
                    let credential = state_dir.path().join(CREDENTIAL_FILE);
                    error!(error = %e, path = %credential.display(), "the hub refused the agent credential");
                    return Err(AgentError::CredentialRevoked { message: e.to_string(), credential });
                }
                Err(e) => e,
            };
            if end.connected_for.is_some_and(|d| d >= HEALTHY_AFTER) {
                backoff.reset();
            }
            let delay = backoff.next_delay();
            session::log_end(&error, delay);
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.cancelled() => {
                    info!("ferry-agent stopped");
                    return Ok(());
                }
            }
        }
    }
}

/// rustls needs one process-wide crypto provider when several are compiled
/// in; ring is the one this workspace builds with. Installing twice is
/// harmless (the second attempt is ignored).
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

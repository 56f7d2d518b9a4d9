//! The agent's lifecycle: get a credential (stored, or by enrolling), then
//! keep a hub session up, reconnecting with backoff, renewing the
//! credential before it expires, until shut down.
//!
//! Nothing the hub refuses is fatal: a refused or used token, a deleted or
//! denied cluster, an unknown certificate all lead to a clear error in the
//! log and a slow retry (the operator may fix it: approve the cluster,
//! apply a new `agent.yaml`), never to a crash loop or a spin. Only local
//! problems the agent cannot wait out (no token at all, an unusable
//! kubeconfig or state dir) stop it.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use ferry::proto::v1::{HubReplica, Welcome};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use http::Uri;

use crate::backoff::{Backoff, HEALTHY_AFTER, RECONNECT_CAP};
use crate::config::AgentConfig;
use crate::connections::Targets;
use crate::credential::{CredentialStore, StateDir, StoredCredential};
use crate::enroll;
use crate::error::AgentError;
use crate::health::{self, Apiserver};
use crate::metrics::AgentMetrics;
use crate::session::{self, Dial, SessionError, SessionParams};
use crate::upstream::Upstream;

/// Where the agent is in its lifecycle (observable through
/// [`Agent::state`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentState {
    /// Loading configuration and state.
    Starting,
    /// Getting a credential (enrolling with the bootstrap token).
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
    /// The hub refused the agent (token, credential, or the cluster was
    /// denied or deleted); retrying slowly.
    Refused {
        /// What the hub said.
        reason: String,
    },
    /// The agent has stopped.
    Stopped,
}

/// The agent: owns its configuration and publishes its state.
#[derive(Debug)]
pub struct Agent {
    config: AgentConfig,
    state: watch::Sender<AgentState>,
    /// What the last status probe found of the apiserver (for `/readyz`).
    apiserver: watch::Sender<Apiserver>,
    metrics: Arc<AgentMetrics>,
}

impl Agent {
    /// An agent for `config` (nothing is dialled until [`Agent::run`]).
    pub fn new(config: AgentConfig) -> Self {
        Self {
            config,
            state: watch::Sender::new(AgentState::Starting),
            apiserver: watch::Sender::new(Apiserver::Unknown),
            metrics: Arc::default(),
        }
    }

    /// The agent's metrics (what `--metrics-listen` serves).
    pub fn metrics(&self) -> &Arc<AgentMetrics> {
        &self.metrics
    }

    /// Follows the agent's state (e.g. to wait until it is connected).
    pub fn state(&self) -> watch::Receiver<AgentState> {
        self.state.subscribe()
    }

    /// Runs until `shutdown` fires (`Ok`) or something retrying cannot fix
    /// happens: no bootstrap token and no credential, an unusable state
    /// directory or kubeconfig (`Err`).
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), AgentError> {
        use std::io::Write;
        let health = match self.config.health_listen {
            Some(addr) => {
                let h = health::serve(
                    addr,
                    self.state.subscribe(),
                    self.apiserver.subscribe(),
                    shutdown.child_token(),
                )
                .await?;
                // The bound address (port 0 picks one), for scripts and tests.
                println!("ferry-agent health: http://{}", h.addr);
                let _ = std::io::stdout().flush();
                Some(h)
            }
            None => None,
        };
        let metrics = match self.config.metrics_listen {
            Some(addr) => {
                let m = self.metrics.clone();
                let served = health::listen(addr, shutdown.child_token(), move |req| {
                    let accept = req.headers().get(http::header::ACCEPT).and_then(|v| v.to_str().ok());
                    let (code, content_type, body) =
                        crate::metrics::answer(&m, req.uri().path(), accept.unwrap_or_default());
                    (http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::OK), content_type, body)
                })
                .await
                .map_err(|source| AgentError::Metrics { addr, source })?;
                println!("ferry-agent metrics: http://{}/metrics", served.addr);
                let _ = std::io::stdout().flush();
                Some(served)
            }
            None => None,
        };
        let result = self.run_inner(&shutdown).await;
        self.state.send_replace(AgentState::Stopped);
        for server in [health, metrics].into_iter().flatten() {
            server.stop().await;
        }
        result
    }

    async fn run_inner(&self, shutdown: &CancellationToken) -> Result<(), AgentError> {
        install_crypto_provider();
        let kube_config = Upstream::load_config(self.config.kubeconfig.as_deref()).await?;
        let upstream = Arc::new(Upstream::from_kube_config(&kube_config)?);
        let (store, agent_id) = match &self.config.credential_secret {
            Some(secret) => {
                let client = kube::Client::try_from(kube_config.clone())
                    .map_err(|e| AgentError::Upstream(crate::upstream::UpstreamError::Client(e)))?;
                let store = CredentialStore::Secret { secret: secret.clone(), client };
                (store, self.config.agent_id.unwrap_or_default())
            }
            None => {
                let dir = StateDir::new(&self.config.state_dir);
                dir.ensure()?;
                let id = match self.config.agent_id {
                    Some(id) => id,
                    None => dir.agent_id()?,
                };
                (CredentialStore::Dir(dir), id)
            }
        };
        info!(
            %agent_id,
            hub = %self.config.hubs,
            hub_connections = self.config.hub_connections,
            apiserver = %upstream.base(),
            credential_store = %store.describe(),
            version = ferry::FERRY_VERSION,
            "ferry-agent starting"
        );

        let mut refused = Backoff::refused();
        let mut rejected: Option<String> = None;
        loop {
            self.state.send_replace(AgentState::Enrolling);
            let enrolled =
                enroll::ensure_credential(&self.config, &store, agent_id, rejected.as_deref(), shutdown);
            let Some(stored) = enrolled.await? else {
                info!("ferry-agent stopped");
                return Ok(());
            };
            let params = SessionParams {
                config: self.config.clone(),
                credential: Arc::new(Mutex::new(stored)),
                store: store.clone(),
                agent_id,
                upstream: upstream.clone(),
                metrics: self.metrics.clone(),
                apiserver: self.apiserver.clone(),
            };
            match self.keep_connected(&params, shutdown).await {
                None => {
                    info!("ferry-agent stopped");
                    return Ok(());
                }
                // The credential was refused: enroll again (a new token
                // may be there) after a pause, never with that certificate.
                Some((reason, certificate)) => {
                    rejected = Some(certificate);
                    self.state.send_replace(AgentState::Refused { reason });
                    if !refused.wait(shutdown).await {
                        info!("ferry-agent stopped");
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Keeps `--hub-connections` sessions up with the credential in
    /// `params`, each on its own hub replica ([`Targets`]), until shutdown
    /// (`None`) or the hub refuses the credential for good (`Some((reason,
    /// the refused certificate))`, after the other sessions closed). The
    /// agent's state is the best of its sessions' (connected while any is).
    async fn keep_connected(
        &self,
        params: &SessionParams,
        shutdown: &CancellationToken,
    ) -> Option<(String, String)> {
        let slots = self.config.hub_connections.max(1);
        let targets = Targets::new(self.config.hubs.clone(), slots);
        let stop = shutdown.child_token();
        let states: Vec<watch::Sender<AgentState>> =
            (0..slots).map(|_| watch::Sender::new(AgentState::Connecting)).collect();
        let mut followed: Vec<watch::Receiver<AgentState>> =
            states.iter().map(watch::Sender::subscribe).collect();
        let mut running: FuturesUnordered<_> = states
            .iter()
            .enumerate()
            .map(|(slot, state)| self.keep_slot(slot, params, &targets, state, &stop))
            .collect();
        let mut refused = None;
        loop {
            self.state.send_if_modified(|s| {
                let merged = merged_state(&mut followed);
                let changed = *s != merged;
                *s = merged;
                changed
            });
            let any_changed =
                futures_util::future::select_all(followed.iter_mut().map(|r| Box::pin(r.changed())));
            tokio::select! {
                end = running.next() => match end {
                    Some(None) => {}
                    Some(Some(refusal)) => {
                        refused = Some(refusal);
                        break;
                    }
                    None => break,
                },
                _ = any_changed => {}
            }
        }
        // A refusal ends every session (they share the credential).
        stop.cancel();
        while running.next().await.is_some() {}
        refused
    }

    /// One session slot: sessions one after another on a replica no other
    /// slot holds, until `stop` (`None`) or the hub refuses the credential
    /// for good.
    async fn keep_slot(
        &self,
        slot: usize,
        params: &SessionParams,
        targets: &Targets,
        state: &watch::Sender<AgentState>,
        stop: &CancellationToken,
    ) -> Option<(String, String)> {
        let mut backoff = Backoff::reconnect();
        let mut refused = Backoff::refused();
        // URLs that failed since this slot's last session: after a failure
        // the next one is dialled at once (with jitter only), and the
        // backoff applies once none is left.
        let mut failed: Vec<Uri> = Vec::new();
        loop {
            if !current_or_stored(params).await {
                return Some(("the credential expired".into(), params.credential_pem()));
            }
            let Some(url) = targets.pick(slot, &failed) else {
                // Every replica known is held by another slot or failed:
                // wait for a change, or retry the failed ones later.
                state.send_replace(AgentState::Disconnected);
                let delay = if failed.is_empty() { RECONNECT_CAP } else { backoff.next_delay() };
                tokio::select! {
                    () = targets.changed() => {}
                    () = tokio::time::sleep(delay) => failed.clear(),
                    () = stop.cancelled() => return None,
                }
                continue;
            };
            if slot == 0 {
                // Enrollment dials the URL the first slot last used.
                self.config.hubs.set_current(&url);
            }
            let welcomed = |w: &Welcome| targets.welcomed(slot, w);
            let replicas = |list: &[HubReplica]| targets.named(list);
            let dial = Dial { url: url.clone(), welcomed: &welcomed, replicas: &replicas };
            let end = session::run(params, &dial, state, stop).await;
            targets.release(slot);
            state.send_replace(AgentState::Disconnected);
            let error = match end.result {
                Ok(()) => return None,
                Err(e) => e,
            };
            self.metrics.session_failed(&error);
            if end.connected_for.is_some() {
                failed.clear();
            }
            if end.connected_for.is_some_and(|d| d >= HEALTHY_AFTER) {
                backoff.reset();
                refused.reset();
            }
            failed.push(url);
            let delay = match &error {
                SessionError::Unauthenticated(message) => {
                    error!(hub_says = %message, "the hub refused the agent certificate");
                    // Another replica may have stored a newer one.
                    if adopt_stored(params).await {
                        backoff.next_delay()
                    } else {
                        return Some((message.clone(), params.credential_pem()));
                    }
                }
                SessionError::Refused(message) => {
                    error!(hub_says = %message, "the hub refused the session; retrying slowly");
                    state.send_replace(AgentState::Refused { reason: message.clone() });
                    refused.next_delay()
                }
                _ if targets.has_candidate(slot, &failed) => {
                    info!(slot, "trying the next hub replica");
                    Backoff::reconnect().next_delay()
                }
                _ => {
                    failed.clear();
                    backoff.next_delay()
                }
            };
            session::log_end(&error, delay);
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = stop.cancelled() => return None,
            }
        }
    }
}

/// The agent's state from its sessions': connected while any is, else
/// refused if any was, else the first slot's.
fn merged_state(slots: &mut [watch::Receiver<AgentState>]) -> AgentState {
    let states: Vec<AgentState> = slots.iter_mut().map(|r| r.borrow_and_update().clone()).collect();
    let connected = states.iter().find(|s| matches!(s, AgentState::Connected { .. }));
    let refused = states.iter().find(|s| matches!(s, AgentState::Refused { .. }));
    connected.or(refused).unwrap_or(&states[0]).clone()
}

/// Makes sure the session credential is valid now, taking the stored one if
/// it is newer (another replica renewed, or this one's save of a renewal is
/// all that is left after a restart); `false` when neither is valid.
async fn current_or_stored(params: &SessionParams) -> bool {
    adopt_stored(params).await;
    let current = params.credential.lock().unwrap_or_else(|p| p.into_inner());
    current.valid_at(SystemTime::now())
}

/// Replaces the session credential with the stored one when that expires
/// later; `true` when it did.
async fn adopt_stored(params: &SessionParams) -> bool {
    let stored: Option<StoredCredential> = match params.store.load().await {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %crate::error::report(&e), "cannot read the stored credential");
            None
        }
    };
    let Some(stored) = stored else { return false };
    let mut current = params.credential.lock().unwrap_or_else(|p| p.into_inner());
    if stored.not_after > current.not_after && stored.cert_pem != current.cert_pem {
        info!(expires = %humantime::format_rfc3339_seconds(stored.not_after), "using the newer stored credential");
        *current = stored;
        true
    } else {
        false
    }
}

/// rustls needs one process-wide crypto provider when several are compiled
/// in; ring is the one this workspace builds with, in Ferry's suite order
/// (`ferry::tls`), so the agent's hub and apiserver connections offer
/// AES-128-GCM first. Installing twice is harmless (the second attempt is
/// ignored).
fn install_crypto_provider() {
    let _ = ferry::tls::crypto_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_is_connected_while_any_session_is() {
        let slots: Vec<watch::Sender<AgentState>> =
            (0..2).map(|_| watch::Sender::new(AgentState::Connecting)).collect();
        let mut followed: Vec<_> = slots.iter().map(watch::Sender::subscribe).collect();
        assert_eq!(merged_state(&mut followed), AgentState::Connecting);
        let connected = AgentState::Connected { cluster: "edge".into(), session_id: "s-2".into() };
        slots[1].send_replace(connected.clone());
        slots[0].send_replace(AgentState::Disconnected);
        assert_eq!(merged_state(&mut followed), connected, "the second session serves");
        slots[1].send_replace(AgentState::Refused { reason: "denied".into() });
        assert_eq!(merged_state(&mut followed), AgentState::Refused { reason: "denied".into() });
        slots[1].send_replace(AgentState::Disconnected);
        assert_eq!(merged_state(&mut followed), AgentState::Disconnected);
    }
}

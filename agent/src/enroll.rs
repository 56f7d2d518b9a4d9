//! Getting a credential: the stored one while it is valid, else a new
//! certificate from `Tunnel.Enroll` for the single-use bootstrap token and
//! a key made here.
//!
//! A refused token is not fatal: another replica may have used it and be
//! about to store the shared credential, or the operator may replace the
//! token (a new `agent.yaml` updates the mounted file). The agent checks
//! the store again and retries slowly, saying what to do, instead of
//! exiting or spinning.

use std::time::SystemTime;

use ferry::ids::AgentId;
use ferry::proto::v1::{EnrollRequest, EnrollResponse};
use ferry::secret::Secret;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tracing::{error, info, warn};

use crate::backoff::Backoff;
use crate::config::{AgentConfig, TokenSource};
use crate::credential::{CredentialStore, StoredCredential, new_key_and_request};
use crate::error::{AgentError, report};
use crate::hub::{self, HubError};

/// A credential the agent may use now: the stored one if still valid (and
/// not the certificate the hub just `rejected`), or a fresh one from
/// enrollment (then stored). `None` when `shutdown` fired first.
pub(crate) async fn ensure_credential(
    config: &AgentConfig,
    store: &CredentialStore,
    agent_id: AgentId,
    rejected: Option<&str>,
    shutdown: &CancellationToken,
) -> Result<Option<StoredCredential>, AgentError> {
    let mut transient = Backoff::reconnect();
    let mut refused = Backoff::refused();
    let mut said_expired = false;
    loop {
        match store.load().await {
            Ok(Some(stored))
                if stored.valid_at(SystemTime::now()) && Some(stored.cert_pem.as_str()) != rejected =>
            {
                info!(cluster = %stored.cluster, store = %store.describe(), "using the stored credential");
                return Ok(Some(stored));
            }
            Ok(Some(stored)) if !said_expired => {
                warn!(
                    cluster = %stored.cluster,
                    expired = %humantime::format_rfc3339_seconds(stored.not_after),
                    "the stored credential has expired (the agent was off for longer than its lifetime); enrolling again"
                );
                said_expired = true;
            }
            Ok(_) => {}
            // A store that cannot be read now (apiserver restarting) is
            // retried; one that is corrupt needs a person.
            Err(e @ crate::credential::CredentialError::Kube { .. }) => {
                warn!(error = %report(&e), "cannot read the stored credential; retrying");
                if !transient.wait(shutdown).await {
                    return Ok(None);
                }
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        let source =
            config.bootstrap_token.as_ref().ok_or_else(|| AgentError::MissingToken(store.describe()))?;
        let token = match (source.read(), source) {
            (Some(token), _) => token,
            (None, TokenSource::File(path)) => {
                warn!(path = %path.display(), "no bootstrap token in the token file yet; waiting");
                if !refused.wait(shutdown).await {
                    return Ok(None);
                }
                continue;
            }
            (None, TokenSource::Value(_)) => return Err(AgentError::MissingToken(store.describe())),
        };
        info!(hub = %config.hubs.current(), "enrolling with the bootstrap token");
        let attempt = tokio::select! {
            r = enroll_once(config, &token, agent_id) => r,
            () = shutdown.cancelled() => return Ok(None),
        };
        match attempt {
            Ok((response, key)) => {
                let stored = StoredCredential::new(response.cluster_name, response.certificate_pem, key)
                    .map_err(AgentError::BadCertificate)?;
                if let Err(e) = store.save(&stored).await {
                    // Usable now; only a restart would need a token again.
                    error!(error = %report(&e), "enrolled, but the credential could not be stored");
                } else {
                    info!(
                        cluster = %stored.cluster,
                        store = %store.describe(),
                        expires = %humantime::format_rfc3339_seconds(stored.not_after),
                        "enrolled; credential stored"
                    );
                }
                return Ok(Some(stored));
            }
            Err(Attempt::Refused { code, message }) => {
                let delay = refused.ceiling();
                error!(
                    ?code,
                    hub_says = %message,
                    retry_within_s = delay.as_secs(),
                    "the hub refused the bootstrap token; checking for a credential stored by another replica, then retrying"
                );
                if !refused.wait(shutdown).await {
                    return Ok(None);
                }
            }
            Err(Attempt::Fatal(e)) => return Err(e),
            Err(Attempt::Retry(e)) => {
                // Another replica may answer where this one failed.
                config.hubs.advance();
                let delay = transient.next_delay();
                warn!(error = %e, retry_in_ms = delay.as_millis(), "enrollment failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => return Ok(None),
                }
            }
        }
    }
}

enum Attempt {
    Fatal(AgentError),
    Refused { code: Code, message: String },
    Retry(String),
}

async fn enroll_once(
    config: &AgentConfig,
    token: &Secret,
    agent_id: AgentId,
) -> Result<(EnrollResponse, Secret), Attempt> {
    let mut client = hub::connect(config, &config.hubs.current(), None).await.map_err(|e| match e {
        HubError::Connect(_) => Attempt::Retry(report(&e)),
        other => Attempt::Fatal(other.into()),
    })?;
    let (key, csr_der) = new_key_and_request().map_err(|e| Attempt::Fatal(AgentError::Key(e.to_string())))?;
    let request = EnrollRequest {
        bootstrap_token: token.expose().to_owned(),
        agent_id: agent_id.to_string(),
        csr_der: csr_der.into(),
    };
    match client.enroll(request).await {
        Ok(response) => Ok((response.into_inner(), key)),
        Err(status) if refuses_token(status.code()) => {
            Err(Attempt::Refused { code: status.code(), message: status.message().to_owned() })
        }
        Err(status) => Err(Attempt::Retry(format!("{:?}: {}", status.code(), status.message()))),
    }
}

/// Status codes that mean the token itself is refused: retrying the same
/// token cannot succeed.
fn refuses_token(code: Code) -> bool {
    matches!(
        code,
        Code::Unauthenticated
            | Code::PermissionDenied
            | Code::InvalidArgument
            | Code::NotFound
            | Code::ResourceExhausted
    )
}

//! Enrollment: trading the single-use bootstrap token for the cluster's own
//! credential, once, and keeping it in the state directory.

use ferry::ids::AgentId;
use ferry::proto::v1::{EnrollRequest, EnrollResponse};
use ferry::secret::Secret;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::config::AgentConfig;
use crate::credential::{CREDENTIAL_FILE, StateDir, StoredCredential};
use crate::error::{AgentError, report};
use crate::hub::{self, HubError};

/// The stored credential, or a fresh one from `Tunnel.Enroll`. Transient
/// failures (hub unreachable) are retried with backoff; a refused token is
/// fatal. `None` when `shutdown` fired first.
pub(crate) async fn ensure_credential(
    config: &AgentConfig,
    state_dir: &StateDir,
    agent_id: AgentId,
    shutdown: &CancellationToken,
) -> Result<Option<StoredCredential>, AgentError> {
    if let Some(stored) = state_dir.load_credential()? {
        info!(cluster = %stored.cluster, "using the stored credential");
        return Ok(Some(stored));
    }
    let token = config
        .bootstrap_token
        .as_ref()
        .ok_or_else(|| AgentError::MissingToken(state_dir.path().to_owned()))?;
    info!(hub = %config.hub_url, "enrolling with the bootstrap token");
    let mut backoff = Backoff::reconnect();
    loop {
        let attempt = tokio::select! {
            r = enroll_once(config, token, agent_id) => r,
            () = shutdown.cancelled() => return Ok(None),
        };
        let error = match attempt {
            Ok(response) => {
                if response.credential.trim().is_empty() {
                    return Err(AgentError::EmptyCredential);
                }
                let stored = StoredCredential {
                    cluster: response.cluster_name,
                    credential: Secret::new(response.credential.trim()),
                };
                state_dir.save_credential(&stored)?;
                info!(
                    cluster = %stored.cluster,
                    path = %state_dir.path().join(CREDENTIAL_FILE).display(),
                    "enrolled; credential stored"
                );
                return Ok(Some(stored));
            }
            Err(Attempt::Fatal(e)) => return Err(e),
            Err(Attempt::Retry(e)) => e,
        };
        let delay = backoff.next_delay();
        warn!(error = %error, retry_in_ms = delay.as_millis(), "enrollment failed; retrying");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return Ok(None),
        }
    }
}

enum Attempt {
    Fatal(AgentError),
    Retry(String),
}

async fn enroll_once(
    config: &AgentConfig,
    token: &Secret,
    agent_id: AgentId,
) -> Result<EnrollResponse, Attempt> {
    let mut client = hub::connect(config).await.map_err(|e| match e {
        HubError::Connect(_) => Attempt::Retry(report(&e)),
        other => Attempt::Fatal(other.into()),
    })?;
    let request =
        EnrollRequest { bootstrap_token: token.expose().to_owned(), agent_id: agent_id.to_string() };
    match client.enroll(request).await {
        Ok(response) => Ok(response.into_inner()),
        Err(status) if refuses_token(status.code()) => Err(Attempt::Fatal(AgentError::EnrollRejected {
            code: status.code(),
            message: status.message().to_owned(),
        })),
        Err(status) => Err(Attempt::Retry(format!("{:?}: {}", status.code(), status.message()))),
    }
}

/// Status codes that mean the token itself is refused: retrying the same
/// token cannot succeed.
fn refuses_token(code: Code) -> bool {
    matches!(code, Code::Unauthenticated | Code::PermissionDenied | Code::InvalidArgument | Code::NotFound)
}

//! The agent's fatal errors, and error reports for logs.

use std::path::PathBuf;

use crate::credential::CredentialError;
use crate::hub::HubError;
use crate::upstream::UpstreamError;

/// Why the agent stopped (retrying would not help).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The state directory cannot be used.
    #[error(transparent)]
    State(#[from] CredentialError),
    /// The apiserver client cannot be set up (kubeconfig, in-cluster
    /// service account, TLS settings).
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The hub endpoint settings were refused.
    #[error(transparent)]
    Hub(#[from] HubError),
    /// Not enrolled yet and no bootstrap token given.
    #[error("not enrolled: no credential in {0:?}; pass a bootstrap token with --token (or FERRY_TOKEN)")]
    MissingToken(PathBuf),
    /// The hub refused the bootstrap token (wrong, used or expired).
    #[error(
        "the hub refused the bootstrap token ({code:?}: {message}); register the cluster again for a fresh token"
    )]
    EnrollRejected {
        /// gRPC status code.
        code: tonic::Code,
        /// The hub's message.
        message: String,
    },
    /// The hub answered the enrollment with an unusable credential.
    #[error("the hub returned an empty credential")]
    EmptyCredential,
    /// The hub refused the stored credential: it was revoked or the cluster
    /// was deleted.
    #[error(
        "the hub refused the agent credential ({message}); it may have been revoked: delete {credential:?} and enroll again with a new bootstrap token"
    )]
    CredentialRevoked {
        /// The hub's message.
        message: String,
        /// The credential file to delete.
        credential: PathBuf,
    },
}

/// An error and its sources on one line (`outer: inner: root`), for logs:
/// transport errors often say little at the top level.
pub fn report(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !text.ends_with(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn report_walks_the_chain() {
        let e = Outer(std::io::Error::other("root cause"));
        assert_eq!(report(&e), "outer: root cause");
    }
}

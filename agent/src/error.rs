//! The agent's fatal errors, and error reports for logs.

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
    #[error(
        "not enrolled: no valid credential in the {0}; pass a bootstrap token with --token-file FILE (or FERRY_TOKEN)"
    )]
    MissingToken(String),
    /// The hub answered the enrollment with an unusable certificate.
    #[error("the hub returned an unusable certificate: {0}")]
    BadCertificate(String),
    /// A key or certificate request could not be made.
    #[error("cannot make a key: {0}")]
    Key(String),
    /// The health endpoint cannot listen.
    #[error("cannot listen on {addr} for health checks")]
    Health {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The metrics endpoint cannot listen.
    #[error("cannot listen on {addr} for metrics (--metrics-listen)")]
    Metrics {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
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

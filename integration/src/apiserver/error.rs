//! Why the test apiserver could not start.

use std::io;

/// A failure to start a [`TestApiserver`](super::TestApiserver).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Generating the CA or serving certificate failed.
    #[error("generating the test certificates failed")]
    Certificate(#[source] rcgen::Error),
    /// Building the TLS configuration failed.
    #[error("building the TLS configuration failed")]
    Tls(#[source] rustls::Error),
    /// Binding or inspecting the listening socket failed.
    #[error("binding {addr} failed")]
    Bind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// The underlying failure.
        #[source]
        source: io::Error,
    },
    /// Rendering the kubeconfig failed.
    #[error("rendering the kubeconfig failed")]
    Kubeconfig(#[source] serde_yaml::Error),
}

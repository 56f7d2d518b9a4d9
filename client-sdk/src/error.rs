//! Errors from the management API, in terms a user can act on.
//!
//! gRPC status codes and transport failures are mapped once, here. TLS
//! failures get special care: a hub that rejects the client certificate shows
//! up as a TLS alert deep in the transport error chain (with TLS 1.3 only on
//! the first request, after the handshake seemed to succeed), and "cannot
//! connect" would send the user looking in the wrong place.

use std::error::Error as StdError;

use tonic::Code;

/// Why a management API call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManagementError {
    /// The hub URL or TLS material cannot be used to build a connection.
    #[error("invalid hub connection settings: {0}")]
    Config(String),
    /// The hub could not be reached, or the TLS handshake failed on our side
    /// (e.g. the hub's certificate is not signed by the pinned CA).
    #[error("cannot connect to the hub at {hub}: {reason}")]
    Connection {
        /// The hub URL.
        hub: String,
        /// What went wrong, with a hint where there is one.
        reason: String,
    },
    /// The hub did not accept the caller's credentials (client certificate
    /// from another CA, expired, or missing).
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller is authenticated but not allowed to make this call.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The named cluster (or other object) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request was refused as malformed (bad name, bad duration).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The operation did not finish in time.
    #[error("{0}")]
    Timeout(String),
    /// The hub is up but cannot serve the call now (no agent connected for
    /// the cluster, its store unavailable, shutting down).
    #[error("{0}")]
    Unavailable(String),
    /// The hub answered with something this client does not understand.
    #[error("unexpected response from the hub: {0}")]
    InvalidResponse(String),
    /// Any other failure the hub reported.
    #[error("the hub failed the request ({code:?}): {message}")]
    Other {
        /// The gRPC status code.
        code: Code,
        /// The hub's message.
        message: String,
    },
}

/// Hint appended when the hub cannot be reached at all.
const REACH_HINT: &str = "check that the hub is running and the kubeconfig's server URL is right";

/// Hint appended when the hub refuses our certificate.
const CERT_HINT: &str = "use a kubeconfig whose client certificate was issued by this hub's CA \
    (e.g. DATA_DIR/admin.kubeconfig on the hub) and has not expired";

impl ManagementError {
    /// Maps a gRPC status from a call to the hub at `hub`.
    pub fn from_status(status: &tonic::Status, hub: &str) -> Self {
        // Statuses synthesised from transport failures carry the cause as
        // their source; the hub's own statuses never do.
        if let Some(source) = StdError::source(status) {
            return Self::from_transport_error(source, hub);
        }
        let message = status.message().to_owned();
        match status.code() {
            Code::Unauthenticated => {
                Self::Unauthenticated(format!("the hub rejected our credentials: {message}; {CERT_HINT}"))
            }
            Code::PermissionDenied => Self::PermissionDenied(message),
            Code::NotFound => Self::NotFound(message),
            Code::InvalidArgument | Code::OutOfRange => Self::InvalidArgument(message),
            Code::DeadlineExceeded => Self::Timeout(message),
            Code::Unavailable => Self::Unavailable(message),
            code => Self::Other { code, message },
        }
    }

    /// Maps a failure to connect to (or talk to) the hub at `hub`.
    pub fn from_transport_error(err: &(dyn StdError + 'static), hub: &str) -> Self {
        if let Some(e) = Self::from_tls_error(err, hub) {
            return e;
        }
        Self::Connection { hub: hub.to_owned(), reason: format!("{}; {REACH_HINT}", describe_chain(err)) }
    }

    /// The TLS-level reason in `err`'s chain (certificate refused by the hub,
    /// or hub certificate not trusted by us), if it has one.
    pub(crate) fn from_tls_error(err: &(dyn StdError + 'static), hub: &str) -> Option<Self> {
        find_rustls_error(err).and_then(classify_tls).map(|e| e.with_hub(hub))
    }

    fn with_hub(self, hub: &str) -> Self {
        match self {
            Self::Connection { reason, .. } => Self::Connection { hub: hub.to_owned(), reason },
            other => other,
        }
    }
}

fn find_rustls_error<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // rustls errors travel inside io::Error, whose `source` skips the
        // payload it wraps; look inside explicitly.
        if let Some(tls) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(tls);
        }
        current = e.source();
    }
    None
}

fn classify_tls(err: &rustls::Error) -> Option<ManagementError> {
    use rustls::AlertDescription as A;
    match err {
        rustls::Error::AlertReceived(
            alert @ (A::BadCertificate
            | A::UnknownCA
            | A::CertificateRequired
            | A::CertificateUnknown
            | A::CertificateExpired
            | A::CertificateRevoked
            | A::UnsupportedCertificate
            | A::AccessDenied
            | A::DecryptError),
        ) => Some(ManagementError::Unauthenticated(format!(
            "the hub refused our client certificate (TLS alert: {alert:?}); {CERT_HINT}"
        ))),
        rustls::Error::InvalidCertificate(reason) => Some(ManagementError::Connection {
            hub: String::new(),
            reason: format!(
                "the hub's TLS certificate is not trusted ({reason}); check that the kubeconfig's \
                 certificate-authority-data is this hub's CA and the server URL names the hub"
            ),
        }),
        _ => None,
    }
}

/// Joins an error and its causes with `: `, dropping repeats (hyper and
/// tonic often wrap an error and repeat its text).
fn describe_chain(err: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current = Some(err);
    while let Some(e) = current {
        let text = e.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = e.source();
    }
    // The outermost layers are generic ("transport error"); the innermost
    // cause is the useful part, so keep at most the last two.
    let skip = parts.len().saturating_sub(2);
    parts[skip..].join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HUB: &str = "https://hub:8443";

    #[test]
    fn status_codes_map_to_variants() {
        let map = |s: tonic::Status| ManagementError::from_status(&s, HUB);
        assert_eq!(
            map(tonic::Status::permission_denied("registering clusters needs ferry:admins")),
            ManagementError::PermissionDenied("registering clusters needs ferry:admins".into())
        );
        assert_eq!(
            map(tonic::Status::not_found("cluster \"x\" not found")),
            ManagementError::NotFound("cluster \"x\" not found".into())
        );
        assert_eq!(
            map(tonic::Status::invalid_argument("bad name")),
            ManagementError::InvalidArgument("bad name".into())
        );
        assert_eq!(map(tonic::Status::deadline_exceeded("late")), ManagementError::Timeout("late".into()));
        assert_eq!(
            map(tonic::Status::unavailable("shutting down")),
            ManagementError::Unavailable("shutting down".into())
        );
        assert_eq!(
            map(tonic::Status::internal("store broken")),
            ManagementError::Other { code: Code::Internal, message: "store broken".into() }
        );
        let e = map(tonic::Status::unauthenticated("no client certificate"));
        assert_eq!(
            e.to_string(),
            format!("the hub rejected our credentials: no client certificate; {CERT_HINT}")
        );
    }

    #[test]
    fn messages_read_well() {
        assert_eq!(
            ManagementError::PermissionDenied("needs ferry:admins".into()).to_string(),
            "permission denied: needs ferry:admins"
        );
        assert_eq!(
            ManagementError::Connection { hub: HUB.into(), reason: "connection refused".into() }.to_string(),
            "cannot connect to the hub at https://hub:8443: connection refused"
        );
    }

    #[test]
    fn tls_alerts_inside_io_errors_mean_rejected_certificate() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA),
        );
        let status = tonic::Status::from_error(Box::new(io));
        let e = ManagementError::from_status(&status, HUB);
        assert!(
            matches!(&e, ManagementError::Unauthenticated(m) if m.contains("refused our client certificate")),
            "{e:?}"
        );
    }

    #[test]
    fn untrusted_hub_certificate_is_a_connection_error() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        let e = ManagementError::from_transport_error(&io, HUB);
        assert!(
            matches!(&e, ManagementError::Connection { hub, reason } if hub == HUB && reason.contains("certificate-authority-data")),
            "{e:?}"
        );
    }

    #[test]
    fn plain_transport_errors_keep_their_cause() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let e = ManagementError::from_transport_error(&io, HUB);
        assert_eq!(
            e.to_string(),
            format!("cannot connect to the hub at {HUB}: Connection refused; {REACH_HINT}")
        );
    }
}

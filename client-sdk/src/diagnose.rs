//! Finding out why a connection to the hub died, after the fact.
//!
//! With TLS 1.3 the client finishes its handshake before the server has
//! checked the client certificate. A hub that rejects the certificate sends
//! an alert and closes; by then hyper has a connection, and the pending gRPC
//! call only learns "connection closed", the alert being lost in the
//! connection task. So when a call fails at the transport level we replay
//! the TLS handshake once on our own and read the first bytes: an alert there
//! names the real problem. This costs nothing on the happy path.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _};
use tokio::io::AsyncReadExt as _;

use crate::error::ManagementError;
use crate::kubeconfig::{HubConfig, HubCredential};

/// Bound on the whole probe: connect, handshake, first read. The hub sends
/// its HTTP/2 SETTINGS (or an alert) as soon as TLS is up.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Replays the TLS handshake to the hub and returns the TLS-level reason the
/// hub refused us (or we refused the hub), if there is one. `None` means the
/// probe found nothing more specific than what the caller already has.
pub(crate) async fn tls_failure(config: &HubConfig, hub: &str) -> Option<ManagementError> {
    let probe = async {
        let tls_config = client_config(config)?;
        let authority = config.server.authority()?;
        let host = authority.host().trim_start_matches('[').trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(443);
        let name = config.tls_server_name.as_deref().unwrap_or(host).to_owned();
        let name = ServerName::try_from(name).ok()?;
        let tcp = tokio::net::TcpStream::connect((host, port)).await.ok()?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_config));
        let mut tls = match connector.connect(name, tcp).await {
            Ok(tls) => tls,
            Err(e) => return classified(&e, hub),
        };
        let mut first = [0u8; 1];
        match tls.read(&mut first).await {
            Err(e) => classified(&e, hub),
            Ok(_) => None,
        }
    };
    let found = tokio::time::timeout(PROBE_TIMEOUT, probe).await.ok().flatten();
    tracing::debug!(?found, "TLS probe after a transport failure");
    found
}

fn classified(e: &std::io::Error, hub: &str) -> Option<ManagementError> {
    ManagementError::from_tls_error(e, hub)
}

/// The same trust and identity tonic uses: the hub CA as the only root, our
/// client certificate, ALPN h2.
fn client_config(config: &HubConfig) -> Option<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(config.ca_pem.as_bytes()) {
        roots.add(cert.ok()?).ok()?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots);
    let mut tls = match &config.credential {
        HubCredential::ClientCert { cert_pem, key_pem } => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<_, _>>().ok()?;
            let key = PrivateKeyDer::from_pem_slice(key_pem.expose().as_bytes()).ok()?;
            builder.with_client_auth_cert(chain, key).ok()?
        }
        HubCredential::Token(_) => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![b"h2".to_vec()];
    Some(tls)
}

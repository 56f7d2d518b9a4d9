//! The connection to the hub: one TLS HTTP/2 channel that every tunnel call
//! of a session shares, and the metadata those calls carry.

use std::time::Duration;

use ferry::limits::MAX_FRAME_SIZE;
use ferry::metadata;
use ferry::proto::v1::tunnel_client::TunnelClient;
use http::Uri;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::config::AgentConfig;
use crate::credential::StoredCredential;

/// How long dialling the hub (TCP and TLS) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 PING period on the hub connection, also while idle, so a dead
/// path (NAT timeout, silent firewall) is noticed without traffic.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a PING may stay unanswered before the connection is dropped.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The generated tunnel client over the shared channel.
pub type HubClient = TunnelClient<Channel>;

/// Why the hub cannot be dialled.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The endpoint or TLS settings were refused (bad URL or CA).
    #[error("invalid hub endpoint: {0}")]
    Endpoint(#[source] tonic::transport::Error),
    /// TCP, TLS or HTTP/2 setup failed.
    #[error("cannot connect to the hub: {0}")]
    Connect(#[source] tonic::transport::Error),
    /// The credential or session id cannot be sent as metadata.
    #[error("the {0} is not a valid gRPC metadata value")]
    Metadata(&'static str),
}

/// The hub endpoint: TLS trusting only the configured CA, server name from
/// the URL, the agent's client certificate when it has one (enrollment
/// goes without), TCP_NODELAY, HTTP/2 keepalive, and the tunnel's shared
/// window and frame sizes.
pub fn endpoint(
    config: &AgentConfig,
    url: &Uri,
    credential: Option<&StoredCredential>,
) -> Result<Endpoint, HubError> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&config.hub_ca_pem))
        .domain_name(tls_domain(url));
    if let Some(c) = credential {
        tls = tls.identity(Identity::from_pem(&c.cert_pem, c.key_pem.expose()));
    }
    Ok(Endpoint::from(url.clone())
        .tls_config(tls)
        .map_err(HubError::Endpoint)?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .initial_stream_window_size(ferry::limits::H2_STREAM_WINDOW)
        .initial_connection_window_size(ferry::limits::H2_CONNECTION_WINDOW)
        .max_frame_size(ferry::limits::H2_MAX_FRAME_SIZE))
}

/// Dials the hub at `url` (presenting `credential`, if any) and returns a
/// client over the new connection. Every URL, whether given with `--hub` or
/// named by the hub, is verified the same way: against the hub CA only, for
/// the URL's host.
pub async fn connect(
    config: &AgentConfig,
    url: &Uri,
    credential: Option<&StoredCredential>,
) -> Result<HubClient, HubError> {
    let channel = endpoint(config, url, credential)?.connect().await.map_err(HubError::Connect)?;
    Ok(client(channel))
}

/// A tunnel client over `channel` accepting frames up to the shared limit.
pub fn client(channel: Channel) -> HubClient {
    TunnelClient::new(channel)
        .max_decoding_message_size(MAX_FRAME_SIZE)
        .max_encoding_message_size(MAX_FRAME_SIZE)
}

/// The name the hub's certificate must carry: the URL host without IPv6
/// brackets.
fn tls_domain(url: &Uri) -> String {
    let host = url.host().unwrap_or_default();
    host.trim_start_matches('[').trim_end_matches(']').to_owned()
}

/// Metadata of Proxy calls: the session they belong to. (The connection's
/// client certificate authenticates every call.)
#[derive(Clone, Debug)]
pub struct CallAuth {
    session: AsciiMetadataValue,
}

impl CallAuth {
    /// `ferry-session: <session_id>`.
    pub fn for_session(session_id: &str) -> Result<Self, HubError> {
        let session =
            AsciiMetadataValue::try_from(session_id).map_err(|_| HubError::Metadata("session id"))?;
        Ok(Self { session })
    }

    /// Adds the metadata to a call.
    pub fn apply<T>(&self, request: &mut tonic::Request<T>) {
        request.metadata_mut().insert(metadata::SESSION, self.session.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_comes_from_the_url() {
        assert_eq!(tls_domain(&Uri::from_static("https://hub.example.com:8443")), "hub.example.com");
        assert_eq!(tls_domain(&Uri::from_static("https://[::1]:8443")), "::1");
    }

    #[test]
    fn call_metadata() {
        let auth = CallAuth::for_session("s-1").expect("valid");
        let mut req = tonic::Request::new(());
        auth.apply(&mut req);
        assert_eq!(req.metadata().get("ferry-session").expect("set"), "s-1");
        assert!(req.metadata().get("authorization").is_none(), "the certificate authenticates");
        assert!(CallAuth::for_session("bad\nvalue").is_err());
    }
}

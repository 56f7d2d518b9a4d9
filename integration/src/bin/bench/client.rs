//! Load-generator clients: hyper over rustls, with the connection under the
//! benchmark's control (one per client, or a fresh one per request).
//!
//! Both paths use the same client code, TLS provider and HTTP version; only
//! the address, trust anchor, credential and path prefix differ. Like
//! client-go, clients never resume TLS sessions and use Go's HTTP/2 windows.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use ferry_client_sdk::{HubConfig, HubCredential};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Per-stream HTTP/2 receive window, as Go's HTTP/2 transport (client-go).
pub const H2_STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// Per-connection HTTP/2 receive window, as Go's HTTP/2 transport.
pub const H2_CONNECTION_WINDOW: u32 = 1024 * 1024 * 1024;

/// HTTP version a client speaks (chosen by ALPN).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// HTTP/1.1 (also what upgrades use).
    H1,
    /// HTTP/2.
    H2,
}

/// Where a client sends requests: the backend directly, or the hub.
#[derive(Clone)]
pub struct Target {
    addr: SocketAddr,
    authority: String,
    server_name: ServerName<'static>,
    h1: Arc<ClientConfig>,
    h2: Arc<ClientConfig>,
    prefix: String,
    auth: Option<HeaderValue>,
}

fn tls_config(ca_pem: &str, client: Option<(&str, &str)>, alpn: &[u8]) -> anyhow::Result<Arc<ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.context("CA PEM")?)?;
    }
    let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut config = match client {
        Some((cert, key)) => {
            let certs = CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<Vec<_>, _>>()?;
            builder.with_client_auth_cert(certs, PrivateKeyDer::from_pem_slice(key.as_bytes())?)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

impl Target {
    /// Straight to the backend with its bearer token.
    pub fn direct(addr: SocketAddr, ca_pem: &str, token: &str) -> anyhow::Result<Self> {
        Ok(Self {
            addr,
            authority: addr.to_string(),
            server_name: ServerName::IpAddress(addr.ip().into()),
            h1: tls_config(ca_pem, None, b"http/1.1")?,
            h2: tls_config(ca_pem, None, b"h2")?,
            prefix: String::new(),
            auth: Some(HeaderValue::from_str(&format!("Bearer {token}"))?),
        })
    }

    /// Through a proxy at `addr` whose serving certificate `ca_pem` signed
    /// (for `127.0.0.1`), sending `token` as a bearer token if given.
    pub fn via(addr: SocketAddr, ca_pem: &str, token: Option<&str>) -> anyhow::Result<Self> {
        Ok(Self {
            addr,
            authority: addr.to_string(),
            server_name: ServerName::IpAddress(addr.ip().into()),
            h1: tls_config(ca_pem, None, b"http/1.1")?,
            h2: tls_config(ca_pem, None, b"h2")?,
            prefix: String::new(),
            auth: token.map(|t| HeaderValue::from_str(&format!("Bearer {t}"))).transpose()?,
        })
    }

    /// Through the hub, with the client certificate of a `ferryctl kubeconfig`.
    pub fn tunnel(config: &HubConfig) -> anyhow::Result<Self> {
        let host = config.server.host().context("hub URL without host")?;
        let port = config.server.port_u16().unwrap_or(443);
        let addr: SocketAddr = format!("{host}:{port}").parse().context("the bench expects an IP hub URL")?;
        let name = config.tls_server_name.clone().unwrap_or_else(|| host.to_string());
        let client = match &config.credential {
            HubCredential::ClientCert { cert_pem, key_pem } => Some((cert_pem.as_str(), key_pem.expose())),
            HubCredential::Token(_) => anyhow::bail!("the bench issues certificate kubeconfigs"),
        };
        Ok(Self {
            addr,
            authority: format!("{host}:{port}"),
            server_name: ServerName::try_from(name)?,
            h1: tls_config(&config.ca_pem, client, b"http/1.1")?,
            h2: tls_config(&config.ca_pem, client, b"h2")?,
            prefix: config.server.path().trim_end_matches('/').to_string(),
            auth: None,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Opens a new TCP + TLS + HTTP connection.
    pub async fn connect(&self, proto: Proto) -> anyhow::Result<Conn> {
        let tcp = TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let config = match proto {
            Proto::H1 => self.h1.clone(),
            Proto::H2 => self.h2.clone(),
        };
        let tls = TlsConnector::from(config).connect(self.server_name.clone(), tcp).await?;
        let io = TokioIo::new(tls);
        // The connection drivers end when their `SendRequest` is dropped.
        match proto {
            Proto::H1 => {
                let (send, conn) = hyper::client::conn::http1::handshake(io).await?;
                tokio::spawn(async move {
                    let _ = conn.with_upgrades().await;
                });
                Ok(Conn::H1(send))
            }
            Proto::H2 => {
                let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .initial_stream_window_size(H2_STREAM_WINDOW)
                    .initial_connection_window_size(H2_CONNECTION_WINDOW)
                    .handshake(io)
                    .await?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Ok(Conn::H2(send))
            }
        }
    }

    /// A request for `path` (an apiserver path with query).
    pub fn request(&self, method: Method, path: &str) -> Request<Empty<Bytes>> {
        let uri = format!("https://{}{}{}", self.authority, self.prefix, path);
        let mut req = Request::new(Empty::new());
        *req.method_mut() = method;
        *req.uri_mut() = uri.parse().unwrap_or_default();
        if let Ok(host) = HeaderValue::from_str(&self.authority) {
            req.headers_mut().insert(header::HOST, host);
        }
        req.headers_mut().insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        if let Some(auth) = &self.auth {
            req.headers_mut().insert(header::AUTHORIZATION, auth.clone());
        }
        req
    }

    /// A GET for `path`.
    pub fn get(&self, path: &str) -> Request<Empty<Bytes>> {
        self.request(Method::GET, path)
    }

    /// An HTTP/1.1 upgrade request (as kubectl port-forward sends).
    pub fn upgrade(&self, path: &str) -> Request<Empty<Bytes>> {
        let mut req = self.request(Method::POST, path);
        req.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        req.headers_mut().insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
        req.headers_mut().insert("x-stream-protocol-version", HeaderValue::from_static("portforward.k8s.io"));
        req
    }
}

/// One client connection.
pub enum Conn {
    /// HTTP/1.1.
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    /// HTTP/2.
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

impl Conn {
    /// Sends one request and returns the response head.
    pub async fn send(&mut self, mut req: Request<Empty<Bytes>>) -> anyhow::Result<Response<Incoming>> {
        Ok(match self {
            Conn::H1(s) => {
                // HTTP/1.1 wants origin-form.
                let pq = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
                *req.uri_mut() = pq.parse()?;
                s.ready().await?;
                s.send_request(req).await?
            }
            Conn::H2(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
        })
    }

    /// A handle for another task on the same HTTP/2 connection.
    pub fn h2_clone(&self) -> Option<Conn> {
        match self {
            Conn::H2(s) => Some(Conn::H2(s.clone())),
            Conn::H1(_) => None,
        }
    }

    /// Sends a request, expects 200 and reads the whole body; returns its length.
    pub async fn fetch(&mut self, req: Request<Empty<Bytes>>) -> anyhow::Result<usize> {
        let resp = self.send(req).await?;
        if resp.status() != StatusCode::OK {
            bail!("status {}", resp.status());
        }
        drain(resp.into_body()).await
    }
}

/// Reads a body to its end, counting bytes without keeping them.
pub async fn drain(mut body: Incoming) -> anyhow::Result<usize> {
    let mut n = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            n += data.len();
        }
    }
    Ok(n)
}

/// Latency percentiles over samples.
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let rank = ((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
    samples[rank - 1]
}

/// Milliseconds as f64.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Time one future.
pub async fn timed<T>(f: impl Future<Output = T>) -> (T, Duration) {
    let start = Instant::now();
    let out = f.await;
    (out, start.elapsed())
}

//! The listener: one address for gRPC (agents, management, `grpc.health.v1`
//! and server reflection) and the HTTPS gateway (kubectl), told apart by
//! content type; and, with `--health-listen`, a plain-text address serving
//! only `grpc.health.v1` and `/healthz` for Kubernetes probes (the kubelet's
//! gRPC probe speaks no TLS).
//!
//! Health answers anyone (it says only whether the hub serves); reflection
//! needs a caller credential, like every management call.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ferry::identity::Identity;
use ferry::limits::MAX_FRAME_SIZE;
use ferry::proto::v1::access_server::AccessServer;
use ferry::proto::v1::audit_server::AuditServer;
use ferry::proto::v1::clusters_server::ClustersServer;
use ferry::proto::v1::proxy_server::ProxyServer;
use ferry::proto::v1::tunnel_server::TunnelServer;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::service::Routes;
use tower::ServiceExt;
use tracing::{debug, info, warn};

use crate::api::access::AccessService;
use crate::api::audit::AuditService;
use crate::api::clusters::ClustersService;
use crate::api::proxy::ProxyService;
use crate::audit::{AuditLog, Sink};
use crate::auth::{self, ADMIN_GROUP, ADMIN_USER, Peer};
use crate::config::{HubConfig, MetricsListen, StoreConfig};
use crate::etcd::EtcdStore;
use crate::files;
use crate::gateway::{self, BoxError, HubBody};
use crate::kubeconfig::{Credential, KubeconfigSpec, render};
use crate::metered_store::MeteredStore;
use crate::metrics::HubMetrics;
use crate::pki::{ADMIN_CERT_LIFETIME, Ca, CertScope, PeerCert, PkiError, parse_peer_cert};
use crate::state::HubState;
use crate::store::{FileStore, Store, StoreError};
use crate::tunnel::TunnelService;

/// Time a client has to finish the TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 keep-alive ping period; a dead agent connection is noticed within
/// this plus [`H2_KEEPALIVE_TIMEOUT`].
pub const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a keep-alive ping may go unanswered.
pub const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Concurrent HTTP/2 streams per agent connection (parked + in flight +
/// control).
pub const H2_MAX_STREAMS: u32 = 50_000;
/// Concurrent HTTP/2 streams per caller connection: client-go multiplexes
/// every request of a client (a controller's watches included) over one
/// connection; kube-apiserver allows 1000 by default, the hub twice that.
pub const H2_MAX_CALLER_STREAMS: u32 = 2_000;
/// Streams the hub itself may reset over one agent connection's life before
/// h2 sends GOAWAY (h2 counts them and never forgets; its default of 1024
/// would end a long-lived agent connection after 1024 cancelled requests).
/// The hub closes request streams in order, so this is only a backstop
/// against a peer that provokes resets on purpose. Caller connections keep
/// h2's default.
pub const H2_MAX_LOCAL_RESETS: usize = 100_000;
/// Largest HTTP/1.1 request head from a caller.
pub const H1_MAX_HEAD: usize = 128 * 1024;

/// Errors starting the hub.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data dir could not be prepared.
    #[error("data dir {dir}: {source}")]
    DataDir {
        /// The dir.
        dir: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// CA or certificate failure.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// Store failure.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// TLS configuration failure.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// Client verifier failure.
    #[error("client verifier: {0}")]
    Verifier(String),
    /// Binding the health address failed.
    #[error("health endpoint on {addr}: {source}")]
    HealthBind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Binding the metrics address failed.
    #[error("metrics endpoint on {addr}: {source}")]
    MetricsBind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The audit log could not be opened.
    #[error("audit log {path}: {source}")]
    Audit {
        /// The file.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Binding the listen address failed.
    #[error("listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// A hub that has bound its address and prepared its state, not yet serving.
pub struct Hub {
    state: Arc<HubState>,
    listener: TcpListener,
    health_listener: Option<TcpListener>,
    metrics_listener: Option<TcpListener>,
    tls: TlsAcceptor,
    local_addr: SocketAddr,
    admin_kubeconfig: std::path::PathBuf,
}

/// Path prefix of the gRPC server reflection services.
const REFLECTION_PREFIX: &str = "/grpc.reflection.";

impl Hub {
    /// Prepares the data dir (CA, store, serving certificate, admin
    /// kubeconfig) and binds the listen address.
    pub async fn bind(config: HubConfig) -> Result<Hub, StartError> {
        let dir = config.data_dir.clone();
        let io = |source| StartError::DataDir { dir: dir.display().to_string(), source };
        std::fs::create_dir_all(&dir).map_err(io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        }
        let ca = Ca::load_or_create(&dir)?;
        let metrics = Arc::new(HubMetrics::default());
        let (inner, etcd): (Arc<dyn Store>, _) = match &config.store {
            StoreConfig::Embedded => (Arc::new(FileStore::open(&dir)?), None),
            StoreConfig::Etcd(etcd) => {
                let store = EtcdStore::open(etcd).await?;
                let at = (store.client().clone(), store.keys().clone());
                (Arc::new(store), Some(at))
            }
        };
        let store: Arc<dyn Store> = Arc::new(MeteredStore::new(inner, metrics.clone()));
        let audit = match AuditLog::open(config.audit.clone(), metrics.clone()) {
            Ok(a) => Arc::new(a),
            Err(source) => {
                let path = match &config.audit {
                    Sink::File { path, .. } => path.display().to_string(),
                    other => format!("{other:?}"),
                };
                return Err(StartError::Audit { path, source });
            }
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Bind { addr: config.listen, source })?;
        let local_addr =
            listener.local_addr().map_err(|source| StartError::Bind { addr: config.listen, source })?;
        let health_listener = match config.health_listen {
            Some(addr) => Some(
                TcpListener::bind(addr).await.map_err(|source| StartError::HealthBind { addr, source })?,
            ),
            None => None,
        };
        let metrics_listener = match config.metrics_listen {
            MetricsListen::Off => None,
            MetricsListen::Default(addr) => crate::metrics::bind(addr, false)
                .await
                .map_err(|source| StartError::MetricsBind { addr, source })?,
            MetricsListen::At(addr) => crate::metrics::bind(addr, true)
                .await
                .map_err(|source| StartError::MetricsBind { addr, source })?,
        };
        let advertise_url = config.advertise_url.clone().unwrap_or_else(|| format!("https://{local_addr}"));
        let mut hosts = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
        // Peers verify the peer URL's host (--peer-url) too.
        for url in std::iter::once(&advertise_url).chain(config.peer_url.as_ref()) {
            if let Ok(u) = url.parse::<http::Uri>()
                && let Some(h) = u.host()
            {
                hosts.push(h.trim_start_matches('[').trim_end_matches(']').to_owned());
            }
        }
        if !config.listen.ip().is_unspecified() {
            hosts.push(config.listen.ip().to_string());
        }
        let (chain, key) = ca.serving_cert(&hosts)?;
        let provider = Arc::new(ferry::tls::crypto_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der()).map_err(StartError::Tls)?;
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(|e| StartError::Verifier(e.to_string()))?;
        let mut tls = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)?;
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        // The hub's suite order (AES-128-GCM first) decides, not the client's.
        tls.ignore_client_order = true;

        files::write_atomic(&dir.join("ca.crt"), ca.cert_pem().as_bytes()).map_err(io)?;
        let admin_kubeconfig = dir.join("admin.kubeconfig");
        let admin =
            Identity { user: ADMIN_USER.into(), groups: vec![ADMIN_GROUP.into()], ..Default::default() };
        write_admin_kubeconfig(&admin_kubeconfig, &ca, &admin, &advertise_url).map_err(io)?;

        let replicas = match etcd {
            Some((client, keys)) => {
                let peer_url = config.peer_url.as_deref().unwrap_or(&advertise_url);
                Some(Arc::new(crate::etcd::replicas::start(client, keys, &advertise_url, peer_url).await))
            }
            None => None,
        };
        let forwarder = match &replicas {
            Some(set) => Some(crate::peer::Forwarder::new(&ca, &set.me().id, crate::peer::REPLICA_CERT_TTL)?),
            None => None,
        };
        let state = Arc::new(HubState {
            store,
            registry: Default::default(),
            ca,
            advertise_url,
            replicas,
            forwarder,
            limits: config.limits,
            agent_image: config.agent_image,
            identity_policy: config.identity_policy,
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            metrics,
            audit,
            serving: AtomicBool::new(false),
        });
        Ok(Hub {
            state,
            listener,
            health_listener,
            metrics_listener,
            tls: TlsAcceptor::from(Arc::new(tls)),
            local_addr,
            admin_kubeconfig,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The bound plain-text health address (`--health-listen`), if any.
    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.health_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The bound metrics address (`--metrics-listen`), if any.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Where audit events go.
    pub fn audit_sink(&self) -> &Sink {
        self.state.audit.sink()
    }

    /// The URL agents and kubectl use.
    pub fn url(&self) -> &str {
        &self.state.advertise_url
    }

    /// Path of the admin kubeconfig.
    pub fn admin_kubeconfig(&self) -> &Path {
        &self.admin_kubeconfig
    }

    /// Serves until `shutdown` completes, then stops every connection and
    /// task it started and waits for them.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let Hub { state, listener, health_listener, metrics_listener, tls, .. } = self;
        state.audit.start();
        state.tasks.spawn(crate::status::run_recorder(state.clone()));
        if let Some(listener) = metrics_listener {
            state.tasks.spawn(crate::metrics::serve(listener, state.clone()));
        }
        state.tasks.spawn(crate::etcd::replicas::publish_sessions(state.clone()));
        state.tasks.spawn(crate::status::follow_holders(state.clone()));
        state.tasks.spawn(crate::etcd::replicas::announce_replicas(state.clone()));
        state.tasks.spawn(crate::peer::keep_renewed(state.clone()));
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<TunnelServer<TunnelService>>().await;
        health.set_serving::<ClustersServer<ClustersService>>().await;
        health.set_serving::<AccessServer<AccessService>>().await;
        health.set_serving::<ProxyServer<ProxyService>>().await;
        health.set_serving::<AuditServer<AuditService>>().await;
        // One instance of each management service, shared by gRPC and the
        // console (so limits such as concurrent watches are the same).
        let (clusters, access) = (ClustersService::new(state.clone()), AccessService::new(state.clone()));
        let mut routes = Routes::new(
            TunnelServer::new(TunnelService::new(state.clone()))
                .max_decoding_message_size(MAX_FRAME_SIZE)
                .max_encoding_message_size(MAX_FRAME_SIZE),
        )
        .add_service(ClustersServer::new(clusters.clone()).max_decoding_message_size(MAX_FRAME_SIZE))
        .add_service(AccessServer::new(access.clone()).max_decoding_message_size(MAX_FRAME_SIZE))
        .add_service(
            ProxyServer::new(ProxyService::new(state.clone()))
                .max_decoding_message_size(MAX_FRAME_SIZE)
                .max_encoding_message_size(MAX_FRAME_SIZE),
        )
        .add_service(crate::peer::server(state.clone()))
        .add_service(AuditServer::new(AuditService::new(state.clone())))
        .add_service(health_service.clone());
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(ferry::proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        // The descriptors are compiled in: a failure here is a build bug,
        // which costs reflection only.
        match (reflection().build_v1(), reflection().build_v1alpha()) {
            (Ok(v1), Ok(v1alpha)) => routes = routes.add_service(v1).add_service(v1alpha),
            (Err(e), _) | (_, Err(e)) => warn!(error = %e, "gRPC server reflection unavailable"),
        }
        if let Some(listener) = health_listener {
            let health_routes = Routes::new(health_service);
            state.tasks.spawn(serve_health(listener, health_routes, state.clone()));
        }
        let console = Arc::new(crate::console::Console::new(state.clone(), clusters.clone(), access.clone()));
        let http = Arc::new(Protocols { agents: http_builder(true), callers: http_builder(false) });
        tokio::pin!(shutdown);
        state.serving.store(true, Ordering::Release);
        loop {
            let (tcp, peer) = tokio::select! {
                _ = &mut shutdown => break,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let (tls, routes, http, state2) = (tls.clone(), routes.clone(), http.clone(), state.clone());
            let console = console.clone();
            let cancel = state.shutdown.clone();
            state.tasks.spawn(async move {
                let stream = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
                let principal = match stream.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                    None => Peer::Anonymous,
                    Some(der) => match parse_peer_cert(der) {
                        Ok(PeerCert::User(caller)) => Peer::User(caller),
                        Ok(PeerCert::Agent(agent)) => Peer::Agent(agent),
                        Ok(PeerCert::Replica(id)) => Peer::Replica(id),
                        Err(reason) => Peer::Invalid(reason),
                    },
                };
                let is_agent = matches!(principal, Peer::Agent(_));
                // An agent's connection is closed at once when its cluster
                // is deleted or denied.
                let revoked = match &principal {
                    Peer::Agent(a) => state2.registry.agent_connection(a.cluster_id),
                    _ => CancellationToken::new(),
                };
                let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                    let (routes, state, principal) = (routes.clone(), state2.clone(), principal.clone());
                    let console = console.clone();
                    // Boxed: hyper spawns a task per request around this
                    // future, and moving the unboxed one (several KiB: the
                    // whole gateway path) cost more than the allocation.
                    Box::pin(async move {
                        let grpc = req
                            .headers()
                            .get(http::header::CONTENT_TYPE)
                            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
                        let resp: Response<HubBody> = if grpc {
                            if req.uri().path().starts_with(REFLECTION_PREFIX)
                                && let Err(status) = require_caller(&state, &principal, &req).await
                            {
                                return Ok(status.into_http());
                            }
                            req.extensions_mut().insert(principal);
                            req.extensions_mut().insert(gateway::ClientAddr(peer));
                            match routes.oneshot(req).await {
                                Ok(r) => r.map(|b| b.map_err(BoxError::from).boxed_unsync()),
                                Err(never) => match never {},
                            }
                        } else if crate::console::serves(req.uri().path()) {
                            req.extensions_mut().insert(gateway::ClientAddr(peer));
                            console.handle(principal, req).await
                        } else {
                            gateway::handle(state, principal, peer, req).await
                        };
                        Ok::<_, std::convert::Infallible>(resp)
                    })
                });
                let http = if is_agent { &http.agents } else { &http.callers };
                let conn = http.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                tokio::pin!(conn);
                tokio::select! {
                    r = conn.as_mut() => if let Err(e) = r {
                        debug!(%peer, error = %e, "connection ended with an error");
                    },
                    _ = cancel.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                    }
                    _ = revoked.cancelled() => debug!(%peer, "agent connection closed: its cluster was revoked"),
                }
            });
        }
        info!("hub shutting down");
        state.serving.store(false, Ordering::Release);
        health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
        state.shutdown.cancel();
        state.tasks.close();
        state.tasks.wait().await;
        // Last: the tasks above may still have ended requests and sessions.
        state.audit.close().await;
    }
}

/// HTTP settings for the two kinds of peer: agents (one long-lived
/// connection carrying every request of a cluster) and callers.
struct Protocols {
    agents: auto::Builder<TokioExecutor>,
    callers: auto::Builder<TokioExecutor>,
}

/// The HTTP/1.1 and HTTP/2 settings for agents or callers. Only agents get
/// the large stream count and the raised reset budget their traffic needs;
/// callers keep h2's default budget, its protection against rapid resets.
fn http_builder(agent: bool) -> auto::Builder<TokioExecutor> {
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .max_buf_size(H1_MAX_HEAD)
        .header_read_timeout(Duration::from_secs(30));
    let mut h2 = http.http2();
    h2.timer(TokioTimer::new())
        .initial_stream_window_size(ferry::limits::H2_STREAM_WINDOW)
        .initial_connection_window_size(ferry::limits::H2_CONNECTION_WINDOW)
        .max_frame_size(ferry::limits::H2_MAX_FRAME_SIZE)
        .keep_alive_interval(H2_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT)
        .max_header_list_size(ferry::limits::MAX_HEADER_BYTES as u32 * 2);
    if agent {
        h2.max_concurrent_streams(H2_MAX_STREAMS).max_local_error_reset_streams(H2_MAX_LOCAL_RESETS);
    } else {
        h2.max_concurrent_streams(H2_MAX_CALLER_STREAMS);
    }
    http
}

/// A call that needs any caller credential (a client certificate from the
/// hub CA or a hub bearer token).
async fn require_caller(state: &HubState, peer: &Peer, req: &Request<Incoming>) -> Result<(), tonic::Status> {
    let authorization = req.headers().get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    match auth::authenticate(state.store.as_ref(), peer, authorization).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(tonic::Status::unauthenticated(
            "a client certificate from the hub CA or a hub bearer token is required (grpcurl: -cert/-key, or -H 'authorization: Bearer TOKEN')",
        )),
        Err(e) => Err(tonic::Status::unauthenticated(e.to_string())),
    }
}

/// Serves `grpc.health.v1` and `GET /healthz` in plain text (HTTP/1.1 and
/// h2c) on `listener` until the hub shuts down.
async fn serve_health(listener: TcpListener, routes: Routes, state: Arc<HubState>) {
    let http = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let (tcp, peer) = tokio::select! {
            () = state.shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "health endpoint: accept failed");
                    continue;
                }
            },
        };
        let (routes, http, cancel) = (routes.clone(), http.clone(), state.shutdown.clone());
        let state2 = state.clone();
        state.tasks.spawn(async move {
            let state = state2.clone();
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (routes, state) = (routes.clone(), state.clone());
                async move {
                    let grpc = req
                        .headers()
                        .get(http::header::CONTENT_TYPE)
                        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
                    let resp: Response<HubBody> = if grpc {
                        match routes.oneshot(req).await {
                            Ok(r) => r.map(|b| b.map_err(BoxError::from).boxed_unsync()),
                            Err(never) => match never {},
                        }
                    } else {
                        let (code, text) = crate::health::answer(&state, req.uri().path())
                            .await
                            .unwrap_or((http::StatusCode::NOT_FOUND, "not found".into()));
                        let body = http_body_util::Full::new(bytes::Bytes::from(text));
                        let mut r = Response::new(body.map_err(|never| match never {}).boxed_unsync());
                        *r.status_mut() = code;
                        r
                    };
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let conn = http.serve_connection(TokioIo::new(tcp), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r {
                    debug!(%peer, error = %e, "health connection ended with an error");
                },
                () = cancel.cancelled() => conn.as_mut().graceful_shutdown(),
            }
        });
    }
}

fn write_admin_kubeconfig(path: &Path, ca: &Ca, admin: &Identity, server: &str) -> std::io::Result<()> {
    let issued =
        ca.client_cert(admin, &CertScope::All, ADMIN_CERT_LIFETIME).map_err(std::io::Error::other)?;
    let yaml = render(&KubeconfigSpec {
        name: "ferry-hub",
        server,
        ca_pem: ca.cert_pem(),
        credential: Credential::Cert { cert_pem: &issued.cert_pem, key_pem: issued.key_pem.expose() },
    });
    files::write_private(path, yaml.as_bytes())
}

//! In-process fakes for the agent's tests: a test CA, a fake hub (the real
//! generated gRPC service over TLS) and a fake apiserver (hyper over TLS,
//! HTTP/2 and HTTP/1.1 by ALPN). Everything listens on 127.0.0.1:0.

#![allow(dead_code)]

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use ferry::proto::v1::tunnel_server::{Tunnel, TunnelServer};
use ferry::proto::v1::{
    AgentControl, AgentFrame, EnrollRequest, EnrollResponse, Heartbeat, Hello, HubControl, HubFrame,
    OpenStreams, RenewResponse, Welcome, agent_control, agent_frame, hub_control, hub_frame,
};
use ferry_agent::{Agent, AgentConfig, AgentError, AgentState};
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Status, Streaming};

/// Upper bound for any single wait in a test: a hang fails instead of
/// blocking the suite. Not a sleep: waits end as soon as the event happens.
pub const WAIT: Duration = Duration::from_secs(20);

/// Awaits `f`, failing the test after [`WAIT`].
pub async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(WAIT, f).await.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// A throwaway CA issuing server certificates for 127.0.0.1 and agent
/// client certificates. Cheap to clone.
#[derive(Clone)]
pub struct Pki {
    pub ca_pem: String,
    issuer: Arc<Issuer<'static, KeyPair>>,
}

/// An agent certificate the fake hub signed.
pub struct AgentCert {
    pub cert_pem: String,
    pub serial: String,
    pub not_after: SystemTime,
}

/// A server certificate and key.
pub struct ServerCert {
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
    pub key_pem: String,
    pub key_der: Vec<u8>,
}

impl Pki {
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "ferry test CA");
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("CA cert");
        Self { ca_pem: cert.pem(), issuer: Arc::new(Issuer::new(params, key)) }
    }

    /// Signs an agent's certificate request, valid for `ttl`.
    pub fn sign_request(&self, csr_der: &[u8], ttl: Duration) -> Result<AgentCert, rcgen::Error> {
        let der = rustls_pki_types::CertificateSigningRequestDer::from(csr_der);
        let request = rcgen::CertificateSigningRequestParams::from_der(&der)?;
        let mut params = CertificateParams::default();
        let serial: [u8; 8] = rand_serial();
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let now = SystemTime::now();
        params.not_before = now.into();
        params.not_after = (now + ttl).into();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = rcgen::CertificateSigningRequestParams { params, public_key: request.public_key }
            .signed_by(&self.issuer)?;
        Ok(AgentCert { cert_pem: cert.pem(), serial: hex(&serial), not_after: now + ttl })
    }

    /// A key and a certificate for it, as an agent would hold after
    /// enrolling.
    pub fn agent_credential(&self, ttl: Duration) -> (AgentCert, String) {
        let key = KeyPair::generate().expect("key");
        let csr = CertificateParams::default().serialize_request(&key).expect("csr");
        (self.sign_request(csr.der(), ttl).expect("sign"), key.serialize_pem())
    }

    pub fn server_cert(&self) -> ServerCert {
        let params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).expect("params");
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("server cert");
        ServerCert {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
        }
    }

    pub fn write_ca(&self, dir: &Path) -> PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, &self.ca_pem).expect("write CA");
        path
    }
}

fn rand_serial() -> [u8; 8] {
    let id = uuid::Uuid::new_v4();
    let mut out = [0u8; 8];
    out.copy_from_slice(&id.as_bytes()[..8]);
    out[0] = (out[0] & 0x7f) | 0x01;
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The serial of the client certificate of a call's connection.
fn peer_serial<T>(request: &tonic::Request<T>) -> Option<String> {
    let certs = request.peer_certs()?;
    let (_, cert) = x509_parser::parse_x509_certificate(certs.first()?).ok()?;
    Some(hex(cert.raw_serial()))
}

// ---------------------------------------------------------------- fake hub

/// A request stream the agent parked at the fake hub.
pub struct Parked {
    pub to_agent: mpsc::Sender<Result<HubFrame, Status>>,
    pub from_agent: Streaming<AgentFrame>,
    /// Serial of the client certificate the call came with.
    pub serial: String,
    pub session: String,
}

impl Parked {
    pub async fn send(&self, frame: hub_frame::Frame) {
        self.to_agent.send(Ok(HubFrame { frame: Some(frame) })).await.expect("agent stream open");
    }

    /// The next frame from the agent (`None` when its side ended).
    pub async fn recv(&mut self) -> Option<agent_frame::Frame> {
        match within("an agent frame", self.from_agent.message()).await {
            Ok(Some(AgentFrame { frame })) => Some(frame.expect("frame set")),
            Ok(None) => None,
            Err(status) => panic!("agent stream failed: {status}"),
        }
    }
}

enum HubCommand {
    OpenStreams(u32),
    Kick,
}

struct HubState {
    bootstrap_token: String,
    pki: Pki,
    /// Lifetime of the certificates the hub signs.
    cert_ttl: Mutex<Duration>,
    /// Serials the hub accepts.
    valid: Mutex<HashSet<String>>,
    renewals: mpsc::Sender<String>,
    refusals: mpsc::Sender<String>,
    cluster: String,
    pool_size: u32,
    heartbeat_ms: u32,
    enrolls: AtomicUsize,
    /// When false the hub stops echoing heartbeats (a dead path).
    echo: AtomicBool,
    hellos: mpsc::Sender<Hello>,
    heartbeats: mpsc::Sender<Heartbeat>,
    parked: mpsc::Sender<Parked>,
    session: Mutex<Option<(String, mpsc::Sender<HubCommand>)>>,
}

/// The fake hub's observable side.
pub struct FakeHub {
    pub url: String,
    state: Arc<HubState>,
    pub hellos: mpsc::Receiver<Hello>,
    pub heartbeats: mpsc::Receiver<Heartbeat>,
    pub parked: mpsc::Receiver<Parked>,
    /// Serials of certificates issued by renewal.
    pub renewals: mpsc::Receiver<String>,
    refusals: mpsc::Receiver<String>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

pub const BOOTSTRAP_TOKEN: &str = "ferryboot.test.good";
pub const CLUSTER: &str = "edge-1";

impl FakeHub {
    pub async fn start(pki: &Pki, pool_size: u32) -> Self {
        Self::start_with(pki, pool_size, 1000).await
    }

    pub async fn start_with(pki: &Pki, pool_size: u32, heartbeat_ms: u32) -> Self {
        let cert = pki.server_cert();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind hub");
        let addr: SocketAddr = listener.local_addr().expect("hub addr");
        let (hellos_tx, hellos) = mpsc::channel(16);
        let (heartbeats_tx, heartbeats) = mpsc::channel(256);
        let (parked_tx, parked) = mpsc::channel(256);
        let (renewals_tx, renewals) = mpsc::channel(16);
        let (refusals_tx, refusals) = mpsc::channel(16);
        let state = Arc::new(HubState {
            bootstrap_token: BOOTSTRAP_TOKEN.into(),
            pki: pki.clone(),
            cert_ttl: Mutex::new(Duration::from_secs(3600)),
            valid: Mutex::new(HashSet::new()),
            renewals: renewals_tx,
            refusals: refusals_tx,
            cluster: CLUSTER.into(),
            pool_size,
            heartbeat_ms,
            enrolls: AtomicUsize::new(0),
            echo: AtomicBool::new(true),
            hellos: hellos_tx,
            heartbeats: heartbeats_tx,
            parked: parked_tx,
            session: Mutex::new(None),
        });
        let shutdown = CancellationToken::new();
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(&cert.cert_pem, &cert.key_pem))
            .client_ca_root(Certificate::from_pem(&pki.ca_pem))
            .client_auth_optional(true);
        let server = Server::builder()
            .tls_config(tls)
            .expect("hub TLS")
            .add_service(TunnelServer::new(HubService(state.clone())));
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            server
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop.cancelled_owned())
                .await
                .expect("hub serves");
        });
        Self {
            url: format!("https://{addr}"),
            state,
            hellos,
            heartbeats,
            parked,
            renewals,
            refusals,
            shutdown,
            task,
        }
    }

    /// Sets the lifetime of the certificates the hub signs from now on.
    pub fn set_cert_ttl(&self, ttl: Duration) {
        *self.state.cert_ttl.lock().expect("lock") = ttl;
    }

    /// A credential the hub accepts, as the agent keeps it in its state dir.
    pub fn write_credential(&self, state_dir: &Path) {
        let (cert, key) = self.state.pki.agent_credential(Duration::from_secs(3600));
        self.state.valid.lock().expect("lock").insert(cert.serial);
        std::fs::create_dir_all(state_dir).expect("state dir");
        std::fs::write(state_dir.join("cluster"), CLUSTER).expect("cluster");
        std::fs::write(state_dir.join("tls.key"), key).expect("key");
        std::fs::write(state_dir.join("tls.crt"), cert.cert_pem).expect("cert");
    }

    /// Forgets every certificate it issued (as if the cluster were deleted).
    pub fn revoke_all(&self) {
        self.state.valid.lock().expect("lock").clear();
    }

    /// Waits for the hub to refuse an enrollment.
    pub async fn next_refusal(&mut self) -> String {
        within("a refused enrollment", self.refusals.recv()).await.expect("hub running")
    }

    pub fn enrolls(&self) -> usize {
        self.state.enrolls.load(Ordering::SeqCst)
    }

    /// Stops answering heartbeats (the control stream stays open).
    pub fn go_silent(&self) {
        self.state.echo.store(false, Ordering::SeqCst);
    }

    /// Ends the current session's control stream.
    pub async fn kick(&self) {
        let tx = self.state.session.lock().expect("lock").as_ref().map(|(_, tx)| tx.clone());
        tx.expect("a session").send(HubCommand::Kick).await.expect("session alive");
    }

    /// Asks the agent for `count` more parked streams.
    pub async fn open_streams(&self, count: u32) {
        let tx = self.state.session.lock().expect("lock").as_ref().map(|(_, tx)| tx.clone());
        tx.expect("a session").send(HubCommand::OpenStreams(count)).await.expect("session alive");
    }

    pub async fn next_parked(&mut self) -> Parked {
        within("a parked stream", self.parked.recv()).await.expect("hub running")
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

struct HubService(Arc<HubState>);

impl HubState {
    /// Whether the call's client certificate is one the hub issued.
    fn accepts<T>(&self, request: &tonic::Request<T>) -> bool {
        peer_serial(request).is_some_and(|s| self.valid.lock().expect("lock").contains(&s))
    }

    fn issue(&self, csr: &[u8]) -> Result<AgentCert, Status> {
        let ttl = *self.cert_ttl.lock().expect("lock");
        let cert = self.pki.sign_request(csr, ttl).map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.valid.lock().expect("lock").insert(cert.serial.clone());
        Ok(cert)
    }
}

#[tonic::async_trait]
impl Tunnel for HubService {
    async fn enroll(
        &self,
        request: tonic::Request<EnrollRequest>,
    ) -> Result<tonic::Response<EnrollResponse>, Status> {
        let req = request.into_inner();
        if req.bootstrap_token != self.0.bootstrap_token || uuid::Uuid::parse_str(&req.agent_id).is_err() {
            let _ = self.0.refusals.try_send(req.agent_id);
            return Err(Status::unauthenticated("bootstrap token already used: run ferryctl register again"));
        }
        let cert = self.0.issue(&req.csr_der)?;
        self.0.enrolls.fetch_add(1, Ordering::SeqCst);
        Ok(tonic::Response::new(EnrollResponse {
            cluster_name: self.0.cluster.clone(),
            certificate_pem: cert.cert_pem,
            not_after_unix: cert
                .not_after
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        }))
    }

    type ControlStream = ReceiverStream<Result<HubControl, Status>>;

    async fn control(
        &self,
        request: tonic::Request<Streaming<AgentControl>>,
    ) -> Result<tonic::Response<Self::ControlStream>, Status> {
        if !self.0.accepts(&request) {
            return Err(Status::unauthenticated("credential revoked"));
        }
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let (cmd_tx, mut cmds) = mpsc::channel(16);
        let state = self.0.clone();
        let session_id = uuid::Uuid::new_v4().to_string();
        *state.session.lock().expect("lock") = Some((session_id.clone(), cmd_tx));
        tokio::spawn(async move {
            let Ok(Some(AgentControl { msg: Some(agent_control::Msg::Hello(hello)) })) =
                inbound.message().await
            else {
                return;
            };
            let _ = state.hellos.send(hello).await;
            let welcome = Welcome {
                protocol_version: ferry::PROTOCOL_VERSION,
                cluster_name: state.cluster.clone(),
                session_id,
                pool_size: state.pool_size,
                heartbeat_interval_ms: state.heartbeat_ms,
                notice: String::new(),
                ..Default::default()
            };
            let msg = |m| Ok(HubControl { msg: Some(m) });
            if tx.send(msg(hub_control::Msg::Welcome(welcome))).await.is_err() {
                return;
            }
            loop {
                tokio::select! {
                    m = inbound.message() => match m {
                        Ok(Some(AgentControl { msg: Some(agent_control::Msg::Heartbeat(hb)) })) => {
                            let _ = state.heartbeats.send(hb.clone()).await;
                            if !state.echo.load(Ordering::SeqCst) {
                                continue;
                            }
                            let echo = Heartbeat { sent_at_unix_ms: hb.sent_at_unix_ms, status: None, echo_unix_ms: hb.sent_at_unix_ms };
                            if tx.send(msg(hub_control::Msg::Heartbeat(echo))).await.is_err() {
                                return;
                            }
                        }
                        Ok(Some(AgentControl { msg: Some(agent_control::Msg::Renew(r)) })) => {
                            let answer = match state.issue(&r.csr_der) {
                                Ok(cert) => {
                                    let _ = state.renewals.send(cert.serial.clone()).await;
                                    RenewResponse {
                                        certificate_pem: cert.cert_pem,
                                        not_after_unix: cert
                                            .not_after
                                            .duration_since(SystemTime::UNIX_EPOCH)
                                            .map(|d| d.as_secs())
                                            .unwrap_or(0),
                                        error: String::new(),
                                    }
                                }
                                Err(e) => RenewResponse { error: e.message().to_owned(), ..Default::default() },
                            };
                            if tx.send(msg(hub_control::Msg::Renewed(answer))).await.is_err() {
                                return;
                            }
                        }
                        Ok(Some(_)) => {}
                        _ => return,
                    },
                    c = cmds.recv() => match c {
                        Some(HubCommand::OpenStreams(count)) => {
                            let _ = tx.send(msg(hub_control::Msg::OpenStreams(OpenStreams { count }))).await;
                        }
                        Some(HubCommand::Kick) | None => return,
                    },
                }
            }
        });
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }

    type ProxyStream = ReceiverStream<Result<HubFrame, Status>>;

    async fn proxy(
        &self,
        request: tonic::Request<Streaming<AgentFrame>>,
    ) -> Result<tonic::Response<Self::ProxyStream>, Status> {
        let serial = peer_serial(&request).unwrap_or_default();
        if !self.0.accepts(&request) {
            return Err(Status::unauthenticated("credential revoked"));
        }
        let session =
            request.metadata().get("ferry-session").and_then(|v| v.to_str().ok()).unwrap_or_default();
        let current = self.0.session.lock().expect("lock").as_ref().map(|(s, _)| s.clone());
        if current.as_deref() != Some(session) {
            return Err(Status::failed_precondition("unknown session"));
        }
        let session = session.to_owned();
        let (tx, rx) = mpsc::channel(16);
        let parked = Parked { to_agent: tx, from_agent: request.into_inner(), serial, session };
        self.0.parked.send(parked).await.map_err(|_| Status::unavailable("test over"))?;
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }
}

// ---------------------------------------------------------- fake apiserver

/// Response body type of the fake apiserver.
pub type StubBody = BoxBody<Bytes, Infallible>;

/// One request that reached the fake apiserver; the test answers it.
pub struct Exchange {
    pub request: Request<Incoming>,
    pub respond: oneshot::Sender<Response<StubBody>>,
}

pub const KUBE_VERSION: &str = "v1.31.0-fake";
pub const AGENT_SA_TOKEN: &str = "agent-sa-token";

/// A fake apiserver: answers `/version` itself and hands every other request
/// to the test.
pub struct FakeApiserver {
    pub addr: SocketAddr,
    pub exchanges: mpsc::Receiver<Exchange>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl FakeApiserver {
    pub async fn start(pki: &Pki) -> Self {
        let cert = pki.server_cert();
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(cert.key_der.clone().into());
        let mut tls =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("protocols")
                .with_no_client_auth()
                .with_single_cert(vec![cert.cert_der.clone().into()], key)
                .expect("apiserver TLS");
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind apiserver");
        let addr = listener.local_addr().expect("apiserver addr");
        let (tx, exchanges) = mpsc::channel(64);
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let (tcp, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
                    () = stop.cancelled() => break,
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                conns.spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let service = hyper::service::service_fn(move |req| handle(req, tx.clone()));
                    let _ =
                        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                            .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(tls), service)
                            .await;
                });
            }
            conns.shutdown().await;
        });
        Self { addr, exchanges, shutdown, task }
    }

    pub async fn next(&mut self) -> Exchange {
        within("a request at the apiserver", self.exchanges.recv()).await.expect("apiserver running")
    }

    /// A kubeconfig for this apiserver with the agent's token.
    pub fn kubeconfig(&self, dir: &Path, ca: &Path) -> PathBuf {
        write_kubeconfig(dir, &format!("https://{}", self.addr), ca)
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

pub fn write_kubeconfig(dir: &Path, server: &str, ca: &Path) -> PathBuf {
    let path = dir.join("kubeconfig");
    let yaml = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\nusers:\n- name: agent\n  user:\n    token: {AGENT_SA_TOKEN}\ncontexts:\n- name: local\n  context:\n    cluster: local\n    user: agent\ncurrent-context: local\n",
        ca = ca.display()
    );
    std::fs::write(&path, yaml).expect("write kubeconfig");
    path
}

async fn handle(
    req: Request<Incoming>,
    tx: mpsc::Sender<Exchange>,
) -> Result<Response<StubBody>, Infallible> {
    if req.uri().path() == "/version" {
        let body = format!(r#"{{"major":"1","minor":"31","gitVersion":"{KUBE_VERSION}"}}"#);
        return Ok(Response::new(Full::new(Bytes::from(body)).boxed()));
    }
    // The agent's own status probes: healthy, one Ready node.
    if matches!(req.uri().path(), "/readyz" | "/livez") {
        return Ok(Response::new(Full::new(Bytes::from_static(b"ok")).boxed()));
    }
    if req.uri().path() == "/api/v1/nodes" {
        let body = r#"{"kind":"NodeList","apiVersion":"v1","metadata":{},"items":[{"metadata":{"name":"n1"},"status":{"capacity":{"cpu":"2","memory":"8Gi"},"allocatable":{"cpu":"1900m","memory":"7Gi"},"conditions":[{"type":"Ready","status":"True"}]}}]}"#;
        return Ok(Response::new(Full::new(Bytes::from_static(body.as_bytes())).boxed()));
    }
    // The agent's own permission checks: all granted.
    if req.uri().path() == "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews" {
        let body = r#"{"apiVersion":"authorization.k8s.io/v1","kind":"SelfSubjectAccessReview","status":{"allowed":true}}"#;
        return Ok(Response::new(Full::new(Bytes::from_static(body.as_bytes())).boxed()));
    }
    let (respond, answer) = oneshot::channel();
    if tx.send(Exchange { request: req, respond }).await.is_err() {
        return Ok(status(503));
    }
    Ok(answer.await.unwrap_or_else(|_| status(500)))
}

pub fn status(code: u16) -> Response<StubBody> {
    let mut r = Response::new(Full::new(Bytes::new()).boxed());
    *r.status_mut() = http::StatusCode::from_u16(code).expect("status");
    r
}

// ---------------------------------------------------------------- the agent

/// An agent running in a task.
pub struct RunningAgent {
    pub state: watch::Receiver<AgentState>,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<Result<(), AgentError>>,
}

impl RunningAgent {
    pub fn start(config: AgentConfig) -> Self {
        let agent = Agent::new(config);
        let state = agent.state();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move { agent.run(token).await });
        Self { state, shutdown, task }
    }

    /// Waits until connected with a session other than `previous`.
    pub async fn connected(&mut self, previous: Option<&str>) -> (String, String) {
        let state = within(
            "the agent to connect",
            self.state.wait_for(|s| matches!(s, AgentState::Connected { session_id, .. } if Some(session_id.as_str()) != previous)),
        )
        .await
        .expect("agent running")
        .clone();
        match state {
            AgentState::Connected { cluster, session_id } => (cluster, session_id),
            _ => unreachable!(),
        }
    }

    /// Stops the agent and returns how it ended.
    pub async fn stop(self) -> Result<(), AgentError> {
        self.shutdown.cancel();
        within("the agent to stop", self.task).await.expect("agent task")
    }

    /// Waits for the agent to end by itself.
    pub async fn exit(self) -> Result<(), AgentError> {
        within("the agent to exit", self.task).await.expect("agent task")
    }
}

pub fn config(
    hub: &FakeHub,
    ca: &Path,
    kubeconfig: &Path,
    state_dir: &Path,
    token: Option<&str>,
) -> AgentConfig {
    ferry_agent::Args {
        hub: hub.url.clone(),
        hub_connections: 1,
        hub_ca: ca.to_owned(),
        token: token.map(ferry::secret::Secret::new),
        token_file: None,
        kubeconfig: Some(kubeconfig.to_owned()),
        state_dir: state_dir.to_owned(),
        credential_secret: None,
        agent_id: None,
        health_listen: None,
        metrics_listen: None,
        log_format: ferry_agent::config::LogFormat::Text,
        export: Default::default(),
        allow_system_identity: Vec::new(),
        status_interval: std::time::Duration::from_secs(10),
    }
    .into_config()
    .expect("valid config")
}

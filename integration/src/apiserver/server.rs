//! The server: its shared state, the builder, the accept loop (TLS, HTTP/1.1
//! and HTTP/2), and its lifecycle.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use ferry::secret::Secret;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::auth::{ADMIN_USER, UserInfo};
use super::defaults::{initial_node, prepare_create};
use super::error::StartError;
use super::logs::Logs;
use super::podfs::PodFiles;
use super::policy::bootstrap_objects;
use super::rbac::RbacRule;
use super::record::{RecordedRequest, Recorder};
use super::resources::ResourceKind;
use super::router;
use super::store::{ObjectKey, Store};
use super::tls::make_pki;
use super::tokens::Tokens;

/// How often watches that asked for bookmarks get one, by default.
pub const DEFAULT_BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);
/// How long a TLS handshake may take.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for connections to finish before aborting them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Pause after a failed `accept` (e.g. out of file descriptors).
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);
/// Namespaces that exist from the start.
const INITIAL_NAMESPACES: [&str; 4] = ["default", "kube-system", "kube-public", "kube-node-lease"];

/// Everything request handlers share.
pub(crate) struct State {
    pub admin_token: Secret,
    pub store: Store,
    pub logs: Logs,
    rbac: RwLock<Vec<RbacRule>>,
    /// Demo mode: no rule table was configured and the server is not
    /// strict (see `authz`).
    demo: AtomicBool,
    /// ServiceAccount tokens minted by the TokenRequest API.
    pub tokens: Tokens,
    /// Whether `/readyz` and `/livez` (with `/healthz`) pass.
    ready: AtomicBool,
    live: AtomicBool,
    pub recorder: Arc<Recorder>,
    /// Every pod's in-memory files (what `exec` commands see).
    pub files: PodFiles,
    /// Streaming sessions (`exec`, `attach`, `port-forward`) on upgraded
    /// connections, which outlive the HTTP connection task.
    pub sessions: TaskTracker,
    /// Cancelled at shutdown: ends watches, log follows and sessions.
    pub shutdown: CancellationToken,
    pub bookmark_interval: Duration,
    /// `127.0.0.1:PORT`, for `/api`'s `serverAddressByClientCIDRs`.
    pub server_address: String,
    pod_ips: AtomicU32,
}

impl State {
    /// The current RBAC rules.
    pub fn rules(&self) -> Vec<RbacRule> {
        self.rbac.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Replaces the RBAC rules (which ends demo mode).
    pub fn set_rules(&self, rules: Vec<RbacRule>) {
        *self.rbac.write().unwrap_or_else(PoisonError::into_inner) = rules;
        self.demo.store(false, Ordering::Relaxed);
    }

    /// Whether demo mode is on.
    pub fn demo_mode(&self) -> bool {
        self.demo.load(Ordering::Relaxed)
    }

    /// The user a bearer token other than the admin's authenticates as.
    pub fn service_account_user(&self, token: &str) -> Option<UserInfo> {
        self.tokens.user(token, &self.store, SystemTime::now())
    }

    /// Whether `/readyz` passes.
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Whether `/livez` and `/healthz` pass.
    pub fn live(&self) -> bool {
        self.live.load(Ordering::Relaxed)
    }

    /// Makes `/readyz` pass or fail.
    pub fn set_ready(&self, ok: bool) {
        self.ready.store(ok, Ordering::Relaxed);
    }

    /// Makes `/livez` and `/healthz` pass or fail.
    pub fn set_live(&self, ok: bool) {
        self.live.store(ok, Ordering::Relaxed);
    }

    /// A fresh pod IP from 10.244.0.0/16.
    pub fn next_pod_ip(&self) -> String {
        let n = self.pod_ips.fetch_add(1, Ordering::Relaxed);
        format!("10.244.{}.{}", (n / 250) % 256, n % 250 + 2)
    }
}

/// Configures a [`TestApiserver`].
#[derive(Clone, Debug)]
pub struct TestApiserverBuilder {
    listen: SocketAddr,
    rbac: Option<Vec<RbacRule>>,
    strict_rbac: bool,
    bookmark_interval: Duration,
}

impl Default for TestApiserverBuilder {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            rbac: None,
            strict_rbac: false,
            bookmark_interval: DEFAULT_BOOKMARK_INTERVAL,
        }
    }
}

impl TestApiserverBuilder {
    /// The address to listen on (default `127.0.0.1:0`, a free port).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// The rule table, for impersonated users and ServiceAccounts. Without
    /// this call (or [`strict_rbac`](Self::strict_rbac)) every resource
    /// request of an impersonated user is allowed (demo mode); with it,
    /// only what the rules or the RBAC objects allow.
    pub fn rbac(mut self, rules: impl IntoIterator<Item = RbacRule>) -> Self {
        self.rbac = Some(rules.into_iter().collect());
        self
    }

    /// No demo mode: impersonated users may do only what the rule table
    /// (empty unless [`rbac`](Self::rbac) is called) and the RBAC objects
    /// (ClusterRoles, RoleBindings, ...) allow.
    pub fn strict_rbac(mut self) -> Self {
        self.strict_rbac = true;
        self
    }

    /// How often watches with `allowWatchBookmarks=true` get a BOOKMARK.
    pub fn bookmark_interval(mut self, interval: Duration) -> Self {
        self.bookmark_interval = interval;
        self
    }

    /// Binds, makes the certificates and starts serving.
    pub async fn start(self) -> Result<TestApiserver, StartError> {
        let pki = make_pki(Some(self.listen.ip()))?;
        let bind_err = |source| StartError::Bind { addr: self.listen, source };
        let listener = TcpListener::bind(self.listen).await.map_err(bind_err)?;
        let addr = listener.local_addr().map_err(bind_err)?;
        let host = if addr.ip().is_unspecified() { Ipv4Addr::LOCALHOST.into() } else { addr.ip() };
        let client_addr = SocketAddr::new(host, addr.port());
        let url = format!("https://{client_addr}");
        let token = Secret::new(format!("test-apiserver-{}", uuid::Uuid::new_v4().simple()));
        let state = Arc::new(State {
            admin_token: token,
            store: Store::new(),
            logs: Logs::new(),
            demo: AtomicBool::new(self.rbac.is_none() && !self.strict_rbac),
            rbac: RwLock::new(self.rbac.unwrap_or_default()),
            tokens: Tokens::default(),
            ready: AtomicBool::new(true),
            live: AtomicBool::new(true),
            recorder: Arc::new(Recorder::default()),
            files: PodFiles::default(),
            sessions: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            bookmark_interval: self.bookmark_interval,
            server_address: client_addr.to_string(),
            pod_ips: AtomicU32::new(0),
        });
        let now = SystemTime::now();
        let initial = INITIAL_NAMESPACES
            .iter()
            .map(|name| (ResourceKind::Namespace, json!({ "metadata": { "name": name } })))
            .chain([(ResourceKind::Node, initial_node(now))])
            .chain(bootstrap_objects());
        for (kind, mut obj) in initial {
            prepare_create(kind, &mut obj, "", "", now);
            let name = obj.pointer("/metadata/name").and_then(serde_json::Value::as_str).unwrap_or_default();
            let key = ObjectKey::new(kind, "", name);
            // Fresh store: these cannot already exist.
            let _ = state.store.create(key, obj, false);
        }
        let kubeconfig = kubeconfig(&url, &pki.ca_pem, ADMIN_USER, state.admin_token.expose())?;
        let (cert, key) = pki.client_cert(CERT_ADMIN_USER, &["system:masters"])?;
        let cert_kubeconfig = kubeconfig_with(&url, &pki.ca_pem, CERT_ADMIN_USER, cert_user(&cert, &key))?;
        let acceptor = TlsAcceptor::from(pki.server_config.clone());
        let task = tokio::spawn(accept_loop(listener, acceptor, Arc::clone(&state)));
        tracing::info!(%url, "test apiserver listening");
        Ok(TestApiserver {
            state,
            addr: client_addr,
            url,
            ca_pem: pki.ca_pem,
            kubeconfig,
            cert_kubeconfig,
            task: Some(task),
        })
    }
}

/// A running in-memory test apiserver. Dropping it stops serving; call
/// [`TestApiserver::shutdown`] to also wait for that.
pub struct TestApiserver {
    state: Arc<State>,
    addr: SocketAddr,
    url: String,
    ca_pem: String,
    kubeconfig: String,
    cert_kubeconfig: String,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for TestApiserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestApiserver").field("url", &self.url).finish_non_exhaustive()
    }
}

impl TestApiserver {
    /// A builder with the defaults (`127.0.0.1:0`, demo mode).
    pub fn builder() -> TestApiserverBuilder {
        TestApiserverBuilder::default()
    }

    /// Starts one with the defaults.
    pub async fn start() -> Result<Self, StartError> {
        Self::builder().start().await
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The CA certificate (PEM) that signed the serving certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The admin bearer token (user `test-admin`, group `system:masters`).
    pub fn admin_token(&self) -> &str {
        self.state.admin_token.expose()
    }

    /// A kubeconfig (YAML) with the URL, the CA and the admin token, its
    /// context's namespace `default`.
    pub fn kubeconfig_yaml(&self) -> String {
        self.kubeconfig.clone()
    }

    /// A kubeconfig like [`kubeconfig_yaml`](Self::kubeconfig_yaml) but
    /// authenticating with a client certificate from the server's CA (user
    /// [`CERT_ADMIN_USER`], group `system:masters`), as kind and minikube
    /// set up their admins.
    pub fn client_cert_kubeconfig_yaml(&self) -> String {
        self.cert_kubeconfig.clone()
    }

    /// A kubeconfig like [`kubeconfig_yaml`](Self::kubeconfig_yaml) but with
    /// another bearer token, e.g. a ServiceAccount's from `kubectl create
    /// token` (a token this server did not mint gets 401).
    pub fn kubeconfig_with_token(&self, token: &str) -> Result<String, StartError> {
        kubeconfig(&self.url, &self.ca_pem, "token-user", token)
    }

    /// Every request received so far (except `/_test/` ones), oldest first;
    /// the last [`MAX_RECORDED_REQUESTS`](super::MAX_RECORDED_REQUESTS).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.recorder.snapshot()
    }

    /// Waits until a received request satisfies `pred` (e.g. a watch that
    /// ended as [`RequestOutcome::Cancelled`](super::RequestOutcome)) and
    /// returns the first that does. Never times out: wrap it in one.
    pub async fn wait_for_request(&self, pred: impl Fn(&RecordedRequest) -> bool) -> RecordedRequest {
        self.state.recorder.wait_for(pred).await
    }

    /// Appends a line to a pod's log (its first container's); followers
    /// (`kubectl logs -f`) see it at once. The pod need not exist yet.
    pub fn append_log(&self, namespace: &str, pod: &str, line: &str) {
        self.state.logs.append(namespace, pod, None, line);
    }

    /// Appends a line to one container's log.
    pub fn append_container_log(&self, namespace: &str, pod: &str, container: &str, line: &str) {
        self.state.logs.append(namespace, pod, Some(container), line);
    }

    /// Replaces the rule table (and ends demo mode).
    pub fn set_rbac(&self, rules: impl IntoIterator<Item = RbacRule>) {
        self.state.set_rules(rules.into_iter().collect());
    }

    /// Makes `/readyz` answer 200 (`true`, the start) or 500 as a failing
    /// kube-apiserver does.
    pub fn set_readyz(&self, ok: bool) {
        self.state.set_ready(ok);
    }

    /// Makes `/livez` and `/healthz` answer 200 (`true`, the start) or 500.
    pub fn set_livez(&self, ok: bool) {
        self.state.set_live(ok);
    }

    /// Stops accepting, ends streams, and waits for connections to close
    /// (aborting those still open after a grace period).
    pub async fn shutdown(mut self) {
        self.state.shutdown.cancel();
        if let Some(task) = self.task.take()
            && let Err(e) = task.await
        {
            tracing::warn!(error = %e, "test apiserver task failed");
        }
    }
}

impl Drop for TestApiserver {
    fn drop(&mut self) {
        self.state.shutdown.cancel();
    }
}

/// The user of [`TestApiserver::client_cert_kubeconfig_yaml`] (kind's name
/// for its admin).
pub const CERT_ADMIN_USER: &str = "kubernetes-admin";

fn cert_user(cert_pem: &str, key_pem: &str) -> serde_json::Value {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    json!({ "client-certificate-data": b64(cert_pem), "client-key-data": b64(key_pem) })
}

fn kubeconfig(url: &str, ca_pem: &str, user: &str, token: &str) -> Result<String, StartError> {
    kubeconfig_with(url, ca_pem, user, json!({ "token": token }))
}

fn kubeconfig_with(
    url: &str,
    ca_pem: &str,
    user: &str,
    credential: serde_json::Value,
) -> Result<String, StartError> {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "test-apiserver", "cluster": { "server": url, "certificate-authority-data": ca } }],
        "users": [{ "name": user, "user": credential }],
        "contexts": [{
            "name": "test-apiserver",
            "context": { "cluster": "test-apiserver", "user": user, "namespace": "default" },
        }],
        "current-context": "test-apiserver",
        "preferences": {},
    });
    serde_yaml::to_string(&doc).map_err(StartError::Kubeconfig)
}

async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, state: Arc<State>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            () = state.shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    conns.spawn(serve_connection(tcp, peer, acceptor.clone(), Arc::clone(&state)));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    state.sessions.close();
    let drain = async {
        while conns.join_next().await.is_some() {}
        state.sessions.wait().await;
    };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        tracing::warn!(
            open = conns.len(),
            sessions = state.sessions.len(),
            "aborting connections still open after shutdown grace"
        );
        conns.shutdown().await;
    }
}

async fn serve_connection(tcp: TcpStream, peer: SocketAddr, acceptor: TlsAcceptor, state: Arc<State>) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(%peer, error = %e, "could not set TCP_NODELAY");
    }
    let tls = tokio::select! {
        () = state.shutdown.cancelled() => return,
        tls = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)) => match tls {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        },
    };
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let client = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| super::tls::client_cert_user(c))
        .map(router::ClientCertUser);
    let svc_state = Arc::clone(&state);
    let service = service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        let state = Arc::clone(&svc_state);
        if let Some(c) = &client {
            req.extensions_mut().insert(c.clone());
        }
        async move { Ok::<_, Infallible>(router::handle(state, req).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    if h2 {
        builder = builder.http2_only();
    }
    // Upgrades: `exec`, `attach` and `port-forward` over SPDY or WebSocket.
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = state.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

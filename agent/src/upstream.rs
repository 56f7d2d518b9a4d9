//! The local apiserver: connection settings from a kubeconfig or the
//! in-cluster service account, the agent's own credential, and building the
//! impersonating request for one proxied head.
//!
//! Two kinds of HTTP client share the TLS settings: lanes that offer HTTP/2
//! and HTTP/1.1 by ALPN (ordinary requests multiplex over a connection per
//! lane), and one that speaks HTTP/1.1 only, for upgrades (exec, attach,
//! port-forward need a 101).
//!
//! An apiserver caps concurrent streams per HTTP/2 connection (250 by Go's
//! default; hyper's client would queue past it, so the 251st watch would
//! hang). Requests are therefore spread over several lanes, each its own
//! connection, opening a new lane when every lane carries
//! [`STREAMS_PER_LANE`] requests.
//!
//! The agent's credential is added by kube's own auth layer, so static
//! tokens, token files (re-read at least once a minute, for in-cluster
//! rotation), client certificates and kubeconfig exec plugins behave as they
//! do in kube-rs.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ferry::frame::ProxiedRequest;
use ferry::headers::{is_credential_header, is_forwarding_header, is_hop_by_hop};
use http::header::{ACCEPT, CONNECTION, UPGRADE};
use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Request, Response, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kube::client::ConfigExt;
use rustls_pki_types::ServerName;
use tower::util::BoxCloneSyncService;
use tower::{Layer, ServiceExt};

/// Errors boxed the way hyper and tower expect.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Body of a request to the apiserver (streamed from the hub, or empty).
/// Its error type is concrete (not a boxed trait object) to keep futures
/// over it provably `Send`.
pub type UpstreamBody = UnsyncBoxBody<Bytes, std::io::Error>;

/// How long idle pooled apiserver connections are kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// HTTP/2 PING period towards the apiserver.
const UPSTREAM_KEEPALIVE: Duration = Duration::from_secs(30);
/// TCP keepalive towards the apiserver.
const TCP_KEEPALIVE: Duration = Duration::from_secs(30);
/// Requests in flight on one lane (HTTP/2 connection) before the agent opens
/// another: below the stream limits apiservers use (Go: 250, hyper: 200).
pub const STREAMS_PER_LANE: usize = 100;
/// Most lanes to one apiserver (so at most this many × [`STREAMS_PER_LANE`]
/// requests run at once without queueing).
pub const MAX_LANES: usize = 512;
/// Largest `/version` body the status probe reads.
const MAX_VERSION_BODY: usize = 64 * 1024;

/// Adds the agent's credential to a request (kube's auth layer over an
/// identity service).
type AuthService = BoxCloneSyncService<Request<UpstreamBody>, Response<Request<UpstreamBody>>, BoxError>;
type HttpsClient = Client<HttpsConnector<HttpConnector>, UpstreamBody>;

/// Why the apiserver client cannot be set up or a request cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The kubeconfig cannot be read or used.
    #[error("cannot load kubeconfig {path:?}")]
    Kubeconfig {
        /// The file.
        path: std::path::PathBuf,
        /// What kube reported.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// No kubeconfig was given and the in-cluster configuration is missing.
    #[error("no --kubeconfig given and no in-cluster service account found")]
    InCluster(#[source] kube::config::InClusterError),
    /// TLS or auth settings from the configuration were refused.
    #[error("invalid apiserver client settings")]
    Client(#[source] kube::Error),
    /// `tls-server-name` is not a valid server name.
    #[error("invalid tls-server-name {0:?}")]
    ServerName(String),
    /// The request cannot be expressed as HTTP (bad URI or header).
    #[error("cannot build the apiserver request: {0}")]
    Build(String),
    /// The agent's own credential could not be obtained (token file,
    /// exec plugin).
    #[error("cannot obtain the agent's apiserver credential: {0}")]
    Credential(#[source] BoxError),
    /// Connecting to the apiserver failed (TCP, TLS).
    #[error("apiserver unreachable: {0}")]
    Unreachable(#[source] hyper_util::client::legacy::Error),
    /// The connection failed after the request was sent.
    #[error("apiserver connection failed: {0}")]
    Broken(#[source] hyper_util::client::legacy::Error),
}

impl UpstreamError {
    /// True when the apiserver was never reached (as opposed to failing
    /// mid-exchange).
    pub fn is_unreachable(&self) -> bool {
        !matches!(self, UpstreamError::Broken(_) | UpstreamError::Build(_))
    }
}

/// One request's place on a lane; dropping it frees the place.
pub struct LaneSlot(Arc<AtomicUsize>);

impl Drop for LaneSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

struct Lane {
    client: HttpsClient,
    in_flight: Arc<AtomicUsize>,
}

/// The HTTP/2-capable clients, one connection each.
struct Lanes {
    make: Box<dyn Fn() -> HttpsClient + Send + Sync>,
    lanes: Mutex<Vec<Lane>>,
}

impl Lanes {
    /// The least loaded lane, or a new one when all are at
    /// [`STREAMS_PER_LANE`].
    fn pick(&self) -> (HttpsClient, LaneSlot) {
        let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        let load = |l: &Lane| l.in_flight.load(Ordering::Acquire);
        let least = lanes.iter().enumerate().min_by_key(|(_, l)| load(l));
        let index = match least {
            Some((i, l)) if load(l) < STREAMS_PER_LANE || lanes.len() >= MAX_LANES => i,
            _ => {
                lanes.push(Lane { client: (self.make)(), in_flight: Arc::new(AtomicUsize::new(0)) });
                lanes.len() - 1
            }
        };
        let lane = &lanes[index];
        lane.in_flight.fetch_add(1, Ordering::AcqRel);
        (lane.client.clone(), LaneSlot(lane.in_flight.clone()))
    }

    fn count(&self) -> usize {
        self.lanes.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// Client for the local apiserver.
#[derive(Clone)]
pub struct Upstream {
    base: Uri,
    lanes: Arc<Lanes>,
    upgrade_client: HttpsClient,
    auth: AuthService,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").field("base", &self.base).finish_non_exhaustive()
    }
}

impl Upstream {
    /// Loads the apiserver settings from `kubeconfig` (its current
    /// context), or from the in-cluster service account when `None`.
    pub async fn load(kubeconfig: Option<&Path>) -> Result<Self, UpstreamError> {
        Self::from_kube_config(&Self::load_config(kubeconfig).await?)
    }

    /// The kube configuration [`Upstream::load`] uses (for a `kube::Client`
    /// of the agent's own, e.g. for its credential Secret).
    pub async fn load_config(kubeconfig: Option<&Path>) -> Result<kube::Config, UpstreamError> {
        let config = match kubeconfig {
            Some(path) => {
                let err = |source| UpstreamError::Kubeconfig { path: path.to_owned(), source };
                let kc = kube::config::Kubeconfig::read_from(path).map_err(err)?;
                kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                    .await
                    .map_err(err)?
            }
            None => kube::Config::incluster().map_err(UpstreamError::InCluster)?,
        };
        Ok(config)
    }

    /// Builds the clients from a kube configuration.
    pub fn from_kube_config(config: &kube::Config) -> Result<Self, UpstreamError> {
        let tls = config.rustls_client_config().map_err(UpstreamError::Client)?;
        let server_name = match &config.tls_server_name {
            Some(name) => Some(
                ServerName::try_from(name.clone()).map_err(|_| UpstreamError::ServerName(name.clone()))?,
            ),
            None => None,
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_keepalive(Some(TCP_KEEPALIVE));
        http.set_connect_timeout(config.connect_timeout);

        let connector = |h2: bool| {
            let builder = HttpsConnectorBuilder::new().with_tls_config(tls.clone()).https_or_http();
            let builder = match &server_name {
                Some(name) => builder.with_server_name_resolver(FixedServerNameResolver::new(name.clone())),
                None => builder,
            };
            if h2 {
                builder.enable_all_versions().wrap_connector(http.clone())
            } else {
                builder.enable_http1().wrap_connector(http.clone())
            }
        };
        let h2_connector = connector(true);
        let make = move || {
            Client::builder(TokioExecutor::new())
                .timer(TokioTimer::new())
                .pool_timer(TokioTimer::new())
                .pool_idle_timeout(POOL_IDLE_TIMEOUT)
                .http2_keep_alive_interval(UPSTREAM_KEEPALIVE)
                .build(h2_connector.clone())
        };
        let lanes = Arc::new(Lanes { make: Box::new(make), lanes: Mutex::new(Vec::new()) });
        let upgrade_client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(connector(false));

        // kube's auth layer wraps an HTTP service; an "echo" service that
        // answers with the request as the response body turns it into a
        // function that adds the credential to a request.
        let identity =
            tower::service_fn(
                |req: Request<UpstreamBody>| async move { Ok::<_, BoxError>(Response::new(req)) },
            );
        let auth = match config.auth_layer().map_err(UpstreamError::Client)? {
            Some(layer) => BoxCloneSyncService::new(layer.layer(identity)),
            None => BoxCloneSyncService::new(identity),
        };
        Ok(Self { base: config.cluster_url.clone(), lanes, upgrade_client, auth })
    }

    /// The apiserver's base URL.
    pub fn base(&self) -> &Uri {
        &self.base
    }

    /// The apiserver request for a proxied head, without the agent's
    /// credential (see [`Upstream::authorize`]): method, path on the
    /// apiserver, the caller's remaining headers, and the caller's identity
    /// as `Impersonate-*` headers. Whatever credential or impersonation
    /// header the head carried is dropped here once more.
    pub fn build_request(
        &self,
        proxied: &ProxiedRequest,
        body: UpstreamBody,
    ) -> Result<Request<UpstreamBody>, UpstreamError> {
        let uri = join_uri(&self.base, &proxied.path_and_query)?;
        let mut request = Request::new(body);
        *request.method_mut() = proxied.method.clone();
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        for (name, value) in &proxied.headers {
            let n = name.as_str();
            if is_credential_header(n)
                || is_forwarding_header(n)
                || (is_hop_by_hop(n) && !(proxied.upgrade && name == UPGRADE))
            {
                continue;
            }
            headers.append(name.clone(), value.clone());
        }
        // The caller's address for the apiserver's audit log: the hub's
        // word, never the caller's own forwarding headers.
        if let Some(ip) = proxied.client_address
            && let Ok(v) = HeaderValue::from_str(&ip.to_string())
        {
            headers.insert(http::header::HeaderName::from_static("x-forwarded-for"), v);
        }
        if proxied.upgrade {
            if !headers.contains_key(UPGRADE) {
                return Err(UpstreamError::Build("upgrade request without an Upgrade header".into()));
            }
            headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        }
        // A `--as` target is honoured only once `impersonation::check` has
        // replaced the identity with it.
        if proxied.impersonate.is_some() {
            return Err(UpstreamError::Build("impersonation target not checked".into()));
        }
        let impersonation =
            proxied.identity.impersonation_headers().map_err(|e| UpstreamError::Build(e.to_string()))?;
        for (name, value) in impersonation {
            headers.append(name, value);
        }
        Ok(request)
    }

    /// Adds the agent's own credential (`Authorization`), if it uses one
    /// (client certificates travel in TLS instead).
    pub async fn authorize(
        &self,
        request: Request<UpstreamBody>,
    ) -> Result<Request<UpstreamBody>, UpstreamError> {
        let echoed = self.auth.clone().oneshot(request).await.map_err(UpstreamError::Credential)?;
        Ok(echoed.into_body())
    }

    /// Authorizes and sends a request; upgrades go over HTTP/1.1.
    pub async fn send(
        &self,
        request: Request<UpstreamBody>,
        upgrade: bool,
    ) -> Result<Response<Incoming>, UpstreamError> {
        if upgrade {
            let request = self.authorize(request).await?;
            return self.upgrade_client.request(request).await.map_err(classify);
        }
        self.send_on_lane(request).await.map(|(response, _slot)| response)
    }

    /// Authorizes and sends an ordinary request on the least loaded lane;
    /// keep the slot until the response body is done.
    pub async fn send_on_lane(
        &self,
        request: Request<UpstreamBody>,
    ) -> Result<(Response<Incoming>, LaneSlot), UpstreamError> {
        let request = self.authorize(request).await?;
        let (client, slot) = self.lanes.pick();
        let response = client.request(request).await.map_err(classify)?;
        Ok((response, slot))
    }

    /// Number of HTTP/2-capable connections (lanes) opened so far.
    pub fn lane_count(&self) -> usize {
        self.lanes.count()
    }

    /// Probes `GET /version` with the agent's own identity (no
    /// impersonation), bounded by `timeout`.
    pub async fn probe(&self, timeout: Duration) -> Result<VersionInfo, ProbeError> {
        let (status, body) = self.get("/version", MAX_VERSION_BODY, timeout).await.map_err(|e| {
            if e.timed_out { ProbeError::Timeout(timeout) } else { ProbeError::Failed(e.message) }
        })?;
        if !status.is_success() {
            return Err(ProbeError::Status(status.as_u16()));
        }
        serde_json::from_slice(&body).map_err(|e| ProbeError::Failed(e.to_string()))
    }

    /// `GET path_and_query` as the agent itself (no impersonation), reading
    /// at most `max` bytes of the answer, within `timeout`.
    pub async fn get(
        &self,
        path_and_query: &str,
        max: usize,
        timeout: Duration,
    ) -> Result<(http::StatusCode, Bytes), GetError> {
        let failed = |message: String| GetError { message, timed_out: false };
        let call = async {
            let pq = PathAndQuery::try_from(path_and_query).map_err(|e| failed(e.to_string()))?;
            let uri = join_uri(&self.base, &pq).map_err(|e| failed(e.to_string()))?;
            let mut request = Request::new(empty_body());
            *request.method_mut() = Method::GET;
            *request.uri_mut() = uri;
            request.headers_mut().insert(ACCEPT, HeaderValue::from_static("application/json"));
            let response = self.send(request, false).await.map_err(|e| failed(e.to_string()))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), max)
                .collect()
                .await
                .map_err(|e| failed(e.to_string()))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(timeout, call).await.unwrap_or_else(|_| {
            Err(GetError { message: format!("no answer within {timeout:?}"), timed_out: true })
        })
    }

    /// Sends a small JSON request as the agent itself (no impersonation)
    /// and reads at most `max` bytes of the answer, within `timeout`.
    pub async fn call_json(
        &self,
        method: Method,
        path: &'static str,
        body: Vec<u8>,
        max: usize,
        timeout: Duration,
    ) -> Result<(http::StatusCode, Bytes), String> {
        let call = async {
            let uri = join_uri(&self.base, &PathAndQuery::from_static(path)).map_err(|e| e.to_string())?;
            let body =
                http_body_util::Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed_unsync();
            let mut request = Request::new(body);
            *request.method_mut() = method;
            *request.uri_mut() = uri;
            request.headers_mut().insert(ACCEPT, HeaderValue::from_static("application/json"));
            request
                .headers_mut()
                .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            let response = self.send(request, false).await.map_err(|e| e.to_string())?;
            let status = response.status();
            let bytes = Limited::new(response.into_body(), max)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok((status, bytes))
        };
        tokio::time::timeout(timeout, call)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
    }
}

/// Why a [`Upstream::get`] failed before an answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct GetError {
    /// What went wrong.
    pub message: String,
    /// Whether the call ran out of time.
    pub timed_out: bool,
}

fn classify(e: hyper_util::client::legacy::Error) -> UpstreamError {
    if e.is_connect() { UpstreamError::Unreachable(e) } else { UpstreamError::Broken(e) }
}

/// Why the `/version` probe failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// The probe did not finish in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The apiserver answered with an error status.
    #[error("apiserver answered {0}")]
    Status(u16),
    /// Connecting, sending or parsing failed.
    #[error("{0}")]
    Failed(String),
}

/// What `GET /version` says (the fields the agent reports).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
pub struct VersionInfo {
    /// E.g. `v1.33.1`.
    #[serde(rename = "gitVersion", default)]
    pub git_version: String,
    /// E.g. `linux/amd64`.
    #[serde(default)]
    pub platform: String,
}

/// An empty request body.
pub fn empty_body() -> UpstreamBody {
    Empty::<Bytes>::new().map_err(|never| match never {}).boxed_unsync()
}

/// `base` (which may carry a path prefix, as behind some proxies) joined
/// with the request's path and query.
fn join_uri(base: &Uri, pq: &PathAndQuery) -> Result<Uri, UpstreamError> {
    let prefix = base.path().trim_end_matches('/');
    let mut parts = base.clone().into_parts();
    let joined = format!("{prefix}{}", pq.as_str());
    parts.path_and_query =
        Some(PathAndQuery::try_from(joined.as_str()).map_err(|e| UpstreamError::Build(e.to_string()))?);
    Uri::from_parts(parts).map_err(|e| UpstreamError::Build(e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use ferry::frame::decode_request_head;
    use ferry::identity::Identity;
    use ferry::ids::RequestId;
    use ferry::proto::v1::{Header, RequestHead};

    use super::*;

    fn kube_config(token: Option<&str>) -> kube::Config {
        let mut config = kube::Config::new(Uri::from_static("https://10.0.0.1:6443/prefix/"));
        config.root_cert = None;
        config.auth_info.token = token.map(|t| t.to_owned().into());
        config
    }

    fn header(name: &str, value: &str) -> Header {
        Header { name: name.into(), value: value.as_bytes().to_vec().into() }
    }

    fn hostile_head(upgrade: bool) -> RequestHead {
        RequestHead {
            request_id: RequestId::new().to_string(),
            method: "GET".into(),
            path: "/api/v1/namespaces/default/pods".into(),
            query: "watch=true".into(),
            headers: vec![
                header("accept", "application/json"),
                header("Authorization", "Bearer stolen"),
                header("Impersonate-User", "admin"),
                header("impersonate-group", "system:masters"),
                header("Impersonate-Extra-Scopes", "all"),
                header("X-Remote-User", "admin"),
                header("connection", "close"),
                header("upgrade", "SPDY/3.1"),
            ],
            identity: Some(
                Identity {
                    user: "alice".into(),
                    uid: "u-1".into(),
                    groups: vec!["dev".into(), "ops".into()],
                    extra: BTreeMap::from([("team".into(), vec!["blue".into()])]),
                }
                .into(),
            ),
            upgrade,
            impersonate: None,
            client_address: String::new(),
            ..Default::default()
        }
    }

    fn values(req: &Request<UpstreamBody>, name: &str) -> Vec<String> {
        req.headers().get_all(name).iter().map(|v| v.to_str().expect("ascii").to_owned()).collect()
    }

    #[tokio::test]
    async fn requests_spread_over_lanes_below_the_stream_limit() {
        let upstream = Upstream::from_kube_config(&kube_config(None)).expect("client");
        let slots: Vec<LaneSlot> = (0..2 * STREAMS_PER_LANE + 1).map(|_| upstream.lanes.pick().1).collect();
        assert_eq!(upstream.lane_count(), 3, "a third lane opens once two are full");
        drop(slots);
        let _again: Vec<LaneSlot> = (0..STREAMS_PER_LANE).map(|_| upstream.lanes.pick().1).collect();
        assert_eq!(upstream.lane_count(), 3, "freed lanes are reused, not replaced");
    }

    #[tokio::test]
    async fn request_impersonates_and_carries_only_the_agents_credential() {
        let upstream = Upstream::from_kube_config(&kube_config(Some("agent-token"))).expect("client");
        let proxied = decode_request_head(hostile_head(false)).expect("valid head");
        let req = upstream.build_request(&proxied, empty_body()).expect("built");
        let req = upstream.authorize(req).await.expect("authorized");

        assert_eq!(req.method(), Method::GET);
        assert_eq!(
            req.uri().to_string(),
            "https://10.0.0.1:6443/prefix/api/v1/namespaces/default/pods?watch=true"
        );
        assert_eq!(values(&req, "authorization"), vec!["Bearer agent-token"]);
        assert_eq!(values(&req, "impersonate-user"), vec!["alice"]);
        assert_eq!(values(&req, "impersonate-uid"), vec!["u-1"]);
        assert_eq!(values(&req, "impersonate-group"), vec!["dev", "ops"]);
        assert_eq!(values(&req, "impersonate-extra-team"), vec!["blue"]);
        assert!(values(&req, "impersonate-extra-scopes").is_empty());
        assert!(values(&req, "x-remote-user").is_empty());
        assert!(values(&req, "connection").is_empty());
        assert!(values(&req, "upgrade").is_empty(), "not an upgrade: the header is dropped");
        assert_eq!(values(&req, "accept"), vec!["application/json"]);
    }

    #[tokio::test]
    async fn upgrade_request_asks_for_the_protocol() {
        let upstream = Upstream::from_kube_config(&kube_config(None)).expect("client");
        let proxied = decode_request_head(hostile_head(true)).expect("valid head");
        let req = upstream.build_request(&proxied, empty_body()).expect("built");
        let req = upstream.authorize(req).await.expect("authorized");
        assert_eq!(values(&req, "connection"), vec!["Upgrade"]);
        assert_eq!(values(&req, "upgrade"), vec!["SPDY/3.1"]);
        assert!(values(&req, "authorization").is_empty(), "no agent token configured, none sent");
        assert_eq!(values(&req, "impersonate-user"), vec!["alice"]);
    }

    #[tokio::test]
    async fn token_file_is_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("token");
        std::fs::write(&file, "from-file").expect("write");
        let mut config = kube_config(None);
        config.auth_info.token_file = Some(file.to_string_lossy().into_owned());
        let upstream = Upstream::from_kube_config(&config).expect("client");
        let proxied = decode_request_head(hostile_head(false)).expect("valid head");
        let req = upstream.authorize(upstream.build_request(&proxied, empty_body()).expect("built")).await;
        assert_eq!(values(&req.expect("authorized"), "authorization"), vec!["Bearer from-file"]);
    }

    #[test]
    fn uris_join_under_a_prefix() {
        let pq = PathAndQuery::from_static("/version?x=1");
        let j = |b: &'static str| join_uri(&Uri::from_static(b), &pq).expect("joined").to_string();
        assert_eq!(j("https://k:6443"), "https://k:6443/version?x=1");
        assert_eq!(j("https://k:6443/"), "https://k:6443/version?x=1");
        assert_eq!(j("https://rancher/k8s/clusters/c1"), "https://rancher/k8s/clusters/c1/version?x=1");
    }
}

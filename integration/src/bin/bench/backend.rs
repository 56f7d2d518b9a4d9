//! The lean backend: a canned stand-in for a kube-apiserver that costs as
//! little as possible per request, so the benchmark measures the tunnel and
//! not the backend.
//!
//! TLS (rustls, ring) with a self-made CA, HTTP/1.1 and HTTP/2 by ALPN,
//! bearer-token auth, and these routes:
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /version` | a small JSON object |
//! | `GET /api/v1/namespaces/default/configmaps/small` | [`SMALL_BODY_BYTES`] of JSON |
//! | `GET /api/v1/namespaces/default/configmaps/gzipped` | opaque bytes with `content-encoding: gzip` |
//! | `GET /api/v1/configmaps` | the large LIST, streamed in [`CHUNK_BYTES`] chunks |
//! | `GET /api/v1/configmaps?watch=1` | a watch: one event when [`Backend::trigger`] fires |
//! | `GET /api/v1/secrets` | [`STALL_BODY_BYTES`], for stalled readers |
//! | `POST /api/v1/namespaces/default/pods/echo/portforward` (upgrade) | 101, then echoes bytes |
//! | `POST /api/v1/namespaces/default/pods/source/portforward` (upgrade) | 101, then writes bytes forever and discards input |

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// Size of the small GET's JSON body.
pub const SMALL_BODY_BYTES: usize = 1024;
/// Size of each body chunk the backend writes (large LIST, byte sources).
pub const CHUNK_BYTES: usize = 64 * 1024;
/// Size of the body stalled readers ask for: far more than every buffer and
/// window on the path, so the stall is real.
pub const STALL_BODY_BYTES: usize = 4 * 1024 * 1024 * 1024;
/// HTTP/2 streams per connection, as kube-apiserver's default
/// `--http2-max-streams-per-connection`.
pub const H2_MAX_STREAMS: u32 = 1000;
/// Buffer of the echo endpoint's copy loop.
const ECHO_BUFFER: usize = 256 * 1024;

type Body = BoxBody<Bytes, Infallible>;

/// What every connection handler shares.
struct Shared {
    token: String,
    small: Bytes,
    chunk: Bytes,
    list_bytes: usize,
    event: Bytes,
    /// Watches currently waiting for the trigger.
    watches: AtomicUsize,
    trigger: watch::Sender<u64>,
}

/// A running backend; dropping it stops the accept loop.
pub struct Backend {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Its CA certificate, PEM.
    pub ca_pem: String,
    /// The bearer token it accepts.
    pub token: String,
    shared: Arc<Shared>,
    stop: CancellationToken,
    _tasks: JoinSet<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Backend {
    /// Starts a backend on `127.0.0.1:0` whose large LIST is `list_bytes` long.
    pub async fn start(list_bytes: usize) -> anyhow::Result<Self> {
        let (ca_pem, tls) = make_pki()?;
        let listener = TcpListener::bind("127.0.0.1:0").await.context("binding the backend")?;
        let addr = listener.local_addr()?;
        let token = format!("bench-{}", uuid::Uuid::new_v4().simple());
        let shared = Arc::new(Shared {
            token: token.clone(),
            small: small_body(),
            chunk: Bytes::from(json_filler(CHUNK_BYTES)),
            list_bytes,
            event: Bytes::from_static(
                b"{\"type\":\"MODIFIED\",\"object\":{\"kind\":\"ConfigMap\",\"apiVersion\":\"v1\",\"metadata\":{\"name\":\"w\",\"namespace\":\"default\",\"resourceVersion\":\"2\"},\"data\":{\"k\":\"v\"}}}\n",
            ),
            watches: AtomicUsize::new(0),
            trigger: watch::channel(0).0,
        });
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        tasks.spawn(accept_loop(listener, TlsAcceptor::from(tls), shared.clone(), stop.clone()));
        Ok(Self { addr, ca_pem, token, shared, stop, _tasks: tasks })
    }

    /// Watches currently open and waiting for the trigger.
    pub fn open_watches(&self) -> usize {
        self.shared.watches.load(Ordering::Relaxed)
    }

    /// Sends one event to every open watch.
    pub fn trigger(&self) {
        self.shared.trigger.send_modify(|g| *g += 1);
    }

    /// A kubeconfig (server, CA, token) for this backend.
    pub fn kubeconfig(&self) -> String {
        use base64::Engine as _;
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: bench\n  cluster:\n    server: https://{}\n    certificate-authority-data: {ca}\nusers:\n- name: bench\n  user:\n    token: {}\ncontexts:\n- name: bench\n  context:\n    cluster: bench\n    user: bench\ncurrent-context: bench\n",
            self.addr, self.token
        )
    }
}

fn small_body() -> Bytes {
    let head = "{\"kind\":\"ConfigMap\",\"apiVersion\":\"v1\",\"metadata\":{\"name\":\"small\",\"namespace\":\"default\",\"resourceVersion\":\"1\"},\"data\":{\"pad\":\"";
    let tail = "\"}}";
    let pad = SMALL_BODY_BYTES - head.len() - tail.len();
    Bytes::from(format!("{head}{}{tail}", "x".repeat(pad)))
}

/// `len` bytes of JSON-looking text (content does not matter: nothing on the
/// path parses or compresses bodies).
fn json_filler(len: usize) -> Vec<u8> {
    let item =
        b"{\"metadata\":{\"name\":\"cm\",\"namespace\":\"default\"},\"data\":{\"k\":\"vvvvvvvvvvvvvvvv\"}},";
    item.iter().copied().cycle().take(len).collect()
}

fn make_pki() -> anyhow::Result<(String, Arc<rustls::ServerConfig>)> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name.push(DnType::CommonName, "ferry-bench-backend-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key)?;
    let leaf_key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    leaf.distinguished_name.push(DnType::CommonName, "bench-backend");
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = leaf.signed_by(&leaf_key, &ca)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let mut config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((ca.pem(), Arc::new(config)))
}

async fn accept_loop(listener: TcpListener, tls: TlsAcceptor, shared: Arc<Shared>, stop: CancellationToken) {
    let mut conns = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            a = listener.accept() => a,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let Ok((tcp, _)) = accepted else { continue };
        let _ = tcp.set_nodelay(true);
        let tls = tls.clone();
        let shared = shared.clone();
        conns.spawn(async move {
            let Ok(stream) = tls.accept(tcp).await else { return };
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder.http2().timer(TokioTimer::new()).max_concurrent_streams(H2_MAX_STREAMS);
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(shared, req)) }
            });
            let _ = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).await;
        });
    }
    conns.shutdown().await;
}

fn full(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut resp = Response::new(Full::new(body).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    resp
}

fn handle(shared: Arc<Shared>, mut req: Request<Incoming>) -> Response<Body> {
    let authorized = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| t == shared.token);
    if !authorized {
        return full(StatusCode::UNAUTHORIZED, Bytes::from_static(b"{\"kind\":\"Status\",\"code\":401}"));
    }
    let watch = req.uri().query().is_some_and(|q| q.split('&').any(|p| p == "watch=1" || p == "watch=true"));
    match req.uri().path() {
        "/version" => full(
            StatusCode::OK,
            Bytes::from_static(b"{\"major\":\"1\",\"minor\":\"34\",\"gitVersion\":\"v1.34.0-bench\"}"),
        ),
        "/api/v1/namespaces/default/configmaps/small" => full(StatusCode::OK, shared.small.clone()),
        "/api/v1/namespaces/default/configmaps/gzipped" => {
            let mut resp = full(StatusCode::OK, gzipped_body());
            resp.headers_mut().insert(header::CONTENT_ENCODING, header::HeaderValue::from_static("gzip"));
            resp
        }
        "/api/v1/configmaps" if watch => watch_response(shared),
        "/api/v1/configmaps" => chunked(&shared, shared.list_bytes),
        "/api/v1/secrets" => chunked(&shared, STALL_BODY_BYTES),
        "/api/v1/namespaces/default/pods/echo/portforward" => upgrade(&mut req, Upgraded::Echo, &shared),
        "/api/v1/namespaces/default/pods/source/portforward" => upgrade(&mut req, Upgraded::Source, &shared),
        _ => full(StatusCode::NOT_FOUND, Bytes::from_static(b"{\"kind\":\"Status\",\"code\":404}")),
    }
}

/// Bytes that must arrive unchanged (the tunnel must not decompress them).
pub fn gzipped_body() -> Bytes {
    // A real gzip header followed by arbitrary bytes: nothing on the path may
    // look inside, so it need not be a valid stream.
    let mut v = vec![0x1f, 0x8b, 0x08, 0x00, 0, 0, 0, 0, 0, 0xff];
    v.extend((0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8));
    Bytes::from(v)
}

fn chunked(shared: &Shared, total: usize) -> Response<Body> {
    let chunk = shared.chunk.clone();
    let mut left = total;
    let stream = futures_util::stream::iter(std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        let n = left.min(chunk.len());
        left -= n;
        Some(Ok::<_, Infallible>(Frame::data(chunk.slice(..n))))
    }));
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    resp
}

/// Counts an open watch while it lives.
struct WatchGuard(Arc<Shared>);

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0.watches.fetch_sub(1, Ordering::Relaxed);
    }
}

fn watch_response(shared: Arc<Shared>) -> Response<Body> {
    let mut rx = shared.trigger.subscribe();
    rx.borrow_and_update();
    shared.watches.fetch_add(1, Ordering::Relaxed);
    let guard = WatchGuard(shared.clone());
    let event = shared.event.clone();
    let stream = futures_util::stream::once(async move {
        let _ = rx.changed().await;
        drop(guard);
        Ok::<_, Infallible>(Frame::data(event))
    });
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    resp
}

#[derive(Clone, Copy)]
enum Upgraded {
    Echo,
    Source,
}

fn upgrade(req: &mut Request<Incoming>, kind: Upgraded, shared: &Shared) -> Response<Body> {
    let Some(proto) = req.headers().get(header::UPGRADE).cloned() else {
        return full(StatusCode::BAD_REQUEST, Bytes::from_static(b"{\"kind\":\"Status\",\"code\":400}"));
    };
    let on_upgrade = hyper::upgrade::on(req);
    let chunk = shared.chunk.clone();
    tokio::spawn(async move {
        let Ok(io) = on_upgrade.await else { return };
        let (mut rd, mut wr) = tokio::io::split(TokioIo::new(io));
        match kind {
            Upgraded::Echo => {
                let mut buf = vec![0u8; ECHO_BUFFER];
                loop {
                    match rd.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if wr.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = wr.shutdown().await;
            }
            Upgraded::Source => {
                let sink = async {
                    let mut buf = vec![0u8; ECHO_BUFFER];
                    while let Ok(n) = rd.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                    }
                };
                let source = async { while wr.write_all(&chunk).await.is_ok() {} };
                tokio::join!(sink, source);
            }
        }
    });
    let mut resp = Response::new(Full::new(Bytes::new()).boxed());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    resp.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("Upgrade"));
    resp.headers_mut().insert(header::UPGRADE, proto);
    resp
}

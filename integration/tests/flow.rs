//! Flow control, cancellation and many concurrent streams through a real hub
//! and agent (processes), against the test apiserver running in-process so
//! the test can wait on what it recorded.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use ferry_integration::apiserver::{RecordedRequest, RequestOutcome, TestApiserver};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;

/// Bound on every wait in this file; generous for a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(60);

/// A hub and an agent (processes) in front of an in-process test apiserver.
struct World {
    api: TestApiserver,
    dir: tempfile::TempDir,
    hub: Proc,
    agent: Proc,
    hub_addr: String,
    /// alice's kubeconfig, issued through ferryctl.
    alice: std::path::PathBuf,
}

impl World {
    async fn start() -> World {
        Self::start_with(&[]).await
    }

    /// Like [`World::start`], with extra `ferry-hub serve` flags.
    async fn start_with(hub_args: &[&str]) -> World {
        let hub_args: Vec<String> = hub_args.iter().map(|a| a.to_string()).collect();
        let api = TestApiserver::builder().start().await.expect("test apiserver");
        let dir = tempfile::tempdir().expect("tempdir");
        let api_kc = dir.path().join("apiserver.kubeconfig");
        std::fs::write(&api_kc, api.kubeconfig_yaml()).expect("write kubeconfig");
        let data = dir.path().join("hub");
        let (hub, hub_url, agent, alice) = tokio::task::spawn_blocking(move || {
            let mut cmd = std::process::Command::new(bin("ferry-hub"));
            cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"]).arg(&data).args(&hub_args);
            let mut hub = Proc::spawn("ferry-hub", cmd);
            let hub_url = url_in(&hub.wait_line("ferry-hub ready", READY_TIMEOUT));
            let admin = data.join("admin.kubeconfig");
            let ferryctl = |args: &[&str]| {
                let out = std::process::Command::new(bin("ferryctl"))
                    .arg("--kubeconfig")
                    .arg(&admin)
                    .args(args)
                    .output()
                    .expect("ferryctl");
                assert!(out.status.success(), "ferryctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
                String::from_utf8(out.stdout).expect("utf8")
            };
            let token = ferryctl(&["register", "edge", "-o", "token"]);
            let mut cmd = std::process::Command::new(bin("ferry-agent"));
            cmd.arg("--hub").arg(&hub_url).arg("--hub-ca").arg(data.join("ca.crt"));
            cmd.arg("--kubeconfig").arg(&api_kc).arg("--state-dir").arg(data.join("agent-state"));
            cmd.arg("--token").arg(token.trim());
            let mut agent = Proc::spawn("ferry-agent", cmd);
            agent.wait_line("ferry-agent connected:", READY_TIMEOUT);
            let alice = data.join("alice.kubeconfig");
            ferryctl(&["grant", "--cluster", "edge", "--user", "alice"]);
            std::fs::write(&alice, ferryctl(&["kubeconfig", "edge", "--user", "alice", "--group", "dev"]))
                .expect("write");
            (hub, hub_url, agent, alice)
        })
        .await
        .expect("start processes");
        let hub_addr = hub_url.trim_start_matches("https://").trim_end_matches('/').to_owned();
        World { api, dir, hub, agent, hub_addr, alice }
    }

    /// A TLS client config for the hub, authenticated as alice.
    fn alice_tls(&self, alpn: &[u8]) -> Arc<ClientConfig> {
        let hub = ferry_client_sdk::HubConfig::load(&self.alice).expect("alice's kubeconfig");
        let ferry_client_sdk::HubCredential::ClientCert { cert_pem, key_pem } = &hub.credential else {
            panic!("alice's kubeconfig holds a client certificate");
        };
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<_, _>>().expect("cert");
        let key = PrivateKeyDer::from_pem_slice(key_pem.expose().as_bytes()).expect("key");
        tls_config(&hub.ca_pem, Some((certs, key)), alpn)
    }

    /// An HTTP connection to the hub as alice.
    async fn hub_conn(&self, h2: bool) -> Conn {
        let alpn: &[u8] = if h2 { b"h2" } else { b"http/1.1" };
        Conn::open(&self.hub_addr, self.alice_tls(alpn), h2).await
    }

    /// An HTTP/2 connection straight to the test apiserver (admin token).
    async fn api_conn(&self) -> Conn {
        let tls = tls_config(self.api.ca_pem(), None, b"h2");
        let addr = self.api.url().trim_start_matches("https://").trim_end_matches('/').to_owned();
        Conn::open(&addr, tls, true).await
    }

    async fn create_configmap(&self, conn: &mut Conn, name: &str, blob_len: usize) {
        let body = serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name},
            "data": {"blob": "x".repeat(blob_len)}
        });
        let token = self.api.admin_token().to_owned();
        let resp = conn
            .send(
                Method::POST,
                "/api/v1/namespaces/default/configmaps",
                Some(&token),
                body.to_string().into(),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::CREATED, "create {name}");
        resp.into_body().collect().await.expect("body");
    }
}

fn tls_config(
    ca_pem: &str,
    client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    alpn: &[u8],
) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.expect("ca pem")).expect("root");
    }
    let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let mut config = match client {
        Some((certs, key)) => builder.with_client_auth_cert(certs, key).expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// One client connection; its driver task is aborted on drop.
struct Conn {
    authority: String,
    sender: Sender,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Conn {
    async fn open(authority: &str, tls: Arc<ClientConfig>, h2: bool) -> Conn {
        let tcp = TcpStream::connect(authority).await.expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        let host = authority.rsplit_once(':').map(|(h, _)| h).unwrap_or(authority).to_owned();
        let name = ServerName::try_from(host).expect("server name");
        let stream = TlsConnector::from(tls).connect(name, tcp).await.expect("TLS handshake");
        let io = TokioIo::new(stream);
        let (sender, driver) = if h2 {
            let (s, c) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .handshake(io)
                .await
                .expect("h2 handshake");
            (Sender::H2(s), tokio::spawn(async move { drop(c.await) }))
        } else {
            let (s, c) = hyper::client::conn::http1::handshake(io).await.expect("h1 handshake");
            (Sender::H1(s), tokio::spawn(async move { drop(c.await) }))
        };
        Conn { authority: authority.to_owned(), sender, driver }
    }

    fn request(&self, method: Method, path: &str, token: Option<&str>, body: Bytes) -> Request<Full<Bytes>> {
        let uri = match self.sender {
            Sender::H1(_) => path.to_owned(),
            Sender::H2(_) => format!("https://{}{path}", self.authority),
        };
        let mut b = Request::builder().method(method).uri(uri).header("host", &self.authority);
        b = b.header("accept", "application/json").header("content-type", "application/json");
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        b.body(Full::new(body)).expect("request")
    }

    /// Sends one request; on HTTP/1.1 the connection carries one at a time.
    async fn send(
        &mut self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Bytes,
    ) -> Response<Incoming> {
        let req = self.request(method, path, token, body);
        match &mut self.sender {
            Sender::H1(s) => {
                s.ready().await.expect("h1 ready");
                s.send_request(req).await.expect("h1 response")
            }
            Sender::H2(s) => s.send_request(req).await.expect("h2 response"),
        }
    }

    /// Builds requests like [`Conn::request`] (no token), from any task.
    fn requester(&self) -> impl Fn(Method, &str, String) -> Request<Full<Bytes>> + Send + 'static {
        let authority = self.authority.clone();
        move |method, path, body| {
            Request::builder()
                .method(method)
                .uri(format!("https://{authority}{path}"))
                .header("host", &authority)
                .header("accept", "application/json")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))
                .expect("request")
        }
    }

    /// A clone of the HTTP/2 sender, for concurrent streams.
    fn h2(&self) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
        match &self.sender {
            Sender::H2(s) => s.clone(),
            Sender::H1(_) => panic!("not an HTTP/2 connection"),
        }
    }
}

/// A JSON response body.
async fn json_body(resp: Response<Incoming>) -> serde_json::Value {
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    serde_json::from_slice(&body).expect("JSON body")
}

/// Resident set size of a process, in bytes (Linux).
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    kb * 1024
}

/// Total body size of the big LIST, and how much extra memory hub or agent
/// may gain while a reader stalls on it (a quarter of the body).
const BIG_OBJECTS: usize = 64;
const BIG_OBJECT_SIZE: usize = 1000 * 1024;
const STALL_GROWTH_LIMIT: u64 = (BIG_OBJECTS * BIG_OBJECT_SIZE / 4) as u64;

async fn stalled_reader_leaves_other_requests_alone(h2_stalled: bool) {
    let world = World::start().await;
    let mut admin = world.api_conn().await;
    for i in 0..BIG_OBJECTS {
        world.create_configmap(&mut admin, &format!("big-{i}"), BIG_OBJECT_SIZE).await;
    }
    let (hub_before, agent_before) = (rss(world.hub.pid()), rss(world.agent.pid()));

    // One reader asks for the ~64 MiB list and then reads nothing.
    let mut stalled_conn = world.hub_conn(h2_stalled).await;
    let stalled = stalled_conn
        .send(Method::GET, "/clusters/edge/api/v1/namespaces/default/configmaps", None, Bytes::new())
        .await;
    assert_eq!(stalled.status(), StatusCode::OK);

    // 100 small GETs on the same agent still complete.
    let others = world.hub_conn(true).await;
    let mut gets = JoinSet::new();
    for i in 0..100 {
        let mut s = others.h2();
        let req = others.request(
            Method::GET,
            &format!("/clusters/edge/api/v1/namespaces/default?i={i}"),
            None,
            Bytes::new(),
        );
        gets.spawn(async move {
            s.ready().await.expect("ready");
            let resp = s.send_request(req).await.expect("response");
            let status = resp.status();
            resp.into_body().collect().await.expect("body");
            status
        });
    }
    let statuses = tokio::time::timeout(WAIT, gets.join_all()).await.expect("the small GETs completed");
    assert_eq!(statuses.len(), 100);
    assert!(statuses.iter().all(|s| *s == StatusCode::OK), "{statuses:?}");

    // Memory is bounded by windows, not by the stalled response.
    let (hub_growth, agent_growth) = (
        rss(world.hub.pid()).saturating_sub(hub_before),
        rss(world.agent.pid()).saturating_sub(agent_before),
    );
    eprintln!(
        "stalled reader ({}): hub RSS +{hub_growth} B, agent RSS +{agent_growth} B",
        if h2_stalled { "h2" } else { "h1" }
    );
    assert!(hub_growth < STALL_GROWTH_LIMIT, "hub grew {hub_growth} bytes while a reader stalled");
    assert!(agent_growth < STALL_GROWTH_LIMIT, "agent grew {agent_growth} bytes while a reader stalled");

    // The stalled reader resumes and gets the whole list, intact.
    let body =
        tokio::time::timeout(WAIT, stalled.into_body().collect()).await.expect("stalled body").expect("body");
    let list: serde_json::Value = serde_json::from_slice(&body.to_bytes()).expect("list JSON");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(BIG_OBJECTS));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_http1_reader_leaves_other_requests_alone() {
    stalled_reader_leaves_other_requests_alone(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_http2_reader_leaves_other_requests_alone() {
    stalled_reader_leaves_other_requests_alone(true).await;
}

fn is_watch(r: &RecordedRequest) -> bool {
    r.path.ends_with("/configmaps") && r.query_param("watch").is_some_and(|w| w == "true" || w == "1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_kubectl_cancels_the_apiserver_request() {
    let world = World::start().await;
    let mut watch = kubectl_spawn(&world.alice, &["get", "configmaps", "-w", "-o", "name"]);
    let started = tokio::time::timeout(
        WAIT,
        world.api.wait_for_request(|r| is_watch(r) && r.user.as_deref() == Some("alice")),
    )
    .await
    .expect("the watch reached the apiserver");
    let killed_at = Instant::now();
    tokio::task::spawn_blocking(move || watch.kill()).await.expect("kill kubectl");
    let id = started.id;
    let ended = tokio::time::timeout(
        WAIT,
        world.api.wait_for_request(|r| r.id == id && r.outcome != RequestOutcome::InProgress),
    )
    .await
    .expect("the apiserver saw the watch end");
    assert_eq!(ended.outcome, RequestOutcome::Cancelled);
    eprintln!("apiserver saw the watch cancelled {:?} after kubectl was killed", killed_at.elapsed());
}

const WATCHES: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_watches_through_one_agent_all_get_the_event() {
    let world = World::start().await;
    let conn = world.hub_conn(true).await;
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(WATCHES);
    let mut watches = JoinSet::new();
    for i in 0..WATCHES {
        let mut s = conn.h2();
        let req = conn.request(
            Method::GET,
            &format!("/clusters/edge/api/v1/namespaces/default/configmaps?watch=true&w={i}"),
            None,
            Bytes::new(),
        );
        let ready = ready_tx.clone();
        watches.spawn(async move {
            s.ready().await.expect("ready");
            let resp = s.send_request(req).await.expect("watch response");
            assert_eq!(resp.status(), StatusCode::OK);
            let _ = ready.send(()).await;
            let mut body = resp.into_body();
            let mut seen = Vec::new();
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.expect("watch body").into_data() {
                    seen.extend_from_slice(&data);
                    if seen.windows(b"the-event".len()).any(|w| w == b"the-event") {
                        return true;
                    }
                }
            }
            false
        });
    }
    drop(ready_tx);
    let started = Instant::now();
    for _ in 0..WATCHES {
        tokio::time::timeout(WAIT, ready_rx.recv())
            .await
            .expect("all watches open")
            .expect("a watch failed to open");
    }
    eprintln!("{WATCHES} watches open through one agent in {:?}", started.elapsed());
    let mut admin = world.api_conn().await;
    world.create_configmap(&mut admin, "the-event", 16).await;
    let delivered = Instant::now();
    let results = tokio::time::timeout(WAIT, watches.join_all()).await.expect("every watch got the event");
    assert_eq!(results.iter().filter(|ok| **ok).count(), WATCHES);
    eprintln!("event delivered to all {WATCHES} watches in {:?}", delivered.elapsed());
    drop(world.dir);
}

async fn status_json(resp: Response<Incoming>) -> (StatusCode, serde_json::Value) {
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_limit_fails_only_the_offending_request() {
    let world = World::start_with(&[
        "--max-streams-per-cluster",
        "3",
        "--max-request-body",
        "1048576",
        "--max-header-bytes",
        "8192",
    ])
    .await;
    let mut conn = world.hub_conn(true).await;
    let configmaps = "/clusters/edge/api/v1/namespaces/default/configmaps";

    // A body over --max-request-body with a Content-Length: 413 at once,
    // and nothing reaches the apiserver.
    let big = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "too-big"},
        "data": {"blob": "x".repeat(2 << 20)}});
    let (status, body) =
        status_json(conn.send(Method::POST, configmaps, None, big.to_string().into()).await).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["reason"], "RequestEntityTooLarge");

    // The same body streamed without a length (HTTP/1.1 chunked): cut off at
    // the limit with a 413 too.
    let status = chunked_post(&world, configmaps, 2 << 20).await;
    assert_eq!(status, 413);
    assert!(
        // (The agent's own SelfSubjectAccessReviews are answered 201 too.)
        !world
            .api
            .requests()
            .iter()
            .any(|r| r.method == "POST" && r.path.ends_with("/configmaps") && r.status == Some(201)),
        "an oversized body must not create anything"
    );

    // Headers over --max-header-bytes: 431.
    let mut req = conn.request(Method::GET, configmaps, None, Bytes::new());
    req.headers_mut().insert("x-padding", "p".repeat(10_000).parse().expect("header"));
    let (status, body) = status_json(conn.h2().send_request(req).await.expect("response")).await;
    assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "{body}");

    // --max-streams-per-cluster: three watches fill the cluster's slots, the
    // fourth request gets 429, and a slot comes back when a watch ends.
    let mut watches = Vec::new();
    for i in 0..3 {
        let resp =
            conn.send(Method::GET, &format!("{configmaps}?watch=true&w={i}"), None, Bytes::new()).await;
        assert_eq!(resp.status(), StatusCode::OK);
        watches.push(resp);
    }
    let (status, body) = status_json(conn.send(Method::GET, configmaps, None, Bytes::new()).await).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["reason"], "TooManyRequests");
    drop(watches.pop());
    tokio::time::timeout(
        WAIT,
        world.api.wait_for_request(|r| is_watch(r) && r.outcome == RequestOutcome::Cancelled),
    )
    .await
    .expect("the dropped watch ended at the apiserver");
    let resp = conn.send(Method::GET, configmaps, None, Bytes::new()).await;
    assert_eq!(resp.status(), StatusCode::OK, "a freed slot serves the next request");
}

/// POSTs `len` bytes with chunked encoding on a fresh HTTP/1.1 connection
/// and returns the response status code.
async fn chunked_post(world: &World, path: &str, len: usize) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = TcpStream::connect(&world.hub_addr).await.expect("connect");
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let mut tls =
        TlsConnector::from(world.alice_tls(b"http/1.1")).connect(name, tcp).await.expect("TLS handshake");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        world.hub_addr
    );
    tls.write_all(head.as_bytes()).await.expect("head");
    let chunk = vec![b'x'; 64 * 1024];
    let mut sent = 0;
    // The hub may answer and close before the whole body is written.
    while sent < len {
        let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
        if tls.write_all(&framed).await.is_err() {
            break;
        }
        sent += chunk.len();
    }
    let _ = tls.write_all(b"0\r\n\r\n").await;
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    while !response.windows(4).any(|w| w == b"\r\n\r\n") {
        let n =
            tokio::time::timeout(WAIT, tls.read(&mut buf)).await.expect("response in time").expect("read");
        assert!(n > 0, "connection closed without a response: {:?}", String::from_utf8_lossy(&response));
        response.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&response).lines().next().unwrap_or_default().to_owned();
    line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("status code")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_disconnect_fails_in_flight_requests_promptly() {
    let mut world = World::start().await;
    let mut conn = world.hub_conn(true).await;
    let configmaps = "/clusters/edge/api/v1/namespaces/default/configmaps";
    let watch = conn.send(Method::GET, &format!("{configmaps}?watch=true"), None, Bytes::new()).await;
    assert_eq!(watch.status(), StatusCode::OK);
    tokio::time::timeout(WAIT, world.api.wait_for_request(is_watch))
        .await
        .expect("watch reached the apiserver");

    world.agent.kill();
    // The open watch ends with an error instead of hanging...
    let ended = tokio::time::timeout(WAIT, watch.into_body().collect()).await.expect("the watch ended");
    assert!(ended.is_err(), "a response cut by a lost agent must end in an error, not look complete");
    // ...and new requests get a clear 503 once the hub has noticed.
    let (status, body) = status_json(conn.send(Method::GET, configmaps, None, Bytes::new()).await).await;
    assert!(
        status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::BAD_GATEWAY,
        "{status} {body}"
    );
    assert_eq!(body["kind"], "Status");
}

/// More than h2's default budget of 1024 stream resets per connection:
/// finished and cancelled requests must close their streams in order, or
/// the agent's connection is torn down (GOAWAY) and requests fail. (The
/// race that resets a stream needs release-build speed; the benchmark is the
/// sharper check, this one guards the user-visible outcome.)
const MANY: usize = 2400;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_finished_and_cancelled_requests_keep_the_agent_connected() {
    let mut world = World::start().await;
    let conn = world.hub_conn(true).await;
    let configmaps = "/clusters/edge/api/v1/namespaces/default/configmaps";
    let mut failures = Vec::new();
    for round in 0..MANY / 100 {
        let mut batch = JoinSet::new();
        for i in 0..100 {
            let mut s = conn.h2();
            let watch = i % 2 == 0;
            let path =
                if watch { format!("{configmaps}?watch=true&r={round}") } else { configmaps.to_owned() };
            let req = conn.request(Method::GET, &path, None, Bytes::new());
            batch.spawn(async move {
                s.ready().await.expect("ready");
                let resp = s.send_request(req).await.expect("response");
                let status = resp.status();
                if !watch {
                    resp.into_body().collect().await.expect("body");
                }
                // A watch is dropped here, after its head: the caller cancels.
                status
            });
        }
        let statuses = tokio::time::timeout(WAIT, batch.join_all()).await.expect("batch completed");
        failures.extend(statuses.into_iter().filter(|s| *s != StatusCode::OK));
    }
    assert!(failures.is_empty(), "{} of {MANY} requests failed: {failures:?}", failures.len());
    let clusters = tokio::task::spawn_blocking({
        let admin = world.dir.path().join("hub/admin.kubeconfig");
        move || {
            let out = std::process::Command::new(bin("ferryctl"))
                .arg("--kubeconfig")
                .arg(admin)
                .args(["clusters", "-o", "json"])
                .output()
                .expect("ferryctl");
            String::from_utf8(out.stdout).expect("utf8")
        }
    })
    .await
    .expect("ferryctl");
    assert!(clusters.contains("\"connected\": true"), "{clusters}");
    // Connected, and still on its first session: no reconnect hid a
    // dropped connection.
    assert_eq!(world.agent.count_lines("ferry-agent connected:"), 1, "{:?}", world.agent.seen);
}

/// Streams are reused for the next request once one finishes cleanly in
/// both directions. Whatever mix of requests shared them (bodies larger than
/// one frame, errors, cancelled watches), every caller gets the answer to
/// its own request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_streams_never_mix_up_requests() {
    let world = World::start().await;
    let conn = world.hub_conn(true).await;
    let configmaps = "/clusters/edge/api/v1/namespaces/default/configmaps";
    for round in 0..3 {
        let mut batch = JoinSet::new();
        for i in 0..40 {
            let mut s = conn.h2();
            let conn_request = conn.requester();
            let name = format!("cm-{round}-{i}");
            batch.spawn(async move {
                s.ready().await.expect("ready");
                match i % 4 {
                    // A body of several frames, then the object read back.
                    0 | 1 => {
                        let value = format!("{name}:").repeat(20_000);
                        let body = serde_json::json!({
                            "apiVersion": "v1", "kind": "ConfigMap",
                            "metadata": {"name": name}, "data": {"v": value},
                        });
                        let req = conn_request(Method::POST, configmaps, body.to_string());
                        let resp = s.send_request(req).await.expect("create");
                        assert_eq!(resp.status(), StatusCode::CREATED, "{name}");
                        let created: serde_json::Value = json_body(resp).await;
                        assert_eq!(created["metadata"]["name"], name.as_str());
                        let req = conn_request(Method::GET, &format!("{configmaps}/{name}"), String::new());
                        let got: serde_json::Value = json_body(s.send_request(req).await.expect("get")).await;
                        assert_eq!(got["metadata"]["name"], name.as_str());
                        assert_eq!(got["data"]["v"], value.as_str(), "{name} came back with another body");
                    }
                    // An error answer names the object that was asked for.
                    2 => {
                        let req =
                            conn_request(Method::GET, &format!("{configmaps}/missing-{name}"), String::new());
                        let resp = s.send_request(req).await.expect("get");
                        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
                        let status: serde_json::Value = json_body(resp).await;
                        let message = status["message"].as_str().unwrap_or_default();
                        assert!(message.contains(&format!("missing-{name}")), "{message}");
                    }
                    // A watch the caller drops after its head.
                    _ => {
                        let req =
                            conn_request(Method::GET, &format!("{configmaps}?watch=true"), String::new());
                        let resp = s.send_request(req).await.expect("watch");
                        assert_eq!(resp.status(), StatusCode::OK);
                    }
                }
            });
        }
        tokio::time::timeout(WAIT, batch.join_all()).await.expect("batch completed");
    }
}

/// Reads a child's output until it contains `needle` (bounded by [`WAIT`]).
async fn read_until(out: &mut tokio::process::ChildStdout, seen: &mut Vec<u8>, needle: &str) {
    use tokio::io::AsyncReadExt;
    let read = async {
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(seen).contains(needle) {
            let n = out.read(&mut buf).await.expect("read pty output");
            assert!(n > 0, "output ended before {needle:?}: {:?}", String::from_utf8_lossy(seen));
            seen.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(WAIT, read).await.unwrap_or_else(|_| panic!("no {needle:?} in {seen:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tty_exec_through_the_hub_and_the_upgrade_idle_timeout() {
    use tokio::io::AsyncWriteExt;
    let world = World::start_with(&["--upgrade-idle-timeout", "3s"]).await;
    kubectl_ok(&world.alice, &["run", "box", "--image=busybox", "--restart=Never"]);
    // `script` (util-linux) gives kubectl a pseudo-terminal of a known size.
    // SPDY: over WebSocket kubectl pings every 5 s, which is traffic, so a
    // WebSocket session is never idle for a timeout longer than that.
    let line = format!(
        "stty cols 101 rows 41; exec {} --kubeconfig {} exec -it box -- sh",
        kubectl_bin(),
        world.alice.display()
    );
    let mut child = tokio::process::Command::new("script")
        .args(["-qfec", &line, "/dev/null"])
        .env_remove("KUBECONFIG")
        .env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn script (util-linux)");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut out = child.stdout.take().expect("stdout");
    let mut seen = Vec::new();
    // The terminal size crossed hub and agent as a resize event.
    read_until(&mut out, &mut seen, "resize 101x41").await;
    stdin.write_all(b"hello through the hub\r").await.expect("type");
    read_until(&mut out, &mut seen, "hello through the hub").await;

    // Then nothing either way: the hub closes the idle connection after 3 s
    // (--upgrade-idle-timeout), kubectl ends, and the apiserver sees it go.
    // (kubectl over SPDY exits 0 when the connection closes under it; what
    // matters is that the session ends instead of hanging.)
    tokio::time::timeout(WAIT, child.wait()).await.expect("kubectl ended").expect("wait");
    let exec =
        world.api.requests().into_iter().find(|r| r.path.ends_with("/pods/box/exec")).expect("exec recorded");
    let ended = tokio::time::timeout(
        WAIT,
        world.api.wait_for_request(|r| r.id == exec.id && r.outcome != RequestOutcome::InProgress),
    )
    .await
    .expect("the apiserver saw the exec end");
    assert_eq!(ended.outcome, RequestOutcome::Cancelled);
}

/// Dot-segments (raw or percent-encoded), encoded slashes and empty
/// segments could climb out of an apiserver base path behind a normalising
/// proxy: refused with 400 at the hub (and again at the agent), and the
/// apiserver sees none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_that_could_escape_the_apiserver_base_are_refused() {
    let world = World::start().await;
    // HTTP/1.1: the path goes out exactly as written.
    let mut conn = world.hub_conn(false).await;
    let escapes = [
        "/clusters/edge/api/../../other/api/v1/namespaces",
        "/clusters/edge/api/%2e%2e/%2E%2e/other/api/v1/namespaces",
        "/clusters/edge/api/.%2e/other",
        "/clusters/edge/api%2Fv1/namespaces",
        "/clusters/edge/api%5cv1/namespaces",
        "/clusters/edge//api/v1/namespaces",
        "/clusters/edge/api/v1/namespaces/./default",
        // A credential bound to one cluster needs no prefix: the same checks.
        "/api/../../other/api/v1/namespaces",
    ];
    for path in escapes {
        let (status, body) = status_json(conn.send(Method::GET, path, None, Bytes::new()).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_eq!(body["reason"], "BadRequest", "{path}: {body}");
    }
    // Names that are not cluster names.
    for path in ["/clusters/", "/clusters//api/v1/namespaces"] {
        let (status, body) = status_json(conn.send(Method::GET, path, None, Bytes::new()).await).await;
        assert!(
            status == StatusCode::FORBIDDEN || status == StatusCode::NOT_FOUND,
            "{path}: {status} {body}"
        );
    }
    let leaked: Vec<String> = world
        .api
        .requests()
        .into_iter()
        .map(|r| r.path)
        .filter(|p| {
            p.contains("other")
                || p.contains("%2")
                || p.contains("%5")
                || p.contains("//")
                || p.contains("/./")
        })
        .collect();
    assert!(leaked.is_empty(), "reached the apiserver: {leaked:?}");
}

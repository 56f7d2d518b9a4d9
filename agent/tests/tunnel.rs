//! The agent end to end, in process: a fake hub (the real generated gRPC
//! service over TLS) and a fake apiserver (hyper over TLS). Every assertion
//! about impersonation is made on what the apiserver actually received.

mod support;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;

use bytes::Bytes;
use ferry::identity::Identity;
use ferry::ids::RequestId;
use ferry::limits::MAX_BODY_CHUNK;
use ferry::proto::v1::{self as pb, ErrorCode, Header, RequestHead, agent_frame, hub_frame};
use http::{StatusCode, Version};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use ferry_agent::AgentError;
use support::*;

fn head(method: &str, path: &str, query: &str, headers: &[(&str, &str)], upgrade: bool) -> Box<RequestHead> {
    Box::new(RequestHead {
        request_id: RequestId::new().to_string(),
        method: method.into(),
        path: path.into(),
        query: query.into(),
        headers: headers
            .iter()
            .map(|(n, v)| Header { name: (*n).into(), value: v.as_bytes().to_vec().into() })
            .collect(),
        identity: Some(
            Identity {
                user: "alice".into(),
                uid: "u-42".into(),
                groups: vec!["dev".into(), "ops".into()],
                extra: BTreeMap::from([("team".into(), vec!["blue".into()])]),
            }
            .into(),
        ),
        upgrade,
        impersonate: None,
        client_address: "192.0.2.1".into(),
        ..Default::default()
    })
}

fn values(req: &http::Request<hyper::body::Incoming>, name: &str) -> Vec<String> {
    req.headers().get_all(name).iter().map(|v| v.to_str().expect("ascii").to_owned()).collect()
}

fn body(data: &'static str) -> hub_frame::Frame {
    hub_frame::Frame::Body(Bytes::from_static(data.as_bytes()))
}

fn end() -> hub_frame::Frame {
    hub_frame::Frame::End(pb::End::default())
}

/// Test fixture: CA, fake apiserver, fake hub, state dir.
struct World {
    dir: tempfile::TempDir,
    ca: std::path::PathBuf,
    api: FakeApiserver,
    hub: FakeHub,
}

impl World {
    async fn new(pool_size: u32) -> Self {
        let pki = Pki::new();
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = pki.write_ca(dir.path());
        let api = FakeApiserver::start(&pki).await;
        let hub = FakeHub::start(&pki, pool_size).await;
        Self { dir, ca, api, hub }
    }

    fn state_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("state")
    }

    fn agent(&self, token: Option<&str>) -> RunningAgent {
        let kubeconfig = self.api.kubeconfig(self.dir.path(), &self.ca);
        RunningAgent::start(config(&self.hub, &self.ca, &kubeconfig, &self.state_dir(), token))
    }

    fn store_credential(&self) {
        self.hub.write_credential(&self.state_dir());
    }

    async fn stop(self) {
        self.hub.stop().await;
        self.api.stop().await;
    }
}

#[tokio::test]
async fn enrolls_connects_and_streams_a_watch() {
    let mut w = World::new(2).await;
    let mut agent = w.agent(Some(BOOTSTRAP_TOKEN));
    let (cluster, session) = agent.connected(None).await;
    assert_eq!(cluster, CLUSTER);

    // Enrollment stored the certificate and the agent's own key, privately.
    assert_eq!(w.hub.enrolls(), 1);
    for file in ["tls.crt", "tls.key", "cluster"] {
        let path = w.state_dir().join(file);
        assert_eq!(std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777, 0o600, "{file}");
    }
    assert!(std::fs::read_to_string(w.state_dir().join("tls.key")).expect("key").contains("PRIVATE KEY"));
    assert_eq!(std::fs::read_to_string(w.state_dir().join("cluster")).expect("cluster").trim(), CLUSTER);
    let stored_serial = cert_serial(&w.state_dir().join("tls.crt"));

    // Hello carrying the cluster's status, then heartbeats.
    let hello = within("hello", w.hub.hellos.recv()).await.expect("hello");
    assert_eq!(hello.protocol_version, ferry::PROTOCOL_VERSION);
    assert_eq!(hello.agent_version, ferry::FERRY_VERSION);
    let stored_id = std::fs::read_to_string(w.state_dir().join("agent-id")).expect("agent id");
    assert_eq!(hello.agent_id, stored_id.trim());
    let status = hello.status.expect("status");
    assert_eq!(status.kubernetes_version, KUBE_VERSION);
    assert!(status.apiserver_reachable);
    let ok = ferry::proto::v1::HealthState::Ok as i32;
    assert_eq!((status.readyz.map(|h| h.state), status.livez.map(|h| h.state)), (Some(ok), Some(ok)));
    assert_eq!(status.nodes, Some(ferry::proto::v1::NodeCounts { ready: 1, not_ready: 0 }));
    let capacity = status.capacity.expect("capacity");
    assert_eq!((capacity.cpu_millis, capacity.memory_bytes), (2000, 8 << 30));
    assert_eq!(status.allocatable.map(|a| a.cpu_millis), Some(1900));
    assert!(status.observed_at_unix_ms > 0);
    within("heartbeat", w.hub.heartbeats.recv()).await.expect("heartbeat");

    // The pool: two parked streams over the enrolled certificate, with the
    // session.
    let mut parked = w.hub.next_parked().await;
    let _second = w.hub.next_parked().await;
    assert_eq!(parked.serial, stored_serial);
    assert_eq!(parked.session, session);

    // A watch whose head carries hostile headers.
    let hostile = [
        ("accept", "application/json"),
        ("authorization", "Bearer caller-token"),
        ("impersonate-user", "admin"),
        ("impersonate-group", "system:masters"),
        ("x-remote-user", "admin"),
        ("x-forwarded-for", "10.6.6.6"),
    ];
    parked
        .send(hub_frame::Frame::Head(head(
            "GET",
            "/api/v1/namespaces/default/pods",
            "watch=true",
            &hostile,
            false,
        )))
        .await;
    parked.send(end()).await;

    // The claimed stream is replaced at once.
    let _replacement = w.hub.next_parked().await;

    let exchange = w.api.next().await;
    let req = &exchange.request;
    assert_eq!(req.method(), http::Method::GET);
    assert_eq!(req.uri().path(), "/api/v1/namespaces/default/pods");
    assert_eq!(req.uri().query(), Some("watch=true"));
    assert_eq!(req.version(), Version::HTTP_2, "ALPN picked HTTP/2");
    assert_eq!(values(req, "authorization"), vec![format!("Bearer {AGENT_SA_TOKEN}")]);
    assert_eq!(values(req, "impersonate-user"), vec!["alice"]);
    assert_eq!(values(req, "impersonate-uid"), vec!["u-42"]);
    assert_eq!(values(req, "impersonate-group"), vec!["dev", "ops"]);
    assert_eq!(values(req, "impersonate-extra-team"), vec!["blue"]);
    assert!(values(req, "x-remote-user").is_empty());
    assert_eq!(values(req, "x-forwarded-for"), vec!["192.0.2.1"], "the hub's word, not the caller's");
    assert_eq!(values(req, "accept"), vec!["application/json"]);

    // The response streams: the first event arrives while the apiserver's
    // response is still open.
    let (events, events_rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    let response = http::Response::new(StreamBody::new(ReceiverStream::new(events_rx)).boxed());
    assert!(exchange.respond.send(response).is_ok());
    events.send(Ok(Frame::data(Bytes::from_static(b"event-1\n")))).await.expect("send");
    match parked.recv().await {
        Some(agent_frame::Frame::Head(h)) => assert_eq!(h.status, 200),
        other => panic!("expected a head, got {other:?}"),
    }
    assert_eq!(parked.recv().await, Some(agent_frame::Frame::Body(Bytes::from_static(b"event-1\n"))));

    // A large event comes back in frames of at most MAX_BODY_CHUNK.
    let big = Bytes::from(vec![b'x'; 3 * MAX_BODY_CHUNK + 10]);
    events.send(Ok(Frame::data(big.clone()))).await.expect("send");
    let mut got = Vec::new();
    while got.len() < big.len() {
        match parked.recv().await {
            Some(agent_frame::Frame::Body(b)) => {
                assert!(b.len() <= MAX_BODY_CHUNK);
                got.extend_from_slice(&b);
            }
            other => panic!("expected body, got {other:?}"),
        }
    }
    assert_eq!(got, big);

    // The hub drops the stream: the apiserver request is cancelled.
    drop(parked);
    within("the apiserver request to be cancelled", events.closed()).await;

    agent.stop().await.expect("clean stop");
    w.stop().await;
}

#[tokio::test]
async fn reuses_the_credential_streams_bodies_and_reconnects() {
    let mut w = World::new(1).await;
    w.store_credential();
    let mut agent = w.agent(None);
    let (_, session) = agent.connected(None).await;
    assert_eq!(w.hub.enrolls(), 0, "the stored credential is used");

    // A POST whose body arrives in pieces.
    let mut parked = w.hub.next_parked().await;
    let h = head(
        "POST",
        "/api/v1/namespaces/default/configmaps",
        "",
        &[("content-type", "application/json")],
        false,
    );
    parked.send(hub_frame::Frame::Head(h)).await;
    parked.send(body("{\"data\":")).await;
    parked.send(body("1}")).await;
    parked.send(end()).await;
    let exchange = w.api.next().await;
    let (parts, incoming) = exchange.request.into_parts();
    assert_eq!(parts.method, http::Method::POST);
    assert_eq!(parts.headers["impersonate-user"], "alice");
    let received = incoming.collect().await.expect("request body").to_bytes();
    assert_eq!(received, Bytes::from_static(b"{\"data\":1}"));
    let mut created = http::Response::new(Full::new(received).boxed());
    *created.status_mut() = StatusCode::CREATED;
    assert!(exchange.respond.send(created).is_ok());
    match parked.recv().await {
        Some(agent_frame::Frame::Head(h)) => assert_eq!(h.status, 201),
        other => panic!("expected a head, got {other:?}"),
    }
    assert_eq!(parked.recv().await, Some(agent_frame::Frame::Body(Bytes::from_static(b"{\"data\":1}"))));
    // Both directions ended cleanly: the agent offers the stream again.
    assert_eq!(parked.recv().await, Some(agent_frame::Frame::End(pb::End { reuse: true })));

    // The next request on the same stream is served like the first.
    parked.send(hub_frame::Frame::Head(head("GET", "/api/v1/namespaces", "", &[], false))).await;
    parked.send(end()).await;
    let exchange = w.api.next().await;
    assert_eq!(exchange.request.uri().path(), "/api/v1/namespaces");
    assert_eq!(exchange.request.headers()["impersonate-user"], "alice");
    assert!(exchange.respond.send(status(200)).is_ok());
    match parked.recv().await {
        Some(agent_frame::Frame::Head(h)) => assert_eq!(h.status, 200),
        other => panic!("expected a head, got {other:?}"),
    }
    let mut last = parked.recv().await;
    while let Some(agent_frame::Frame::Body(_)) = last {
        last = parked.recv().await;
    }
    assert!(matches!(last, Some(agent_frame::Frame::End(_))), "got {last:?}");

    // A bodyless request in the whole layout: its head alone goes out, and
    // the small response comes back in one message with the End.
    let mut h = head("GET", "/api/v1/namespaces/default/configmaps/small", "", &[], false);
    (h.body_ended, h.whole_response) = (true, true);
    parked.send(hub_frame::Frame::Head(h)).await;
    let exchange = w.api.next().await;
    assert_eq!(exchange.request.uri().path(), "/api/v1/namespaces/default/configmaps/small");
    assert!(http_body::Body::is_end_stream(exchange.request.body()), "no body, no chunked encoding");
    let small = Bytes::from_static(b"{\"kind\":\"ConfigMap\"}");
    assert!(exchange.respond.send(http::Response::new(Full::new(small.clone()).boxed())).is_ok());
    match parked.recv().await {
        Some(agent_frame::Frame::Head(h)) => {
            assert_eq!(h.status, 200);
            assert_eq!(h.body, small);
            assert_eq!(h.end, Some(pb::End { reuse: true }));
        }
        other => panic!("expected a whole response, got {other:?}"),
    }

    // The hub's caller went away as the response ended: the hub closes the
    // kept stream with an error frame, and the agent ends its side quietly.
    parked
        .send(hub_frame::Frame::Error(pb::Error {
            code: ErrorCode::Cancelled as i32,
            message: "the caller went away".into(),
        }))
        .await;
    assert_eq!(parked.recv().await, None, "the agent ends its side without answering");
    drop(parked);

    // The hub asks for more streams: replacement plus three extra.
    let _replacement = w.hub.next_parked().await;
    w.hub.open_streams(3).await;
    for _ in 0..3 {
        let p = w.hub.next_parked().await;
        assert_eq!(p.session, session);
    }

    // The hub ends the session: the agent reconnects with a new one.
    w.hub.kick().await;
    let (_, again) = agent.connected(Some(&session)).await;
    assert_ne!(again, session);
    assert_eq!(w.hub.enrolls(), 0);

    agent.stop().await.expect("clean stop");
    w.stop().await;
}

#[tokio::test]
async fn a_silent_hub_is_detected_and_left() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = pki.write_ca(dir.path());
    let api = FakeApiserver::start(&pki).await;
    // Heartbeats every 100 ms: silence is noticed after 300 ms.
    let hub = FakeHub::start_with(&pki, 1, 100).await;
    let kubeconfig = api.kubeconfig(dir.path(), &ca);
    let mut agent =
        RunningAgent::start(config(&hub, &ca, &kubeconfig, &dir.path().join("state"), Some(BOOTSTRAP_TOKEN)));
    let (_, session) = agent.connected(None).await;
    hub.go_silent();
    let (_, again) = agent.connected(Some(&session)).await;
    assert_ne!(again, session);
    agent.stop().await.expect("clean stop");
    hub.stop().await;
    api.stop().await;
}

/// The serial of the PEM certificate in `path`, lower-case hex.
fn cert_serial(path: &std::path::Path) -> String {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_file(path).expect("certificate");
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("x509");
    cert.raw_serial().iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn a_refused_bootstrap_token_is_retried_not_fatal() {
    let mut w = World::new(1).await;
    let mut agent = w.agent(Some("ferryboot.wrong"));
    w.hub.next_refusal().await;
    // Still running, not ready, and nothing stored.
    assert!(!agent.task.is_finished(), "a refused token does not stop the agent");
    let state = agent.state.borrow_and_update().clone();
    assert!(matches!(state, ferry_agent::AgentState::Enrolling), "{state:?}");
    assert!(!w.state_dir().join("tls.crt").exists());
    agent.stop().await.expect("a clean stop");
    w.stop().await;
}

#[tokio::test]
async fn a_revoked_credential_without_a_token_stops_with_a_clear_error() {
    let w = World::new(1).await;
    w.store_credential();
    w.hub.revoke_all();
    let agent = w.agent(None);
    match agent.exit().await {
        Err(e @ AgentError::MissingToken(_)) => assert!(e.to_string().contains("--token-file"), "{e}"),
        other => panic!("expected a missing-token error, got {other:?}"),
    }
    w.stop().await;
}

#[tokio::test]
async fn the_certificate_is_renewed_on_the_session_and_used_to_reconnect() {
    let mut w = World::new(1).await;
    // Certificates of 3 s: renewed every 2 s, on the same session.
    w.hub.set_cert_ttl(std::time::Duration::from_secs(3));
    let mut agent = w.agent(Some(BOOTSTRAP_TOKEN));
    let (_, session) = agent.connected(None).await;
    let enrolled = cert_serial(&w.state_dir().join("tls.crt"));
    let first = within("a renewal", w.hub.renewals.recv()).await.expect("renewed");
    let second = within("another renewal", w.hub.renewals.recv()).await.expect("renewed");
    assert_ne!(first, enrolled);
    assert_ne!(second, first);
    // The agent asks for the next renewal only after it handled the last
    // answer, so by the third request the second certificate is stored.
    within("a third renewal", w.hub.renewals.recv()).await.expect("renewed");
    assert_eq!(cert_serial(&w.state_dir().join("tls.crt")), second);
    // No reconnect happened: the session is the one from before.
    assert!(
        matches!(&*agent.state.borrow(), ferry_agent::AgentState::Connected { session_id, .. } if *session_id == session)
    );
    // A new connection presents a renewed certificate (the enrolled one has
    // expired by now: TLS would refuse it).
    w.hub.kick().await;
    let (_, again) = agent.connected(Some(&session)).await;
    assert_ne!(again, session);
    let mut parked = w.hub.next_parked().await;
    while parked.session != again {
        parked = w.hub.next_parked().await;
    }
    assert_ne!(parked.serial, enrolled, "the new connection presents a renewed certificate");
    agent.stop().await.expect("clean stop");
    w.stop().await;
}

#[tokio::test]
async fn refuses_hostile_heads_and_reports_an_unreachable_apiserver() {
    let mut w = World::new(1).await;
    w.store_credential();
    // Point the agent at a port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let kubeconfig = write_kubeconfig(w.dir.path(), &format!("https://127.0.0.1:{port}"), &w.ca);
    let mut agent = RunningAgent::start(config(&w.hub, &w.ca, &kubeconfig, &w.state_dir(), None));
    agent.connected(None).await;

    // An identity in system:masters is refused before any apiserver call.
    let mut parked = w.hub.next_parked().await;
    let mut h = head("GET", "/api", "", &[], false);
    h.identity = Some(
        Identity { user: "eve".into(), groups: vec!["system:masters".into()], ..Default::default() }.into(),
    );
    parked.send(hub_frame::Frame::Head(h)).await;
    match parked.recv().await {
        Some(agent_frame::Frame::Error(e)) => assert_eq!(e.code(), ErrorCode::Protocol),
        other => panic!("expected an error, got {other:?}"),
    }
    drop(parked);

    // A system identity, as caller or as `--as` target: the agent answers
    // 403 itself, whatever the hub sent.
    for (user, target) in
        [("system:kube-controller-manager", None), ("alice", Some("system:serviceaccount:kube-system:x"))]
    {
        let mut parked = w.hub.next_parked().await;
        let mut h = head("GET", "/api", "", &[], false);
        h.identity = Some(Identity { user: user.into(), ..Default::default() }.into());
        h.impersonate = target.map(|t| Identity { user: t.into(), ..Default::default() }.into());
        parked.send(hub_frame::Frame::Head(h)).await;
        parked.send(end()).await;
        match parked.recv().await {
            Some(agent_frame::Frame::Head(h)) => assert_eq!(h.status, 403),
            other => panic!("expected a 403 head, got {other:?}"),
        }
        match parked.recv().await {
            Some(agent_frame::Frame::Body(b)) => {
                let text = String::from_utf8_lossy(&b);
                assert!(text.contains("does not impersonate the system identity"), "{text}");
            }
            other => panic!("expected a Status body, got {other:?}"),
        }
        drop(parked);
    }

    let mut parked = w.hub.next_parked().await;
    parked.send(hub_frame::Frame::Head(head("GET", "/api", "", &[], false))).await;
    parked.send(end()).await;
    match parked.recv().await {
        Some(agent_frame::Frame::Error(e)) => assert_eq!(e.code(), ErrorCode::UpstreamUnreachable),
        other => panic!("expected an error, got {other:?}"),
    }
    drop(parked);

    agent.stop().await.expect("clean stop");
    w.stop().await;
}

#[tokio::test]
async fn upgrades_pump_bytes_both_ways() {
    let mut w = World::new(1).await;
    w.store_credential();
    let mut agent = w.agent(None);
    agent.connected(None).await;

    let mut parked = w.hub.next_parked().await;
    let h = head(
        "POST",
        "/api/v1/namespaces/default/pods/p/exec",
        "command=sh&stdin=true",
        &[("upgrade", "SPDY/3.1"), ("x-stream-protocol-version", "v4.channel.k8s.io")],
        true,
    );
    parked.send(hub_frame::Frame::Head(h)).await;

    let mut exchange = w.api.next().await;
    assert_eq!(exchange.request.version(), Version::HTTP_11, "upgrades go over HTTP/1.1");
    assert_eq!(values(&exchange.request, "upgrade"), vec!["SPDY/3.1"]);
    assert_eq!(values(&exchange.request, "connection"), vec!["Upgrade"]);
    assert_eq!(values(&exchange.request, "impersonate-user"), vec!["alice"]);
    assert_eq!(values(&exchange.request, "authorization"), vec![format!("Bearer {AGENT_SA_TOKEN}")]);
    let on_upgrade = hyper::upgrade::on(&mut exchange.request);
    let mut switching = status(101);
    switching.headers_mut().insert("connection", http::HeaderValue::from_static("Upgrade"));
    switching.headers_mut().insert("upgrade", http::HeaderValue::from_static("SPDY/3.1"));
    assert!(exchange.respond.send(switching).is_ok());
    let mut socket = TokioIo::new(within("the upgrade", on_upgrade).await.expect("upgraded"));

    match parked.recv().await {
        Some(agent_frame::Frame::Head(h)) => {
            assert_eq!(h.status, 101);
            assert!(h.headers.iter().any(|h| h.name == "upgrade" && h.value.as_ref() == b"SPDY/3.1"));
        }
        other => panic!("expected a 101 head, got {other:?}"),
    }

    // Hub to apiserver.
    parked.send(body("ping")).await;
    let mut buf = [0u8; 4];
    within("bytes at the apiserver", socket.read_exact(&mut buf)).await.expect("read");
    assert_eq!(&buf, b"ping");
    // Apiserver to hub.
    socket.write_all(b"pong").await.expect("write");
    assert_eq!(parked.recv().await, Some(agent_frame::Frame::Body(Bytes::from_static(b"pong"))));
    // Half-close from the hub: the apiserver sees EOF, its side goes on.
    parked.send(end()).await;
    let mut rest = Vec::new();
    within("EOF at the apiserver", socket.read_to_end(&mut rest)).await.expect("read");
    assert!(rest.is_empty());
    socket.write_all(b"bye").await.expect("write");
    socket.shutdown().await.expect("shutdown");
    assert_eq!(parked.recv().await, Some(agent_frame::Frame::Body(Bytes::from_static(b"bye"))));
    assert_eq!(parked.recv().await, Some(agent_frame::Frame::End(pb::End { reuse: false })));

    drop(parked);
    agent.stop().await.expect("clean stop");
    w.stop().await;
}

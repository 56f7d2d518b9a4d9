//! A hostile agent (or a leaked agent credential) against the real hub: a
//! scripted agent that enrolls properly and then floods sessions and parked
//! streams and answers requests with malformed heads, oversized frames, a
//! 101 nobody asked for and an early offer to reuse its stream. The hub
//! bounds each, fails only the requests concerned, and the well-behaved
//! cluster beside it keeps working.

mod common;

use std::time::Duration;

use common::*;
use ferry::proto::v1::tunnel_client::TunnelClient;
use ferry::proto::v1::{
    AgentControl, AgentFrame, EnrollRequest, Header, Hello, HubControl, HubFrame, RequestHead, ResponseHead,
    agent_control, agent_frame, hub_control, hub_frame,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// How long one scripted exchange may take: each ends in well under a
/// second; a stream the hub wrongly keeps open would stay until the hub's
/// idle trim (30 s), so this tells the two apart.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

/// A scripted agent of cluster `evil`.
struct Hostile {
    channel: Channel,
    session: String,
    /// Keeps the control stream open.
    _control: (mpsc::Sender<AgentControl>, tonic::Streaming<HubControl>),
}

fn endpoint(env: &Env, identity: Option<Identity>) -> Endpoint {
    let ca = std::fs::read_to_string(env.path("hub/ca.crt")).expect("ca");
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("127.0.0.1");
    if let Some(id) = identity {
        tls = tls.identity(id);
    }
    Endpoint::from_shared(env.hub_url.clone()).expect("url").tls_config(tls).expect("tls")
}

async fn control(
    channel: Channel,
) -> Result<(String, (mpsc::Sender<AgentControl>, tonic::Streaming<HubControl>)), tonic::Status> {
    control_with(channel, true).await
}

/// A control stream whose hello says whether the agent understands the
/// whole layout (`false`: an agent of the same protocol version built
/// before it).
async fn control_with(
    channel: Channel,
    whole_layout: bool,
) -> Result<(String, (mpsc::Sender<AgentControl>, tonic::Streaming<HubControl>)), tonic::Status> {
    let (tx, rx) = mpsc::channel(4);
    let hello = Hello {
        protocol_version: ferry::PROTOCOL_VERSION,
        agent_id: uuid::Uuid::new_v4().to_string(),
        whole_layout,
        ..Default::default()
    };
    tx.send(AgentControl { msg: Some(agent_control::Msg::Hello(hello)) }).await.expect("hello");
    let mut inbound = TunnelClient::new(channel).control(ReceiverStream::new(rx)).await?.into_inner();
    match inbound.message().await? {
        Some(HubControl { msg: Some(hub_control::Msg::Welcome(w)) }) => Ok((w.session_id, (tx, inbound))),
        other => panic!("expected a welcome, got {other:?}"),
    }
}

impl Hostile {
    async fn enroll(env: &Env) -> Hostile {
        let token = env.ferryctl_ok(&["register", "evil", "-o", "token"]);
        let key = rcgen::KeyPair::generate().expect("key");
        let csr = rcgen::CertificateParams::default().serialize_request(&key).expect("csr");
        let anonymous = endpoint(env, None).connect().await.expect("connect");
        let cert = TunnelClient::new(anonymous)
            .enroll(EnrollRequest {
                bootstrap_token: token.trim().to_owned(),
                agent_id: uuid::Uuid::new_v4().to_string(),
                csr_der: csr.der().to_vec().into(),
            })
            .await
            .expect("enrolled")
            .into_inner()
            .certificate_pem;
        let channel = endpoint(env, Some(Identity::from_pem(cert, key.serialize_pem())))
            .connect()
            .await
            .expect("connect");
        let (session, control) = control(channel.clone()).await.expect("a session");
        Hostile { channel, session, _control: control }
    }

    /// Parks one stream; the hub's frames and the agent's sender.
    async fn park(&self) -> Result<(mpsc::Sender<AgentFrame>, tonic::Streaming<HubFrame>), tonic::Status> {
        self.park_in(&self.session).await
    }

    /// Parks one stream for session `session` (its own, or not).
    async fn park_in(
        &self,
        session: &str,
    ) -> Result<(mpsc::Sender<AgentFrame>, tonic::Streaming<HubFrame>), tonic::Status> {
        let (tx, rx) = mpsc::channel(8);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        request.metadata_mut().insert("ferry-session", session.parse().expect("metadata"));
        let inbound = TunnelClient::new(self.channel.clone())
            .max_encoding_message_size(16 << 20)
            .proxy(request)
            .await?
            .into_inner();
        Ok((tx, inbound))
    }

    /// Parks a stream, makes `path` requested through the hub (admin),
    /// answers the head with `answer`, and returns kubectl's output.
    async fn answer(&self, env: &Env, path: &str, answer: Vec<AgentFrame>) -> std::process::Output {
        self.answer_kubectl(env, &["get", "--raw", path], answer).await
    }

    /// Like [`Hostile::answer`], for any kubectl command.
    async fn answer_kubectl(
        &self,
        env: &Env,
        args: &[&str],
        answer: Vec<AgentFrame>,
    ) -> std::process::Output {
        self.answer_in(&self.session, env, args, answer).await.0
    }

    /// Like [`Hostile::answer_kubectl`], on a stream of session `session`;
    /// also returns the request head the hub sent.
    async fn answer_in(
        &self,
        session: &str,
        env: &Env,
        args: &[&str],
        answer: Vec<AgentFrame>,
    ) -> (std::process::Output, RequestHead) {
        // Streams given up just before may still count at the hub for a
        // moment: ask until it has room (each try is a real call).
        let (tx, mut inbound) = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match self.park_in(session).await {
                    Ok(p) => return p,
                    Err(s) if s.code() == tonic::Code::ResourceExhausted => tokio::task::yield_now().await,
                    Err(s) => panic!("park refused: {s:?}"),
                }
            }
        })
        .await
        .expect("room to park");
        let kubectl = tokio::process::Command::new(kubectl_bin())
            .arg("--kubeconfig")
            .arg(env.admin_kubeconfig())
            .args(args)
            .env_remove("KUBECONFIG")
            .output();
        let script = async {
            let head = match inbound.message().await.expect("a frame").expect("a head").frame {
                Some(hub_frame::Frame::Head(h)) => *h,
                other => panic!("expected a request head, got {other:?}"),
            };
            for frame in answer {
                if tx.send(frame).await.is_err() {
                    break;
                }
            }
            // The agent's side ends here; the hub's must end too (a stream
            // the hub kept, e.g. parked again, would hang this call).
            drop(tx);
            while let Ok(Some(_)) = inbound.message().await {}
            head
        };
        let (out, head) = tokio::time::timeout(ANSWER_TIMEOUT, async { tokio::join!(kubectl, script) })
            .await
            .expect("the request ends");
        (out.expect("kubectl"), head)
    }
}

fn head(status: u32, headers: Vec<Header>) -> AgentFrame {
    AgentFrame {
        frame: Some(agent_frame::Frame::Head(ResponseHead { status, headers, ..Default::default() })),
    }
}

fn hub_rss_kib(env: &Env) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", env.hub.pid())).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_agent_is_bounded_and_its_neighbours_keep_working() {
    let env = tokio::task::spawn_blocking(|| Env::start(None)).await.expect("env");
    let evil = Hostile::enroll(&env).await;
    let admin = env.admin_kubeconfig();
    let neighbour_works = move || {
        let admin = admin.clone();
        move || {
            let out = kubectl(&admin, &["get", "--raw", "/clusters/edge/api/v1/namespaces"]);
            assert!(out.status.success(), "the neighbour: {}", String::from_utf8_lossy(&out.stderr));
        }
    };
    let rss_before = hub_rss_kib(&env);

    // A session flood: bounded per cluster.
    let mut sessions = Vec::new();
    let mut refused = None;
    for _ in 0..80 {
        match control(evil.channel.clone()).await {
            Ok(s) => sessions.push(s),
            Err(status) => {
                refused = Some(status);
                break;
            }
        }
    }
    let refused = refused.expect("the flood is cut off");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("--max-agent-sessions-per-cluster"), "{refused:?}");
    assert_eq!(sessions.len() + 1, 64, "the first session plus 63 more fill the bound");
    drop(sessions);

    // A parked-stream flood: bounded per session.
    let mut parked = Vec::new();
    let refused = loop {
        match evil.park().await {
            Ok(p) => parked.push(p),
            Err(status) => break status,
        }
        assert!(parked.len() <= 1024, "more than the bound was parked");
    };
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
    assert_eq!(parked.len(), 1024);
    drop(parked);
    tokio::task::spawn_blocking(neighbour_works()).await.expect("neighbour");

    let path = "/clusters/evil/api/v1/namespaces";
    let bad_gateway = |out: &std::process::Output, what: &str| {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(what), "{err}");
    };

    // Too many headers in a response head.
    let many = (0..200).map(|i| Header { name: format!("x-h{i}"), value: b"v".to_vec().into() }).collect();
    let out = evil.answer(&env, path, vec![head(200, many)]).await;
    bad_gateway(&out, "invalid response head");

    // A 101 to a request that asked for no upgrade.
    let out = evil.answer(&env, path, vec![head(101, vec![])]).await;
    bad_gateway(&out, "asked for no protocol switch");

    // A whole response (head, body and End in one message) over the
    // protocol's bound, and a body in a head that does not end the response.
    let oversized = AgentFrame {
        frame: Some(agent_frame::Frame::Head(ResponseHead {
            status: 200,
            body: vec![b'x'; ferry::frame::MAX_WHOLE_BODY + 1].into(),
            end: Some(ferry::proto::v1::End { reuse: true }),
            ..Default::default()
        })),
    };
    let out = evil.answer(&env, path, vec![oversized]).await;
    bad_gateway(&out, "a whole response over");
    let unended = AgentFrame {
        frame: Some(agent_frame::Frame::Head(ResponseHead {
            status: 200,
            body: b"{}".to_vec().into(),
            ..Default::default()
        })),
    };
    let out = evil.answer(&env, path, vec![unended]).await;
    bad_gateway(&out, "a body in a response head");

    // An agent that does not announce the whole layout (built before it,
    // same protocol version) gets the request frame by frame, and its
    // frame-by-frame answer goes through.
    let (old_session, _old_control) =
        control_with(evil.channel.clone(), false).await.expect("an old session");
    let frames = vec![
        head(200, vec![Header { name: "content-type".into(), value: b"application/json".to_vec().into() }]),
        AgentFrame { frame: Some(agent_frame::Frame::Body(b"{\"old\":true}".to_vec().into())) },
        AgentFrame { frame: Some(agent_frame::Frame::End(ferry::proto::v1::End { reuse: false })) },
    ];
    let (out, sent) = evil.answer_in(&old_session, &env, &["get", "--raw", path], frames).await;
    assert!(!sent.body_ended && !sent.whole_response, "{sent:?}");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), r#"{"old":true}"#);

    // A header value with a line break (response splitting).
    let split = vec![Header { name: "x-a".into(), value: b"a\r\nSet-Cookie: x".to_vec().into() }];
    let out = evil.answer(&env, path, vec![head(200, split)]).await;
    bad_gateway(&out, "invalid response head");

    // A frame beyond the protocol's largest message.
    let huge = AgentFrame { frame: Some(agent_frame::Frame::Body(vec![b'x'; 5 << 20].into())) };
    let out = evil.answer(&env, path, vec![head(200, vec![]), huge]).await;
    assert!(!out.status.success(), "a broken response is not a success");

    // An agent-supplied error message full of terminal escapes and length:
    // cleaned and cut before a caller sees it.
    let nasty = format!("\u{1b}[31mred{}", "x".repeat(100_000));
    let error = AgentFrame {
        frame: Some(agent_frame::Frame::Error(ferry::proto::v1::Error { code: 2, message: nasty })),
    };
    let out = evil.answer(&env, path, vec![error]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains('\u{1b}') && err.len() < 4096,
        "{} bytes: {:?}",
        err.len(),
        &err[..err.len().min(200)]
    );

    // An offer to reuse the stream while the hub is still sending the
    // request body (8 MiB the agent never reads): not taken up, the stream
    // closes (else it would stay open, and this call would not end).
    let big = env.path("big.json");
    let blob = "x".repeat(8 << 20);
    std::fs::write(
        &big,
        format!(
            r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"b"}},"data":{{"b":"{blob}"}}}}"#
        ),
    )
    .expect("write");
    let early = AgentFrame { frame: Some(agent_frame::Frame::End(ferry::proto::v1::End { reuse: true })) };
    let create = [
        "create",
        "--raw",
        "/clusters/evil/api/v1/namespaces/default/configmaps",
        "-f",
        big.to_str().expect("utf8"),
    ];
    evil.answer_kubectl(&env, &create, vec![head(200, vec![]), early]).await;

    // Through all of it the hub stayed up, the neighbour is served, and the
    // hub's memory stayed bounded.
    tokio::task::spawn_blocking(neighbour_works()).await.expect("neighbour");
    let grown = hub_rss_kib(&env).saturating_sub(rss_before);
    assert!(grown < 256 * 1024, "the hub grew by {grown} KiB");
}

async fn enroll_with(env: &Env, token: &str) -> Result<String, tonic::Status> {
    let key = rcgen::KeyPair::generate().expect("key");
    let csr = rcgen::CertificateParams::default().serialize_request(&key).expect("csr");
    let channel = endpoint(env, None).connect().await.expect("connect");
    let request = EnrollRequest {
        bootstrap_token: token.to_owned(),
        agent_id: uuid::Uuid::new_v4().to_string(),
        csr_der: csr.der().to_vec().into(),
    };
    Ok(TunnelClient::new(channel).enroll(request).await?.into_inner().certificate_pem)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tunnel_admits_agents_only_for_their_own_cluster_and_a_token_only_once() {
    let mut env = tokio::task::spawn_blocking(|| Env::start(None)).await.expect("env");

    // Sixteen agents enrolling at once with one token: one certificate.
    let token = env.ferryctl_ok(&["register", "race", "-o", "token"]).trim().to_owned();
    let mut racers = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (env_url, token) = (env.hub_url.clone(), token.clone());
        let ca = std::fs::read_to_string(env.path("hub/ca.crt")).expect("ca");
        racers.spawn(async move {
            let tls =
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("127.0.0.1");
            let channel = Endpoint::from_shared(env_url)
                .expect("url")
                .tls_config(tls)
                .expect("tls")
                .connect()
                .await
                .expect("connect");
            let key = rcgen::KeyPair::generate().expect("key");
            let csr = rcgen::CertificateParams::default().serialize_request(&key).expect("csr");
            let request = EnrollRequest {
                bootstrap_token: token,
                agent_id: uuid::Uuid::new_v4().to_string(),
                csr_der: csr.der().to_vec().into(),
            };
            TunnelClient::new(channel).enroll(request).await.map(|_| ())
        });
    }
    let results = racers.join_all().await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");
    for refused in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        assert!(refused.message().contains("already used"), "{refused:?}");
    }
    assert!(enroll_with(&env, &token).await.is_err(), "and not again later");

    // A caller's certificate (the admin's) opens no agent session.
    let admin = ferry_client_sdk::HubConfig::load(env.admin_kubeconfig()).expect("admin kubeconfig");
    let ferry_client_sdk::HubCredential::ClientCert { cert_pem, key_pem } = &admin.credential else {
        panic!("the admin kubeconfig holds a certificate");
    };
    let as_admin = endpoint(&env, Some(Identity::from_pem(cert_pem, key_pem.expose())))
        .connect()
        .await
        .expect("connect");
    let refused = control(as_admin).await.expect_err("no session for a caller");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    // Nor does no certificate at all.
    let anonymous = endpoint(&env, None).connect().await.expect("connect");
    assert_eq!(control(anonymous).await.expect_err("no session").code(), tonic::Code::Unauthenticated);

    // An agent of another cluster cannot park streams in edge's session.
    let line = env
        .agent
        .as_mut()
        .expect("edge's agent")
        .wait_line("ferry-agent connected: cluster=edge", READY_TIMEOUT);
    let edge_session = line.rsplit("session=").next().expect("session id").trim().to_owned();
    let evil = Hostile::enroll(&env).await;
    let refused = evil.park_in(&edge_session).await.expect_err("not its session");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
}

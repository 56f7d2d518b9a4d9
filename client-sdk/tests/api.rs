//! The management API through the SDK against the real hub (in process,
//! real TLS on 127.0.0.1:0): who may make which call, label selectors and
//! pages, watches that resume across a hub restart without missing a
//! change, and the standard gRPC health and reflection services.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_client_sdk::{
    ClusterEvent, ClusterPhase, GrantSubject, Hub, HubConfig, HubCredential, KubeconfigRequest, ListOptions,
    ManagementError, RegisterOptions, WatchOptions,
};
use futures_util::StreamExt as _;
use tokio_util::sync::CancellationToken;

/// How long any one step may take before the test fails.
const STEP: Duration = Duration::from_secs(30);

/// A real hub serving from `dir` on `listen`.
struct TestHub {
    url: String,
    addr: SocketAddr,
    admin: PathBuf,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl TestHub {
    async fn start(dir: &Path, listen: SocketAddr) -> TestHub {
        let config = ferry_hub::HubConfig::new(dir.join("hub"), listen);
        let hub = ferry_hub::Hub::bind(config).await.expect("hub starts");
        let (url, addr, admin) = (hub.url().to_owned(), hub.local_addr(), hub.admin_kubeconfig().to_owned());
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move { hub.serve(token.cancelled_owned()).await });
        TestHub { url, addr, admin, stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }

    async fn admin(&self) -> Hub {
        Hub::connect(&HubConfig::load(&self.admin).expect("admin kubeconfig")).await.expect("connect")
    }

    fn ca_pem(&self) -> String {
        HubConfig::load(&self.admin).expect("admin kubeconfig").ca_pem
    }

    /// A hub connection as `user` in `groups`, with a bearer token.
    async fn user(&self, admin: &Hub, user: &str, groups: &[&str]) -> Hub {
        let groups: Vec<String> = groups.iter().map(|g| (*g).to_owned()).collect();
        let token = admin.create_token(user, &groups, None, None).await.expect("token");
        let config =
            HubConfig::new(&self.url, self.ca_pem(), HubCredential::Token(token.secret)).expect("config");
        Hub::connect(&config).await.expect("connect")
    }
}

#[track_caller]
fn denied<T: std::fmt::Debug>(r: Result<T, ManagementError>) -> String {
    match r {
        Err(ManagementError::PermissionDenied(m)) => m,
        other => panic!("expected permission denied, got {other:?}"),
    }
}

async fn next(
    events: &mut (impl futures_util::Stream<Item = Result<ClusterEvent, ManagementError>> + Unpin),
) -> ClusterEvent {
    tokio::time::timeout(STEP, events.next())
        .await
        .expect("an event in time")
        .expect("stream open")
        .expect("event")
}

/// The next event that is not a bookmark.
async fn next_change(
    events: &mut (impl futures_util::Stream<Item = Result<ClusterEvent, ManagementError>> + Unpin),
) -> ClusterEvent {
    loop {
        match next(events).await {
            ClusterEvent::Bookmark { .. } => continue,
            e => return e,
        }
    }
}

#[tokio::test]
async fn every_call_checks_who_may_make_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = TestHub::start(dir.path(), "127.0.0.1:0".parse().expect("addr")).await;
    let admin = hub.admin().await;
    admin.register_cluster("edge-1", None).await.expect("register");
    admin.register_cluster("lab", None).await.expect("register");
    admin.grant("edge-1", &GrantSubject::Group("dev".into()), false).await.expect("grant");
    let alice = hub.user(&admin, "alice", &["dev"]).await;

    // What a user may do: see and wait for clusters they hold a grant for,
    // get a kubeconfig for themselves there, see their own grants.
    let me = alice.who_am_i().await.expect("whoami");
    assert_eq!((me.user.as_str(), me.admin), ("alice", false));
    let names: Vec<String> = alice.list_clusters().await.expect("list").into_iter().map(|c| c.name).collect();
    assert_eq!(names, ["edge-1"], "only the granted cluster");
    assert_eq!(alice.get_cluster("edge-1").await.expect("get").name, "edge-1");
    alice.wait_cluster("edge-1", false, Duration::from_secs(5)).await.expect("wait");
    alice.issue_kubeconfig("edge-1", None, &[]).await.expect("own kubeconfig");
    let grants = alice.list_grants(None).await.expect("grants");
    assert_eq!(grants.len(), 1);
    let mut events = Box::pin(alice.watch_clusters(WatchOptions::default()));
    match next(&mut events).await {
        ClusterEvent::Added { cluster, .. } => assert_eq!(cluster.name, "edge-1"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(next(&mut events).await, ClusterEvent::Bookmark { .. }), "lab is not shown");

    // What needs a grant.
    let m = denied(alice.get_cluster("lab").await);
    assert!(m.contains("may not reach cluster \"lab\"") && m.contains("ferryctl grant"), "{m}");
    denied(alice.wait_cluster("lab", true, Duration::from_secs(1)).await);
    denied(alice.issue_kubeconfig("lab", None, &[]).await);
    let lab_watch = alice.watch_clusters(WatchOptions { name: Some("lab".into()), ..Default::default() });
    let first = tokio::time::timeout(STEP, Box::pin(lab_watch).next()).await.expect("in time").expect("item");
    assert!(matches!(first, Err(ManagementError::PermissionDenied(_))), "{first:?}");

    // What needs an admin, each refused with the next step named.
    let other =
        KubeconfigRequest { cluster: "edge-1".into(), user: Some("bob".into()), ..Default::default() };
    let m = denied(alice.issue_kubeconfig_with(&other).await);
    assert!(m.contains("only members of \"ferry:admins\""), "{m}");
    let labels = BTreeMap::from([("a".to_owned(), "b".to_owned())]);
    let refusals = [
        denied(alice.register_cluster("new", None).await),
        denied(alice.approve_cluster("edge-1").await),
        denied(alice.deny_cluster("edge-1").await),
        denied(alice.delete_cluster("edge-1").await),
        denied(alice.update_labels("edge-1", &labels, &[]).await),
        denied(alice.create_token("bob", &[], None, None).await),
        denied(alice.list_tokens().await),
        denied(alice.revoke_token("0").await),
        denied(alice.grant("lab", &GrantSubject::User("alice".into()), false).await),
        denied(alice.revoke_grant("edge-1", &GrantSubject::Group("dev".into())).await),
    ];
    for m in refusals {
        assert!(m.contains("\"alice\" is not a hub administrator") && m.contains("admin credential"), "{m}");
    }
    // Nothing changed.
    let all = admin.list_clusters().await.expect("list");
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|c| c.phase == ClusterPhase::Offline && c.labels.is_empty()));

    // Without any credential, nothing at all.
    let anonymous = Hub::connect(
        &HubConfig::new(
            &hub.url,
            hub.ca_pem(),
            HubCredential::Token(ferry::secret::Secret::new("ferryuser.x.y")),
        )
        .expect("config"),
    )
    .await
    .expect("connect");
    let e = anonymous.list_clusters().await.expect_err("refused");
    assert!(matches!(e, ManagementError::Unauthenticated(_)), "{e:?}");
    hub.stop().await;
}

#[tokio::test]
async fn list_filters_by_labels_and_pages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = TestHub::start(dir.path(), "127.0.0.1:0".parse().expect("addr")).await;
    let admin = hub.admin().await;
    for i in 0..7 {
        let env = if i % 2 == 0 { "prod" } else { "dev" };
        let options = RegisterOptions {
            labels: BTreeMap::from([("env".to_owned(), env.to_owned())]),
            ..Default::default()
        };
        admin.register_cluster_with(&format!("c{i}"), &options).await.expect("register");
    }
    let mut options =
        ListOptions { label_selector: Some("env=prod".into()), page_size: Some(2), page_token: None };
    let mut names = Vec::new();
    let mut pages = 0;
    loop {
        let page = admin.list_clusters_with(&options).await.expect("page");
        pages += 1;
        assert!(page.clusters.len() <= 2);
        names.extend(page.clusters.into_iter().map(|c| c.name));
        match page.next_page_token {
            Some(t) => options.page_token = Some(t),
            None => break,
        }
    }
    assert_eq!(names, ["c0", "c2", "c4", "c6"]);
    assert_eq!(pages, 2);
    let all = admin.list_all_clusters(Some("env notin (prod)")).await.expect("all");
    assert_eq!(all.clusters.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["c1", "c3", "c5"]);
    assert!(all.revision >= 7, "{}", all.revision);
    let bad = ListOptions { page_token: Some("garbage".into()), ..Default::default() };
    assert!(matches!(admin.list_clusters_with(&bad).await, Err(ManagementError::InvalidArgument(_))));
    let too_big = ListOptions { page_size: Some(5000), ..Default::default() };
    assert!(matches!(admin.list_clusters_with(&too_big).await, Err(ManagementError::InvalidArgument(_))));
    hub.stop().await;
}

#[tokio::test]
async fn watches_resume_across_a_hub_restart_without_missing_a_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = TestHub::start(dir.path(), "127.0.0.1:0".parse().expect("addr")).await;
    let addr = first.addr;
    let admin = first.admin().await;
    admin.register_cluster("edge-1", None).await.expect("register");

    let mut events = Box::pin(admin.watch_clusters(WatchOptions::default()));
    let ClusterEvent::Added { cluster, .. } = next(&mut events).await else { panic!("ADDED first") };
    assert_eq!(cluster.name, "edge-1");
    let synced = next(&mut events).await;
    assert!(matches!(synced, ClusterEvent::Bookmark { .. }), "{synced:?}");
    let set = |v: &str| BTreeMap::from([("step".to_owned(), v.to_owned())]);
    admin.update_labels("edge-1", &set("1"), &[]).await.expect("label");
    let ClusterEvent::Modified { cluster, revision: seen } = next_change(&mut events).await else {
        panic!("MODIFIED")
    };
    assert_eq!(cluster.labels["step"], "1");

    // The hub goes away and comes back on the same address and data; the
    // stream reconnects by itself. Changes made after the restart arrive,
    // in order, whether or not the stream was back yet.
    first.stop().await;
    let second = TestHub::start(dir.path(), addr).await;
    admin.register_cluster("lab", None).await.expect("register after restart");
    admin.update_labels("edge-1", &set("2"), &[]).await.expect("label after restart");
    let step_two = |e: &ClusterEvent| matches!(e, ClusterEvent::Modified { cluster, .. } if cluster.name == "edge-1" && cluster.labels.get("step").map(String::as_str) == Some("2"));
    let mut after = Vec::new();
    while !after.iter().any(step_two) {
        after.push(next_change(&mut events).await);
    }
    let added =
        after.iter().position(|e| matches!(e, ClusterEvent::Added { cluster, .. } if cluster.name == "lab"));
    let modified = after.iter().position(step_two);
    assert!(added.is_some() && added < modified, "lab registered, then edge-1 labeled: {after:?}");
    assert!(after.first().is_some_and(|e| e.revision() > seen));
    assert!(after.windows(2).all(|w| w[0].revision() < w[1].revision()), "in order: {after:?}");

    // A new watch from the revision a client last handled gets exactly what
    // came after it, though the hub restarted in between.
    let mut resumed =
        Box::pin(admin.watch_clusters(WatchOptions { revision: Some(seen), ..Default::default() }));
    let mut replayed = Vec::new();
    while replayed.len() < after.len() {
        replayed.push(next_change(&mut resumed).await);
    }
    assert_eq!(replayed, after);
    let last = after.last().map(ClusterEvent::revision).unwrap_or_default();

    // A revision the hub no longer keeps: a clear error from the API, and
    // a fresh list from the SDK's stream.
    for i in 0..ferry_hub::store::CHANGE_LOG_CAPACITY + 1 {
        admin.update_labels("lab", &set(&i.to_string()), &[]).await.expect("label");
    }
    let raw = ferry::proto::v1::clusters_client::ClustersClient::new(
        tonic::transport::Endpoint::from_shared(second.url.clone())
            .expect("endpoint")
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(second.ca_pem()))
                    .identity(admin_identity(&second.admin)),
            )
            .expect("tls")
            .connect()
            .await
            .expect("connect"),
    )
    .watch(ferry::proto::v1::WatchClustersRequest { revision: 1, ..Default::default() })
    .await
    .expect_err("too old");
    assert_eq!(raw.code(), tonic::Code::OutOfRange);
    assert!(raw.message().contains("list the clusters again"), "{}", raw.message());
    let mut old = Box::pin(admin.watch_clusters(WatchOptions { revision: Some(1), ..Default::default() }));
    match next(&mut old).await {
        ClusterEvent::Relisted { clusters, revision } => {
            assert_eq!(clusters.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["edge-1", "lab"]);
            assert!(revision > last);
        }
        other => panic!("expected a fresh list, got {other:?}"),
    }
    second.stop().await;
}

fn admin_identity(admin: &Path) -> tonic::transport::Identity {
    match HubConfig::load(admin).expect("admin").credential {
        HubCredential::ClientCert { cert_pem, key_pem } => {
            tonic::transport::Identity::from_pem(cert_pem, key_pem.expose())
        }
        HubCredential::Token(_) => panic!("the admin kubeconfig has a certificate"),
    }
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = ferry_hub::HubConfig::new(dir.path().join("hub"), "127.0.0.1:0".parse().expect("addr"));
    config.health_listen = Some("127.0.0.1:0".parse().expect("addr"));
    let bound = ferry_hub::Hub::bind(config).await.expect("hub starts");
    let (url, admin_path) = (bound.url().to_owned(), bound.admin_kubeconfig().to_owned());
    let health_addr = bound.health_addr().expect("health address");
    let stop = CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move { bound.serve(token.cancelled_owned()).await });
    let ca = HubConfig::load(&admin_path).expect("admin").ca_pem;
    let tls = || {
        tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(&ca))
    };

    // Health needs no credential, on the hub's address...
    let anonymous = tonic::transport::Endpoint::from_shared(url.clone())
        .expect("endpoint")
        .tls_config(tls())
        .expect("tls")
        .connect()
        .await
        .expect("connect");
    let mut health = HealthClient::new(anonymous.clone());
    for service in ["", "ferry.v1.Clusters", "ferry.v1.Access", "ferry.v1.Tunnel"] {
        let r = health.check(HealthCheckRequest { service: service.into() }).await.expect("check");
        assert_eq!(r.into_inner().status, ServingStatus::Serving as i32, "{service:?}");
    }
    // ...and in plain text for the kubelet's gRPC probe.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{health_addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let r =
        HealthClient::new(plain).check(HealthCheckRequest { service: String::new() }).await.expect("check");
    assert_eq!(r.into_inner().status, ServingStatus::Serving as i32);

    // Reflection needs a credential.
    let list = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let refused = ServerReflectionClient::new(anonymous)
        .server_reflection_info(futures_util::stream::iter([list.clone()]))
        .await;
    let status = match refused {
        Err(s) => s,
        Ok(r) => r.into_inner().message().await.expect_err("refused"),
    };
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");

    let admin = tonic::transport::Endpoint::from_shared(url.clone())
        .expect("endpoint")
        .tls_config(tls().identity(admin_identity(&admin_path)))
        .expect("tls")
        .connect()
        .await
        .expect("connect");
    let symbol = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol("ferry.v1.Cluster".into())),
    };
    let mut answers = ServerReflectionClient::new(admin)
        .server_reflection_info(futures_util::stream::iter([list, symbol]))
        .await
        .expect("reflection")
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(services)) =
        answers.message().await.expect("answer").and_then(|a| a.message_response)
    else {
        panic!("a service list")
    };
    let names: Vec<String> = services.service.into_iter().map(|s| s.name).collect();
    for wanted in ["ferry.v1.Clusters", "ferry.v1.Access", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == wanted), "{wanted} missing from {names:?}");
    }
    let Some(MessageResponse::FileDescriptorResponse(files)) =
        answers.message().await.expect("answer").and_then(|a| a.message_response)
    else {
        panic!("a file descriptor")
    };
    use prost::Message as _;
    let file = files
        .file_descriptor_proto
        .iter()
        .map(|bytes| prost_types::FileDescriptorProto::decode(bytes.as_slice()).expect("descriptor"))
        .find(|f| f.name() == "ferry/v1/management.proto")
        .expect("management.proto");
    let comments: Vec<String> = file
        .source_code_info
        .iter()
        .flat_map(|i| i.location.iter())
        .filter_map(|l| l.leading_comments.clone())
        .collect();
    assert!(
        comments.iter().any(|c| c.contains("A registered cluster as the hub sees it")),
        "the API's documentation travels with it"
    );
    stop.cancel();
    let _ = task.await;
}

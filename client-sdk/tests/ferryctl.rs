//! Runs the real `ferryctl` binary against an in-process fake hub: the
//! generated `ferry.v1.Management` service behind real TLS on 127.0.0.1:0,
//! requiring client certificates from its own CA, as the hub does.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry::ids::ClusterId;
use ferry::proto::v1 as pb;
use pb::management_server::{Management, ManagementServer};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

mod common;
use common::{Ca, Pair};

// ---------------------------------------------------------------- fake hub

const ISSUED_KUBECONFIG: &str = "apiVersion: v1\nkind: Config\nclusters: []\n";

/// What the fake hub was asked, for assertions.
#[derive(Default)]
struct Calls {
    register: Vec<pb::RegisterClusterRequest>,
    issue: Vec<pb::IssueKubeconfigRequest>,
    wait: Vec<pb::WaitClusterRequest>,
}

#[derive(Clone)]
struct FakeHub {
    /// Admin client certificate (DER): the fake's whole authorization policy.
    admin_der: Vec<u8>,
    clusters: watch::Sender<BTreeMap<String, pb::Cluster>>,
    calls: Arc<Mutex<Calls>>,
    /// Tells the test that a wait is parked (cluster name).
    waiting: mpsc::Sender<String>,
    /// Bumped by the test to make parked waits time out now.
    expire: watch::Sender<u64>,
}

impl FakeHub {
    fn require_admin<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let certs = request.peer_certs().ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        match certs.first() {
            Some(c) if c.as_ref() == self.admin_der.as_slice() => Ok(()),
            _ => Err(Status::permission_denied("this call needs the ferry:admins group")),
        }
    }

    fn record(&self, f: impl FnOnce(&mut Calls)) {
        f(&mut self.calls.lock().expect("calls lock"));
    }

    fn cluster(&self, name: &str) -> Result<pb::Cluster, Status> {
        self.clusters
            .borrow()
            .get(name)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("cluster {name:?} not found")))
    }
}

#[tonic::async_trait]
impl Management for FakeHub {
    async fn register_cluster(
        &self,
        request: Request<pb::RegisterClusterRequest>,
    ) -> Result<Response<pb::RegisterClusterResponse>, Status> {
        self.require_admin(&request)?;
        let r = request.into_inner();
        self.record(|c| c.register.push(r.clone()));
        if r.name.is_empty() || r.name.contains('/') {
            return Err(Status::invalid_argument(format!("cluster name {:?} is not a DNS label", r.name)));
        }
        let name = r.name.clone();
        self.clusters.send_modify(|m| {
            m.entry(name.clone()).or_insert_with(|| pb::Cluster {
                name: name.clone(),
                id: ClusterId::new().to_string(),
                created_at_unix: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                ..Default::default()
            });
        });
        let cluster = self.cluster(&name)?;
        Ok(Response::new(pb::RegisterClusterResponse {
            bootstrap_token: format!("ferryboot.{}.{}", cluster.id, "ab".repeat(32)),
            cluster: Some(cluster),
            hub_ca_pem: String::new(),
            hub_url: String::new(),
        }))
    }

    async fn issue_kubeconfig(
        &self,
        request: Request<pb::IssueKubeconfigRequest>,
    ) -> Result<Response<pb::IssueKubeconfigResponse>, Status> {
        let r = request.into_inner();
        self.record(|c| c.issue.push(r.clone()));
        self.cluster(&r.cluster)?;
        Ok(Response::new(pb::IssueKubeconfigResponse { kubeconfig: ISSUED_KUBECONFIG.into() }))
    }

    async fn list_clusters(
        &self,
        _request: Request<pb::ListClustersRequest>,
    ) -> Result<Response<pb::ListClustersResponse>, Status> {
        let clusters = self.clusters.borrow().values().cloned().collect();
        Ok(Response::new(pb::ListClustersResponse { clusters }))
    }

    async fn wait_cluster(
        &self,
        request: Request<pb::WaitClusterRequest>,
    ) -> Result<Response<pb::Cluster>, Status> {
        let r = request.into_inner();
        self.record(|c| c.wait.push(r.clone()));
        self.cluster(&r.name)?;
        let mut clusters = self.clusters.subscribe();
        let mut expire = self.expire.subscribe();
        let reached =
            |m: &BTreeMap<String, pb::Cluster>| m.get(&r.name).is_some_and(|c| c.connected == r.connected);
        if !reached(&clusters.borrow_and_update()) {
            // Subscribed before announcing, so no change or expiry is missed.
            let _ = self.waiting.send(r.name.clone()).await;
        }
        tokio::select! {
            done = clusters.wait_for(reached) => match done {
                Ok(m) => Ok(Response::new(m.get(&r.name).cloned().unwrap_or_default())),
                Err(_) => Err(Status::unavailable("hub shutting down")),
            },
            _ = expire.changed() => Err(Status::deadline_exceeded("cluster did not reach the state in time")),
            () = tokio::time::sleep(Duration::from_secs(u64::from(r.timeout_seconds))) => {
                Err(Status::deadline_exceeded("cluster did not reach the state in time"))
            }
        }
    }
}

/// The running fake hub; dropping it stops the server.
struct Hub {
    addr: SocketAddr,
    ca: Ca,
    admin: Pair,
    state: FakeHub,
    waiting: mpsc::Receiver<String>,
    dir: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Hub {
    async fn start() -> Hub {
        let ca = Ca::new("ferry-ca");
        let server = ca.server();
        let admin = ca.client("admin", &["ferry:admins"]);
        let admin_der = admin.der();
        let (waiting_tx, waiting) = mpsc::channel(16);
        let state = FakeHub {
            admin_der,
            clusters: watch::channel(BTreeMap::new()).0,
            calls: Arc::default(),
            waiting: waiting_tx,
            expire: watch::channel(0).0,
        };

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(&server.cert, &server.key))
            .client_ca_root(Certificate::from_pem(&ca.pem));
        let (shutdown, shutdown_rx) = oneshot::channel::<()>();
        let router =
            Server::builder().tls_config(tls).expect("tls").add_service(ManagementServer::new(state.clone()));
        let task = tokio::spawn(async move {
            let stopped = async {
                let _ = shutdown_rx.await;
            };
            if let Err(e) =
                router.serve_with_incoming_shutdown(TcpListenerStream::new(listener), stopped).await
            {
                eprintln!("fake hub stopped: {e}");
            }
        });
        Hub {
            addr,
            ca,
            admin,
            state,
            waiting,
            dir: tempfile::tempdir().expect("tempdir"),
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }

    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Writes a kubeconfig for `client` at `server`, trusting `ca_pem`.
    fn kubeconfig(&self, file: &str, server: &str, ca_pem: &str, client: &Pair) -> PathBuf {
        let path = self.dir.path().join(file);
        std::fs::write(&path, common::kubeconfig_yaml(server, ca_pem, client)).expect("write kubeconfig");
        path
    }

    fn admin_kubeconfig(&self) -> PathBuf {
        self.kubeconfig("admin.kubeconfig", &self.url(), &self.ca.pem, &self.admin)
    }

    fn set_connected(&self, name: &str, connected: bool) {
        self.state.clusters.send_modify(|m| {
            if let Some(c) = m.get_mut(name) {
                c.connected = connected;
                c.agents = u32::from(connected);
                c.kubernetes_version = if connected { "v1.31.2".into() } else { String::new() };
            }
        });
    }

    async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("fake hub task");
        }
    }
}

// ---------------------------------------------------------------- running ferryctl

fn ferryctl(dir: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferryctl"));
    cmd.current_dir(dir).env_remove("FERRY_KUBECONFIG").env_remove("RUST_LOG").kill_on_drop(true);
    cmd
}

async fn run(kubeconfig: &Path, args: &[&str]) -> Output {
    let dir = kubeconfig.parent().expect("dir");
    ferryctl(dir).arg("--kubeconfig").arg(kubeconfig).args(args).output().await.expect("run ferryctl")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn assert_ok(o: &Output) {
    assert!(o.status.success(), "ferryctl failed: {:?}\nstderr: {}", o.status, stderr(o));
}

/// Asserts exit code 1 with a single `error: ...` line containing `needle`.
#[track_caller]
fn assert_error(o: &Output, needle: &str) -> String {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "stdout: {}\nstderr: {err}", stdout(o));
    assert!(err.starts_with("error: ") && err.contains(needle), "stderr: {err}");
    assert_eq!(stdout(o), "", "nothing on stdout on failure");
    err
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn register_prints_only_the_token() {
    let hub = Hub::start().await;
    let kc = hub.admin_kubeconfig();

    let out = run(&kc, &["register", "edge-1", "--token-ttl", "5m"]).await;
    assert_ok(&out);
    let token = stdout(&out);
    assert!(
        token.starts_with("ferryboot.") && token.ends_with('\n') && token.lines().count() == 1,
        "{token:?}"
    );

    let out = run(&kc, &["register", "edge-1", "-o", "token"]).await;
    assert_ok(&out);
    assert!(stdout(&out).starts_with("ferryboot."));

    let out = run(&kc, &["register", "edge-1", "-o", "manifest"]).await;
    assert_eq!(out.status.code(), Some(2), "clap rejects unknown output formats");

    let out = run(&kc, &["register", "edge-1", "--token-ttl", "60"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("e.g. 30s"), "{}", stderr(&out));

    {
        let calls = hub.state.calls.lock().expect("lock");
        let ttls: Vec<u32> = calls.register.iter().map(|r| r.token_ttl_seconds).collect();
        assert_eq!(ttls, vec![300, 0]);
    }
    hub.stop().await;
}

#[tokio::test]
async fn kubeconfig_location_defaults() {
    let hub = Hub::start().await;
    let kc = hub.admin_kubeconfig();

    // $FERRY_KUBECONFIG when no flag is given.
    let out = ferryctl(hub.dir.path()).env("FERRY_KUBECONFIG", &kc).args(["register", "a"]).output().await;
    assert_ok(&out.expect("run"));

    // Then ./ferry-data/admin.kubeconfig.
    let data = hub.dir.path().join("ferry-data");
    std::fs::create_dir(&data).expect("mkdir");
    std::fs::copy(&kc, data.join("admin.kubeconfig")).expect("copy");
    let out = ferryctl(hub.dir.path()).args(["register", "b"]).output().await.expect("run");
    assert_ok(&out);

    let elsewhere = tempfile::tempdir().expect("tempdir");
    let out = ferryctl(elsewhere.path()).args(["clusters"]).output().await.expect("run");
    assert_error(&out, "cannot read kubeconfig ./ferry-data/admin.kubeconfig");
    assert!(stderr(&out).contains("--kubeconfig"), "{}", stderr(&out));
    hub.stop().await;
}

#[tokio::test]
async fn kubeconfig_prints_what_the_hub_issued() {
    let hub = Hub::start().await;
    let kc = hub.admin_kubeconfig();
    assert_ok(&run(&kc, &["register", "edge-1"]).await);

    let out =
        run(&kc, &["kubeconfig", "edge-1", "--user", "alice", "--group", "dev", "--group", "ops"]).await;
    assert_ok(&out);
    assert_eq!(stdout(&out), ISSUED_KUBECONFIG);
    let out = run(&kc, &["kubeconfig", "edge-1"]).await;
    assert_ok(&out);

    {
        let calls = hub.state.calls.lock().expect("lock");
        let seen: Vec<(&str, &str, Vec<String>)> =
            calls.issue.iter().map(|r| (r.cluster.as_str(), r.user.as_str(), r.groups.clone())).collect();
        assert_eq!(
            seen,
            vec![("edge-1", "alice", vec!["dev".to_owned(), "ops".to_owned()]), ("edge-1", "", vec![])]
        );
    }

    let out = run(&kc, &["kubeconfig", "nope"]).await;
    let err = assert_error(&out, "cluster \"nope\" not found");
    assert_eq!(err, "error: cluster \"nope\" not found\n");
    hub.stop().await;
}

#[tokio::test]
async fn clusters_table_and_json() {
    let hub = Hub::start().await;
    let kc = hub.admin_kubeconfig();

    let out = run(&kc, &["clusters"]).await;
    assert_ok(&out);
    assert_eq!(stdout(&out), "");
    assert!(stderr(&out).contains("No clusters"), "{}", stderr(&out));

    assert_ok(&run(&kc, &["register", "edge-1"]).await);
    assert_ok(&run(&kc, &["register", "lab"]).await);
    hub.set_connected("edge-1", true);

    let out = run(&kc, &["clusters"]).await;
    assert_ok(&out);
    let table = stdout(&out);
    let lines: Vec<Vec<&str>> = table.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(lines[0], ["NAME", "STATUS", "AGENTS", "VERSION", "AGE"], "{table}");
    assert_eq!(lines[1][..4], ["edge-1", "Connected", "1", "v1.31.2"], "{table}");
    assert_eq!(lines[2][..4], ["lab", "Disconnected", "0", "<unknown>"], "{table}");
    assert!(lines[1][4].ends_with('s'), "just registered: {table}");
    assert_eq!(lines.len(), 3);
    // Aligned: every cell starts where its header does.
    let header = table.lines().next().unwrap_or_default();
    let starts: Vec<usize> = (0..header.len())
        .filter(|&i| header.as_bytes()[i] != b' ' && (i == 0 || header.as_bytes()[i - 1] == b' '))
        .collect();
    for (col, name) in lines[0].iter().enumerate() {
        let at = starts[col];
        for (row, line) in table.lines().enumerate().skip(1) {
            let cell = lines[row][col];
            assert_eq!(line.get(at..at + cell.len()), Some(cell), "column {name} in {table}");
        }
    }

    let out = run(&kc, &["clusters", "-o", "json"]).await;
    assert_ok(&out);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(json[0]["name"], "edge-1");
    assert_eq!(json[0]["status"], "Connected");
    assert_eq!(json[1]["status"], "Disconnected");
    assert_eq!(json[1]["kubernetesVersion"], serde_json::Value::Null);
    hub.stop().await;
}

#[tokio::test]
async fn wait_returns_when_the_state_is_reached() {
    let mut hub = Hub::start().await;
    let kc = hub.admin_kubeconfig();
    assert_ok(&run(&kc, &["register", "edge-1"]).await);

    // Already disconnected: returns at once.
    let out = run(&kc, &["wait", "edge-1", "--for", "disconnected"]).await;
    assert_ok(&out);
    assert_eq!(stdout(&out), "cluster/edge-1 disconnected\n");

    // Not yet connected: parks at the hub until the agent shows up.
    let child = ferryctl(hub.dir.path())
        .arg("--kubeconfig")
        .arg(&kc)
        .args(["wait", "edge-1", "--for", "connected"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    assert_eq!(hub.waiting.recv().await.as_deref(), Some("edge-1"));
    hub.set_connected("edge-1", true);
    let out = child.wait_with_output().await.expect("wait");
    assert_ok(&out);
    assert_eq!(stdout(&out), "cluster/edge-1 connected\n");

    {
        let calls = hub.state.calls.lock().expect("lock");
        let seen: Vec<(bool, u32)> = calls.wait.iter().map(|w| (w.connected, w.timeout_seconds)).collect();
        assert_eq!(seen, vec![(false, 60), (true, 60)], "default timeout is 60s");
    }
    hub.stop().await;
}

#[tokio::test]
async fn wait_times_out_with_a_message() {
    let mut hub = Hub::start().await;
    let kc = hub.admin_kubeconfig();
    assert_ok(&run(&kc, &["register", "edge-1"]).await);

    let child = ferryctl(hub.dir.path())
        .arg("--kubeconfig")
        .arg(&kc)
        .args(["wait", "edge-1", "--for", "connected", "--timeout", "2m"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    assert_eq!(hub.waiting.recv().await.as_deref(), Some("edge-1"));
    // Stand-in for the clock: make the hub's wait expire now.
    hub.state.expire.send_modify(|g| *g += 1);
    let out = child.wait_with_output().await.expect("wait");
    let err = assert_error(&out, "timed out after 2m waiting for cluster \"edge-1\" to be connected");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(hub.state.calls.lock().expect("lock").wait[0].timeout_seconds, 120);

    let out = run(&kc, &["wait", "nope", "--for", "connected"]).await;
    assert_error(&out, "cluster \"nope\" not found");
    hub.stop().await;
}

#[tokio::test]
async fn non_admin_is_denied() {
    let hub = Hub::start().await;
    let bob = hub.ca.client("bob", &["dev"]);
    let kc = hub.kubeconfig("bob.kubeconfig", &hub.url(), &hub.ca.pem, &bob);
    let out = run(&kc, &["register", "edge-1"]).await;
    assert_error(&out, "permission denied: this call needs the ferry:admins group");
    hub.stop().await;
}

#[tokio::test]
async fn client_certificate_from_another_ca_is_rejected() {
    let hub = Hub::start().await;
    let stranger = Ca::new("other-ca").client("admin", &["ferry:admins"]);
    let kc = hub.kubeconfig("stranger.kubeconfig", &hub.url(), &hub.ca.pem, &stranger);
    let out = run(&kc, &["clusters"]).await;
    let err = assert_error(&out, "the hub refused our client certificate");
    assert!(err.contains("issued by this hub's CA"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    hub.stop().await;
}

#[tokio::test]
async fn hub_certificate_from_another_ca_is_not_trusted() {
    let hub = Hub::start().await;
    let other = Ca::new("other-ca");
    let kc = hub.kubeconfig("wrong-ca.kubeconfig", &hub.url(), &other.pem, &hub.admin);
    let out = run(&kc, &["clusters"]).await;
    let err = assert_error(&out, "the hub's TLS certificate is not trusted");
    assert!(err.contains(&hub.url()), "{err}");
    hub.stop().await;
}

#[tokio::test]
async fn unreachable_hub_is_reported() {
    let hub = Hub::start().await;
    // A port that was just free: bind, note it, release it.
    let closed = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr")
    };
    let url = format!("https://{closed}");
    let kc = hub.kubeconfig("closed.kubeconfig", &url, &hub.ca.pem, &hub.admin);
    let out = run(&kc, &["clusters"]).await;
    let err = assert_error(&out, &format!("cannot connect to the hub at {url}"));
    assert!(err.to_lowercase().contains("refused"), "{err}");
    hub.stop().await;
}

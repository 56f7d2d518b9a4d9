//! Several hub replicas on one etcd (issue 13): real etcd, real hubs sharing
//! one CA, a real agent given every replica's URL, the real kubectl.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use ferry_integration::etcd::Etcd;

/// A hub replica: its process, URL, metrics URL and data dir.
struct Replica {
    hub: Proc,
    url: String,
    metrics: String,
    data: PathBuf,
}

impl Replica {
    /// The value of the sample `name` with label `cluster="edge"` (and
    /// `extra`, e.g. `role="served"`) in this replica's `/metrics`; 0 when
    /// absent.
    fn edge_metric(&self, name: &str, extra: &str) -> f64 {
        let body = http_get(&self.metrics);
        let labels = if extra.is_empty() {
            "cluster=\"edge\"".to_owned()
        } else {
            format!("cluster=\"edge\",{extra}")
        };
        let prefix = format!("{name}{{{labels}}} ");
        body.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0.0, |v| v.trim().parse().expect("a sample value"))
    }

    fn admin_kubeconfig(&self) -> PathBuf {
        self.data.join("admin.kubeconfig")
    }

    /// Runs ferryctl against this replica, failing the test on an error.
    fn ferryctl_ok(&self, args: &[&str]) -> String {
        let out = Command::new(bin("ferryctl"))
            .arg("--kubeconfig")
            .arg(self.admin_kubeconfig())
            .args(args)
            .output()
            .expect("run ferryctl");
        assert!(out.status.success(), "ferryctl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf8")
    }

    /// A kubeconfig for `user` on cluster `edge`, issued by this replica
    /// (so its server is this replica).
    fn user_kubeconfig(&self, dir: &Path, user: &str) -> PathBuf {
        self.kubeconfig_for(dir, "edge", user)
    }

    /// A kubeconfig for `user` on `cluster`, issued by this replica.
    fn kubeconfig_for(&self, dir: &Path, cluster: &str, user: &str) -> PathBuf {
        self.ferryctl_ok(&["grant", "--cluster", cluster, "--user", user]);
        let yaml = self.ferryctl_ok(&["kubeconfig", cluster, "--user", user]);
        let path = dir.join(format!("{user}-{cluster}.kubeconfig"));
        std::fs::write(&path, yaml).expect("write kubeconfig");
        path
    }
}

/// Two replicas on one etcd, an apiserver, and the temp dir they live in.
struct Replicas {
    dir: tempfile::TempDir,
    etcd: Etcd,
    _apiserver: Proc,
    replicas: Vec<Replica>,
}

impl Replicas {
    /// Starts etcd, a test apiserver and `n` replicas; the first makes the
    /// hub CA and the others get a copy of it, as an operator would do.
    fn start(n: usize) -> Replicas {
        let dir = tempfile::tempdir().expect("tempdir");
        let etcd = Etcd::start();
        let mut cmd = Command::new(bin("test-apiserver"));
        cmd.args(["--listen", "127.0.0.1:0", "--kubeconfig-out"])
            .arg(dir.path().join("apiserver.kubeconfig"));
        let mut apiserver = Proc::spawn("test-apiserver", cmd);
        apiserver.wait_line("test-apiserver ready", READY_TIMEOUT);
        let mut world = Replicas { dir, etcd, _apiserver: apiserver, replicas: Vec::new() };
        for _ in 0..n {
            world.add_replica();
        }
        world
    }

    /// Starts one more replica (with a copy of the first one's CA).
    fn add_replica(&mut self) -> &Replica {
        self.add_replica_with("127.0.0.1:0", &[])
    }

    /// Starts one more replica listening on `listen`, with `extra` flags.
    fn add_replica_with(&mut self, listen: &str, extra: &[String]) -> &Replica {
        let data = self.dir.path().join(format!("hub-{}", self.replicas.len()));
        if let Some(first) = self.replicas.first() {
            std::fs::create_dir_all(&data).expect("data dir");
            for f in ["ca.crt", "ca.key"] {
                std::fs::copy(first.data.join(f), data.join(f)).expect("copy the hub CA");
            }
        }
        let mut args = vec![
            "--store".to_owned(),
            self.etcd.store_url(),
            "--metrics-listen".into(),
            "127.0.0.1:0".into(),
        ];
        args.extend_from_slice(extra);
        let (mut hub, url) = start_hub(&data, listen, &args);
        let metrics = hub.wait_line("ferry-hub metrics: ", READY_TIMEOUT);
        let metrics = metrics.split_whitespace().find(|w| w.starts_with("http://")).expect("URL").to_owned();
        self.replicas.push(Replica { hub, url, metrics, data });
        self.replicas.last().expect("just added")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Registers `edge` on replica 0 and starts its agent with `hubs`
    /// (comma-separated URLs); waits until it is connected.
    fn start_agent(&self, hubs: &str) -> Proc {
        self.start_agent_for("edge", hubs)
    }

    /// Registers `cluster` on replica 0 and starts its agent with `hubs`.
    fn start_agent_for(&self, cluster: &str, hubs: &str) -> Proc {
        self.start_agent_with(cluster, hubs, &[])
    }

    /// Registers `cluster` on replica 0 and starts its agent with `hubs` and
    /// `extra` flags; waits until its first session is up.
    fn start_agent_with(&self, cluster: &str, hubs: &str, extra: &[&str]) -> Proc {
        let token = self.replicas[0].ferryctl_ok(&["register", cluster, "-o", "token"]);
        let mut cmd = Command::new(bin("ferry-agent"));
        cmd.arg("--hub")
            .arg(hubs)
            .arg("--hub-ca")
            .arg(self.replicas[0].data.join("ca.crt"))
            .arg("--kubeconfig")
            .arg(self.path("apiserver.kubeconfig"))
            .arg("--state-dir")
            .arg(self.path(&format!("agent-state-{cluster}")))
            .args(extra)
            .env("FERRY_TOKEN", token.trim())
            .env_remove("FERRY_TOKEN_FILE");
        let mut agent = Proc::spawn("ferry-agent", cmd);
        agent.wait_line("ferry-agent connected:", READY_TIMEOUT);
        agent
    }
}

/// The body of a plain HTTP/1.1 GET (the hubs' `/metrics`).
fn http_get(url: &str) -> String {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("http URL");
    let (addr, path) = rest.split_once('/').expect("a path");
    let mut tcp = std::net::TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(READY_TIMEOUT)).expect("timeout");
    write!(tcp, "GET /{path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut text = String::new();
    tcp.read_to_string(&mut text).expect("read");
    assert!(text.starts_with("HTTP/1.1 200"), "{url}: {text}");
    text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()
}

/// The `replica=` of an agent's `ferry-agent connected:` line.
fn replica_in(line: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("replica="))
        .unwrap_or_else(|| panic!("no replica in {line:?}"))
        .to_owned()
}

/// `ferryctl clusters --watch` on `replica`, its rows collected as they
/// come; live once its header is printed.
fn watch_clusters(replica: &Replica) -> Proc {
    let mut cmd = Command::new(bin("ferryctl"));
    cmd.arg("--kubeconfig").arg(replica.admin_kubeconfig()).args(["clusters", "--watch"]);
    let mut watch = Proc::spawn("ferryctl clusters --watch", cmd);
    watch.wait_line("NAME", READY_TIMEOUT);
    watch
}

/// The AGENTS column of a `ferryctl clusters` row.
fn agents_in(row: &str) -> &str {
    row.split_whitespace().nth(4).unwrap_or_default()
}

#[test]
fn an_agent_with_two_hub_connections_spreads_requests_and_survives_a_replica_failure() {
    let mut world = Replicas::start(3);
    // The agent is given one URL: the second session goes to a replica the
    // hub names in its welcome.
    let a_url = world.replicas[0].url.clone();
    let mut agent = world.start_agent_with("edge", &a_url, &["--hub-connections", "2"]);
    let first = replica_in(&agent.wait_nth_line("ferry-agent connected:", 1, READY_TIMEOUT));
    let second = replica_in(&agent.wait_nth_line("ferry-agent connected:", 2, READY_TIMEOUT));
    assert_ne!(first, second, "two sessions on two replicas");

    // Each replica's /metrics says whether it holds a session of edge: two
    // do (A, which the agent was given, and one other), one does not.
    let holding: Vec<f64> = world.replicas.iter().map(|r| r.edge_metric("ferry_hub_agents", "")).collect();
    assert_eq!(holding[0], 1.0, "A holds one session: {holding:?}");
    assert_eq!(holding.iter().sum::<f64>(), 2.0, "{holding:?}");
    let other = if holding[1] == 1.0 { 1 } else { 2 };
    let third = 3 - other;
    assert_eq!(holding[third], 0.0);

    // The third replica shows both sessions (recorded by the holders) ...
    world.replicas[third].ferryctl_ok(&["wait", "edge", "--for", "ready", "--timeout", "60s"]);
    let mut watch = watch_clusters(&world.replicas[third]);
    let row = watch.wait_line("edge", READY_TIMEOUT);
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut rows = vec![row];
    while agents_in(rows.last().expect("a row")) != "2" {
        assert!(Instant::now() < deadline, "no row with 2 agents: {rows:?}");
        let n = watch.seen.iter().filter(|l| l.contains("edge")).count();
        rows.push(watch.wait_nth_line("edge", n + 1, READY_TIMEOUT));
    }
    // ... and kubectl through it is forwarded, spread over both holders.
    let kc = world.replicas[third].user_kubeconfig(world.dir.path(), "alice");
    for _ in 0..6 {
        assert!(kubectl_ok(&kc, &["get", "namespaces"]).contains("kube-system"));
    }
    let served: Vec<f64> = world
        .replicas
        .iter()
        .map(|r| r.edge_metric("ferry_hub_forwarded_requests_total", "role=\"served\""))
        .collect();
    let sent = world.replicas[third].edge_metric("ferry_hub_forwarded_requests_total", "role=\"sent\"");
    eprintln!("forwarded through replica {third}: {sent} sent, served by each replica {served:?}");
    assert!(served[0] >= 1.0 && served[other] >= 1.0, "both holders served some: {served:?}");
    assert_eq!(served[0] + served[other], sent, "every forwarded request was served by a holder");

    // SIGKILL the holder the agent was not given: its session comes back on
    // the third replica (named by the hub), while A's session serves.
    let killed = Instant::now();
    world.replicas[other].hub.kill();
    let third_session = replica_in(&agent.wait_nth_line("ferry-agent connected:", 3, READY_TIMEOUT));
    let back = killed.elapsed();
    assert!(third_session != first && third_session != second, "a replica not held before");
    assert_eq!(world.replicas[third].edge_metric("ferry_hub_agents", ""), 1.0);
    // kubectl through each survivor reaches the cluster (through A
    // directly, through the third on its new session).
    let through_a_dir = world.path("through-a");
    std::fs::create_dir_all(&through_a_dir).expect("dir");
    let through_a = world.replicas[0].user_kubeconfig(&through_a_dir, "alice");
    for kc in [&through_a, &kc] {
        assert!(kubectl_ok(kc, &["get", "namespaces"]).contains("kube-system"));
    }
    let served_at = killed.elapsed();
    eprintln!(
        "--hub-connections 2: second session back on another replica {:.2} s after SIGKILL, kubectl through both survivors answered at {:.2} s",
        back.as_secs_f64(),
        served_at.as_secs_f64()
    );
    // The cluster never showed Offline (nor anything but Ready) on the
    // third replica meanwhile.
    world.replicas[third].ferryctl_ok(&["wait", "edge", "--for", "ready", "--timeout", "60s"]);
    let shown: Vec<&String> = watch.seen.iter().filter(|l| l.contains("edge")).collect();
    assert!(shown.iter().all(|l| l.contains("Ready") && !l.contains("NotReady")), "{shown:?}");
}

#[test]
fn with_fewer_replicas_than_hub_connections_the_agent_holds_one_each_and_takes_a_new_one() {
    let mut world = Replicas::start(1);
    let a_url = world.replicas[0].url.clone();
    let mut agent = world.start_agent_with("edge", &a_url, &["--hub-connections", "2"]);
    let first = replica_in(&agent.wait_nth_line("ferry-agent connected:", 1, READY_TIMEOUT));
    // One replica: one session, served as ever.
    let kc = world.replicas[0].user_kubeconfig(world.dir.path(), "alice");
    assert!(kubectl_ok(&kc, &["get", "namespaces"]).contains("kube-system"));
    assert_eq!(world.replicas[0].edge_metric("ferry_hub_agents", ""), 1.0);

    // A second replica joins: the hub tells the agent's session, and the
    // spare slot connects to it.
    world.add_replica();
    let joined = Instant::now();
    let second = replica_in(&agent.wait_nth_line("ferry-agent connected:", 2, READY_TIMEOUT));
    assert_ne!(first, second);
    eprintln!(
        "a replica joined; the agent's spare slot was connected to it {:.2} s after its ready line",
        joined.elapsed().as_secs_f64()
    );
    assert_eq!(world.replicas[1].edge_metric("ferry_hub_agents", ""), 1.0);
    assert_eq!(world.replicas[0].edge_metric("ferry_hub_agents", ""), 1.0, "still one on A");
    let dir = world.path("through-b");
    std::fs::create_dir_all(&dir).expect("dir");
    let through_b = world.replicas[1].user_kubeconfig(&dir, "alice");
    assert!(kubectl_ok(&through_b, &["get", "namespaces"]).contains("kube-system"));
}

#[test]
fn behind_one_advertised_url_a_second_session_reaches_the_other_replica_at_its_peer_url() {
    let mut world = Replicas::start(1);
    // A's URL stands in for a load balancer's: B advertises it too, and is
    // reached by the other replicas (and agents) at its own --peer-url. A
    // loopback port for B: bound, then released.
    let lb = world.replicas[0].url.clone();
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let own = format!("https://127.0.0.1:{port}");
    let extra = ["--advertise-url".to_owned(), lb.clone(), "--peer-url".into(), own];
    world.add_replica_with(&format!("127.0.0.1:{port}"), &extra);

    let mut agent = world.start_agent_with("edge", &lb, &["--hub-connections", "2"]);
    let first = replica_in(&agent.wait_nth_line("ferry-agent connected:", 1, READY_TIMEOUT));
    let second = replica_in(&agent.wait_nth_line("ferry-agent connected:", 2, READY_TIMEOUT));
    assert_ne!(first, second, "two replicas behind one advertised URL");
    let holding: Vec<f64> = world.replicas.iter().map(|r| r.edge_metric("ferry_hub_agents", "")).collect();
    assert_eq!(holding, [1.0, 1.0], "one session on each replica");
    // Both serve: a kubeconfig from B points at the shared URL (A here).
    let kc = world.replicas[1].user_kubeconfig(world.dir.path(), "alice");
    assert!(std::fs::read_to_string(&kc).expect("read").contains(&lb));
    assert!(kubectl_ok(&kc, &["get", "namespaces"]).contains("kube-system"));
}

#[test]
fn when_the_holding_replica_dies_and_its_agent_comes_back_nowhere_the_others_show_offline() {
    let mut world = Replicas::start(2);
    // The agent knows only A, so it cannot move to B.
    let a_url = world.replicas[0].url.clone();
    let _agent = world.start_agent(&a_url);
    let b = &world.replicas[1];
    b.ferryctl_ok(&["wait", "edge", "--for", "ready", "--timeout", "60s"]);
    let mut watch = watch_clusters(b);
    assert!(watch.wait_line("edge", READY_TIMEOUT).contains("Ready"));

    // SIGKILL A: nobody revokes its lease; when it expires, B sees that no
    // replica holds edge and records it Offline.
    let killed = Instant::now();
    world.replicas[0].hub.kill();
    let row = watch.wait_line("Offline", READY_TIMEOUT);
    let offline = killed.elapsed();
    assert!(row.contains("edge") && agents_in(&row) == "0", "{row}");
    eprintln!(
        "holding replica killed, edge shown Offline on the survivor {:.2} s after",
        offline.as_secs_f64()
    );
    assert!(
        offline <= Duration::from_secs(6) + Duration::from_secs(4),
        "within the replica lease (6 s) and a little: {offline:?}"
    );
    world.replicas[1].ferryctl_ok(&["wait", "edge", "--for", "offline", "--timeout", "10s"]);
}

#[test]
fn the_agent_moves_to_the_surviving_replica_and_kubectl_follows() {
    let mut world = Replicas::start(2);
    let (a, b) = (&world.replicas[0], &world.replicas[1]);
    assert_ne!(a.url, b.url);
    let mut agent = world.start_agent(&format!("{},{}", a.url, b.url));

    // The agent enrolled and connected through A (the first URL); a
    // kubeconfig issued by A reaches the cluster.
    let through_a = a.user_kubeconfig(world.dir.path(), "alice");
    let ns = kubectl_ok(&through_a, &["get", "namespaces"]);
    assert!(ns.contains("kube-system"), "{ns}");
    // B shares the store: the grant made on A lets B issue bob's
    // kubeconfig for the same cluster at once.
    let bob_dir = world.path("bob");
    std::fs::create_dir_all(&bob_dir).expect("dir");
    let through_b = b.user_kubeconfig(&bob_dir, "bob");
    assert!(
        std::fs::read_to_string(&through_b).expect("read").contains(&b.url),
        "B's kubeconfig points at B"
    );

    // The status A records is what B shows, and B, which holds no agent
    // of edge, leaves it alone.
    b.ferryctl_ok(&["wait", "edge", "--for", "ready", "--timeout", "60s"]);

    // SIGKILL A: the agent dials B, and kubectl through B reaches the
    // cluster.
    let killed = Instant::now();
    world.replicas[0].hub.kill();
    agent.wait_nth_line("ferry-agent connected:", 2, READY_TIMEOUT);
    let reconnected = killed.elapsed();
    let ns = kubectl_ok(&through_b, &["get", "namespaces"]);
    assert!(ns.contains("kube-system"), "{ns}");
    let served = killed.elapsed();
    eprintln!(
        "failover: agent on the surviving replica {:.2} s after SIGKILL, first kubectl answered at {:.2} s",
        reconnected.as_secs_f64(),
        served.as_secs_f64()
    );
    let out = kubectl_ok(&through_b, &["create", "configmap", "after-failover", "--from-literal=k=v"]);
    assert!(out.contains("configmap/after-failover created"), "{out}");
    world.replicas[1].ferryctl_ok(&["wait", "edge", "--for", "ready", "--timeout", "60s"]);

    // Nothing in the store was lost: B lists the cluster and both grants.
    let grants = world.replicas[1].ferryctl_ok(&["grants"]);
    assert!(grants.contains("alice") && grants.contains("bob"), "{grants}");
    assert!(world.etcd.health().contains("true"), "etcd stayed healthy");
}

#[test]
fn a_registration_on_one_replica_reaches_a_watch_on_another_and_agent_yaml_names_every_replica() {
    let world = Replicas::start(2);
    let (a, b) = (&world.replicas[0], &world.replicas[1]);
    let mut cmd = Command::new(bin("ferryctl"));
    cmd.arg("--kubeconfig").arg(b.admin_kubeconfig()).args(["clusters", "--watch"]);
    let mut watch = Proc::spawn("ferryctl clusters --watch (replica B)", cmd);
    // The header comes once the initial list is in: the watch is live.
    watch.wait_line("NAME", READY_TIMEOUT);

    let asked = Instant::now();
    let manifest = a.ferryctl_ok(&["register", "core"]);
    let row = watch.wait_line("core", READY_TIMEOUT);
    eprintln!(
        "registered on A, seen by a watch on B {:.3} s after ferryctl started",
        asked.elapsed().as_secs_f64()
    );
    assert!(row.contains("Pending") || row.contains("Offline"), "{row}");

    // The manifest from A lets the agent fail over to B: both replicas
    // register under their leases, A's URL first.
    assert!(
        manifest.contains(&format!("{},{}", a.url, b.url)),
        "agent.yaml names both replicas:\n{manifest}"
    );
    let from_b = b.ferryctl_ok(&["register", "far"]);
    assert!(from_b.contains(&format!("{},{}", b.url, a.url)), "B's agent.yaml names B first:\n{from_b}");
}

#[test]
fn an_agent_whose_first_hub_is_down_enrolls_and_connects_through_the_next() {
    let world = Replicas::start(1);
    // A loopback port nothing listens on: bound, then released.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let started = Instant::now();
    let _agent = world.start_agent(&format!("https://{dead},{}", world.replicas[0].url));
    eprintln!("enrolled and connected past a dead first URL in {:.2} s", started.elapsed().as_secs_f64());
    let kc = world.replicas[0].user_kubeconfig(world.dir.path(), "alice");
    assert!(kubectl_ok(&kc, &["get", "namespaces"]).contains("kube-system"));
}

#[test]
fn kubectl_through_a_replica_without_the_agent_is_forwarded_to_the_one_holding_it() {
    let world = Replicas::start(2);
    let (a, b) = (&world.replicas[0], &world.replicas[1]);
    // The agent knows only A: every request through B is forwarded.
    let _agent = world.start_agent(&a.url);
    let kc = b.user_kubeconfig(world.dir.path(), "alice");

    let started = Instant::now();
    let ns = kubectl_ok(&kc, &["get", "namespaces"]);
    assert!(ns.contains("kube-system"), "{ns}");
    eprintln!("first forwarded kubectl get answered in {:.3} s", started.elapsed().as_secs_f64());
    kubectl_ok(&kc, &["create", "configmap", "before"]);

    // A watch streams through B and A as events happen.
    let mut watch = kubectl_spawn(&kc, &["get", "configmaps", "-w", "-o", "name"]);
    watch.wait_line("configmap/before", READY_TIMEOUT);
    kubectl_ok(&kc, &["create", "configmap", "during"]);
    watch.wait_line("configmap/during", READY_TIMEOUT);
    watch.kill();

    // An upgraded connection (exec) is forwarded too.
    kubectl_ok(&kc, &["run", "box", "--image=busybox", "--restart=Never"]);
    let out = kubectl_ok(&kc, &["exec", "box", "--", "echo", "through", "two", "hubs"]);
    assert_eq!(out, "through two hubs\n");
    let out = kubectl(&kc, &["exec", "box", "--", "sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    // `kubectl cp` streams a tar into exec's stdin and half-closes it.
    let local = world.path("note.txt");
    std::fs::write(&local, "forwarded bytes\n").expect("write");
    kubectl_ok(&kc, &["cp", local.to_str().expect("utf8"), "box:/tmp/note.txt"]);
    assert_eq!(kubectl_ok(&kc, &["exec", "box", "--", "cat", "/tmp/note.txt"]), "forwarded bytes\n");

    // Sequential requests, forwarded (B) and direct (A), as kubectl sees
    // them (its own start included).
    let direct_dir = world.path("direct");
    std::fs::create_dir_all(&direct_dir).expect("dir");
    let direct = a.user_kubeconfig(&direct_dir, "alice");
    let time = |kc: &Path| {
        let started = Instant::now();
        for _ in 0..10 {
            kubectl_ok(kc, &["get", "configmap", "before", "-o", "name"]);
        }
        started.elapsed().as_secs_f64() / 10.0
    };
    let (via_a, via_b) = (time(&direct), time(&kc));
    eprintln!(
        "kubectl get, mean of 10: direct through A {:.0} ms, forwarded B -> A {:.0} ms ({:.2}x)",
        via_a * 1e3,
        via_b * 1e3,
        via_b / via_a
    );
}

#[test]
fn when_the_holding_replica_dies_forwarding_follows_the_agent_to_its_new_replica() {
    let mut world = Replicas::start(3);
    let urls = format!("{},{}", world.replicas[0].url, world.replicas[2].url);
    let mut agent = world.start_agent(&urls);
    // Through B, forwarded to A (where the agent is).
    let kc = world.replicas[1].user_kubeconfig(world.dir.path(), "alice");
    assert!(kubectl_ok(&kc, &["get", "namespaces"]).contains("kube-system"));

    // SIGKILL A: the agent moves to C, and B's routing follows it (A's
    // registration is still there until its lease expires; B skips it).
    let killed = Instant::now();
    world.replicas[0].hub.kill();
    agent.wait_nth_line("ferry-agent connected:", 2, READY_TIMEOUT);
    let reconnected = killed.elapsed();
    assert!(kubectl_ok(&kc, &["get", "namespaces"]).contains("kube-system"));
    eprintln!(
        "forwarding failover: agent on C {:.2} s after SIGKILL of A, kubectl through B answered (via C) at {:.2} s",
        reconnected.as_secs_f64(),
        killed.elapsed().as_secs_f64()
    );
}

/// What `/ferry.peer.v1.Peer/Forward` on `url` answers a caller presenting
/// `identity` (none: no client certificate).
fn forward_as(url: &str, ca: &str, identity: Option<tonic::transport::Identity>) -> tonic::Code {
    use ferry::proto::v1::{AgentFrame, HubFrame};
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut tls =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("127.0.0.1");
        if let Some(id) = identity {
            tls = tls.identity(id);
        }
        let endpoint = Endpoint::from_shared(url.to_owned()).expect("url").tls_config(tls).expect("tls");
        let channel = endpoint.connect().await.expect("connect");
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.expect("ready");
        let mut request = tonic::Request::new(tokio_stream::iter(Vec::<HubFrame>::new()));
        request
            .metadata_mut()
            .insert("ferry-cluster", tonic::metadata::AsciiMetadataValue::from_static("edge"));
        let path = http::uri::PathAndQuery::from_static("/ferry.peer.v1.Peer/Forward");
        let codec = ferry::codec::FerryCodec::<HubFrame, AgentFrame>::default();
        match grpc.streaming(request, path, codec).await {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        }
    })
}

#[test]
fn only_hub_replicas_may_forward() {
    use base64::Engine;
    let world = Replicas::start(1);
    let a = &world.replicas[0];
    let _agent = world.start_agent(&a.url);
    let ca = std::fs::read_to_string(a.data.join("ca.crt")).expect("ca");

    // The admin's client certificate (a caller), the agent's, and none.
    let kubeconfig: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(a.admin_kubeconfig()).expect("read")).expect("yaml");
    let field = |name: &str| {
        let b64 = kubeconfig["users"][0]["user"][name].as_str().expect("kubeconfig credential");
        base64::engine::general_purpose::STANDARD.decode(b64).expect("base64")
    };
    let admin =
        tonic::transport::Identity::from_pem(field("client-certificate-data"), field("client-key-data"));
    let state = world.path("agent-state-edge");
    let agent = tonic::transport::Identity::from_pem(
        std::fs::read(state.join("tls.crt")).expect("agent cert"),
        std::fs::read(state.join("tls.key")).expect("agent key"),
    );
    for (who, identity) in [("the admin", Some(admin)), ("an agent", Some(agent)), ("anonymous", None)] {
        assert_eq!(forward_as(&a.url, &ca, identity), tonic::Code::PermissionDenied, "{who} may not forward");
    }
}

#[test]
fn an_etcd_restart_keeps_forwarded_requests_flowing_and_writes_resume() {
    let mut world = Replicas::start(2);
    let _agent = world.start_agent(&world.replicas[0].url.clone());
    let kc = world.replicas[1].user_kubeconfig(world.dir.path(), "alice");
    assert!(kubectl_ok(&kc, &["get", "namespaces"]).contains("kube-system"));

    world.etcd.restart();
    // Through B, forwarded to A, on what each replica already knows.
    assert!(kubectl_ok(&kc, &["get", "namespaces"]).contains("kube-system"));
    // Writes go to etcd again (a write returns once committed).
    let b = &world.replicas[1];
    b.ferryctl_ok(&["grant", "--cluster", "edge", "--user", "carol"]);
    let grants = b.ferryctl_ok(&["grants"]);
    assert!(grants.contains("carol"), "{grants}");
}

#[test]
fn three_replicas_with_agents_on_different_ones_serve_every_cluster_through_any_replica() {
    let world = Replicas::start(3);
    let r = &world.replicas;
    let _edge = world.start_agent_for("edge", &r[0].url);
    let _core = world.start_agent_for("core", &r[2].url);
    for (i, replica) in r.iter().enumerate() {
        let dir = world.path(&format!("through-{i}"));
        std::fs::create_dir_all(&dir).expect("dir");
        for cluster in ["edge", "core"] {
            let kc = replica.kubeconfig_for(&dir, cluster, "alice");
            let ns = kubectl_ok(&kc, &["get", "namespaces"]);
            assert!(ns.contains("kube-system"), "{cluster} through replica {i}: {ns}");
        }
    }
}

#[test]
fn a_watch_forwarded_to_a_replica_that_dies_goes_on_through_another() {
    use std::io::BufRead;
    let mut world = Replicas::start(3);
    let urls = format!("{},{}", world.replicas[0].url, world.replicas[2].url);
    let mut agent = world.start_agent(&urls);
    let kc = world.replicas[1].user_kubeconfig(world.dir.path(), "alice");
    kubectl_ok(&kc, &["create", "configmap", "before"]);

    // A watch through B, forwarded to A.
    let mut child = Command::new(kubectl_bin())
        .arg("--kubeconfig")
        .arg(&kc)
        .args(["get", "configmaps", "-w", "-o", "name"])
        .env_remove("KUBECONFIG")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl watch");
    let stdout = child.stdout.take().expect("stdout");
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    assert_eq!(lines.recv_timeout(READY_TIMEOUT).expect("first event"), "configmap/before");

    // SIGKILL A: the agent moves to C; kubectl's watch, cut mid-stream,
    // is started again by kubectl through B, which forwards it to C.
    let killed = Instant::now();
    world.replicas[0].hub.kill();
    agent.wait_nth_line("ferry-agent connected:", 2, READY_TIMEOUT);
    kubectl_ok(&kc, &["create", "configmap", "after"]);
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line == "configmap/after" => break,
            Ok(_) => {}
            Err(e) => panic!(
                "the watch did not go on after the SIGKILL of A: {e:?} (kubectl {:?})",
                child.try_wait()
            ),
        }
    }
    eprintln!(
        "watch through B went on through C; the event made after the SIGKILL of A arrived {:.2} s after it",
        killed.elapsed().as_secs_f64()
    );
    let _ = child.kill();
    let _ = child.wait();
}

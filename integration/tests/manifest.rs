//! The onboarding flow as a user runs it: `ferryctl register` prints
//! `agent.yaml`; kubectl accepts it (`--dry-run=client`) and applies it to
//! the child cluster (the test apiserver, with RBAC decided only by the
//! objects applied); the agent runs with exactly what the manifest gives
//! it (its ServiceAccount's token, the bootstrap Secret's values, the
//! Deployment's arguments), two replicas at once from one token; the
//! cluster turns Ready; a kubeconfig from `ferryctl kubeconfig` works with
//! kubectl. And the trap of a manifest missing a verb.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::manifest::AgentManifest;
use common::*;

/// A test apiserver with strict RBAC, a hub, and what the test wrote.
struct World {
    dir: tempfile::TempDir,
    _apiserver: Proc,
    _hub: Proc,
}

impl World {
    fn start() -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new(bin("test-apiserver"));
        cmd.args(["--listen", "127.0.0.1:0", "--strict-rbac", "--kubeconfig-out"])
            .arg(dir.path().join("child.kubeconfig"));
        let mut apiserver = Proc::spawn("test-apiserver", cmd);
        apiserver.wait_line("test-apiserver ready", READY_TIMEOUT);
        let (hub, _url) = start_hub(&dir.path().join("hub"), "127.0.0.1:0", &[]);
        World { dir, _apiserver: apiserver, _hub: hub }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The child cluster's admin (what `kubectl apply` runs as).
    fn child(&self) -> PathBuf {
        self.path("child.kubeconfig")
    }

    fn ferryctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(bin("ferryctl"))
            .arg("--kubeconfig")
            .arg(self.path("hub/admin.kubeconfig"))
            .args(args)
            .output()
            .expect("ferryctl")
    }

    fn ferryctl_ok(&self, args: &[&str]) -> String {
        let out = self.ferryctl(args);
        assert!(out.status.success(), "ferryctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf8")
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    /// A kubeconfig for the agent's ServiceAccount, with a token from
    /// `kubectl create token` (what a pod's mounted token is).
    fn agent_kubeconfig(&self) -> PathBuf {
        let token = kubectl_ok(&self.child(), &["create", "token", "ferry-agent", "-n", "ferry-system"]);
        let admin = std::fs::read_to_string(self.child()).expect("child kubeconfig");
        let mut v: serde_yaml::Value = serde_yaml::from_str(&admin).expect("yaml");
        v["users"][0]["user"]["token"] = token.trim().into();
        self.write("agent-sa.kubeconfig", &serde_yaml::to_string(&v).expect("yaml"))
    }

    /// One agent replica as the manifest's Deployment runs it: its
    /// arguments, with the mounted Secret's files and the pod's health port
    /// moved into the test dir, and its ServiceAccount's credential.
    fn replica(&self, manifest: &AgentManifest, name: &str, kubeconfig: &Path) -> Proc {
        let mut cmd = Command::new(bin("ferry-agent"));
        for arg in &manifest.args {
            let arg = arg.replace("/etc/ferry/bootstrap", self.path("bootstrap").to_str().expect("utf8"));
            cmd.arg(arg.replace("0.0.0.0:8081", "127.0.0.1:0"));
        }
        cmd.arg("--kubeconfig").arg(kubeconfig);
        cmd.env("FERRY_AGENT_ID", uuid::Uuid::new_v4().to_string()).env_remove("FERRY_TOKEN");
        Proc::spawn_logging(name, cmd)
    }
}

/// GETs `path` from an agent's health endpoint; the status code.
fn health(addr: &str, path: &str) -> u16 {
    let mut tcp = std::net::TcpStream::connect(addr).expect("connect");
    write!(tcp, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("write");
    let mut text = String::new();
    tcp.read_to_string(&mut text).expect("read");
    text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

fn cluster_json(world: &World, name: &str) -> serde_json::Value {
    let all: serde_json::Value =
        serde_json::from_str(&world.ferryctl_ok(&["clusters", "-o", "json"])).expect("json");
    all.as_array().and_then(|c| c.iter().find(|c| c["name"] == name)).cloned().expect("cluster listed")
}

#[test]
fn register_apply_run_the_replicas_and_reach_the_cluster_with_kubectl() {
    let world = World::start();
    let yaml = world.ferryctl_ok(&["register", "prod", "--admin-group", "platform", "--labels", "env=prod"]);
    let manifest_file = world.write("agent.yaml", &yaml);
    let manifest = AgentManifest::parse(&yaml);
    let child = world.child();
    let file = manifest_file.to_str().expect("utf8");

    // kubectl accepts it as it is, then applies it; again, it is unchanged.
    kubectl_ok(&child, &["apply", "--dry-run=client", "-f", file]);
    let applied = kubectl_ok(&child, &["apply", "-f", file]);
    assert!(applied.contains("deployment.apps/ferry-agent created"), "{applied}");
    let again = kubectl_ok(&child, &["apply", "-f", file]);
    assert!(again.lines().all(|l| l.ends_with("unchanged")), "{again}");
    kubectl_ok(
        &child,
        &["get", "-n", "ferry-system", "deployment/ferry-agent", "serviceaccount/ferry-agent"],
    );

    // Two replicas start at once from the one token (Clusternet #895: one
    // never got its certificate). One enrolls, the other takes the shared
    // credential from the Secret; both connect.
    manifest.mount_secret(&world.path("bootstrap"));
    let sa = world.agent_kubeconfig();
    let mut a = world.replica(&manifest, "replica-a", &sa);
    let mut b = world.replica(&manifest, "replica-b", &sa);
    a.wait_line("ferry-agent connected: cluster=prod", READY_TIMEOUT);
    b.wait_line("ferry-agent connected: cluster=prod", READY_TIMEOUT);
    world.ferryctl_ok(&["wait", "prod", "--for", "connected", "--timeout", "30s"]);
    let secret =
        kubectl_ok(&child, &["get", "secret", "-n", "ferry-system", "ferry-agent-credential", "-o", "json"]);
    let secret: serde_json::Value = serde_json::from_str(&secret).expect("json");
    assert!(secret["data"]["tls.crt"].is_string() && secret["data"]["tls.key"].is_string(), "{secret}");
    for replica in [&mut a, &mut b] {
        let line = replica.wait_line("ferry-agent health:", READY_TIMEOUT);
        let addr = line.rsplit("http://").next().expect("address").trim().to_owned();
        assert_eq!(health(&addr, "/healthz"), 200);
        assert_eq!(health(&addr, "/readyz"), 200);
    }

    // Ready, with both agents, and no permission missing.
    assert_eq!(
        world.ferryctl_ok(&["wait", "prod", "--for", "ready", "--timeout", "30s"]),
        "cluster/prod Ready\n"
    );
    let prod = cluster_json(&world, "prod");
    assert_eq!((prod["phase"].as_str(), prod["agents"].as_u64()), (Some("Ready"), Some(2)), "{prod}");
    assert_eq!(prod["labels"]["env"], "prod");

    // A kubeconfig for someone in the admin group: kubectl reaches the
    // child cluster, where the manifest made that group cluster-admin.
    world.ferryctl_ok(&["grant", "--cluster", "prod", "--group", "platform"]);
    let ann = world.write(
        "ann.kubeconfig",
        &world.ferryctl_ok(&["kubeconfig", "prod", "--user", "ann", "--group", "platform"]),
    );
    let ns = kubectl_ok(&ann, &["get", "namespaces"]);
    assert!(ns.contains("ferry-system"), "{ns}");
    kubectl_ok(&ann, &["create", "configmap", "hello", "--from-literal=a=b"]);
    // Someone the hub lets through but the child's RBAC does not know:
    // the child says no.
    world.ferryctl_ok(&["grant", "--cluster", "prod", "--user", "joe"]);
    let joe = world.write("joe.kubeconfig", &world.ferryctl_ok(&["kubeconfig", "prod", "--user", "joe"]));
    let out = kubectl(&joe, &["get", "--raw", "/api/v1/namespaces/default/configmaps"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("forbidden") && err.contains("joe"), "{err}");

    // A replica restarting finds the credential in the Secret: no token
    // needed (the token is used up anyway).
    a.kill();
    let mut a = world.replica(&manifest, "replica-a2", &sa);
    a.wait_line("using the stored credential", READY_TIMEOUT);
    a.wait_line("ferry-agent connected: cluster=prod", READY_TIMEOUT);
}

#[test]
fn a_manifest_missing_a_verb_is_reported_by_the_agent_and_the_hub() {
    let world = World::start();
    let yaml = world.ferryctl_ok(&["register", "edge"]);
    // Someone trimmed the ClusterRole: no `impersonate` on groups (OCM
    // cluster-proxy #44, Rancher #35693).
    let trimmed = yaml.replacen("  - users\n  - groups\n", "  - users\n", 1);
    assert_ne!(trimmed, yaml, "the manifest lists users and groups together");
    let file = world.write("agent.yaml", &trimmed);
    kubectl_ok(&world.child(), &["apply", "-f", file.to_str().expect("utf8")]);
    let manifest = AgentManifest::parse(&trimmed);
    manifest.mount_secret(&world.path("bootstrap"));
    let mut agent = world.replica(&manifest, "agent", &world.agent_kubeconfig());
    agent.wait_line("ferry-agent connected: cluster=edge", READY_TIMEOUT);
    let line = agent.wait_line("lacks permissions it needs", READY_TIMEOUT);
    assert!(line.contains("impersonate groups"), "{line}");

    // The agent's first status (in its hello) already says so.
    world.ferryctl_ok(&["wait", "edge", "--for", "not-ready", "--timeout", "30s"]);
    let edge = cluster_json(&world, "edge");
    assert_eq!(edge["phase"], "NotReady", "{edge}");
    let reason = edge["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("impersonate groups") && reason.contains("ferryctl register edge"), "{reason}");

    // What a caller then sees is the child cluster's own refusal.
    world.ferryctl_ok(&["grant", "--cluster", "edge", "--group", "dev"]);
    let kc = world.write(
        "alice.kubeconfig",
        &world.ferryctl_ok(&["kubeconfig", "edge", "--user", "alice", "--group", "dev"]),
    );
    let out = kubectl(&kc, &["get", "--raw", "/api/v1/namespaces"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("cannot impersonate") && err.contains("groups"), "{err}");
}

#[test]
fn kubectl_as_needs_a_hub_grant_and_the_child_clusters_consent() {
    let world = World::start();
    let yaml = world.ferryctl_ok(&["register", "prod"]);
    let file = world.write("agent.yaml", &yaml);
    let child = world.child();
    kubectl_ok(&child, &["apply", "-f", file.to_str().expect("utf8")]);
    let manifest = AgentManifest::parse(&yaml);
    manifest.mount_secret(&world.path("bootstrap"));
    let mut agent = world.replica(&manifest, "agent", &world.agent_kubeconfig());
    agent.wait_line("ferry-agent connected: cluster=prod", READY_TIMEOUT);
    world.ferryctl_ok(&["wait", "prod", "--for", "ready", "--timeout", "30s"]);

    // In the child: alice may impersonate bob (and group qa); qa may read.
    let rbac = world.write(
        "child-rbac.yaml",
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: act-as-bob}\nrules:\n\
         - apiGroups: [\"\"]\n  resources: [users]\n  resourceNames: [bob]\n  verbs: [impersonate]\n\
         - apiGroups: [\"\"]\n  resources: [groups]\n  resourceNames: [qa]\n  verbs: [impersonate]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: alice-acts-as-bob}\n\
         roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: act-as-bob}\n\
         subjects: [{kind: User, name: alice, apiGroup: rbac.authorization.k8s.io}]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: qa-view}\n\
         roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}\n\
         subjects: [{kind: Group, name: qa, apiGroup: rbac.authorization.k8s.io}]\n",
    );
    kubectl_ok(&child, &["apply", "-f", rbac.to_str().expect("utf8")]);
    let alice = world.write("alice.kubeconfig", &{
        world.ferryctl_ok(&["grant", "--cluster", "prod", "--user", "alice"]);
        world.ferryctl_ok(&["kubeconfig", "prod", "--user", "alice"])
    });
    let raw = ["get", "--raw", "/api/v1/namespaces/default/configmaps"];
    let as_bob = |who: &str| {
        let mut args = vec!["--as", who, "--as-group", "qa"];
        args.extend(raw);
        kubectl(&alice, &args)
    };

    // Without a hub grant that allows it: refused at the hub.
    let out = as_bob("bob");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--allow-impersonate"), "{err}");

    // With one: the child decides, as its own impersonation check would.
    world.ferryctl_ok(&["grant", "--cluster", "prod", "--user", "alice", "--allow-impersonate"]);
    let out = as_bob("bob");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = as_bob("carol");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("cannot impersonate") && err.contains("carol"), "{err}");

    // What the apiserver saw: the request as bob (group qa), sent by the
    // agent's ServiceAccount; nothing as carol.
    let recorded = kubectl_ok(&child, &["get", "--raw", "/_test/requests"]);
    let recorded: Vec<serde_json::Value> = serde_json::from_str(&recorded).expect("json");
    let reads: Vec<&serde_json::Value> =
        recorded.iter().filter(|r| r["path"] == "/api/v1/namespaces/default/configmaps").collect();
    assert_eq!(reads.len(), 1, "{reads:?}");
    assert_eq!(reads[0]["user"], "bob");
    assert!(reads[0]["groups"].as_array().expect("groups").iter().any(|g| g == "qa"), "{}", reads[0]);
    assert_eq!(reads[0]["authenticatedUser"], "system:serviceaccount:ferry-system:ferry-agent");
}

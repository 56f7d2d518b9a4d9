//! `ferryctl` as users run it, against the real hub (in process, real TLS
//! on 127.0.0.1:0): registration and its manifest, approval, deletion,
//! kubeconfigs, tokens, grants, and the errors people hit.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

mod common;
use common::Ca;

/// A real hub in a temp dir.
struct Hub {
    url: String,
    admin: PathBuf,
    dir: tempfile::TempDir,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Hub {
    async fn start() -> Hub {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = ferry_hub::HubConfig::new(dir.path().join("hub"), "127.0.0.1:0".parse().expect("addr"));
        let hub = ferry_hub::Hub::bind(config).await.expect("hub starts");
        let (url, admin) = (hub.url().to_owned(), hub.admin_kubeconfig().to_owned());
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move { hub.serve(token.cancelled_owned()).await });
        Hub { url, admin, dir, stop, task }
    }

    fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("hub/ca.crt")).expect("ca.crt")
    }

    /// Writes `text` as a file in the test dir.
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

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
    assert!(err.starts_with("error: ") && err.contains(needle), "wanted {needle:?}; stderr: {err}");
    assert_eq!(stdout(o), "", "nothing on stdout on failure");
    err
}

fn yaml_docs(text: &str) -> Vec<serde_yaml::Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(text)
        .map(|d| serde_yaml::Value::deserialize(d).expect("yaml"))
        .collect()
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs()
}

#[tokio::test]
async fn register_prints_the_manifest_the_token_or_json() {
    let hub = Hub::start().await;
    let kc = &hub.admin;

    let out =
        run(kc, &["register", "edge-1", "--labels", "env=prod,region=eu", "--admin-group", "platform"]).await;
    assert_ok(&out);
    let docs = yaml_docs(&stdout(&out));
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    for kind in ["Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Secret", "Deployment"] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    let deploy = docs.iter().find(|d| d["kind"] == "Deployment").expect("deployment");
    let args = &deploy["spec"]["template"]["spec"]["containers"][0]["args"];
    assert_eq!(args[1].as_str(), Some(hub.url.as_str()), "the agent dials the hub's URL");
    let admins = docs.iter().find(|d| d["roleRef"]["name"] == "cluster-admin").expect("admin binding");
    assert_eq!(admins["subjects"][0]["name"], "platform");

    let out = run(kc, &["register", "edge-1", "-o", "token"]).await;
    assert_ok(&out);
    let token = stdout(&out);
    assert!(token.starts_with("ferryboot.") && token.lines().count() == 1, "{token:?}");

    let out = run(kc, &["register", "edge-1", "-o", "json", "--token-ttl", "5m"]).await;
    assert_ok(&out);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(json["cluster"], "edge-1");
    assert_eq!(json["hubUrl"], hub.url.as_str());
    assert_eq!(json["hubCaPem"], hub.ca_pem().as_str());
    let expires = json["tokenExpiresAtUnix"].as_u64().expect("expiry");
    assert!(expires.abs_diff(now_unix() + 300) <= 5, "a 5m token: {expires}");
    // The manifest carries this registration's token, in its Secret.
    use base64::Engine as _;
    let docs = yaml_docs(json["manifest"].as_str().expect("manifest"));
    let secret = docs.iter().find(|d| d["metadata"]["name"] == "ferry-agent-bootstrap").expect("secret");
    let token = base64::engine::general_purpose::STANDARD
        .decode(secret["data"]["token"].as_str().expect("token"))
        .expect("base64");
    assert_eq!(String::from_utf8_lossy(&token), json["token"].as_str().expect("token"));

    let out = run(kc, &["register", "edge-1", "--token-ttl", "60"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("e.g. 30s"), "{}", stderr(&out));
    let out = run(kc, &["register", "Edge_1"]).await;
    assert_error(&out, "must be a DNS label");
    hub.stop().await;
}

#[tokio::test]
async fn kubeconfig_location_defaults() {
    let hub = Hub::start().await;
    // $FERRY_KUBECONFIG when no flag is given.
    let out =
        ferryctl(hub.dir.path()).env("FERRY_KUBECONFIG", &hub.admin).args(["register", "a"]).output().await;
    assert_ok(&out.expect("run"));

    // Then ./ferry-data/admin.kubeconfig.
    let data = hub.dir.path().join("ferry-data");
    std::fs::create_dir(&data).expect("mkdir");
    std::fs::copy(&hub.admin, data.join("admin.kubeconfig")).expect("copy");
    let out = ferryctl(hub.dir.path()).args(["register", "b"]).output().await.expect("run");
    assert_ok(&out);

    let elsewhere = tempfile::tempdir().expect("tempdir");
    let out = ferryctl(elsewhere.path()).args(["clusters"]).output().await.expect("run");
    assert_error(&out, "cannot read kubeconfig ./ferry-data/admin.kubeconfig");
    assert!(stderr(&out).contains("--kubeconfig"), "{}", stderr(&out));
    hub.stop().await;
}

#[tokio::test]
async fn issued_kubeconfigs_are_scoped_to_their_cluster() {
    let hub = Hub::start().await;
    let kc = &hub.admin;
    assert_ok(&run(kc, &["register", "edge-1"]).await);

    let out = run(kc, &["kubeconfig", "edge-1", "--user", "alice", "--group", "dev", "--ttl", "2h"]).await;
    assert_ok(&out);
    let v: serde_yaml::Value = serde_yaml::from_str(&stdout(&out)).expect("yaml");
    assert_eq!(
        v["clusters"][0]["cluster"]["server"].as_str(),
        Some(format!("{}/clusters/edge-1", hub.url).as_str())
    );
    assert!(v["users"][0]["user"]["client-certificate-data"].is_string());
    // A kubeconfig for one cluster is not a key to the management API.
    let alice_edge = hub.write("alice-edge.kubeconfig", &stdout(&out));
    let out = run(&alice_edge, &["clusters"]).await;
    assert_error(&out, "bound to cluster \"edge-1\"");

    let out = run(kc, &["kubeconfig", "edge-1", "--user", "alice", "--auth", "token"]).await;
    assert_ok(&out);
    let v: serde_yaml::Value = serde_yaml::from_str(&stdout(&out)).expect("yaml");
    assert!(v["users"][0]["user"]["token"].as_str().is_some_and(|t| t.starts_with("ferryuser.")));

    for (args, needle) in [
        (vec!["kubeconfig", "nope"], "cluster \"nope\" is not registered"),
        (vec!["kubeconfig", "edge-1", "--user", "eve", "--group", "system:masters"], "may not be used"),
        (vec!["kubeconfig", "edge-1", "--user", "system:admin"], "is not allowed"),
        (vec!["kubeconfig", "edge-1", "--ttl", "800d"], "longer than the hub allows"),
    ] {
        assert_error(&run(kc, &args).await, needle);
    }
    hub.stop().await;
}

#[tokio::test]
async fn clusters_table_and_json_show_phases() {
    let hub = Hub::start().await;
    let kc = &hub.admin;

    let out = run(kc, &["clusters"]).await;
    assert_ok(&out);
    assert_eq!(stdout(&out), "");
    assert!(stderr(&out).contains("No clusters"), "{}", stderr(&out));

    assert_ok(&run(kc, &["register", "edge-1"]).await);
    assert_ok(&run(kc, &["register", "lab", "--approval", "manual", "--labels", "env=lab"]).await);

    let out = run(kc, &["clusters"]).await;
    assert_ok(&out);
    let table = stdout(&out);
    let lines: Vec<Vec<&str>> = table.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(lines[0], ["NAME", "PHASE", "VERSION", "NODES", "AGENTS", "AGE", "LAST-SEEN"], "{table}");
    assert_eq!(lines[1][..5], ["edge-1", "Offline", "<unknown>", "<unknown>", "0"], "{table}");
    assert_eq!(lines[2][..5], ["lab", "Pending", "<unknown>", "<unknown>", "0"], "{table}");
    assert!(lines[1][5].ends_with('s'), "just registered: {table}");
    assert_eq!(lines[1][6], "<never>", "{table}");
    assert_eq!(lines.len(), 3);

    // Wide adds platform, capacity, labels and the reason.
    let wide = stdout(&run(kc, &["clusters", "-o", "wide"]).await);
    let header: Vec<&str> = wide.lines().next().expect("header").split_whitespace().collect();
    assert_eq!(&header[7..], ["PLATFORM", "CPU", "MEMORY", "LABELS", "REASON"], "{wide}");
    assert!(wide.contains("env=lab") && wide.contains("awaits approval (ferryctl approve lab)"), "{wide}");
    // Label selectors, names, YAML.
    assert_eq!(stdout(&run(kc, &["clusters", "-l", "env=lab", "-o", "name"]).await), "cluster/lab\n");
    assert_eq!(stdout(&run(kc, &["clusters", "-l", "env!=lab", "-o", "name"]).await), "cluster/edge-1\n");
    let out = run(kc, &["clusters", "-l", "env in (lab", "-o", "name"]).await;
    assert_error(&out, "unbalanced parentheses");
    let yaml: serde_yaml::Value =
        serde_yaml::from_str(&stdout(&run(kc, &["get", "lab", "-o", "yaml"]).await)).expect("yaml");
    assert_eq!(yaml["phase"], "Pending");
    assert_eq!(yaml["history"][0]["phase"], "Pending");

    let out = run(kc, &["clusters", "-o", "json"]).await;
    assert_ok(&out);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(json[0]["name"], "edge-1");
    assert_eq!(json[0]["phase"], "Offline");
    assert_eq!(json[0]["reason"], "no agent has connected yet");
    assert_eq!(json[1]["phase"], "Pending");
    assert_eq!(json[1]["approval"], "manual");
    assert_eq!(json[1]["labels"]["env"], "lab");
    assert_eq!(json[1]["kubernetesVersion"], serde_json::Value::Null);
    hub.stop().await;
}

#[tokio::test]
async fn describe_label_and_completion() {
    let hub = Hub::start().await;
    let kc = &hub.admin;
    assert_ok(&run(kc, &["register", "edge-1", "--labels", "env=prod"]).await);
    assert_ok(&run(kc, &["grant", "--cluster", "edge-1", "--group", "sre"]).await);

    let out = run(kc, &["label", "edge-1", "region=eu", "env-"]).await;
    assert_ok(&out);
    assert_eq!(stdout(&out), "cluster/edge-1 labeled (region=eu)\n");
    assert_error(&run(kc, &["label", "edge-1", "bad key=x"]).await, "invalid label key");
    assert_error(&run(kc, &["label", "edge-1", "oops"]).await, "neither KEY=VALUE nor KEY-");
    assert_error(
        &run(kc, &["label", "nope", "a=b"]).await,
        "`ferryctl clusters` lists the clusters you may see",
    );

    let out = run(kc, &["describe", "cluster", "edge-1"]).await;
    assert_ok(&out);
    let text = stdout(&out);
    for needle in [
        "Name:         edge-1",
        "Phase:        Offline since",
        "Reason:       no agent has connected yet",
        "Labels:       region=eu",
        "Agents:       0",
        "History:",
        "Offline   no agent has connected yet",
        "Grants:",
        "group:sre",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }

    let out = run(kc, &["completion", "bash"]).await;
    assert_ok(&out);
    assert!(
        stdout(&out).contains("complete -F") && stdout(&out).contains("describe"),
        "a bash completion script"
    );
    for shell in ["zsh", "fish"] {
        assert_ok(&run(kc, &["completion", shell]).await);
    }
    hub.stop().await;
}

#[tokio::test]
async fn clusters_watch_prints_the_list_then_each_change() {
    let hub = Hub::start().await;
    let kc = hub.admin.clone();
    assert_ok(&run(&kc, &["register", "edge-1"]).await);
    let mut watch = ferryctl(kc.parent().expect("dir"))
        .arg("--kubeconfig")
        .arg(&kc)
        .args(["clusters", "-w", "-o", "json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut lines = tokio::io::BufReader::new(watch.stdout.take().expect("stdout")).lines();
    use tokio::io::AsyncBufReadExt as _;
    let mut next = async || -> serde_json::Value {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await.expect("in time");
        serde_json::from_str(&line.expect("read").expect("a line")).expect("json")
    };
    let first = next().await;
    assert_eq!((first["type"].as_str(), first["cluster"]["name"].as_str()), (Some("ADDED"), Some("edge-1")));
    assert_ok(&run(&kc, &["register", "lab"]).await);
    let added = next().await;
    assert_eq!((added["type"].as_str(), added["cluster"]["name"].as_str()), (Some("ADDED"), Some("lab")));
    assert!(added["revision"].as_u64() > first["revision"].as_u64());
    assert_ok(&run(&kc, &["label", "lab", "env=test"]).await);
    loop {
        let e = next().await;
        if e["cluster"]["labels"]["env"] == "test" {
            assert_eq!(e["type"], "MODIFIED");
            break;
        }
    }
    assert_ok(&run(&kc, &["delete", "lab"]).await);
    loop {
        let e = next().await;
        if e["type"] == "DELETED" {
            assert_eq!(e["cluster"]["name"], "lab");
            break;
        }
    }
    let _ = watch.kill().await;
    hub.stop().await;
}

#[tokio::test]
async fn approve_deny_and_delete() {
    let hub = Hub::start().await;
    let kc = &hub.admin;
    assert_ok(&run(kc, &["register", "lab", "--approval", "manual"]).await);
    let phase = |out: &Output| -> String {
        let json: serde_json::Value = serde_json::from_str(&stdout(out)).expect("json");
        json[0]["phase"].as_str().unwrap_or_default().to_owned()
    };
    assert_eq!(phase(&run(kc, &["clusters", "-o", "json"]).await), "Pending");

    let out = run(kc, &["approve", "lab"]).await;
    assert_ok(&out);
    assert_eq!(stdout(&out), "cluster/lab approved (phase Offline)\n");
    assert_eq!(phase(&run(kc, &["clusters", "-o", "json"]).await), "Offline");

    assert_eq!(stdout(&run(kc, &["deny", "lab"]).await), "cluster/lab denied\n");
    assert_eq!(phase(&run(kc, &["clusters", "-o", "json"]).await), "Denied");
    // Registering again does not lift a denial.
    assert_ok(&run(kc, &["register", "lab", "-o", "token"]).await);
    assert_eq!(phase(&run(kc, &["clusters", "-o", "json"]).await), "Denied");

    let out = run(kc, &["delete", "lab"]).await;
    assert_ok(&out);
    assert_eq!(stdout(&out), "cluster/lab deleted (0 agent session(s) disconnected)\n");
    assert_eq!(stdout(&run(kc, &["clusters", "-o", "json"]).await), "[]\n");
    assert_error(&run(kc, &["delete", "lab"]).await, "cluster \"lab\" is not registered");
    assert_error(&run(kc, &["approve", "lab"]).await, "cluster \"lab\" is not registered");
    hub.stop().await;
}

#[tokio::test]
async fn tokens_grants_and_what_a_user_may_do() {
    let hub = Hub::start().await;
    let kc = &hub.admin;
    assert_ok(&run(kc, &["register", "edge-1"]).await);
    assert_ok(&run(kc, &["register", "lab"]).await);

    // A hub-wide token for alice, as a kubeconfig ferryctl can use.
    let out =
        run(kc, &["token", "create", "--user", "alice", "--group", "dev", "--ttl", "1h", "-o", "kubeconfig"])
            .await;
    assert_ok(&out);
    let alice = hub.write("alice.kubeconfig", &stdout(&out));
    let out = run(&alice, &["whoami"]).await;
    assert_ok(&out);
    assert_eq!(stdout(&out), "user: alice\ngroups: [dev]\nadmin: false\nauth: token\n");

    // No grant: she sees no cluster and cannot get a kubeconfig.
    let out = run(&alice, &["clusters"]).await;
    assert_ok(&out);
    assert_eq!(stdout(&out), "");
    let err = assert_error(&run(&alice, &["kubeconfig", "edge-1"]).await, "permission denied");
    assert!(err.contains("user \"alice\" may not reach cluster \"edge-1\""), "{err}");
    assert!(err.contains("ferryctl grant --cluster edge-1 --user alice"), "{err}");

    // A grant to her group: edge-1 only.
    let out = run(kc, &["grant", "--cluster", "edge-1", "--group", "dev"]).await;
    assert_ok(&out);
    assert_eq!(stdout(&out), "group:dev may reach cluster edge-1\n");
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&run(&alice, &["clusters", "-o", "json"]).await)).expect("json");
    assert_eq!(json.as_array().map(Vec::len), Some(1));
    assert_eq!(json[0]["name"], "edge-1");
    assert_ok(&run(&alice, &["kubeconfig", "edge-1"]).await);
    assert_error(&run(&alice, &["kubeconfig", "lab"]).await, "may not reach cluster \"lab\"");
    assert_error(
        &run(&alice, &["kubeconfig", "edge-1", "--user", "bob"]).await,
        "only members of \"ferry:admins\"",
    );
    assert_error(&run(&alice, &["register", "x"]).await, "is not a hub administrator");
    assert_error(&run(&alice, &["token", "list"]).await, "is not a hub administrator");
    assert_error(
        &run(&alice, &["grant", "--cluster", "lab", "--user", "alice"]).await,
        "is not a hub administrator",
    );
    let grants = stdout(&run(&alice, &["grants"]).await);
    assert!(grants.contains("edge-1") && grants.contains("group:dev"), "{grants}");

    // Grants are listed, and revoked.
    assert_ok(&run(kc, &["grant", "--cluster", "*", "--user", "carol", "--allow-impersonate"]).await);
    let table = stdout(&run(kc, &["grants"]).await);
    assert!(table.starts_with("CLUSTER"), "{table}");
    assert!(table.contains("user:carol") && table.contains("yes"), "{table}");
    assert_error(&run(kc, &["grant", "--cluster", "nope", "--user", "x"]).await, "is not registered");
    assert_eq!(run(kc, &["grant", "--cluster", "lab"]).await.status.code(), Some(2), "a user or a group");
    assert_ok(&run(kc, &["revoke", "--cluster", "edge-1", "--group", "dev"]).await);
    assert_error(&run(&alice, &["kubeconfig", "edge-1"]).await, "may not reach cluster \"edge-1\"");
    assert_error(&run(kc, &["revoke", "--cluster", "edge-1", "--group", "dev"]).await, "no grant");

    // Tokens are listed without secrets, and revoked for good.
    let out = run(kc, &["token", "list", "-o", "json"]).await;
    assert_ok(&out);
    let tokens: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    let id = tokens[0]["id"].as_str().expect("id").to_owned();
    assert_eq!(tokens[0]["user"], "alice");
    assert!(!stdout(&out).contains("ferryuser."), "no secret in the list");
    let table = stdout(&run(kc, &["token", "list"]).await);
    assert!(table.starts_with("ID") && table.contains(&id), "{table}");
    assert_ok(&run(kc, &["token", "revoke", &id]).await);
    let err = assert_error(&run(&alice, &["whoami"]).await, "invalid bearer token");
    assert!(err.contains("unknown, revoked"), "{err}");
    assert_error(&run(kc, &["token", "revoke", &id]).await, "no token with id");
    assert_error(&run(kc, &["token", "revoke", "nope"]).await, "is not a token id");
    assert_error(
        &run(kc, &["token", "create", "--user", "system:kube-controller-manager"]).await,
        "not allowed",
    );
    hub.stop().await;
}

#[tokio::test]
async fn wait_returns_at_once_or_times_out_with_a_message() {
    let hub = Hub::start().await;
    let kc = &hub.admin;
    assert_ok(&run(kc, &["register", "edge-1"]).await);

    let out = run(kc, &["wait", "edge-1", "--for", "disconnected"]).await;
    assert_ok(&out);
    assert_eq!(stdout(&out), "cluster/edge-1 disconnected\n");

    let started = std::time::Instant::now();
    let out = run(kc, &["wait", "edge-1", "--for", "connected", "--timeout", "1s"]).await;
    let err = assert_error(&out, "timed out after 1s waiting for cluster \"edge-1\" to be connected");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(started.elapsed() < Duration::from_secs(20), "the hub's own deadline ends the wait");

    assert_error(
        &run(kc, &["wait", "nope", "--for", "connected"]).await,
        "cluster \"nope\" is not registered",
    );
    hub.stop().await;
}

#[tokio::test]
async fn client_certificate_from_another_ca_is_rejected() {
    let hub = Hub::start().await;
    let stranger = Ca::new("other-ca").client("admin", &["ferry:admins"]);
    let kc = hub.write("stranger.kubeconfig", &common::kubeconfig_yaml(&hub.url, &hub.ca_pem(), &stranger));
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
    let admin = std::fs::read_to_string(&hub.admin).expect("admin kubeconfig");
    let v: serde_yaml::Value = serde_yaml::from_str(&admin).expect("yaml");
    let ca_b64 = v["clusters"][0]["cluster"]["certificate-authority-data"].as_str().expect("ca").to_owned();
    use base64::Engine as _;
    let kc = hub.write(
        "wrong-ca.kubeconfig",
        &admin.replace(&ca_b64, &base64::engine::general_purpose::STANDARD.encode(&other.pem)),
    );
    let out = run(&kc, &["clusters"]).await;
    let err = assert_error(&out, "the hub's TLS certificate is not trusted");
    assert!(err.contains(&hub.url), "{err}");
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
    let admin = std::fs::read_to_string(&hub.admin).expect("admin kubeconfig");
    let kc = hub.write("closed.kubeconfig", &admin.replace(&hub.url, &url));
    let out = run(&kc, &["clusters"]).await;
    let err = assert_error(&out, &format!("cannot connect to the hub at {url}"));
    assert!(err.to_lowercase().contains("refused"), "{err}");
    hub.stop().await;
}

//! The in-memory test apiserver against the real kubectl (the default one
//! and 1.27), over raw HTTP/1.1, and as the `test-apiserver` process; and
//! its streaming (`exec`, `attach`, `cp`, `port-forward`, tty) over SPDY and
//! WebSocket.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_integration::apiserver::{RbacRule, RecordedRequest, RequestOutcome, TestApiserver};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

mod common;

use common::{Flavor, TcpEcho};

/// How long any single expected event may take.
const WAIT: Duration = Duration::from_secs(20);

/// The kubectl under test: `FERRY_KUBECTL` or `kubectl` from `PATH`.
fn default_kubectl() -> PathBuf {
    std::env::var_os("FERRY_KUBECTL").map_or_else(|| PathBuf::from("kubectl"), PathBuf::from)
}

/// An older kubectl shipped beside the real file of `kubectl` on `PATH`
/// (`kubectl.1.27`, ...), if this machine has it.
fn versioned_kubectl(version: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    let found = std::env::split_paths(&path).map(|d| d.join("kubectl")).find(|p| p.is_file())?;
    let real = std::fs::canonicalize(found).ok()?;
    let versioned = real.parent()?.join(format!("kubectl.{version}"));
    versioned.is_file().then_some(versioned)
}

/// The kubectls to check: the default one, plus 1.27 where present.
fn kubectls() -> Vec<(String, PathBuf)> {
    let mut all = vec![("default".to_string(), default_kubectl())];
    match versioned_kubectl("1.27") {
        Some(p) => all.push(("1-27".to_string(), p)),
        None => eprintln!("kubectl.1.27 not found beside kubectl: checking the default kubectl only"),
    }
    all
}

/// One kubectl binary with its own kubeconfig and discovery cache.
struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
    cache: PathBuf,
}

impl Kubectl {
    fn new(bin: PathBuf, dir: &Path, name: &str, kubeconfig_yaml: &str) -> Self {
        let kubeconfig = dir.join(format!("{name}.kubeconfig"));
        std::fs::write(&kubeconfig, kubeconfig_yaml).expect("write kubeconfig");
        Self { bin, kubeconfig, cache: dir.join(format!("cache-{name}")) }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache)
            .args(args)
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    async fn run(&self, args: &[&str]) -> Output {
        tokio::time::timeout(WAIT, self.command(args).output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} timed out"))
            .expect("run kubectl")
    }

    /// Runs kubectl; it must succeed without printing anything on stderr
    /// but kubectl's own "No resources found" (no warnings). Returns stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "kubectl {args:?} failed ({}): {stderr}", out.status);
        let noise: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("No resources found")).collect();
        assert!(noise.is_empty(), "kubectl {args:?} printed on stderr: {stderr}");
        String::from_utf8(out.stdout).expect("utf8")
    }

    /// Runs kubectl; it must fail. Returns stderr.
    async fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(!out.status.success(), "kubectl {args:?} unexpectedly succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn spawn(&self, args: &[&str]) -> Streaming {
        let mut child =
            self.command(args).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("spawn");
        let stdout = child.stdout.take().expect("stdout");
        Streaming { child, lines: BufReader::new(stdout).lines() }
    }
}

/// A long-running kubectl (`get -w`, `logs -f`) read line by line.
struct Streaming {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Streaming {
    async fn line_containing(&mut self, needle: &str) -> String {
        let read = async {
            loop {
                match self.lines.next_line().await.expect("read kubectl stdout") {
                    Some(line) if line.contains(needle) => return line,
                    Some(_) => {}
                    None => panic!("kubectl exited before printing {needle:?}"),
                }
            }
        };
        tokio::time::timeout(WAIT, read).await.unwrap_or_else(|_| panic!("no line with {needle:?}"))
    }

    async fn stop(mut self) {
        self.child.kill().await.expect("kill kubectl");
    }
}

async fn wait_for(
    api: &TestApiserver,
    what: &str,
    pred: impl Fn(&RecordedRequest) -> bool,
) -> RecordedRequest {
    tokio::time::timeout(WAIT, api.wait_for_request(pred))
        .await
        .unwrap_or_else(|_| panic!("no request: {what}"))
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

async fn crud(k: &Kubectl, tag: &str, dir: &Path) {
    let ns = k.ok(&["get", "namespaces"]).await;
    assert!(ns.starts_with("NAME"), "a Table, as from a real apiserver: {ns}");
    assert!(ns.contains("default") && ns.contains("kube-system") && ns.contains("Active"), "{ns}");

    let cm = format!("cm-{tag}");
    let out = k.ok(&["create", "configmap", &cm, "--from-literal=color=blue"]).await;
    assert_eq!(out.trim(), format!("configmap/{cm} created"));
    let yaml = k.ok(&["get", "configmap", &cm, "-o", "yaml"]).await;
    for want in ["color: blue", &format!("name: {cm}"), "namespace: default", "resourceVersion:", "uid:"] {
        assert!(yaml.contains(want), "{want:?} missing from {yaml}");
    }
    let dup = k.fails(&["create", "configmap", &cm]).await;
    assert!(dup.contains(&format!("configmaps \"{cm}\" already exists")), "{dup}");

    let manifest = dir.join(format!("applied-{tag}.yaml"));
    let m = manifest.to_str().expect("utf8");
    let doc = |v: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: applied-{tag}\n  labels:\n    app: web\ndata:\n  key: \"{v}\"\n"
        )
    };
    std::fs::write(&manifest, doc("1")).expect("write");
    assert_eq!(k.ok(&["apply", "-f", m]).await.trim(), format!("configmap/applied-{tag} created"));
    std::fs::write(&manifest, doc("2")).expect("write");
    assert_eq!(k.ok(&["apply", "-f", m]).await.trim(), format!("configmap/applied-{tag} configured"));
    assert_eq!(k.ok(&["apply", "-f", m]).await.trim(), format!("configmap/applied-{tag} unchanged"));
    let key = k.ok(&["get", "configmap", &format!("applied-{tag}"), "-o", "jsonpath={.data.key}"]).await;
    assert_eq!(key, "2");
    let selected = k.ok(&["get", "configmaps", "-l", "app=web", "-o", "name"]).await;
    assert!(selected.contains(&format!("configmap/applied-{tag}")) && !selected.contains(&cm), "{selected}");

    assert_eq!(k.ok(&["delete", "configmap", &cm]).await.trim(), format!("configmap \"{cm}\" deleted"));
    let gone = k.fails(&["get", "configmap", &cm]).await;
    assert!(gone.contains(&format!("configmaps \"{cm}\" not found")), "{gone}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_reads_and_writes_objects() {
    let api = TestApiserver::start().await.expect("start");
    let dir = tempdir();
    for (tag, bin) in kubectls() {
        let k = Kubectl::new(bin, dir.path(), &tag, &api.kubeconfig_yaml());
        crud(&k, &tag, dir.path()).await;
    }
    let recorded = api.requests();
    let writes: Vec<_> = recorded.iter().filter(|r| r.path.contains("/configmaps")).collect();
    assert!(writes.len() >= 10, "{writes:?}");
    for r in writes {
        assert_eq!(r.user.as_deref(), Some("test-admin"));
        assert!(!r.impersonated);
        assert_eq!(r.header("authorization"), Some(format!("Bearer {}", api.admin_token()).as_str()));
        assert_eq!(r.http_version, "HTTP/2.0", "kubectl negotiates h2");
    }
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_changes_as_they_happen() {
    let api = TestApiserver::start().await.expect("start");
    let dir = tempdir();
    let k = Kubectl::new(default_kubectl(), dir.path(), "k", &api.kubeconfig_yaml());
    k.ok(&["create", "configmap", "before"]).await;

    let mut watch = k.spawn(&["get", "configmaps", "--watch", "-o", "name"]);
    watch.line_containing("configmap/before").await;
    // Only once the watch itself is open do we make the change.
    wait_for(&api, "an open watch", |r| r.query_param("watch").as_deref() == Some("true")).await;
    k.ok(&["create", "configmap", "during"]).await;
    watch.line_containing("configmap/during").await;
    k.ok(&["label", "configmap", "during", "round=2"]).await;
    watch.line_containing("configmap/during").await;
    watch.stop().await;
    let ended = wait_for(&api, "the watch cancelled", |r| {
        r.query_param("watch").as_deref() == Some("true") && r.outcome == RequestOutcome::Cancelled
    })
    .await;
    assert!(ended.finished_at.is_some());
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_prints_lines_as_they_are_appended() {
    let api = TestApiserver::start().await.expect("start");
    let dir = tempdir();
    let k = Kubectl::new(default_kubectl(), dir.path(), "k", &api.kubeconfig_yaml());
    k.ok(&["run", "web", "--image=nginx", "--restart=Never"]).await;
    let pods = k.ok(&["get", "pods"]).await;
    assert!(pods.contains("web") && pods.contains("1/1") && pods.contains("Running"), "{pods}");

    api.append_log("default", "web", "first line");
    assert_eq!(k.ok(&["logs", "web"]).await, "first line\n");
    let mut follow = k.spawn(&["logs", "-f", "web"]);
    follow.line_containing("first line").await;
    api.append_log("default", "web", "second line");
    follow.line_containing("second line").await;
    follow.stop().await;

    let missing = k.fails(&["logs", "nope"]).await;
    assert!(missing.contains("pods \"nope\" not found"), "{missing}");
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whoami_reports_the_impersonated_user() {
    let api = TestApiserver::start().await.expect("start");
    let dir = tempdir();
    for (tag, bin) in kubectls() {
        let k = Kubectl::new(bin, dir.path(), &tag, &api.kubeconfig_yaml());
        let out = k.ok(&["auth", "whoami", "--as", "alice", "--as-group", "dev", "-o", "json"]).await;
        let v: Value = serde_json::from_str(&out).expect("json");
        assert_eq!(v["status"]["userInfo"]["username"], "alice", "{v}");
        assert_eq!(v["status"]["userInfo"]["groups"], json!(["dev", "system:authenticated"]), "{v}");
        let me = k.ok(&["auth", "whoami", "-o", "json"]).await;
        assert!(me.contains("test-admin") && me.contains("system:masters"), "{me}");
    }
    let r = wait_for(&api, "an impersonated review", |r| {
        r.path.ends_with("/selfsubjectreviews") && r.impersonated
    })
    .await;
    assert_eq!(r.header("impersonate-user"), Some("alice"));
    assert_eq!(r.header_values("impersonate-group"), ["dev"]);
    assert_eq!(r.user.as_deref(), Some("alice"));
    assert_eq!(r.groups, ["dev", "system:authenticated"]);
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_rules_decide_for_impersonated_users() {
    let rule = RbacRule::for_user("alice")
        .verbs(["get", "list", "watch"])
        .resources(["configmaps"])
        .namespaces(["default"]);
    let api = TestApiserver::builder().rbac([rule]).start().await.expect("start");
    let dir = tempdir();
    let k = Kubectl::new(default_kubectl(), dir.path(), "k", &api.kubeconfig_yaml());
    k.ok(&["create", "configmap", "shared"]).await;
    k.ok(&["get", "pods"]).await; // the admin itself is never limited

    assert!(k.ok(&["get", "configmaps", "--as", "alice"]).await.contains("shared"));
    let err = k.fails(&["get", "pods", "--as", "alice"]).await;
    assert!(
        err.contains("Error from server (Forbidden): pods is forbidden: User \"alice\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""),
        "{err}"
    );
    let err = k.fails(&["get", "configmap", "shared", "-n", "kube-system", "--as", "alice"]).await;
    assert!(err.contains("configmaps \"shared\" is forbidden: User \"alice\" cannot get resource \"configmaps\" in API group \"\" in the namespace \"kube-system\""), "{err}");
    let err = k.fails(&["delete", "configmap", "shared", "--as", "alice"]).await;
    assert!(err.contains("cannot delete resource \"configmaps\""), "{err}");
    let err = k.fails(&["get", "pods", "--as", "bob"]).await;
    assert!(err.contains("User \"bob\" cannot list"), "{err}");
    assert_eq!(k.ok(&["auth", "can-i", "list", "configmaps", "--as", "alice"]).await.trim(), "yes");
    assert_eq!(k.run(&["auth", "can-i", "delete", "configmaps", "--as", "alice"]).await.stdout, b"no\n");

    api.set_rbac([]);
    assert!(k.fails(&["get", "configmaps", "--as", "alice"]).await.contains("Forbidden"));
    let denied = api.requests().into_iter().filter(|r| r.status == Some(403)).count();
    assert!(denied >= 5, "the 403s are recorded");
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_missing_token_is_unauthorized() {
    let api = TestApiserver::start().await.expect("start");
    let dir = tempdir();
    let bad = api.kubeconfig_yaml().replace(api.admin_token(), "not-the-token");
    let k = Kubectl::new(default_kubectl(), dir.path(), "bad", &bad);
    let err = k.fails(&["get", "namespaces"]).await;
    assert!(err.contains("You must be logged in to the server"), "{err}");

    let client = RawClient::connect(&api).await;
    let (status, body) = client.json("GET", "/api/v1/namespaces", &[], Vec::new()).await;
    assert_eq!(status, 401);
    assert_eq!(body["reason"], "Unauthorized");
    assert_eq!(body["kind"], "Status");
    let r = wait_for(&api, "a 401", |r| r.status == Some(401) && r.header("authorization").is_none()).await;
    assert_eq!(r.user, None);
    api.shutdown().await;
}

/// A TLS connection to the server (HTTP/1.1 by ALPN), trusting its CA.
async fn tls_connect(api: &TestApiserver) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(api.ca_pem().as_bytes()).expect("ca pem")).expect("anchor");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(api.addr()).await.expect("connect");
    let name = ServerName::try_from("127.0.0.1").expect("name");
    tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.expect("tls")
}

/// A minimal HTTP/1.1 client over TLS, trusting the server's CA.
struct RawClient {
    sender: tokio::sync::Mutex<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
    conn: tokio::task::JoinHandle<()>,
    token: String,
}

impl Drop for RawClient {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

impl RawClient {
    async fn connect(api: &TestApiserver) -> Self {
        let tls = tls_connect(api).await;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.expect("handshake");
        let conn = tokio::spawn(async move {
            // Ends when the test drops the client or the server closes.
            let _ = conn.await;
        });
        Self { sender: tokio::sync::Mutex::new(sender), conn, token: api.admin_token().to_string() }
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> hyper::Response<Incoming> {
        let mut req = hyper::Request::builder().method(method).uri(path).header("host", "127.0.0.1");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::from(body))).expect("request");
        let mut sender = self.sender.lock().await;
        sender.ready().await.expect("connection ready");
        sender.send_request(req).await.expect("send")
    }

    /// As the admin, with `Authorization` added.
    async fn admin(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> (u16, Value) {
        let auth = format!("Bearer {}", self.token);
        let mut all = vec![("authorization", auth.as_str())];
        all.extend_from_slice(headers);
        self.json(method, path, &all, body).await
    }

    async fn json(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> (u16, Value) {
        let resp = self.send(method, path, headers, body).await;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }
}

/// Reads newline-delimited JSON events from a streamed body.
struct Events {
    body: Incoming,
    buf: Vec<u8>,
}

impl Events {
    async fn next(&mut self) -> Option<Value> {
        let read = async {
            loop {
                if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = self.buf.drain(..=pos).collect();
                    return Some(serde_json::from_slice(&line).expect("event json"));
                }
                match self.body.frame().await {
                    Some(frame) => {
                        if let Ok(data) = frame.expect("frame").into_data() {
                            self.buf.extend_from_slice(&data);
                        }
                    }
                    None => return None,
                }
            }
        };
        tokio::time::timeout(WAIT, read).await.expect("next watch event")
    }
}

fn cm(name: &str, labels: Value) -> Vec<u8> {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels}, "data": {"k": "v"}})
        .to_string()
        .into_bytes()
}

const JSON: (&str, &str) = ("content-type", "application/json");
const CMS: &str = "/api/v1/namespaces/default/configmaps";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_semantics_match_a_real_apiserver() {
    let api =
        TestApiserver::builder().bookmark_interval(Duration::from_millis(20)).start().await.expect("start");
    let c = RawClient::connect(&api).await;

    let (s, created) = c.admin("POST", CMS, &[JSON], cm("a", json!({"app": "web"}))).await;
    assert_eq!(s, 201, "{created}");
    let rv1 = created["metadata"]["resourceVersion"].as_str().expect("rv").to_string();
    let (s, dup) = c.admin("POST", CMS, &[JSON], cm("a", json!({}))).await;
    assert_eq!((s, dup["reason"].as_str()), (409, Some("AlreadyExists")));
    assert_eq!(dup["message"], "configmaps \"a\" already exists");
    let (s, missing) = c.admin("GET", &format!("{CMS}/nope"), &[], Vec::new()).await;
    assert_eq!((s, missing["message"].as_str()), (404, Some("configmaps \"nope\" not found")));
    let (s, _) = c.admin("POST", "/api/v1/namespaces/nowhere/configmaps", &[JSON], cm("x", json!({}))).await;
    assert_eq!(s, 404, "creating in a missing namespace");

    // Update with the current resourceVersion, then with the stale one.
    let mut next = created.clone();
    next["data"]["k"] = json!("v2");
    let (s, updated) = c.admin("PUT", &format!("{CMS}/a"), &[JSON], next.to_string().into_bytes()).await;
    assert_eq!(s, 200, "{updated}");
    assert_ne!(updated["metadata"]["resourceVersion"], json!(rv1));
    let (s, conflict) = c.admin("PUT", &format!("{CMS}/a"), &[JSON], next.to_string().into_bytes()).await;
    assert_eq!((s, conflict["reason"].as_str()), (409, Some("Conflict")));

    // Patches of each kind.
    let merge = ("content-type", "application/merge-patch+json");
    let (s, p) = c.admin("PATCH", &format!("{CMS}/a"), &[merge], br#"{"data":{"m":"1"}}"#.to_vec()).await;
    assert_eq!((s, p["data"]["m"].as_str()), (200, Some("1")));
    let jp = ("content-type", "application/json-patch+json");
    let body = br#"[{"op":"test","path":"/data/m","value":"nope"}]"#.to_vec();
    assert_eq!(c.admin("PATCH", &format!("{CMS}/a"), &[jp], body).await.0, 422);
    let apply = ("content-type", "application/apply-patch+yaml");
    assert_eq!(c.admin("PATCH", &format!("{CMS}/a"), &[apply], b"{}".to_vec()).await.0, 415);

    // Bodies over 3 MiB are refused.
    let (s, big) = c.admin("POST", CMS, &[JSON], vec![b' '; 3 * 1024 * 1024 + 1]).await;
    assert_eq!((s, big["reason"].as_str()), (413, Some("RequestEntityTooLarge")));

    // Lists: selectors, limit/continue, Table.
    c.admin("POST", CMS, &[JSON], cm("b", json!({"app": "db"}))).await;
    let (_, list) = c.admin("GET", &format!("{CMS}?labelSelector=app%20in%20(web)"), &[], Vec::new()).await;
    assert_eq!(list["kind"], "ConfigMapList");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1));
    let (_, page) = c.admin("GET", &format!("{CMS}?limit=1"), &[], Vec::new()).await;
    let token = page["metadata"]["continue"].as_str().expect("continue").to_string();
    let (_, rest) = c.admin("GET", &format!("{CMS}?limit=1&continue={token}"), &[], Vec::new()).await;
    assert_eq!(rest["items"][0]["metadata"]["name"], "b");
    let table = ("accept", "application/json;as=Table;v=v1;g=meta.k8s.io,application/json");
    let (_, t) = c.admin("GET", CMS, &[table], Vec::new()).await;
    assert_eq!(t["kind"], "Table");
    assert_eq!(t["columnDefinitions"][0]["name"], "Name");

    // A watch from rv1 replays what happened since; bookmarks come; events
    // arrive as they happen.
    let auth = format!("Bearer {}", api.admin_token());
    let path = format!(
        "{CMS}?watch=true&resourceVersion={rv1}&allowWatchBookmarks=true&fieldSelector=metadata.name%3Da"
    );
    let resp = c.send("GET", &path, &[("authorization", &auth)], Vec::new()).await;
    assert_eq!(resp.status(), 200);
    let mut events = Events { body: resp.into_body(), buf: Vec::new() };
    let first = events.next().await.expect("replayed event");
    assert_eq!(
        (first["type"].as_str(), first["object"]["data"]["k"].as_str()),
        (Some("MODIFIED"), Some("v2"))
    );
    let mut saw_bookmark = false;
    while !saw_bookmark {
        let e = events.next().await.expect("event");
        saw_bookmark = e["type"] == "BOOKMARK";
    }
    let c2 = RawClient::connect(&api).await;
    c2.admin("DELETE", &format!("{CMS}/a"), &[], Vec::new()).await;
    loop {
        let e = events.next().await.expect("event");
        if e["type"] == "DELETED" {
            assert_eq!(e["object"]["metadata"]["name"], "a");
            break;
        }
    }
    drop(events);

    // The test endpoints need the admin itself.
    let (s, all) = c2.admin("GET", "/_test/requests", &[], Vec::new()).await;
    assert_eq!(s, 200);
    assert!(all.as_array().is_some_and(|a| a.len() >= 10));
    let (s, _) = c2.admin("GET", "/_test/requests", &[("impersonate-user", "alice")], Vec::new()).await;
    assert_eq!(s, 403);
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_until_sigterm() {
    let dir = tempdir();
    let kubeconfig = dir.path().join("kubeconfig");
    let rules = dir.path().join("rbac.json");
    std::fs::write(&rules, r#"[{"subjects":["group:dev"],"verbs":["get","list"],"resources":["configmaps"],"namespaces":["default"]}]"#)
        .expect("write rules");
    let mut child = Command::new(env!("CARGO_BIN_EXE_test-apiserver"))
        .args(["--listen", "127.0.0.1:0", "--kubeconfig-out"])
        .arg(&kubeconfig)
        .arg("--rbac-file")
        .arg(&rules)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn test-apiserver");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let ready = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("ready in time")
        .expect("read")
        .expect("line");
    let url = ready.strip_prefix("test-apiserver ready: https://127.0.0.1:").expect("the ready line");
    assert!(url.parse::<u16>().is_ok(), "{ready}");

    let k = Kubectl::new(
        default_kubectl(),
        dir.path(),
        "k",
        &std::fs::read_to_string(&kubeconfig).expect("kubeconfig"),
    );
    k.ok(&["run", "p", "--image=busybox", "--restart=Never"]).await;
    let line = dir.path().join("line.txt");
    std::fs::write(&line, "from a file").expect("write");
    k.ok(&["create", "--raw", "/_test/logs/default/p", "-f", line.to_str().expect("utf8")]).await;
    assert_eq!(k.ok(&["logs", "p"]).await, "from a file\n");
    assert!(k.fails(&["get", "pods", "--as", "carol", "--as-group", "dev"]).await.contains("Forbidden"));
    k.ok(&["get", "configmaps", "--as", "carol", "--as-group", "dev"]).await;
    std::fs::write(&rules, "[]").expect("write");
    k.ok(&["replace", "--raw", "/_test/rbac", "-f", rules.to_str().expect("utf8")]).await;
    assert!(
        k.fails(&["get", "configmaps", "--as", "carol", "--as-group", "dev"]).await.contains("Forbidden")
    );
    let recorded: Vec<RecordedRequest> =
        serde_json::from_str(&k.ok(&["get", "--raw", "/_test/requests"]).await).expect("recorded requests");
    assert!(recorded.iter().any(|r| r.user.as_deref() == Some("carol") && r.status == Some(403)));
    assert!(!recorded.iter().any(|r| r.path.starts_with("/_test/")), "test endpoints are not recorded");

    let pid = child.id().expect("pid").to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().await.expect("kill");
    assert!(killed.success());
    let status = tokio::time::timeout(WAIT, child.wait()).await.expect("exits on SIGTERM").expect("wait");
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_works_against_it() {
    use futures_util::{AsyncBufReadExt, StreamExt, TryStreamExt};
    use k8s_openapi::api::authentication::v1::SelfSubjectReview;
    use k8s_openapi::api::core::v1::{ConfigMap, Pod};
    use kube::api::{
        Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
    };

    let api = TestApiserver::start().await.expect("start");
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&api.kubeconfig_yaml()).expect("kubeconfig");
    let client_for = |kc: kube::config::Kubeconfig| async move {
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.expect("config");
        kube::Client::try_from(config).expect("client")
    };
    let client = client_for(kubeconfig.clone()).await;
    assert_eq!(client.apiserver_version().await.expect("version").git_version, "v1.33.0");
    let legacy = kube::Discovery::new(client.clone()).run().await.expect("discovery");
    assert!(legacy.has_group("authentication.k8s.io"));
    let aggregated =
        kube::Discovery::new(client.clone()).run_aggregated().await.expect("aggregated discovery");
    assert!(aggregated.has_group("authorization.k8s.io"));

    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "k", "labels": {"a": "b"}}, "data": {"x": "1"}}))
            .expect("configmap");
    let created = cms.create(&PostParams::default(), &cm).await.expect("create");
    let rv = created.metadata.resource_version.clone().expect("rv");
    let mut events =
        cms.watch(&WatchParams::default().labels("a=b").timeout(60), &rv).await.expect("watch").boxed();
    cms.patch("k", &PatchParams::default(), &Patch::Merge(json!({"data": {"y": "2"}})))
        .await
        .expect("merge patch");
    match events.try_next().await.expect("event") {
        Some(WatchEvent::Modified(m)) => assert_eq!(m.data.expect("data")["y"], "2"),
        other => panic!("expected MODIFIED, got {other:?}"),
    }
    cms.patch("k", &PatchParams::default(), &Patch::Strategic(json!({"data": {"z": "3"}})))
        .await
        .expect("smp");
    let stale = cms.replace("k", &PostParams::default(), &created).await.expect_err("stale resourceVersion");
    assert!(matches!(&stale, kube::Error::Api(s) if s.code == 409), "{stale:?}");
    assert_eq!(cms.list(&ListParams::default().labels("a=b")).await.expect("list").items.len(), 1);
    assert!(
        cms.delete("k", &DeleteParams::default()).await.expect("delete").is_right(),
        "a Status, as for ConfigMaps"
    );
    let missing = cms.get("k").await.expect_err("gone");
    assert!(matches!(&missing, kube::Error::Api(s) if s.code == 404), "{missing:?}");

    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let pod: Pod = serde_json::from_value(
        json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}),
    )
    .expect("pod");
    pods.create(&PostParams::default(), &pod).await.expect("create pod");
    api.append_log("default", "p", "one");
    let params = LogParams { follow: true, ..LogParams::default() };
    let mut lines = pods.log_stream("p", &params).await.expect("logs").lines();
    let next = |l: Option<std::io::Result<String>>| l.expect("a line").expect("read");
    assert_eq!(next(tokio::time::timeout(WAIT, lines.next()).await.expect("first")), "one");
    api.append_log("default", "p", "two");
    assert_eq!(next(tokio::time::timeout(WAIT, lines.next()).await.expect("second")), "two");

    let mut as_alice = kubeconfig;
    for named in &mut as_alice.auth_infos {
        if let Some(info) = named.auth_info.as_mut() {
            info.impersonate = Some("alice".into());
            info.impersonate_groups = Some(vec!["dev".into()]);
        }
    }
    let alice = client_for(as_alice).await;
    let review: SelfSubjectReview = serde_json::from_value(json!({"metadata": {}})).expect("review");
    let reviewed = Api::<SelfSubjectReview>::all(alice)
        .create(&PostParams::default(), &review)
        .await
        .expect("self review");
    let user = reviewed.status.and_then(|s| s.user_info).expect("user info");
    assert_eq!(user.username.as_deref(), Some("alice"));
    assert_eq!(user.groups, Some(vec!["dev".to_string(), "system:authenticated".to_string()]));
    api.shutdown().await;
}

// ---------------------------------------------------------------------------
// Streaming: exec, attach, cp, port-forward with the real kubectl, over SPDY
// and WebSocket, and kubectl 1.27 (SPDY only).
// ---------------------------------------------------------------------------

/// A kubeconfig file for the in-process server.
fn kubeconfig_file(api: &TestApiserver, dir: &Path) -> PathBuf {
    let path = dir.join("admin.kubeconfig");
    std::fs::write(&path, api.kubeconfig_yaml()).expect("write kubeconfig");
    path
}

/// Runs a flavored kubectl (async, bounded by `WAIT`), stdin from `input`.
async fn run_flavor(f: &Flavor, kc: &Path, args: &[&str], input: Option<&[u8]>) -> Output {
    use tokio::io::AsyncWriteExt;
    let mut cmd = Command::from(f.command(kc, args));
    cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn kubectl");
    if let Some(data) = input {
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(data).await.expect("write stdin");
        drop(stdin);
    }
    tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("[{}] kubectl {args:?} timed out", f.name))
        .expect("kubectl output")
}

fn last_id(api: &TestApiserver) -> u64 {
    api.requests().last().map_or(0, |r| r.id)
}

/// Waits for the first request after `after` to a path ending in `suffix`
/// that satisfies `pred`.
async fn wait_after(
    api: &TestApiserver,
    after: u64,
    suffix: &str,
    pred: impl Fn(&RecordedRequest) -> bool,
) -> RecordedRequest {
    let what = format!("a request to *{suffix} after #{after}");
    wait_for(api, &what, |r| r.id > after && r.path.ends_with(suffix) && pred(r)).await
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_runs_commands_over_spdy_and_websocket() {
    let api = TestApiserver::start().await.expect("start");
    let dir = tempdir();
    let kc = kubeconfig_file(&api, dir.path());
    let admin = Flavor::spdy();
    admin.ok(&kc, &["run", "box", "--image=busybox", "--restart=Never", "--env=COLOR=blue"]);
    for f in Flavor::all() {
        let before = last_id(&api);
        let out = run_flavor(&f, &kc, &["exec", "box", "--", "echo", "hello", f.name], None).await;
        assert!(out.status.success(), "[{}] {}", f.name, text(&out.stderr));
        assert_eq!(text(&out.stdout), format!("hello {}\n", f.name));
        let r = wait_after(&api, before, "/exec", |r| r.outcome == RequestOutcome::Completed).await;
        assert_eq!(r.upgrade.as_deref(), Some(f.exec_upgrade), "[{}] {r:?}", f.name);
        let protocol = if f.exec_upgrade == "websocket" { "v5.channel.k8s.io" } else { "v4.channel.k8s.io" };
        assert_eq!(r.stream_protocol.as_deref(), Some(protocol), "[{}]", f.name);
        assert_eq!((r.status, r.exit_code), (Some(101), Some(0)));
        assert_eq!(r.query_param("command").as_deref(), Some("echo"));

        let out = run_flavor(&f, &kc, &["exec", "box", "--", "sh", "-c", "exit 3"], None).await;
        assert_eq!(
            out.status.code(),
            Some(3),
            "[{}] the exit code is kubectl's: {}",
            f.name,
            text(&out.stderr)
        );
        assert!(text(&out.stderr).contains("command terminated with exit code 3"), "{}", text(&out.stderr));

        let input = format!("piped through cat by {}\nsecond line\n", f.name);
        let out = run_flavor(&f, &kc, &["exec", "-i", "box", "--", "cat"], Some(input.as_bytes())).await;
        assert!(out.status.success(), "[{}] {}", f.name, text(&out.stderr));
        assert_eq!(text(&out.stdout), input, "[{}] stdin reaches cat and stdin EOF ends it", f.name);

        let out =
            run_flavor(&f, &kc, &["exec", "box", "--", "sh", "-c", "echo $COLOR; echo oops >&2"], None).await;
        assert!(out.status.success(), "[{}] {}", f.name, text(&out.stderr));
        assert_eq!(
            (text(&out.stdout).as_str(), text(&out.stderr).as_str()),
            ("blue\n", "oops\n"),
            "[{}]",
            f.name
        );

        let out = run_flavor(&f, &kc, &["exec", "box", "--", "no-such-command"], None).await;
        assert_eq!(out.status.code(), Some(127), "[{}]", f.name);
        assert!(
            text(&out.stderr).contains("\"no-such-command\": executable file not found"),
            "{}",
            text(&out.stderr)
        );
    }
    let missing = run_flavor(&admin, &kc, &["exec", "nope", "--", "true"], None).await;
    assert!(text(&missing.stderr).contains("pods \"nope\" not found"), "{}", text(&missing.stderr));
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cp_copies_files_both_ways() {
    let api = TestApiserver::start().await.expect("start");
    let dir = tempdir();
    let kc = kubeconfig_file(&api, dir.path());
    Flavor::spdy().ok(&kc, &["run", "box", "--image=busybox", "--restart=Never"]);
    for f in Flavor::all() {
        let local = dir.path().join(format!("up-{}.bin", f.name));
        let size = 3 * 1024 * 1024 + 17;
        let path = local.clone();
        let sum = tokio::task::spawn_blocking(move || common::write_random_file(&path, size))
            .await
            .expect("write file");
        let remote = format!("box:/tmp/{}.bin", f.name);
        let out = run_flavor(&f, &kc, &["cp", local.to_str().expect("utf8"), &remote], None).await;
        assert!(out.status.success(), "[{}] cp to the pod: {}", f.name, text(&out.stderr));
        let out =
            run_flavor(&f, &kc, &["exec", "box", "--", "sha256sum", &format!("/tmp/{}.bin", f.name)], None)
                .await;
        assert!(
            text(&out.stdout).starts_with(&sum),
            "[{}] the pod has the file: {}",
            f.name,
            text(&out.stdout)
        );
        let back = dir.path().join(format!("down-{}.bin", f.name));
        let out = run_flavor(&f, &kc, &["cp", &remote, back.to_str().expect("utf8")], None).await;
        assert!(out.status.success(), "[{}] cp from the pod: {}", f.name, text(&out.stderr));
        let (back_sum, len) = common::sha256_file(&back);
        assert_eq!((back_sum, len), (sum, size), "[{}] round trip", f.name);
    }
    // A directory, from the pod.
    let etc = dir.path().join("etc-copy");
    Flavor::websocket().ok(&kc, &["cp", "box:/etc", etc.to_str().expect("utf8")]);
    assert_eq!(std::fs::read_to_string(etc.join("hostname")).expect("hostname"), "box\n");
    api.shutdown().await;
}

/// A long-running kubectl with piped stdin and stdout lines.
struct Interactive {
    child: Child,
    stdin: Option<tokio::process::ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Interactive {
    fn spawn(f: &Flavor, kc: &Path, args: &[&str]) -> Self {
        let mut cmd = Command::from(f.command(kc, args));
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit()).kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn kubectl");
        let stdin = child.stdin.take();
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Self { child, stdin, lines }
    }

    async fn send(&mut self, data: &str) {
        use tokio::io::AsyncWriteExt;
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(data.as_bytes()).await.expect("write stdin");
        stdin.flush().await.expect("flush");
    }

    async fn line_containing(&mut self, needle: &str) -> String {
        let read = async {
            loop {
                match self.lines.next_line().await.expect("read kubectl stdout") {
                    Some(line) if line.contains(needle) => return line,
                    Some(_) => {}
                    None => panic!("kubectl exited before printing {needle:?}"),
                }
            }
        };
        tokio::time::timeout(WAIT, read).await.unwrap_or_else(|_| panic!("no line with {needle:?}"))
    }

    async fn close_stdin_and_wait(mut self) -> std::process::ExitStatus {
        drop(self.stdin.take());
        tokio::time::timeout(WAIT, self.child.wait()).await.expect("kubectl exits").expect("wait")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_echoes_stdin_and_shows_log_lines() {
    let api = TestApiserver::start().await.expect("start");
    let dir = tempdir();
    let kc = kubeconfig_file(&api, dir.path());
    Flavor::spdy().ok(&kc, &["run", "main", "--image=busybox", "--restart=Never"]);
    for f in Flavor::all() {
        let before = last_id(&api);
        let mut attach = Interactive::spawn(&f, &kc, &["attach", "-i", "main"]);
        // The echo proves the session (and its log subscription) is up.
        attach.send(&format!("typed by {}\n", f.name)).await;
        attach.line_containing(&format!("typed by {}", f.name)).await;
        api.append_log("default", "main", &format!("log line for {}", f.name));
        attach.line_containing(&format!("log line for {}", f.name)).await;
        let status = attach.close_stdin_and_wait().await;
        assert!(status.success(), "[{}] stdin EOF ends the attach: {status}", f.name);
        let r = wait_after(&api, before, "/attach", |r| r.outcome == RequestOutcome::Completed).await;
        assert_eq!(r.upgrade.as_deref(), Some(f.exec_upgrade), "[{}]", f.name);
        assert_eq!(r.exit_code, Some(0));
    }
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_reaches_the_annotated_target_or_the_echo_service() {
    let api = TestApiserver::start().await.expect("start");
    let dir = tempdir();
    let kc = kubeconfig_file(&api, dir.path());
    let echo = TcpEcho::start();
    let admin = Flavor::spdy();
    let annotation =
        format!("--annotations={}={}", ferry_integration::apiserver::FORWARD_TO_ANNOTATION, echo.addr);
    admin.ok(&kc, &["run", "fwd", "--image=nginx", "--restart=Never", &annotation]);
    admin.ok(&kc, &["run", "plain", "--image=nginx", "--restart=Never"]);
    let input = dir.path().join("forwarded.bin");
    let size = 4 * 1024 * 1024 + 3;
    let sent = common::write_random_file(&input, size);
    for f in Flavor::all() {
        for pod in ["fwd", "plain"] {
            let before = last_id(&api);
            let target = format!("pod/{pod}");
            let mut pf = Interactive::spawn(&f, &kc, &["port-forward", &target, ":8080"]);
            let line = pf.line_containing("Forwarding from 127.0.0.1:").await;
            let addr = format!("127.0.0.1:{}", common::forwarded_port(&line));
            let output = dir.path().join(format!("echoed-{}-{pod}.bin", f.name));
            let (from, to) = (input.clone(), output.clone());
            let len = tokio::task::spawn_blocking(move || common::tcp_round_trip(&addr, &from, &to))
                .await
                .expect("round trip");
            assert_eq!(len, size, "[{}] {pod}: every byte comes back", f.name);
            assert_eq!(common::sha256_file(&output).0, sent, "[{}] {pod}: unchanged", f.name);
            let r = wait_after(&api, before, "/portforward", |r| r.status == Some(101)).await;
            assert_eq!(r.upgrade.as_deref(), Some(f.port_forward_upgrade), "[{}]", f.name);
            let protocol = if f.port_forward_upgrade == "websocket" {
                "SPDY/3.1+portforward.k8s.io"
            } else {
                "portforward.k8s.io"
            };
            assert_eq!(r.stream_protocol.as_deref(), Some(protocol));
            pf.child.kill().await.expect("kill kubectl");
            let ended =
                wait_after(&api, before, "/portforward", |r| r.outcome == RequestOutcome::Cancelled).await;
            assert!(ended.finished_at.is_some(), "[{}] the end of the connection is recorded", f.name);
        }
    }
    drop(echo);
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_kubectl_mid_exec_is_recorded_as_cancelled() {
    let api = TestApiserver::start().await.expect("start");
    let dir = tempdir();
    let kc = kubeconfig_file(&api, dir.path());
    Flavor::spdy().ok(&kc, &["run", "box", "--image=busybox", "--restart=Never"]);
    for f in [Flavor::spdy(), Flavor::websocket()] {
        let before = last_id(&api);
        let mut exec = Interactive::spawn(&f, &kc, &["exec", "-i", "box", "--", "cat"]);
        exec.send("ping\n").await;
        exec.line_containing("ping").await;
        let running = wait_after(&api, before, "/exec", |r| r.status == Some(101)).await;
        assert_eq!(running.outcome, RequestOutcome::InProgress);
        exec.child.kill().await.expect("kill kubectl");
        let ended = wait_after(&api, before, "/exec", |r| r.outcome == RequestOutcome::Cancelled).await;
        assert_eq!(ended.id, running.id, "[{}]", f.name);
        assert!(ended.finished_at.is_some() && ended.exit_code.is_none(), "[{}] {ended:?}", f.name);
    }
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_needs_create_on_the_subresource() {
    let read_pods =
        RbacRule::for_user("alice").verbs(["get", "list"]).resources(["pods"]).namespaces(["default"]);
    let api = TestApiserver::builder().rbac([read_pods.clone()]).start().await.expect("start");
    let dir = tempdir();
    let kc = kubeconfig_file(&api, dir.path());
    Flavor::spdy().ok(&kc, &["run", "box", "--image=busybox", "--restart=Never"]);
    for f in [Flavor::spdy(), Flavor::websocket()] {
        let out = run_flavor(&f, &kc, &["exec", "box", "--as", "alice", "--", "true"], None).await;
        assert!(!out.status.success());
        assert!(
            text(&out.stderr).contains("pods \"box\" is forbidden: User \"alice\" cannot create resource \"pods/exec\" in API group \"\" in the namespace \"default\""),
            "[{}] {}",
            f.name,
            text(&out.stderr)
        );
        let out = run_flavor(&f, &kc, &["attach", "box", "--as", "alice"], None).await;
        assert!(
            text(&out.stderr).contains("cannot create resource \"pods/attach\""),
            "{}",
            text(&out.stderr)
        );
    }
    // `create` alone: SPDY (POST) works; a WebSocket (GET) also needs `get`,
    // so kubectl falls back to SPDY.
    let exec = RbacRule::for_user("alice").verbs(["create"]).resources(["pods/exec"]).namespaces(["default"]);
    api.set_rbac([read_pods, exec]);
    let before = last_id(&api);
    let out =
        run_flavor(&Flavor::websocket(), &kc, &["exec", "box", "--as", "alice", "--", "echo", "ok"], None)
            .await;
    assert_eq!(text(&out.stdout), "ok\n", "{}", text(&out.stderr));
    let denied = wait_after(&api, before, "/exec", |r| r.method == "GET").await;
    assert_eq!(denied.status, Some(403));
    let allowed = wait_after(&api, before, "/exec", |r| r.method == "POST").await;
    assert_eq!((allowed.status, allowed.upgrade.as_deref()), (Some(101), Some("SPDY/3.1")));
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tty_exec_through_a_pseudo_terminal() {
    if !Path::new("/usr/bin/script").exists() {
        eprintln!("no `script` (util-linux) to give kubectl a pty: skipping the tty test");
        return;
    }
    let api = TestApiserver::start().await.expect("start");
    let dir = tempdir();
    let kc = kubeconfig_file(&api, dir.path());
    Flavor::spdy().ok(&kc, &["run", "box", "--image=busybox", "--restart=Never"]);
    for f in [Flavor::spdy(), Flavor::websocket()] {
        // `script` runs kubectl on a pty of a known size.
        let line = format!(
            "stty cols 101 rows 41; exec {} --kubeconfig {} exec -it box -- sh",
            f.bin.display(),
            kc.display()
        );
        let mut cmd = std::process::Command::new("/usr/bin/script");
        cmd.args(["-qfec", &line, "/dev/null"]).env_remove("KUBECONFIG");
        for (k, v) in &f.envs {
            cmd.env(k, v);
        }
        let mut cmd = Command::from(cmd);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit()).kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn script");
        let mut stdin = child.stdin.take().expect("stdin");
        let mut out = child.stdout.take().expect("stdout");
        let mut seen = Vec::new();
        async fn until(out: &mut ChildStdout, seen: &mut Vec<u8>, needle: &str) {
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
        // The terminal size arrives as a resize event; the shell prints it.
        until(&mut out, &mut seen, "resize 101x41\r\n").await;
        use tokio::io::AsyncWriteExt;
        stdin.write_all(b"echo hi from a tty\r").await.expect("type");
        until(&mut out, &mut seen, "\r\nhi from a tty\r\n").await;
        stdin.write_all(b"exit 7\r").await.expect("type");
        let status = tokio::time::timeout(WAIT, child.wait()).await.expect("exits").expect("wait");
        assert_eq!(status.code(), Some(7), "[{}] {:?}", f.name, String::from_utf8_lossy(&seen));
    }
    let r = wait_for(&api, "a tty exec", |r| {
        r.query_param("tty").as_deref() == Some("true") && r.exit_code == Some(7)
    })
    .await;
    assert!(r.upgrade.is_some());
    api.shutdown().await;
}

/// The `base64.channel.k8s.io` WebSocket protocol with a tty, spoken
/// directly (no kubectl uses it): text messages carry the channel as a
/// digit and base64 data; a resize on channel 4 is shown by the terminal
/// session, and the exit is reported on channel 3 as text (pre-v4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_base64_protocol_with_a_tty() {
    use base64::Engine as _;
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let api = TestApiserver::start().await.expect("start");
    let dir = tempdir();
    let kc = kubeconfig_file(&api, dir.path());
    Flavor::spdy().ok(&kc, &["run", "box", "--image=busybox", "--restart=Never"]);
    let url = format!(
        "wss://{}/api/v1/namespaces/default/pods/box/exec?command=sh&stdin=true&stdout=true&tty=true",
        api.addr()
    );
    let mut req = url.into_client_request().expect("request");
    let auth = format!("Bearer {}", api.admin_token());
    req.headers_mut().insert("authorization", auth.parse().expect("header"));
    req.headers_mut().insert("sec-websocket-protocol", "base64.channel.k8s.io".parse().expect("header"));
    let (mut ws, resp) =
        tokio_tungstenite::client_async(req, tls_connect(&api).await).await.expect("WebSocket handshake");
    assert_eq!(resp.headers()["sec-websocket-protocol"], "base64.channel.k8s.io");
    let b64 = base64::engine::general_purpose::STANDARD;
    let send = |channel: char, data: &[u8]| Message::Text(format!("{channel}{}", b64.encode(data)).into());
    ws.send(send('4', br#"{"Width":80,"Height":24}"#)).await.expect("resize");
    let (mut stdout, mut error) = (Vec::new(), Vec::new());
    // Resize and stdin are separate channels with no order between them (as
    // with a kubelet): type only once the resize has been shown.
    let mut exit_sent = false;
    let read = async {
        let mut closed = None;
        // Reading on after the close frame sends the reply and ends the stream.
        while let Some(Ok(msg)) = ws.next().await {
            match msg {
                Message::Text(t) => {
                    let (channel, data) = t.as_str().split_at(1);
                    let data = b64.decode(data).expect("base64");
                    match channel {
                        "1" => stdout.extend(data),
                        "3" => error.extend(data),
                        other => panic!("unexpected channel {other}"),
                    }
                }
                Message::Close(frame) => closed = frame.map(|f| u16::from(f.code)),
                Message::Binary(_) => panic!("base64 protocols send text"),
                _ => {}
            }
            if !exit_sent && String::from_utf8_lossy(&stdout).contains("resize 80x24\r\n") {
                exit_sent = true;
                ws.send(send('0', b"exit 5\r")).await.expect("type");
            }
        }
        assert_eq!(closed, Some(1000), "a normal close");
    };
    tokio::time::timeout(WAIT, read).await.expect("the session ends");
    let stdout = String::from_utf8_lossy(&stdout);
    assert!(stdout.contains("resize 80x24\r\n") && stdout.contains("exit 5\r\n"), "{stdout:?}");
    let error = String::from_utf8_lossy(&error);
    assert!(
        error.contains("command terminated with non-zero exit code") && error.ends_with("exit code 5"),
        "{error}"
    );
    let r = wait_for(&api, "the base64 exec", |r| r.exit_code == Some(5)).await;
    assert_eq!(r.stream_protocol.as_deref(), Some("base64.channel.k8s.io"));
    api.shutdown().await;
}

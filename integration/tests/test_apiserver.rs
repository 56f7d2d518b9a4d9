//! The in-memory test apiserver against the real kubectl (the default one
//! and 1.27), over raw HTTP/1.1, and as the `test-apiserver` process.

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
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.expect("tls");
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

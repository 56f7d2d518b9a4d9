//! The test apiserver as an onboarding target: an `agent.yaml`-like
//! manifest of every kind the agent needs (ServiceAccount, Secrets, RBAC
//! objects, Deployment) applied with the real kubectl (the default one and
//! 1.27), strict field validation, ServiceAccount tokens from `kubectl
//! create token`, RBAC from the applied objects (impersonation,
//! SubjectAccessReviews, `kubectl auth can-i`), and the health toggle.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use ferry_integration::apiserver::{RecordedRequest, TestApiserver};
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// How long any single expected event may take.
const WAIT: Duration = Duration::from_secs(20);

const AGENT: &str = "system:serviceaccount:ferry-system:ferry-agent";

/// What `ferryctl register` will print, in substance: every kind the agent
/// needs, with the RBAC it needs and nothing more.
const MANIFEST: &str = r#"apiVersion: v1
kind: Namespace
metadata:
  name: ferry-system
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: ferry-agent
  namespace: ferry-system
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: ferry-agent
rules:
- apiGroups: [""]
  resources: ["users", "groups", "serviceaccounts"]
  verbs: ["impersonate"]
- apiGroups: ["authentication.k8s.io"]
  resources: ["uids", "userextras/scopes"]
  verbs: ["impersonate"]
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["get", "list"]
- apiGroups: ["authorization.k8s.io"]
  resources: ["subjectaccessreviews"]
  verbs: ["create"]
- nonResourceURLs: ["/version", "/readyz", "/livez"]
  verbs: ["get"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: ferry-agent
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: ferry-agent
subjects:
- kind: ServiceAccount
  name: ferry-agent
  namespace: ferry-system
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: ferry-agent-credential
  namespace: ferry-system
rules:
- apiGroups: [""]
  resources: ["secrets"]
  resourceNames: ["ferry-agent-credential"]
  verbs: ["get", "update", "patch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: ferry-agent-credential
  namespace: ferry-system
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: ferry-agent-credential
subjects:
- kind: ServiceAccount
  name: ferry-agent
---
apiVersion: v1
kind: Secret
metadata:
  name: ferry-bootstrap
  namespace: ferry-system
type: Opaque
stringData:
  token: bootstrap-123
---
apiVersion: v1
kind: Secret
metadata:
  name: ferry-agent-credential
  namespace: ferry-system
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: ferry-agent
  namespace: ferry-system
spec:
  replicas: 2
  selector:
    matchLabels:
      app: ferry-agent
  template:
    metadata:
      labels:
        app: ferry-agent
    spec:
      serviceAccountName: ferry-agent
      containers:
      - name: agent
        image: ghcr.io/ferry/agent:v0.1.0
        env:
        - name: FERRY_BOOTSTRAP_TOKEN
          valueFrom:
            secretKeyRef:
              name: ferry-bootstrap
              key: token
        resources:
          requests:
            cpu: 100m
            memory: 64Mi
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: ferry-admins
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: cluster-admin
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: Group
  name: ferry:admins
"#;

/// The objects of [`MANIFEST`], as kubectl names them.
const OBJECTS: [&str; 10] = [
    "namespace/ferry-system",
    "serviceaccount/ferry-agent",
    "clusterrole.rbac.authorization.k8s.io/ferry-agent",
    "clusterrolebinding.rbac.authorization.k8s.io/ferry-agent",
    "role.rbac.authorization.k8s.io/ferry-agent-credential",
    "rolebinding.rbac.authorization.k8s.io/ferry-agent-credential",
    "secret/ferry-bootstrap",
    "secret/ferry-agent-credential",
    "deployment.apps/ferry-agent",
    "clusterrolebinding.rbac.authorization.k8s.io/ferry-admins",
];

/// The kubectl under test: `FERRY_KUBECTL` or `kubectl` from `PATH`.
fn default_kubectl() -> PathBuf {
    std::env::var_os("FERRY_KUBECTL").map_or_else(|| PathBuf::from("kubectl"), PathBuf::from)
}

/// The kubectls to check: the default one, plus 1.27 where it is shipped
/// beside the real file of `kubectl` on `PATH`.
fn kubectls() -> Vec<(String, PathBuf)> {
    let mut all = vec![("default".to_string(), default_kubectl())];
    let older = std::env::var_os("PATH").and_then(|path| {
        let found = std::env::split_paths(&path).map(|d| d.join("kubectl")).find(|p| p.is_file())?;
        let versioned = std::fs::canonicalize(found).ok()?.parent()?.join("kubectl.1.27");
        versioned.is_file().then_some(versioned)
    });
    match older {
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
    fn new(bin: &Path, dir: &Path, name: &str, kubeconfig_yaml: &str) -> Self {
        let kubeconfig = dir.join(format!("{name}.kubeconfig"));
        std::fs::write(&kubeconfig, kubeconfig_yaml).expect("write kubeconfig");
        Self { bin: bin.to_path_buf(), kubeconfig, cache: dir.join(format!("cache-{name}")) }
    }

    async fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache)
            .args(args)
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        tokio::time::timeout(WAIT, cmd.output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} timed out"))
            .expect("run kubectl")
    }

    /// Runs kubectl; it must succeed without a warning. Returns stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "kubectl {args:?} failed ({}): {stderr}", out.status);
        let noise: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("No resources found")).collect();
        assert!(noise.is_empty(), "kubectl {args:?} printed on stderr: {stderr}");
        String::from_utf8(out.stdout).expect("utf8")
    }

    /// `kubectl auth can-i ARGS`: `yes` or `no`.
    async fn can_i(&self, args: &[&str]) -> String {
        let out = self.run(&[["auth", "can-i"].as_slice(), args].concat()).await;
        String::from_utf8(out.stdout).expect("utf8").trim().to_string()
    }

    /// Runs kubectl; it must fail. Returns stderr.
    async fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(!out.status.success(), "kubectl {args:?} unexpectedly succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path.to_str().expect("utf8 path").to_string()
}

/// Applies [`MANIFEST`] as the admin; returns a kubectl for the agent's
/// ServiceAccount, with a token from `kubectl create token`.
async fn onboard(api: &TestApiserver, admin: &Kubectl, dir: &Path) -> Kubectl {
    admin.ok(&["apply", "-f", &write(dir, "agent.yaml", MANIFEST)]).await;
    service_account(api, admin, dir, "ferry-agent").await
}

/// A kubectl for a ServiceAccount in `ferry-system`, with a fresh token.
async fn service_account(api: &TestApiserver, admin: &Kubectl, dir: &Path, name: &str) -> Kubectl {
    let token = admin.ok(&["create", "token", name, "-n", "ferry-system"]).await;
    let kubeconfig = api.kubeconfig_with_token(token.trim()).expect("kubeconfig");
    Kubectl::new(&admin.bin, dir, name, &kubeconfig)
}

/// A kube-rs client for a kubeconfig.
async fn client(kubeconfig: &Path) -> kube::Client {
    let yaml = std::fs::read_to_string(kubeconfig).expect("kubeconfig");
    let kc = kube::config::Kubeconfig::from_yaml(&yaml).expect("parse kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.expect("config");
    kube::Client::try_from(config).expect("client")
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_manifest_applies_with_every_kubectl() {
    for (tag, bin) in kubectls() {
        let api = TestApiserver::builder().strict_rbac().start().await.expect("start");
        let dir = tempdir();
        let k = Kubectl::new(&bin, dir.path(), &tag, &api.kubeconfig_yaml());
        let manifest = write(dir.path(), "agent.yaml", MANIFEST);
        let lines = |out: String| out.lines().map(str::to_string).collect::<Vec<_>>();
        let expect = |suffix: &str| OBJECTS.map(|o| format!("{o} {suffix}")).to_vec();

        let dry = lines(k.ok(&["apply", "--dry-run=client", "-f", &manifest]).await);
        assert_eq!(dry, expect("created (dry run)"), "{tag}");
        assert_eq!(lines(k.ok(&["apply", "-f", &manifest]).await), expect("created"), "{tag}");
        let server_dry = lines(k.ok(&["apply", "--dry-run=server", "-f", &manifest]).await);
        assert_eq!(server_dry.len(), OBJECTS.len(), "{tag}: {server_dry:?}");
        assert!(server_dry.iter().all(|l| l.ends_with("(server dry run)")), "{tag}: {server_dry:?}");
        // A Secret given as `stringData` is "configured" on every apply, as
        // with a real apiserver (kubernetes/kubernetes#87736): the server
        // never returns `stringData`, so kubectl's patch always sets it.
        let again = lines(k.ok(&["apply", "-f", &manifest]).await);
        let want: Vec<String> = OBJECTS
            .iter()
            .map(|o| {
                let verdict = if *o == "secret/ferry-bootstrap" { "configured" } else { "unchanged" };
                format!("{o} {verdict}")
            })
            .collect();
        assert_eq!(again, want, "{tag}");

        let table = k.ok(&["get", "sa,secrets,deploy,roles,rolebindings", "-n", "ferry-system"]).await;
        for want in [
            "serviceaccount/ferry-agent",
            "secret/ferry-agent-credential",
            "secret/ferry-bootstrap",
            "deployment.apps/ferry-agent   0/2",
            "role.rbac.authorization.k8s.io/ferry-agent-credential",
            "rolebinding.rbac.authorization.k8s.io/ferry-agent-credential   Role/ferry-agent-credential",
        ] {
            assert!(table.contains(want), "{tag}: {want:?} missing from\n{table}");
        }
        let headers: Vec<&str> = table.lines().filter(|l| l.starts_with("NAME")).collect();
        assert_eq!(headers.len(), 5, "{tag}: one table per kind\n{table}");
        assert!(headers.iter().all(|h| h.contains("AGE") || h.contains("CREATED AT")), "{table}");
        let nodes = k.ok(&["get", "no"]).await;
        assert!(nodes.starts_with("NAME") && nodes.contains("test-node   Ready"), "{tag}: {nodes}");
        let cluster = k.ok(&["get", "clusterroles,clusterrolebindings", "-o", "name"]).await;
        for want in [
            "clusterrole.rbac.authorization.k8s.io/ferry-agent",
            "clusterrole.rbac.authorization.k8s.io/cluster-admin",
            "clusterrole.rbac.authorization.k8s.io/view",
            "clusterrolebinding.rbac.authorization.k8s.io/ferry-admins",
        ] {
            assert!(cluster.contains(want), "{tag}: {want:?} missing from\n{cluster}");
        }
        let jsonpath = |what: &'static str, name: &'static str, path: &'static str| {
            let args = ["get", what, name, "-n", "ferry-system", "-o"];
            let k = &k;
            async move { k.ok(&[args.as_slice(), &[&format!("jsonpath={path}")]].concat()).await }
        };
        assert_eq!(jsonpath("deploy", "ferry-agent", "{.spec.replicas}/{.metadata.generation}").await, "2/1");
        // `stringData` is merged into `data` (base64) and never returned.
        assert_eq!(jsonpath("secret", "ferry-bootstrap", "{.data.token}").await, "Ym9vdHN0cmFwLTEyMw==");
        assert_eq!(jsonpath("secret", "ferry-bootstrap", "{.stringData}").await, "");
        assert_eq!(jsonpath("secret", "ferry-agent-credential", "{.type}").await, "Opaque");
        let missing = k.fails(&["get", "deploy", "nope", "-n", "ferry-system"]).await;
        assert!(missing.contains("deployments.apps \"nope\" not found"), "{tag}: {missing}");
        api.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_fields_are_refused_as_kube_apiserver_refuses_them() {
    let api = TestApiserver::start().await.expect("start");
    let dir = tempdir();
    let deployment = MANIFEST
        .split("---\n")
        .find(|doc| doc.contains("kind: Deployment"))
        .expect("the deployment")
        .replace("namespace: ferry-system", "namespace: default");
    let bad =
        write(dir.path(), "bad.yaml", &deployment.replace("  replicas: 2\n", "  replicas: 2\n  foo: true\n"));
    let typo = write(dir.path(), "typo.yaml", &deployment.replace("replicas: 2", "replicas: two"));
    for (tag, bin) in kubectls() {
        let k = Kubectl::new(&bin, dir.path(), &tag, &api.kubeconfig_yaml());
        let err = k.fails(&["apply", "-f", &bad]).await;
        assert!(
            err.contains("Deployment in version \"v1\" cannot be handled as a Deployment: strict decoding error: unknown field \"spec.foo\""),
            "{tag}: {err}"
        );
        let err = k.fails(&["apply", "-f", &typo]).await;
        assert!(
            err.contains("cannot unmarshal string into Go struct field Deployment.spec.replicas"),
            "{tag}: {err}"
        );
    }
    let warned = Kubectl::new(&default_kubectl(), dir.path(), "warn", &api.kubeconfig_yaml())
        .run(&["apply", "--validate=warn", "-f", &bad])
        .await;
    let stderr = String::from_utf8_lossy(&warned.stderr);
    assert!(warned.status.success(), "{stderr}");
    assert!(stderr.contains("unknown field \"spec.foo\""), "a Warning header: {stderr}");
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_token_works_for_what_its_rbac_allows() {
    // Demo mode lets impersonated users do anything, but never a
    // ServiceAccount: its requests are decided by RBAC alone.
    let api = TestApiserver::start().await.expect("start");
    let dir = tempdir();
    let admin = Kubectl::new(&default_kubectl(), dir.path(), "admin", &api.kubeconfig_yaml());
    let agent = onboard(&api, &admin, dir.path()).await;

    let missing = admin.fails(&["create", "token", "nope", "-n", "ferry-system"]).await;
    assert!(missing.contains("serviceaccounts \"nope\" not found"), "{missing}");
    let short = admin.fails(&["create", "token", "ferry-agent", "-n", "ferry-system", "--duration=5m"]).await;
    assert!(short.contains("may not specify a duration less than 10 minutes"), "{short}");

    let whoami: Value =
        serde_json::from_str(&agent.ok(&["auth", "whoami", "-o", "json"]).await).expect("whoami json");
    assert_eq!(whoami["status"]["userInfo"]["username"], AGENT);
    assert_eq!(
        whoami["status"]["userInfo"]["groups"],
        json!(["system:serviceaccounts", "system:serviceaccounts:ferry-system", "system:authenticated"])
    );
    assert!(agent.ok(&["get", "nodes", "-o", "name"]).await.contains("node/test-node"));
    assert!(agent.ok(&["get", "--raw", "/version"]).await.contains("\"gitVersion\":\"v1.33.0\""));
    assert_eq!(agent.ok(&["get", "--raw", "/readyz"]).await, "ok");
    assert_eq!(agent.ok(&["get", "--raw", "/livez"]).await, "ok");

    // Its own Secret: get, update (PUT), patch.
    let ns = ["-n", "ferry-system"];
    let cred =
        agent.ok(&[["get", "secret", "ferry-agent-credential", "-o", "json"].as_slice(), &ns].concat()).await;
    let mut cred: Value = serde_json::from_str(&cred).expect("secret json");
    cred["data"] = json!({ "credential": "c2VjcmV0" });
    let file = write(dir.path(), "cred.json", &cred.to_string());
    assert_eq!(agent.ok(&["replace", "-f", &file]).await.trim(), "secret/ferry-agent-credential replaced");
    let annotate = ["annotate", "secret", "ferry-agent-credential", "ferry.dev/seen=yes"];
    assert_eq!(
        agent.ok(&[annotate.as_slice(), &ns].concat()).await.trim(),
        "secret/ferry-agent-credential annotated"
    );

    // Everything else: the real 403s.
    let bootstrap =
        admin.ok(&[["get", "secret", "ferry-bootstrap", "-o", "json"].as_slice(), &ns].concat()).await;
    let file = write(dir.path(), "bootstrap.json", &bootstrap);
    let err = agent.fails(&["replace", "-f", &file]).await;
    assert!(
        err.contains(&format!("secrets \"ferry-bootstrap\" is forbidden: User \"{AGENT}\" cannot update resource \"secrets\" in API group \"\" in the namespace \"ferry-system\"")),
        "{err}"
    );
    let err = agent.fails(&[["get", "secret", "ferry-bootstrap"].as_slice(), &ns].concat()).await;
    assert!(
        err.contains(&format!(
            "secrets \"ferry-bootstrap\" is forbidden: User \"{AGENT}\" cannot get resource"
        )),
        "{err}"
    );
    let err = agent.fails(&[["delete", "secret", "ferry-agent-credential"].as_slice(), &ns].concat()).await;
    assert!(err.contains("cannot delete resource \"secrets\""), "{err}");
    let err = agent.fails(&["get", "pods", "-A"]).await;
    assert!(
        err.contains(&format!("pods is forbidden: User \"{AGENT}\" cannot list resource \"pods\" in API group \"\" at the cluster scope")),
        "{err}"
    );
    let err = agent.fails(&["get", "deploy", "-n", "ferry-system"]).await;
    assert!(err.contains("deployments.apps is forbidden"), "{err}");
    admin.ok(&["get", "pods", "-A", "--as", "alice"]).await; // demo mode, for humans

    let seen =
        wait_for(&api, "the agent's node list", |r| r.path == "/api/v1/nodes" && r.status == Some(200)).await;
    assert_eq!(seen.authenticated_user.as_deref(), Some(AGENT));
    assert_eq!(seen.user.as_deref(), Some(AGENT));
    assert!(!seen.impersonated);
    assert!(seen.header("authorization").is_some_and(|a| a.starts_with("Bearer ey")), "a JWT-shaped token");

    // Deleting the ServiceAccount invalidates its tokens.
    admin.ok(&["delete", "sa", "ferry-agent", "-n", "ferry-system"]).await;
    let err = agent.fails(&["get", "nodes"]).await;
    assert!(err.contains("You must be logged in to the server"), "401: {err}");
    api.shutdown().await;
}

/// The ClusterRole of [`MANIFEST`] without `groups` in its impersonation rule.
fn without_groups() -> String {
    MANIFEST.replace(
        "resources: [\"users\", \"groups\", \"serviceaccounts\"]",
        "resources: [\"users\", \"serviceaccounts\"]",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impersonation_needs_the_impersonate_rules_of_the_manifest() {
    let api = TestApiserver::builder().strict_rbac().start().await.expect("start");
    let dir = tempdir();
    let admin = Kubectl::new(&default_kubectl(), dir.path(), "admin", &api.kubeconfig_yaml());
    let agent = onboard(&api, &admin, dir.path()).await;
    admin
        .ok(&["create", "rolebinding", "alice-view", "--clusterrole=view", "--user=alice", "-n", "default"])
        .await;

    let as_alice = ["--as", "alice", "--as-group", "dev", "--as-uid", "u-1"];
    agent.ok(&[["get", "pods", "-n", "default"].as_slice(), &as_alice].concat()).await;
    let seen = wait_for(&api, "alice's list", |r| {
        r.path == "/api/v1/namespaces/default/pods" && r.user.as_deref() == Some("alice")
    })
    .await;
    assert_eq!(seen.status, Some(200));
    assert_eq!(seen.authenticated_user.as_deref(), Some(AGENT));
    assert!(seen.impersonated);
    assert_eq!(seen.groups, ["dev", "system:authenticated"]);
    assert_eq!(seen.uid, "u-1");
    assert_eq!(seen.header("impersonate-user"), Some("alice"));
    // Strict: alice gets what RBAC gives her (view), no more.
    let err = agent.fails(&[["get", "secrets", "-n", "default"].as_slice(), &as_alice].concat()).await;
    assert!(err.contains("secrets is forbidden: User \"alice\" cannot list resource \"secrets\""), "{err}");

    // Extra values: `userextras/scopes` is granted, other keys are not.
    let kube = client(&agent.kubeconfig).await;
    let get = |key: &str| {
        http::Request::get("/api/v1/namespaces/default/configmaps")
            .header("Impersonate-User", "alice")
            .header(format!("Impersonate-Extra-{key}"), "read")
            .body(Vec::new())
            .expect("request")
    };
    kube.request_text(get("Scopes")).await.expect("scopes may be impersonated");
    match kube.request_text(get("Other")).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 403);
            assert_eq!(
                s.message,
                format!(
                    "userextras.authentication.k8s.io \"read\" is forbidden: User \"{AGENT}\" cannot impersonate resource \"userextras/other\" in API group \"authentication.k8s.io\" at the cluster scope"
                )
            );
        }
        other => panic!("expected a 403, got {other:?}"),
    }

    // A manifest missing `groups` breaks impersonating groups, not users.
    // (`get --raw`: kubectl's discovery, refused the same way, would only
    // print "Error from server (Forbidden): unknown", as with a real
    // apiserver, since it does not decode error bodies.)
    admin.ok(&["apply", "-f", &write(dir.path(), "agent.yaml", &without_groups())]).await;
    let pods = ["get", "--raw", "/api/v1/namespaces/default/pods"];
    let err = agent.fails(&[pods.as_slice(), &as_alice].concat()).await;
    assert!(
        err.contains(&format!("groups \"dev\" is forbidden: User \"{AGENT}\" cannot impersonate resource \"groups\" in API group \"\" at the cluster scope")),
        "{err}"
    );
    agent.ok(&["get", "pods", "-n", "default", "--as", "alice"]).await;

    // A ServiceAccount without the ClusterRole may impersonate no one.
    admin.ok(&["create", "serviceaccount", "intruder", "-n", "ferry-system"]).await;
    let intruder = service_account(&api, &admin, dir.path(), "intruder").await;
    let err = intruder.fails(&["get", "pods", "--as", "alice"]).await;
    assert!(err.contains("Error from server (Forbidden): unknown"), "discovery refused: {err}");
    let err = intruder.fails(&[pods.as_slice(), &["--as", "alice"]].concat()).await;
    assert!(
        err.contains("users \"alice\" is forbidden: User \"system:serviceaccount:ferry-system:intruder\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"),
        "{err}"
    );
    let denied = wait_for(&api, "the intruder's 403", |r| {
        r.authenticated_user.as_deref() == Some("system:serviceaccount:ferry-system:intruder")
            && r.status == Some(403)
    })
    .await;
    assert_eq!(denied.user, None, "the impersonation never took effect");
    api.shutdown().await;
}

fn review(user: &str, groups: &[&str], attributes: Value) -> SubjectAccessReview {
    let mut spec = json!({ "user": user, "groups": groups });
    let key = if attributes.get("path").is_some() { "nonResourceAttributes" } else { "resourceAttributes" };
    spec[key] = attributes;
    serde_json::from_value(json!({ "spec": spec })).expect("review")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subject_access_reviews_and_can_i_decide_like_requests() {
    let api = TestApiserver::builder().strict_rbac().start().await.expect("start");
    let dir = tempdir();
    let admin = Kubectl::new(&default_kubectl(), dir.path(), "admin", &api.kubeconfig_yaml());
    let agent = onboard(&api, &admin, dir.path()).await;
    admin
        .ok(&["create", "rolebinding", "alice-view", "--clusterrole=view", "--user=alice", "-n", "default"])
        .await;

    let reviews = Api::<SubjectAccessReview>::all(client(&agent.kubeconfig).await);
    let ask = |r: SubjectAccessReview| {
        let reviews = reviews.clone();
        async move {
            let status =
                reviews.create(&PostParams::default(), &r).await.expect("review").status.expect("status");
            (status.allowed, status.reason.unwrap_or_default())
        }
    };
    let (allowed, reason) = ask(review(
        "bob",
        &["ferry:admins"],
        json!({"verb": "impersonate", "resource": "users", "name": "carol"}),
    ))
    .await;
    assert!(allowed);
    assert_eq!(
        reason,
        "RBAC: allowed by ClusterRoleBinding \"ferry-admins\" of ClusterRole \"cluster-admin\" to Group \"ferry:admins\""
    );
    assert!(
        !ask(review("bob", &[], json!({"verb": "impersonate", "resource": "users", "name": "carol"})))
            .await
            .0
    );
    assert!(
        ask(review("alice", &[], json!({"verb": "list", "resource": "pods", "namespace": "default"})))
            .await
            .0
    );
    assert!(
        !ask(review("alice", &[], json!({"verb": "list", "resource": "pods", "namespace": "kube-system"})))
            .await
            .0
    );
    assert!(
        !ask(review("alice", &[], json!({"verb": "get", "resource": "secrets", "namespace": "default"})))
            .await
            .0
    );
    assert!(ask(review(AGENT, &[], json!({"verb": "update", "resource": "secrets", "namespace": "ferry-system", "name": "ferry-agent-credential"}))).await.0);
    assert!(
        ask(review("nobody", &["system:authenticated"], json!({"path": "/version", "verb": "get"}))).await.0
    );
    let neither: SubjectAccessReview =
        serde_json::from_value(json!({"spec": {"user": "bob"}})).expect("review");
    match reviews.create(&PostParams::default(), &neither).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 422, "{s:?}"),
        other => panic!("expected 422, got {other:?}"),
    }

    admin.ok(&["create", "serviceaccount", "intruder", "-n", "ferry-system"]).await;
    let intruder = service_account(&api, &admin, dir.path(), "intruder").await;
    match Api::<SubjectAccessReview>::all(client(&intruder.kubeconfig).await)
        .create(&PostParams::default(), &review("bob", &[], json!({"verb": "get", "resource": "pods"})))
        .await
    {
        Err(kube::Error::Api(s)) => assert_eq!(
            s.message,
            "subjectaccessreviews.authorization.k8s.io is forbidden: User \"system:serviceaccount:ferry-system:intruder\" cannot create resource \"subjectaccessreviews\" in API group \"authorization.k8s.io\" at the cluster scope"
        ),
        other => panic!("expected a 403, got {other:?}"),
    }

    for (tag, bin) in kubectls() {
        let admin = Kubectl::new(&bin, dir.path(), &format!("admin-{tag}"), &api.kubeconfig_yaml());
        let agent = Kubectl {
            bin: bin.clone(),
            kubeconfig: agent.kubeconfig.clone(),
            cache: dir.path().join(format!("agent-{tag}")),
        };
        assert_eq!(admin.can_i(&["list", "pods", "-n", "default", "--as", "alice"]).await, "yes", "{tag}");
        assert_eq!(admin.can_i(&["get", "secrets", "-n", "default", "--as", "alice"]).await, "no", "{tag}");
        assert_eq!(agent.can_i(&["impersonate", "users"]).await, "yes", "{tag}");
        assert_eq!(
            agent.can_i(&["update", "secret/ferry-agent-credential", "-n", "ferry-system"]).await,
            "yes",
            "{tag}"
        );
        assert_eq!(
            agent.can_i(&["update", "secret/ferry-bootstrap", "-n", "ferry-system"]).await,
            "no",
            "{tag}"
        );
        assert_eq!(agent.can_i(&["get", "/version"]).await, "yes", "{tag}");
    }
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_toggle_flips_readyz() {
    let api = TestApiserver::start().await.expect("start");
    let dir = tempdir();
    let k = Kubectl::new(&default_kubectl(), dir.path(), "k", &api.kubeconfig_yaml());
    api.set_readyz(false);
    let err = k.fails(&["get", "--raw", "/readyz"]).await;
    assert!(err.contains("[-]etcd failed: reason withheld") && err.contains("readyz check failed"), "{err}");
    assert_eq!(k.ok(&["get", "--raw", "/livez"]).await, "ok");
    api.set_readyz(true);
    assert_eq!(k.ok(&["get", "--raw", "/readyz"]).await, "ok");
    api.shutdown().await;

    // The binary, strict, through `PUT /_test/health`.
    let kubeconfig = dir.path().join("binary.kubeconfig");
    let mut child = Command::new(env!("CARGO_BIN_EXE_test-apiserver"))
        .args(["--listen", "127.0.0.1:0", "--strict-rbac", "--kubeconfig-out"])
        .arg(&kubeconfig)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn test-apiserver");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let ready = tokio::time::timeout(WAIT, lines.next_line()).await.expect("ready in time").expect("read");
    assert!(ready.is_some_and(|l| l.starts_with("test-apiserver ready: ")));
    let k = Kubectl::new(
        &default_kubectl(),
        dir.path(),
        "binary",
        &std::fs::read_to_string(&kubeconfig).expect("kubeconfig"),
    );
    let down = write(dir.path(), "down.json", r#"{"readyz": false, "livez": false}"#);
    k.ok(&["replace", "--raw", "/_test/health", "-f", &down]).await;
    for check in ["readyz", "livez", "healthz"] {
        let err = k.fails(&["get", "--raw", &format!("/{check}")]).await;
        assert!(err.contains(&format!("{check} check failed")), "{err}");
    }
    k.ok(&["replace", "--raw", "/_test/health", "-f", &write(dir.path(), "up.json", r#"{"readyz": true}"#)])
        .await;
    assert_eq!(k.ok(&["get", "--raw", "/readyz"]).await, "ok");
    assert!(
        k.fails(&["get", "--raw", "/livez"]).await.contains("livez check failed"),
        "livez left as it was"
    );
    // Strict: no demo mode for impersonated users.
    let err = k.fails(&["get", "configmaps", "--as", "alice"]).await;
    assert!(
        err.contains("configmaps is forbidden: User \"alice\" cannot list resource \"configmaps\""),
        "{err}"
    );
    // Only the admin itself may use the test endpoints.
    k.ok(&["create", "namespace", "ferry-system"]).await;
    k.ok(&["create", "serviceaccount", "ferry-agent", "-n", "ferry-system"]).await;
    k.ok(&[
        "create",
        "clusterrolebinding",
        "agent-admin",
        "--clusterrole=cluster-admin",
        "--serviceaccount=ferry-system:ferry-agent",
    ])
    .await;
    let token = k.ok(&["create", "token", "ferry-agent", "-n", "ferry-system"]).await;
    let admin_yaml = std::fs::read_to_string(&kubeconfig).expect("kubeconfig");
    let admin_token = admin_yaml.lines().find_map(|l| l.trim().strip_prefix("token: ")).expect("admin token");
    let agent =
        Kubectl::new(&default_kubectl(), dir.path(), "agent", &admin_yaml.replace(admin_token, token.trim()));
    assert!(agent.ok(&["get", "pods", "-A"]).await.is_empty(), "cluster-admin through a binding");
    let err = agent.fails(&["replace", "--raw", "/_test/health", "-f", &down]).await;
    assert!(err.contains(&format!("forbidden: User \"{AGENT}\" cannot put path \"/_test/health\"")), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_writes_cannot_grant_more_than_the_writer_holds() {
    let api = TestApiserver::builder().strict_rbac().start().await.expect("start");
    let dir = tempdir();
    let admin = Kubectl::new(&default_kubectl(), dir.path(), "admin", &api.kubeconfig_yaml());
    admin.ok(&["apply", "-f", &write(dir.path(), "agent.yaml", MANIFEST)]).await;
    admin.ok(&["create", "serviceaccount", "deployer", "-n", "ferry-system"]).await;
    admin
        .ok(&[
            "create",
            "role",
            "rbac-writer",
            "-n",
            "ferry-system",
            "--verb=create,get,list",
            "--resource=roles,rolebindings,configmaps",
        ])
        .await;
    admin
        .ok(&[
            "create",
            "rolebinding",
            "deployer",
            "-n",
            "ferry-system",
            "--role=rbac-writer",
            "--serviceaccount=ferry-system:deployer",
        ])
        .await;
    let deployer = service_account(&api, &admin, dir.path(), "deployer").await;
    let user = "system:serviceaccount:ferry-system:deployer";
    let groups = "groups=[\"system:serviceaccounts\" \"system:serviceaccounts:ferry-system\" \"system:authenticated\"]";
    let ns = ["-n", "ferry-system"];

    // What it holds it may pass on; more it may not, by Role or by binding.
    let ok = ["create", "role", "cm-reader", "--verb=get", "--resource=configmaps"];
    assert_eq!(
        deployer.ok(&[ok.as_slice(), &ns].concat()).await.trim(),
        "role.rbac.authorization.k8s.io/cm-reader created"
    );
    let err = deployer
        .fails(
            &[["create", "role", "secret-reader", "--verb=get", "--resource=secrets"].as_slice(), &ns]
                .concat(),
        )
        .await;
    assert!(
        err.contains(&format!("roles.rbac.authorization.k8s.io \"secret-reader\" is forbidden: user \"{user}\" ({groups}) is attempting to grant RBAC permissions not currently held:\n{{APIGroups:[\"\"], Resources:[\"secrets\"], Verbs:[\"get\"]}}")),
        "{err}"
    );
    let bind = [
        "create",
        "rolebinding",
        "grab",
        "--clusterrole=cluster-admin",
        "--serviceaccount=ferry-system:deployer",
    ];
    let err = deployer.fails(&[bind.as_slice(), &ns].concat()).await;
    assert!(
        err.contains(&format!("rolebindings.rbac.authorization.k8s.io \"grab\" is forbidden: user \"{user}\" ({groups}) is attempting to grant RBAC permissions not currently held:")),
        "{err}"
    );
    let bind = ["create", "rolebinding", "share", "--role=cm-reader", "--user=alice"];
    deployer.ok(&[bind.as_slice(), &ns].concat()).await;
    // `bind` on a role lets one bind it without holding it.
    admin
        .ok(&[
            "create",
            "role",
            "binder",
            "-n",
            "ferry-system",
            "--verb=bind",
            "--resource=clusterroles",
            "--resource-name=view",
        ])
        .await;
    admin
        .ok(&[
            "create",
            "rolebinding",
            "binder",
            "-n",
            "ferry-system",
            "--role=binder",
            "--serviceaccount=ferry-system:deployer",
        ])
        .await;
    let bind = ["create", "rolebinding", "viewers", "--clusterrole=view", "--group=dev"];
    deployer.ok(&[bind.as_slice(), &ns].concat()).await;
    api.shutdown().await;
}

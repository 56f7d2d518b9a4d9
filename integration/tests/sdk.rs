//! The Rust SDK as programs use it, against a real hub, agent and test
//! apiserver: a `kube::Client` from `Hub::kube_client` lists, watches (a
//! kube-runtime watcher), reads logs and execs through the hub as the hub
//! caller; and every example in `client-sdk/examples` runs and prints what
//! it promises.

mod common;

use std::process::Command;

use common::*;
use ferry_client_sdk::{Hub, HubConfig};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::Api;
use kube::api::{AttachParams, ListParams, LogParams, PostParams};
use kube_runtime::{WatchStreamExt, watcher};
use tokio::io::AsyncReadExt;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

fn configmap(name: &str) -> ConfigMap {
    serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "data": {"from": "sdk"}}))
        .expect("configmap")
}

#[test]
fn kube_client_through_the_hub_lists_watches_reads_logs_and_execs() {
    let env = Env::start(None);
    let admin = env.admin_kubeconfig();
    let rt = runtime();
    let client = rt.block_on(async {
        let hub = Hub::connect(&HubConfig::load(&admin).expect("admin kubeconfig")).await.expect("connect");
        hub.kube_client("edge").await.expect("kube client")
    });

    rt.block_on(async {
        let namespaces =
            Api::<Namespace>::all(client.clone()).list(&ListParams::default()).await.expect("list");
        assert!(namespaces.items.iter().any(|n| n.metadata.name.as_deref() == Some("default")));

        // A kube-runtime watcher sees objects as they are created.
        let configmaps = Api::<ConfigMap>::namespaced(client.clone(), "default");
        configmaps.create(&PostParams::default(), &configmap("sdk-before")).await.expect("create");
        let mut applied =
            std::pin::pin!(watcher(configmaps.clone(), watcher::Config::default()).applied_objects());
        let mut seen = Vec::new();
        let mut wait_for = async |name: &str, seen: &mut Vec<String>| {
            while !seen.iter().any(|n| n == name) {
                let next = tokio::time::timeout(READY_TIMEOUT, applied.next()).await.expect("in time");
                let cm = next.expect("stream open").expect("watch event");
                seen.push(cm.metadata.name.unwrap_or_default());
            }
        };
        wait_for("sdk-before", &mut seen).await;
        configmaps.create(&PostParams::default(), &configmap("sdk-during")).await.expect("create");
        wait_for("sdk-during", &mut seen).await;
    });

    // A pod: its log, and a command run in it.
    let pods = Api::<Pod>::namespaced(client, "default");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "box"},
        "spec": {"containers": [{"name": "box", "image": "busybox"}]}
    }))
    .expect("pod");
    rt.block_on(pods.create(&PostParams::default(), &pod)).expect("create pod");
    env.append_log("default", "box", "hello from the log");
    rt.block_on(async {
        let log = pods.logs("box", &LogParams::default()).await.expect("logs");
        assert!(log.contains("hello from the log"), "{log:?}");

        let params = AttachParams::default().stdin(false).stdout(true).stderr(false);
        let mut attached =
            pods.exec("box", ["echo", "hello", "through", "the", "hub"], &params).await.expect("exec");
        let mut out = String::new();
        attached.stdout().expect("stdout").read_to_string(&mut out).await.expect("read");
        let status = attached.take_status().expect("status").await.expect("a status");
        attached.join().await.expect("join");
        assert_eq!(out, "hello through the hub\n");
        assert_eq!(status.status.as_deref(), Some("Success"), "{status:?}");
    });

    // The apiserver saw the hub's caller, impersonated by the agent.
    let recorded = env.recorded();
    let exec = recorded
        .iter()
        .find(|r| r["path"].as_str().is_some_and(|p| p.ends_with("/pods/box/exec")))
        .expect("the exec reached the apiserver");
    assert_eq!(exec["user"], "ferry-admin", "{exec}");
    let watches: Vec<&serde_json::Value> =
        recorded.iter().filter(|r| r["query"].as_str().is_some_and(|q| q.contains("watch=true"))).collect();
    assert!(!watches.is_empty() && watches.iter().all(|r| r["user"] == "ferry-admin"), "{watches:?}");
}

/// Runs an example binary with the env's admin kubeconfig.
fn example(env: &Env, name: &str) -> Command {
    let mut cmd = Command::new(bin(&format!("examples/{name}")));
    cmd.env("FERRY_KUBECONFIG", env.admin_kubeconfig()).env_remove("RUST_LOG");
    cmd
}

fn run_example(env: &Env, name: &str, args: &[&str]) -> String {
    let out = example(env, name).args(args).output().expect("run example");
    assert!(out.status.success(), "{name} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf8")
}

#[test]
fn the_examples_run() {
    let mut env = Env::start(None);
    env.ferryctl_ok(&["wait", "edge", "--for", "ready", "--timeout", "30s"]);
    env.ferryctl_ok(&["register", "later"]);

    let out = run_example(&env, "list_clusters", &[]);
    assert!(out.lines().any(|l| l.starts_with("edge Ready v1.") && l.ends_with("nodes=1/1")), "{out}");
    assert!(out.lines().any(|l| l.starts_with("later Offline")), "{out}");

    let kc = env.user_kubeconfig("alice", &["dev"]);
    kubectl_ok(&kc, &["run", "web", "--image=nginx", "--restart=Never"]);
    let out = run_example(&env, "pods_across_clusters", &[]);
    assert_eq!(out, "edge default/web\n", "Ready clusters only");

    let mut reflector = Proc::spawn("reflector example", {
        let mut cmd = example(&env, "reflector");
        cmd.arg("edge");
        cmd
    });
    kubectl_ok(&kc, &["create", "configmap", "from-kubectl"]);
    reflector.wait_line("edge configmaps: from-kubectl", READY_TIMEOUT);
    kubectl_ok(&kc, &["create", "configmap", "second"]);
    reflector.wait_line("edge configmaps: from-kubectl,second", READY_TIMEOUT);

    let mut phases = Proc::spawn("watch_phases example", example(&env, "watch_phases"));
    phases.wait_line("edge Ready", READY_TIMEOUT);
    phases.wait_line("later Offline no agent has connected yet", READY_TIMEOUT);
    env.stop_agent();
    phases.wait_line("edge Offline no agent is connected", READY_TIMEOUT);
    env.ferryctl_ok(&["delete", "later"]);
    phases.wait_line("later deleted", READY_TIMEOUT);
}

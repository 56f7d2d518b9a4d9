//! End to end: test-apiserver, ferry-hub and ferry-agent as real processes
//! on loopback, driven by the real kubectl with kubeconfigs from ferryctl.

mod common;

use common::*;

fn recorded_for<'a>(recorded: &'a [serde_json::Value], path_part: &str) -> Vec<&'a serde_json::Value> {
    recorded.iter().filter(|r| r["path"].as_str().is_some_and(|p| p.contains(path_part))).collect()
}

#[test]
fn kubectl_crud_through_the_hub() {
    let env = Env::start(None);
    let kc = env.user_kubeconfig("alice", &["dev"]);

    let ns = kubectl_ok(&kc, &["get", "namespaces"]);
    assert!(ns.contains("default") && ns.contains("kube-system"), "{ns}");

    let out = kubectl_ok(&kc, &["create", "configmap", "app", "--from-literal=color=blue"]);
    assert!(out.contains("configmap/app created"), "{out}");
    let yaml = kubectl_ok(&kc, &["get", "configmap", "app", "-o", "yaml"]);
    assert!(yaml.contains("color: blue") && yaml.contains("name: app"), "{yaml}");

    let manifest = env.path("cm.yaml");
    let doc = |v: &str| {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: applied\ndata:\n  key: \"{v}\"\n")
    };
    std::fs::write(&manifest, doc("1")).expect("write");
    let m = manifest.to_str().expect("utf8");
    assert!(kubectl_ok(&kc, &["apply", "-f", m]).contains("configmap/applied created"));
    std::fs::write(&manifest, doc("2")).expect("write");
    assert!(kubectl_ok(&kc, &["apply", "-f", m]).contains("configmap/applied configured"));
    assert_eq!(kubectl_ok(&kc, &["get", "configmap", "applied", "-o", "jsonpath={.data.key}"]), "2");

    assert!(kubectl_ok(&kc, &["delete", "configmap", "app"]).contains("\"app\" deleted"));
    let gone = kubectl(&kc, &["get", "configmap", "app"]);
    assert!(!gone.status.success());
    assert!(String::from_utf8_lossy(&gone.stderr).contains("NotFound"), "{gone:?}");

    // Every configmap request reached the apiserver as alice in group dev.
    let recorded = env.recorded();
    let cm = recorded_for(&recorded, "/configmaps");
    assert!(cm.len() >= 6, "expected the configmap requests to be recorded: {cm:?}");
    for r in cm {
        assert_eq!(r["user"], "alice", "{r}");
        assert!(r["groups"].as_array().expect("groups").iter().any(|g| g == "dev"), "{r}");
    }
}

#[test]
fn watch_and_logs_follow_stream_as_events_happen() {
    let env = Env::start(None);
    let kc = env.user_kubeconfig("alice", &["dev"]);

    kubectl_ok(&kc, &["create", "configmap", "before"]);
    let mut watch = kubectl_spawn(&kc, &["get", "configmaps", "-w", "-o", "name"]);
    watch.wait_line("configmap/before", READY_TIMEOUT);
    kubectl_ok(&kc, &["create", "configmap", "during"]);
    watch.wait_line("configmap/during", READY_TIMEOUT);
    kubectl_ok(&kc, &["label", "configmap", "during", "round=2"]);
    watch.wait_nth_line("configmap/during", 2, READY_TIMEOUT);
    watch.kill();

    kubectl_ok(&kc, &["run", "web", "--image=nginx", "--restart=Never"]);
    env.append_log("default", "web", "first line");
    let mut logs = kubectl_spawn(&kc, &["logs", "-f", "web"]);
    logs.wait_line("first line", READY_TIMEOUT);
    // Appended only after the first one arrived: proves the body streams.
    env.append_log("default", "web", "second line");
    logs.wait_line("second line", READY_TIMEOUT);
    logs.kill();
}

#[test]
fn the_apiserver_sees_only_the_hub_issued_identity() {
    let rbac = rbac_json(&[(&["group:dev"], &["get", "list", "watch"], &["configmaps"], &["default"])]);
    let env = Env::start(Some(rbac));
    let kc = env.user_kubeconfig("alice", &["dev", "qa"]);

    let whoami = kubectl_ok(&kc, &["auth", "whoami", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&whoami).expect("whoami json");
    assert_eq!(v["status"]["userInfo"]["username"], "alice", "{v}");
    let groups = v["status"]["userInfo"]["groups"].as_array().expect("groups");
    assert!(groups.iter().any(|g| g == "dev") && groups.iter().any(|g| g == "qa"), "{v}");

    // Allowed by RBAC.
    kubectl_ok(&kc, &["get", "configmaps"]);
    // Forbidden by the child cluster's RBAC: the apiserver's 403 comes through.
    let denied = kubectl(&kc, &["get", "pods"]);
    assert!(!denied.status.success());
    let err = String::from_utf8_lossy(&denied.stderr);
    assert!(err.contains("Forbidden") && err.contains("alice"), "{err}");

    // A caller's own Authorization header never reaches the apiserver: the
    // request runs as alice.
    let spoof = kubectl(&kc, &["--token", "stolen-token", "get", "configmaps", "-n", "default"]);
    assert!(spoof.status.success(), "{}", String::from_utf8_lossy(&spoof.stderr));
    // Impersonate-* headers without a grant that allows them: 403 at the hub.
    let spoof = kubectl(
        &kc,
        &["--as", "admin", "--as-group", "system:masters", "get", "configmaps", "-n", "kube-system"],
    );
    let err = String::from_utf8_lossy(&spoof.stderr);
    assert!(
        !spoof.status.success() && err.contains("Forbidden") && err.contains("--allow-impersonate"),
        "{err}"
    );
    let recorded = env.recorded();
    assert!(recorded_for(&recorded, "/namespaces/kube-system").is_empty(), "the apiserver saw nothing");
    let cm = recorded_for(&recorded, "/configmaps");
    assert!(!cm.is_empty());
    for r in &cm {
        assert_eq!(r["user"], "alice", "{r}");
        let text = r.to_string();
        assert!(!text.contains("stolen-token"), "caller's token reached the apiserver: {r}");
        assert!(!text.contains("system:masters"), "caller's group reached the apiserver: {r}");
    }
}

#[test]
fn failures_are_kubernetes_statuses_and_the_agent_recovers() {
    let mut env = Env::start(None);
    let kc = env.user_kubeconfig("alice", &["dev"]);

    // Unknown cluster: 404 from the hub (for a hub-wide credential; one
    // bound to a cluster learns nothing about others: 403).
    let text = std::fs::read_to_string(&kc).expect("read");
    let out = kubectl(&env.admin_kubeconfig(), &["get", "--raw", "/clusters/nope/api/v1/namespaces"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("NotFound") && err.contains("nope"), "{err}");
    let nope = env.path("nope.kubeconfig");
    std::fs::write(&nope, text.replace("/clusters/edge", "/clusters/nope")).expect("write");
    let out = kubectl(&nope, &["get", "namespaces"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("Forbidden"), "{err}");

    // A bearer token instead of a hub-issued client certificate: 401.
    let anon = env.path("anon.kubeconfig");
    let stripped: String = text
        .lines()
        .filter(|l| !l.contains("client-certificate-data") && !l.contains("client-key-data"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&anon, stripped.replace("  user:\n", "  user:\n    token: made-up-token\n"))
        .expect("write");
    let out = kubectl(&anon, &["get", "--raw", "/clusters/edge/api/v1/namespaces"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("You must be logged in"), "{err}");

    // Agent gone: 503, and back when it returns (with its saved credential).
    env.stop_agent();
    let out = kubectl(&kc, &["get", "--raw", "/clusters/edge/api/v1/namespaces"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("ServiceUnavailable"), "{err}");
    let out = kubectl(&kc, &["get", "configmaps"]);
    assert!(!out.status.success(), "requests fail while the agent is away");
    let clusters = env.ferryctl_ok(&["clusters"]);
    assert!(clusters.contains("edge") && clusters.contains("Offline"), "{clusters}");

    env.start_agent(None);
    let ns = kubectl_ok(&kc, &["get", "namespaces"]);
    assert!(ns.contains("default"), "{ns}");
    let clusters = env.ferryctl_ok(&["clusters"]);
    assert!(clusters.contains("Ready"), "{clusters}");
}

#[test]
fn a_kubeconfig_is_scoped_to_its_cluster() {
    let env = Env::start(None);
    env.ferryctl_ok(&["register", "other", "-o", "token"]);
    // alice's kubeconfig for edge cannot reach other (even with a grant
    // there), and cannot mint new kubeconfigs through the management API.
    env.ferryctl_ok(&["grant", "--cluster", "other", "--user", "alice"]);
    let kc = env.user_kubeconfig("alice", &["dev"]);
    let text = std::fs::read_to_string(&kc).expect("read");
    let other = env.path("alice-other.kubeconfig");
    std::fs::write(&other, text.replace("/clusters/edge", "/clusters/other")).expect("write");
    let out = kubectl(&other, &["get", "--raw", "/clusters/other/api/v1/namespaces"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("Forbidden") && err.contains("valid for cluster \"edge\" only"),
        "{err}"
    );
    let out = std::process::Command::new(bin("ferryctl"))
        .arg("--kubeconfig")
        .arg(&kc)
        .args(["kubeconfig", "other"])
        .output()
        .expect("run ferryctl");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("bound to cluster \"edge\""), "{err}");
}

//! Onboarding and access as users meet them, with real processes (test
//! apiserver, hub, agents), the real kubectl and ferryctl: bootstrap
//! tokens, approval, deletion, certificate renewal under a watch, grants,
//! impersonation policy, bearer tokens, hub restarts.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;

fn recorded_paths(env: &Env) -> Vec<String> {
    env.recorded().iter().filter_map(|r| r["path"].as_str().map(str::to_owned)).collect()
}

/// Waits until the wall clock passes `unix` (seconds). Only for tests whose
/// subject is a deadline (an expiry): nothing else could signal it.
fn wait_until_unix(unix: u64) {
    loop {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
        if now.as_secs() > unix {
            return;
        }
        std::thread::sleep(Duration::from_secs(unix + 1) - now);
    }
}

#[test]
fn bootstrap_tokens_are_single_use_and_expire_with_a_message_that_says_what_to_do() {
    let env = Env::start(None);
    // The agent of `edge` used its token in Env::start. A second agent (a
    // fresh state dir) with a token already used is refused, says why, and
    // keeps running, retrying slowly.
    let token = env.ferryctl_ok(&["register", "other", "-o", "token"]);
    let mut first = env.agent_command("state-a");
    first.env("FERRY_TOKEN", token.trim());
    let mut first = Proc::spawn("agent-a", first);
    first.wait_line("ferry-agent connected: cluster=other", READY_TIMEOUT);
    let mut second = env.agent_command("state-b");
    second.env("FERRY_TOKEN", token.trim());
    let mut second = Proc::spawn_logging("agent-b", second);
    let line = second.wait_line("refused the bootstrap token", READY_TIMEOUT);
    assert!(line.contains("already used") && line.contains("ferryctl register other"), "{line}");
    assert!(!line.contains(token.trim()), "the token is never logged: {line}");
    assert!(second.running(), "a refused agent does not exit (no crash loop)");

    // Registering again replaces the token: the old one, never used, is
    // refused as superseded.
    let old = env.ferryctl_ok(&["register", "third", "-o", "token"]);
    env.ferryctl_ok(&["register", "third", "-o", "token"]);
    let mut stale = env.agent_command("state-c");
    stale.env("FERRY_TOKEN", old.trim());
    let mut stale = Proc::spawn_logging("agent-c", stale);
    let line = stale.wait_line("refused the bootstrap token", READY_TIMEOUT);
    assert!(line.contains("replaced by a newer one"), "{line}");

    // An expired token.
    let out = env.ferryctl_ok(&["register", "late", "-o", "json", "--token-ttl", "1s"]);
    let json: serde_json::Value = serde_json::from_str(&out).expect("json");
    wait_until_unix(json["tokenExpiresAtUnix"].as_u64().expect("expiry"));
    let mut late = env.agent_command("state-d");
    late.env("FERRY_TOKEN", json["token"].as_str().expect("token"));
    let mut late = Proc::spawn_logging("agent-d", late);
    let line = late.wait_line("refused the bootstrap token", READY_TIMEOUT);
    assert!(line.contains("expired at") && line.contains("ferryctl register late"), "{line}");
}

#[test]
fn manual_approval_gates_traffic_and_denial_cuts_agents_off() {
    let env = Env::start(None);
    let token = env.ferryctl_ok(&["register", "lab", "--approval", "manual", "-o", "token"]);
    let mut agent = env.agent_command("lab-state");
    agent.env("FERRY_TOKEN", token.trim());
    let mut agent = Proc::spawn_logging("lab-agent", agent);
    agent.wait_line("ferry-agent connected: cluster=lab", READY_TIMEOUT);
    agent.wait_line("awaits approval", READY_TIMEOUT);
    let clusters: serde_json::Value =
        serde_json::from_str(&env.ferryctl_ok(&["clusters", "-o", "json"])).expect("json");
    let lab = clusters.as_array().and_then(|c| c.iter().find(|c| c["name"] == "lab")).expect("lab");
    assert_eq!(lab["phase"], "Pending", "{lab}");
    assert_eq!(lab["agents"], 1, "{lab}");

    // The admin's own credential reaches nothing through a pending cluster,
    // and the apiserver sees nothing.
    let admin = env.admin_kubeconfig();
    let before = env.last_recorded_id();
    let out = kubectl(&admin, &["get", "--raw", "/clusters/lab/api/v1/namespaces"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("ServiceUnavailable") && err.contains("awaits approval"),
        "{err}"
    );
    assert_eq!(env.last_recorded_id(), before, "nothing reached the apiserver");

    assert_eq!(env.ferryctl_ok(&["approve", "lab"]), "cluster/lab approved (phase Ready)\n");
    kubectl_ok(&admin, &["get", "--raw", "/clusters/lab/api/v1/namespaces"]);

    // Denied: the agent is disconnected, refused from then on, and keeps
    // running (it retries slowly); traffic gets 403.
    assert_eq!(env.ferryctl_ok(&["deny", "lab"]), "cluster/lab denied\n");
    env.ferryctl_ok(&["wait", "lab", "--for", "disconnected", "--timeout", "10s"]);
    agent.wait_line("denied by a hub administrator", READY_TIMEOUT);
    let out = kubectl(&admin, &["get", "--raw", "/clusters/lab/api/v1/namespaces"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("Forbidden") && err.contains("denied"), "{err}");
    assert!(agent.running());
}

#[test]
fn deleting_a_cluster_cuts_its_agents_off_within_a_second() {
    let mut env = Env::start(None);
    let kc = env.user_kubeconfig("alice", &["dev"]);
    kubectl_ok(&kc, &["create", "configmap", "before", "--from-literal=a=b"]);
    let mut watch = kubectl_spawn(&kc, &["get", "configmaps", "-w", "-o", "name"]);
    watch.wait_line("configmap/before", READY_TIMEOUT);

    env.ferryctl_ok(&["delete", "edge"]);
    let deleted = Instant::now();
    // The open watch ends at once (its tunnel is gone).
    watch.wait_exit(READY_TIMEOUT);
    let took = deleted.elapsed();
    assert!(took < Duration::from_secs(1), "the watch outlived the deletion by {took:?}");
    // The agent's certificate is refused from then on.
    let mut agent = env.agent.take().expect("agent");
    agent.kill();
    let mut again = Proc::spawn_logging("agent-again", env.agent_command("agent-state"));
    let line = again.wait_line("the hub refused", READY_TIMEOUT);
    assert!(line.contains("deleted") || line.contains("unknown"), "{line}");
    // The name can be registered again: a new cluster, which old
    // credentials (alice's kubeconfig) do not open.
    env.ferryctl_ok(&["register", "edge", "-o", "token"]);
    env.ferryctl_ok(&["grant", "--cluster", "edge", "--user", "alice"]);
    let out = kubectl(&kc, &["get", "configmaps"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("earlier cluster"), "{err}");
}

#[test]
fn the_agent_certificate_is_renewed_under_an_open_watch_without_losing_an_event() {
    // Certificates of 6 s: renewed every 4 s; two renewals outlive the first.
    // Taken before the agent enrolls: the time since then is at least the
    // first certificate's age (Env::start may take seconds on a busy host).
    let before_enrollment = SystemTime::now();
    let mut env = Env::start_with(None, &["--agent-cert-ttl", "6s"]);
    let kc = env.user_kubeconfig("alice", &["dev"]);
    let mut watch = kubectl_spawn(&kc, &["get", "configmaps", "-w", "-o", "name"]);
    let mut created = Vec::new();
    let mut create = |name: &str| {
        kubectl_ok(&kc, &["create", "configmap", name, "--from-literal=a=b"]);
        created.push(format!("configmap/{name}"));
    };
    create("cm-0");
    watch.wait_line("configmap/cm-0", READY_TIMEOUT);
    let agent = env.agent.as_mut().expect("agent");
    agent.wait_nth_line("ferry-agent renewed: cluster=edge", 1, READY_TIMEOUT);
    create("cm-1");
    agent.wait_nth_line("ferry-agent renewed: cluster=edge", 2, READY_TIMEOUT);
    assert!(
        before_enrollment.elapsed().expect("clock") > Duration::from_secs(6),
        "the first certificate has expired"
    );
    create("cm-2");
    for name in &created {
        watch.wait_line(name, READY_TIMEOUT);
    }
    // New requests flow too, and the agent never reconnected.
    assert!(kubectl_ok(&kc, &["get", "configmaps", "-o", "name"]).contains("configmap/cm-2"));
    let agent = env.agent.as_mut().expect("agent");
    assert_eq!(agent.count_lines("ferry-agent connected:"), 1, "one session throughout: {:?}", agent.seen);
    // After a restart the agent connects with its stored, renewed
    // certificate (the enrolled one expired long ago).
    env.agent.take().expect("agent").kill();
    env.start_agent(None);
}

#[test]
fn grants_decide_who_reaches_a_cluster_before_the_tunnel() {
    let env = Env::start(None);
    env.ferryctl_ok(&["grant", "--cluster", "edge", "--user", "alice"]);
    let kc = env.path("bob.kubeconfig");
    std::fs::write(&kc, env.ferryctl_ok(&["kubeconfig", "edge", "--user", "bob", "--group", "qa"]))
        .expect("write");
    let before = env.last_recorded_id();
    let out = kubectl(&kc, &["get", "configmaps"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("Forbidden"), "{err}");
    assert!(err.contains("user \"bob\" may not reach cluster \"edge\""), "{err}");
    assert_eq!(env.last_recorded_id(), before, "the apiserver saw nothing");

    // A grant to his group lets him in; revoking it shuts him out again,
    // with the same kubeconfig.
    env.ferryctl_ok(&["grant", "--cluster", "edge", "--group", "qa"]);
    kubectl_ok(&kc, &["get", "configmaps"]);
    env.ferryctl_ok(&["revoke", "--cluster", "edge", "--group", "qa"]);
    assert!(!kubectl(&kc, &["get", "configmaps"]).status.success());
    // A grant for every cluster works too.
    env.ferryctl_ok(&["grant", "--cluster", "*", "--user", "bob"]);
    kubectl_ok(&kc, &["get", "configmaps"]);
}

#[test]
fn identities_are_mapped_and_system_masters_never_forwarded() {
    let mut env = Env::start(None);
    let kc = env.user_kubeconfig("alice", &["dev", "ops"]);
    // The operator adds prefixes and denies `ops` later: credentials issued
    // before keep working, the denied group is no longer forwarded.
    env.hub_args = ["--group-prefix", "ferry:", "--user-prefix", "ferry:", "--deny-group", "ops"]
        .map(str::to_owned)
        .to_vec();
    env.restart_hub();
    env.agent.as_mut().expect("agent").wait_nth_line("ferry-agent connected:", 2, READY_TIMEOUT);
    let whoami: serde_json::Value =
        serde_json::from_str(&kubectl_ok(&kc, &["auth", "whoami", "-o", "json"])).expect("json");
    let user = &whoami["status"]["userInfo"];
    assert_eq!(user["username"], "ferry:alice", "{whoami}");
    let groups: Vec<&str> =
        user["groups"].as_array().expect("groups").iter().filter_map(|g| g.as_str()).collect();
    assert!(groups.contains(&"ferry:dev"), "{groups:?}");
    assert!(!groups.iter().any(|g| g.contains("ops")), "a denied group is never forwarded: {groups:?}");

    // system:masters: no credential carries it, and no one impersonates it.
    for args in [
        vec!["kubeconfig", "edge", "--user", "eve", "--group", "system:masters"],
        vec!["token", "create", "--user", "eve", "--group", "system:masters"],
        vec!["register", "x", "--admin-group", "system:masters"],
        vec!["kubeconfig", "edge", "--user", "eve", "--group", "ops"],
    ] {
        let out = env.ferryctl(&args);
        assert!(!out.status.success(), "{args:?} must be refused");
        assert!(String::from_utf8_lossy(&out.stderr).contains("may not be used"), "{out:?}");
    }
    env.ferryctl_ok(&["grant", "--cluster", "edge", "--user", "alice", "--allow-impersonate"]);
    let before = env.last_recorded_id();
    let out = kubectl(&kc, &["--as", "bob", "--as-group", "system:masters", "get", "configmaps"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("may never be impersonated"), "{err}");
    assert_eq!(env.last_recorded_id(), before, "the apiserver saw nothing");
}

#[test]
fn bound_credentials_need_no_path_prefix_and_tokens_work_like_certificates() {
    let env = Env::start(None);
    let kc = env.user_kubeconfig("alice", &["dev"]);
    // `kubectl get --raw` drops the server URL's path; a credential bound to
    // one cluster still reaches it.
    let version: serde_json::Value =
        serde_json::from_str(&kubectl_ok(&kc, &["get", "--raw", "/version"])).expect("json");
    assert!(version["gitVersion"].as_str().is_some_and(|v| v.starts_with('v')), "{version}");
    kubectl_ok(&kc, &["get", "--raw", "/api/v1/namespaces/default/configmaps"]);
    // A hub-wide (admin) credential is told the /clusters/NAME form.
    let out = kubectl(&env.admin_kubeconfig(), &["get", "--raw", "/api/v1/namespaces"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("/clusters/NAME"), "{err}");

    // A token kubeconfig.
    let token_kc = env.path("bob-token.kubeconfig");
    env.ferryctl_ok(&["grant", "--cluster", "edge", "--user", "bob"]);
    std::fs::write(&token_kc, env.ferryctl_ok(&["kubeconfig", "edge", "--user", "bob", "--auth", "token"]))
        .expect("write");
    let whoami = kubectl_ok(&token_kc, &["auth", "whoami"]);
    assert!(whoami.contains("bob"), "{whoami}");
    kubectl_ok(&token_kc, &["get", "--raw", "/version"]);
    let tokens: serde_json::Value =
        serde_json::from_str(&env.ferryctl_ok(&["token", "list", "-o", "json"])).expect("json");
    let bobs = tokens.as_array().and_then(|t| t.iter().find(|t| t["user"] == "bob")).expect("bob's");
    assert_eq!(bobs["cluster"], "edge", "bound to its cluster");
    let id = bobs["id"].as_str().expect("id").to_owned();
    env.ferryctl_ok(&["token", "revoke", &id]);
    let out = kubectl(&token_kc, &["get", "configmaps"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("You must be logged in"), "{err}");

    // An agent's certificate is not a caller credential.
    let agent_kc = env.path("agent-as-caller.kubeconfig");
    let text = std::fs::read_to_string(&kc).expect("read");
    let v: serde_yaml::Value = serde_yaml::from_str(&text).expect("yaml");
    use base64::Engine as _;
    let b64 =
        |f: &str| base64::engine::general_purpose::STANDARD.encode(std::fs::read(env.path(f)).expect("read"));
    let cert = v["users"][0]["user"]["client-certificate-data"].as_str().expect("cert").to_owned();
    let key = v["users"][0]["user"]["client-key-data"].as_str().expect("key").to_owned();
    std::fs::write(
        &agent_kc,
        text.replace(&cert, &b64("agent-state/tls.crt")).replace(&key, &b64("agent-state/tls.key")),
    )
    .expect("write");
    let out = kubectl(&agent_kc, &["get", "configmaps"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("You must be logged in"), "{err}");
    assert!(!recorded_paths(&env).is_empty());
}

#[test]
fn a_hub_restart_keeps_clusters_grants_and_tokens_and_agents_come_back() {
    let mut env = Env::start(None);
    env.ferryctl_ok(&["register", "lab", "--approval", "manual", "--labels", "env=lab", "-o", "token"]);
    let kc = env.user_kubeconfig("alice", &["dev"]);
    let token_kc = env.path("carol.kubeconfig");
    env.ferryctl_ok(&["grant", "--cluster", "*", "--group", "ops", "--allow-impersonate"]);
    std::fs::write(
        &token_kc,
        env.ferryctl_ok(&["kubeconfig", "edge", "--user", "carol", "--group", "ops", "--auth", "token"]),
    )
    .expect("write");
    kubectl_ok(&token_kc, &["get", "configmaps"]);
    let grants_before = env.ferryctl_ok(&["grants", "-o", "json"]);
    let tokens_before = env.ferryctl_ok(&["token", "list", "-o", "json"]);

    env.restart_hub();
    // The agent reconnects with its stored certificate.
    env.agent.as_mut().expect("agent").wait_nth_line("ferry-agent connected:", 2, READY_TIMEOUT);
    env.ferryctl_ok(&["wait", "edge", "--for", "connected", "--timeout", "30s"]);

    let clusters: serde_json::Value =
        serde_json::from_str(&env.ferryctl_ok(&["clusters", "-o", "json"])).expect("json");
    let lab = clusters.as_array().and_then(|c| c.iter().find(|c| c["name"] == "lab")).expect("lab kept");
    assert_eq!((lab["phase"].as_str(), lab["labels"]["env"].as_str()), (Some("Pending"), Some("lab")));
    assert_eq!(env.ferryctl_ok(&["grants", "-o", "json"]), grants_before);
    assert_eq!(env.ferryctl_ok(&["token", "list", "-o", "json"]), tokens_before);
    kubectl_ok(&kc, &["get", "configmaps"]);
    kubectl_ok(&token_kc, &["get", "configmaps"]);
}

#[test]
fn an_agent_authenticating_to_its_apiserver_with_a_client_certificate_works() {
    // kind and minikube give their admins client certificates, not tokens.
    let env = Env::start(None);
    let token = env.ferryctl_ok(&["register", "kind", "-o", "token"]);
    let mut cmd = std::process::Command::new(bin("ferry-agent"));
    cmd.arg("--hub")
        .arg(&env.hub_url)
        .arg("--hub-ca")
        .arg(env.path("hub/ca.crt"))
        .arg("--kubeconfig")
        .arg(env.path("apiserver-cert.kubeconfig"))
        .arg("--state-dir")
        .arg(env.path("kind-agent"))
        .env("FERRY_TOKEN", token.trim());
    let mut agent = Proc::spawn("kind-agent", cmd);
    agent.wait_line("ferry-agent connected: cluster=kind", READY_TIMEOUT);
    env.ferryctl_ok(&["wait", "kind", "--for", "ready", "--timeout", "30s"]);
    env.ferryctl_ok(&["grant", "--cluster", "kind", "--user", "alice"]);
    let kc = env.path("alice-kind.kubeconfig");
    std::fs::write(&kc, env.ferryctl_ok(&["kubeconfig", "kind", "--user", "alice"])).expect("write");
    kubectl_ok(&kc, &["create", "configmap", "from-kind", "--from-literal=a=b"]);
    let recorded = env.recorded();
    let create = recorded
        .iter()
        .find(|r| r["method"] == "POST" && r["path"] == "/api/v1/namespaces/default/configmaps")
        .expect("the create reached the apiserver");
    assert_eq!(create["user"], "alice", "{create}");
    assert_eq!(create["authenticatedUser"], "kubernetes-admin", "{create}");
}

//! Cluster status and phases as a user sees them with `ferryctl`, with real
//! processes: a cluster goes Ready when its agent connects and reports,
//! Offline within three heartbeat intervals when the agent dies or freezes,
//! NotReady while its apiserver's `/readyz` fails, and each change is kept
//! in the cluster's history. The hub runs with a 1 s heartbeat interval and
//! the agent reports every second, so the deadlines are short; a deadline
//! that is itself the subject is waited for.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// The hub's heartbeat interval in these tests.
const HEARTBEAT: Duration = Duration::from_secs(1);

fn cluster_json(env: &Env) -> serde_json::Value {
    let all: serde_json::Value =
        serde_json::from_str(&env.ferryctl_ok(&["clusters", "-o", "json"])).expect("json");
    all.as_array().and_then(|a| a.iter().find(|c| c["name"] == "edge")).cloned().expect("edge listed")
}

/// `ferryctl wait edge --for STATE`, timed.
fn wait_for(env: &Env, state: &str, timeout: &str) -> Duration {
    let start = Instant::now();
    env.ferryctl_ok(&["wait", "edge", "--for", state, "--timeout", timeout]);
    start.elapsed()
}

/// Turns the test apiserver's `/readyz` on or off, as a failing etcd would.
fn set_readyz(env: &Env, ok: bool) {
    let body = env.path("health.json");
    std::fs::write(&body, format!("{{\"readyz\": {ok}}}")).expect("write");
    kubectl_ok(
        &env.apiserver_kubeconfig(),
        &["replace", "--raw", "/_test/health", "-f", body.to_str().expect("utf8 path")],
    );
}

fn signal(proc: &Proc, sig: &str) {
    let status =
        Command::new("kill").arg(format!("-{sig}")).arg(proc.pid().to_string()).status().expect("kill");
    assert!(status.success(), "kill -{sig}");
}

fn phases(cluster: &serde_json::Value) -> Vec<String> {
    cluster["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|h| h["phase"].as_str().expect("phase").to_owned())
        .collect()
}

#[test]
fn phases_follow_the_agent_and_the_apiserver() {
    let mut env = Env::start_with(None, &["--heartbeat-interval", "1s"]);
    wait_for(&env, "ready", "30s");
    let edge = cluster_json(&env);
    assert_eq!(edge["phase"], "Ready", "{edge}");
    assert_eq!(edge["reason"], "", "{edge}");
    assert!(edge["kubernetesVersion"].as_str().is_some_and(|v| v.starts_with("v1.")), "{edge}");
    assert_eq!(edge["platform"], "linux/amd64", "{edge}");
    assert_eq!(edge["nodes"], serde_json::json!({"ready": 1, "notReady": 0}), "the test node: {edge}");
    assert_eq!(edge["capacity"]["cpuMillis"], 2000, "{edge}");
    assert_eq!(edge["capacity"]["memoryBytes"], 8u64 << 30, "{edge}");
    assert_eq!(edge["readyz"]["state"], "Ok", "{edge}");
    assert_eq!(edge["livez"]["state"], "Ok", "{edge}");
    assert_eq!(edge["agents"], 1);
    let replica = &edge["replicas"][0];
    assert!(replica["agentId"].as_str().is_some_and(|id| id.len() == 36), "{replica}");
    assert_eq!(replica["agentVersion"], env!("CARGO_PKG_VERSION"));
    assert!(edge["lastSeenUnix"].as_u64().is_some(), "{edge}");

    // Killed (SIGKILL): its connection closes, the cluster is Offline at once.
    let mut agent = env.agent.take().expect("agent");
    let killed = Instant::now();
    agent.kill();
    let waited = wait_for(&env, "offline", "10s");
    let offline_after_kill = killed.elapsed();
    eprintln!("Offline {offline_after_kill:?} after SIGKILL (wait returned in {waited:?})");
    assert!(offline_after_kill < HEARTBEAT * 3, "{offline_after_kill:?}");
    let edge = cluster_json(&env);
    assert_eq!(edge["reason"], "no agent is connected");
    assert_eq!(
        edge["kubernetesVersion"].as_str().map(|v| v.starts_with("v1.")),
        Some(true),
        "kept while Offline"
    );
    assert_eq!(edge["nodes"]["ready"], 1, "kept while Offline");

    // An agent reporting every second comes back with its saved credential.
    let mut cmd = env.agent_command("agent-state");
    cmd.args(["--status-interval", "1s"]);
    let mut agent = Proc::spawn("ferry-agent", cmd);
    agent.wait_line("ferry-agent connected:", READY_TIMEOUT);
    wait_for(&env, "ready", "30s");

    // Frozen (SIGSTOP): the connection stays open but heartbeats stop; the
    // hub gives up after three missed ones.
    signal(&agent, "STOP");
    let frozen = Instant::now();
    wait_for(&env, "offline", "30s");
    let offline_after_freeze = frozen.elapsed();
    eprintln!("Offline {offline_after_freeze:?} after SIGSTOP (heartbeat interval {HEARTBEAT:?})");
    assert!(offline_after_freeze <= HEARTBEAT * 3 + Duration::from_secs(2), "{offline_after_freeze:?}");
    assert!(
        offline_after_freeze >= HEARTBEAT * 2,
        "not before the heartbeats were missed: {offline_after_freeze:?}"
    );
    signal(&agent, "CONT");
    agent.wait_nth_line("ferry-agent connected:", 2, READY_TIMEOUT);
    wait_for(&env, "ready", "30s");

    // The apiserver's /readyz fails: NotReady, saying why; then Ready again.
    set_readyz(&env, false);
    let failing = Instant::now();
    wait_for(&env, "not-ready", "30s");
    eprintln!("NotReady {:?} after /readyz started failing (status interval 1s)", failing.elapsed());
    let edge = cluster_json(&env);
    assert_eq!(edge["readyz"]["state"], "Failed", "{edge}");
    let reason = edge["reason"].as_str().expect("reason");
    assert!(reason.contains("/readyz") && reason.contains("etcd"), "{reason}");
    set_readyz(&env, true);
    wait_for(&env, "ready", "30s");

    // Every change is in the history, oldest first, with its time and reason.
    let edge = cluster_json(&env);
    assert_eq!(
        phases(&edge),
        ["Offline", "Ready", "Offline", "Ready", "Offline", "Ready", "NotReady", "Ready"],
        "registered (no agent yet), connected, killed, back, frozen, back, /readyz failing, healthy"
    );
    let history = edge["history"].as_array().expect("history");
    let not_ready = history.iter().rev().find(|h| h["phase"] == "NotReady").expect("NotReady in history");
    assert!(not_ready["reason"].as_str().is_some_and(|r| r.contains("/readyz")), "{not_ready}");
    let times: Vec<u64> = history.iter().map(|h| h["atUnix"].as_u64().expect("time")).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert_eq!(edge["phaseSinceUnix"], *times.last().expect("last"));
    // By now the agent has timed its heartbeats and reported the round trip.
    let rtt = edge["replicas"][0]["heartbeatRttMicros"].as_u64().expect("a round trip was reported");
    eprintln!("heartbeat round trip reported by the agent: {rtt} µs");
    assert!(rtt > 0 && rtt < 1_000_000, "{rtt}");
}

#[test]
fn history_and_last_known_status_survive_a_hub_restart() {
    let mut env = Env::start_with(None, &["--heartbeat-interval", "1s"]);
    wait_for(&env, "ready", "30s");
    let mut agent = env.agent.take().expect("agent");
    agent.kill();
    wait_for(&env, "offline", "10s");
    let before = cluster_json(&env);
    env.restart_hub();
    let after = cluster_json(&env);
    assert_eq!(after["phase"], "Offline");
    assert_eq!(after["history"], before["history"], "the history is kept");
    assert_eq!(after["kubernetesVersion"], before["kubernetesVersion"]);
    assert_eq!(after["nodes"], before["nodes"]);
    assert_eq!(after["lastSeenUnix"], before["lastSeenUnix"]);
}

#[test]
fn a_watch_resumes_across_a_hub_crash_without_missing_a_change() {
    use ferry_client_sdk::{ClusterEvent, Hub, HubConfig, WatchOptions};
    use futures_util::StreamExt;

    let mut env = Env::start_with(None, &["--heartbeat-interval", "1s"]);
    wait_for(&env, "ready", "30s");
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let hub = rt
        .block_on(Hub::connect(&HubConfig::load(env.admin_kubeconfig()).expect("admin kubeconfig")))
        .expect("connect");
    let mut events = Box::pin(hub.watch_clusters(WatchOptions::default()));
    let mut next = || {
        let event = rt.block_on(async { tokio::time::timeout(READY_TIMEOUT, events.next()).await });
        event.expect("an event in time").expect("stream open").expect("event")
    };
    let ClusterEvent::Added { cluster, .. } = next() else { panic!("ADDED first") };
    assert_eq!(cluster.phase, ferry_client_sdk::ClusterPhase::Ready);
    let ClusterEvent::Bookmark { revision: before } = next() else { panic!("then a bookmark") };

    // SIGKILL, then the same address and data: the agent reconnects, the
    // stream reconnects and resumes by itself.
    env.restart_hub();
    env.ferryctl_ok(&["label", "edge", "after=crash"]);
    let labelled = |e: &ClusterEvent| {
        e.cluster().is_some_and(|c| c.labels.get("after").map(String::as_str) == Some("crash"))
    };
    let ready =
        |e: &ClusterEvent| e.cluster().is_some_and(|c| c.phase == ferry_client_sdk::ClusterPhase::Ready);
    let mut after = Vec::new();
    while !(after.iter().any(labelled) && after.iter().any(ready)) {
        match next() {
            ClusterEvent::Bookmark { .. } => {}
            e => after.push(e),
        }
    }
    assert!(after.windows(2).all(|w| w[0].revision() < w[1].revision()), "{after:?}");
    assert!(after[0].revision() > before);

    // A client that connects only now, with the revision it had before the
    // crash, is told exactly the same.
    let mut replay =
        Box::pin(hub.watch_clusters(WatchOptions { revision: Some(before), ..Default::default() }));
    let mut replayed = Vec::new();
    while replayed.len() < after.len() {
        let e = rt.block_on(async { tokio::time::timeout(READY_TIMEOUT, replay.next()).await });
        match e.expect("in time").expect("open").expect("event") {
            ClusterEvent::Bookmark { .. } => {}
            e => replayed.push(e),
        }
    }
    assert_eq!(replayed, after);
}

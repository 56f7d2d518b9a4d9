//! The cluster's status for the hub: the apiserver's version and platform,
//! whether `/readyz` and `/livez` pass, node counts and summed capacity,
//! and which of the agent's own permissions are missing.
//!
//! A probe task takes a status every status interval (`--status-interval`)
//! and publishes the latest on a watch channel; heartbeats carry each fresh
//! one. Probing never delays a heartbeat, so a slow apiserver makes the
//! cluster NotReady at the hub, never Offline.
//!
//! Every call is made as the agent itself, bounded in time and in the bytes
//! read. Nodes are listed in pages, and at most every [`NODES_RECOUNT`]:
//! a LIST of every node costs the apiserver a few KiB per node.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry::proto::v1::{ClusterStatus, HealthCheck, HealthState, NodeCounts, Resources};
use serde::Deserialize;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::SecretRef;
use crate::health::Apiserver;
use crate::metrics::AgentMetrics;
use crate::permissions;
use crate::quantity;
use crate::upstream::Upstream;

/// Longest one whole status may take (each call within it is bounded by
/// the same time).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the agent checks that it still has the permissions it needs.
pub const PERMISSIONS_RECHECK: Duration = Duration::from_secs(60);
/// How often nodes are counted again (see the module docs).
pub const NODES_RECOUNT: Duration = Duration::from_secs(30);
/// Nodes asked for per LIST page.
pub const NODES_PAGE: usize = 500;
/// Most pages read per count (with [`NODES_PAGE`], 50,000 nodes; a larger
/// cluster is reported by its first 50,000).
pub const MAX_NODE_PAGES: usize = 100;
/// Largest node page read (500 nodes of a few KiB each, with room).
pub const MAX_NODE_PAGE_BYTES: usize = 32 * 1024 * 1024;
/// Largest `/readyz` or `/livez` answer read (a failing one lists every
/// check, one line each).
pub const MAX_HEALTH_BODY: usize = 64 * 1024;
/// Longest health detail reported (the failing checks, shortened).
pub const MAX_HEALTH_DETAIL: usize = 256;
/// Shortest status interval accepted (tests use one second).
pub const MIN_STATUS_INTERVAL: Duration = Duration::from_millis(200);

/// Node counts and summed resources from one LIST.
#[derive(Clone, Debug, Default, PartialEq)]
struct NodeSummary {
    counts: NodeCounts,
    capacity: Resources,
    allocatable: Resources,
}

/// Takes the cluster's status. Logs changes only, so a down apiserver does
/// not flood the log.
pub(crate) struct StatusProbe {
    upstream: Arc<Upstream>,
    secret: Option<SecretRef>,
    last_probe: Option<Result<String, String>>,
    missing: Option<Vec<String>>,
    checked_at: Option<Instant>,
    nodes: Option<NodeSummary>,
    counted_at: Option<Instant>,
    nodes_error: Option<String>,
    /// Where to publish whether the apiserver is ready, for `/readyz`.
    publish: Option<(watch::Sender<Apiserver>, Arc<AgentMetrics>)>,
}

impl StatusProbe {
    pub(crate) fn new(upstream: Arc<Upstream>, secret: Option<SecretRef>) -> Self {
        Self {
            upstream,
            secret,
            last_probe: None,
            missing: None,
            checked_at: None,
            nodes: None,
            counted_at: None,
            nodes_error: None,
            publish: None,
        }
    }

    /// Publishes what each probe finds of the apiserver (the agent's
    /// `/readyz` and `ferry_agent_apiserver_up`), logging each change.
    pub(crate) fn publishing(
        mut self,
        apiserver: watch::Sender<Apiserver>,
        metrics: Arc<AgentMetrics>,
    ) -> Self {
        self.publish = Some((apiserver, metrics));
        self
    }

    fn publish(&self, status: &ClusterStatus) {
        let Some((apiserver, metrics)) = &self.publish else { return };
        let readyz = status.readyz.as_ref();
        let now = if !status.apiserver_reachable {
            Apiserver::Failing(format!("unreachable: {}", status.apiserver_error))
        } else if readyz.is_some_and(|c| c.state == HealthState::Failed as i32) {
            let detail = readyz.map(|c| c.detail.as_str()).unwrap_or_default();
            Apiserver::Failing(format!("its /readyz fails: {detail}"))
        } else {
            Apiserver::Ready
        };
        metrics.apiserver_up(now == Apiserver::Ready);
        // Published before it is logged: whoever reads the log line finds
        // `/readyz` already answering accordingly.
        let before = apiserver.send_replace(now.clone());
        if before != now {
            match &now {
                Apiserver::Ready => info!("agent ready: the apiserver is reachable and ready"),
                Apiserver::Failing(why) => {
                    warn!(reason = %why, "agent not ready: the apiserver is not ready")
                }
                Apiserver::Unknown => {}
            }
        }
    }

    /// The status now, each call bounded by `timeout`.
    pub(crate) async fn status(&mut self, timeout: Duration) -> ClusterStatus {
        let upstream = self.upstream.clone();
        let (version, readyz, livez) = tokio::join!(
            upstream.probe(timeout),
            health(&upstream, "/readyz", timeout),
            health(&upstream, "/livez", timeout),
        );
        let mut status = ClusterStatus {
            observed_at_unix_ms: unix_ms(),
            readyz: Some(readyz),
            livez: Some(livez),
            ..Default::default()
        };
        let probe = match version {
            Ok(v) => {
                status.kubernetes_version = v.git_version.clone();
                status.platform = v.platform;
                status.apiserver_reachable = true;
                Ok(v.git_version)
            }
            Err(e) => {
                status.apiserver_error = e.to_string();
                Err(e.to_string())
            }
        };
        if self.last_probe.as_ref() != Some(&probe) {
            match &probe {
                Ok(version) => info!(kubernetes_version = %version, "apiserver reachable"),
                Err(e) => warn!(error = %e, "apiserver probe failed"),
            }
            self.last_probe = Some(probe);
        }
        if status.apiserver_reachable {
            self.check_permissions().await;
            self.count_nodes(timeout).await;
        }
        status.missing_permissions = self.missing.clone().unwrap_or_default();
        if let Some(n) = &self.nodes {
            status.nodes = Some(n.counts);
            status.capacity = Some(n.capacity);
            status.allocatable = Some(n.allocatable);
        }
        self.publish(&status);
        status
    }

    async fn check_permissions(&mut self) {
        if self.checked_at.is_some_and(|t| t.elapsed() < PERMISSIONS_RECHECK) {
            return;
        }
        match permissions::missing(&self.upstream, self.secret.as_ref()).await {
            Ok(now) => {
                if self.missing.as_ref() != Some(&now) && !now.is_empty() {
                    error!(
                        missing = %now.join(", "),
                        "the agent's identity in its cluster lacks permissions it needs; apply the agent.yaml from `ferryctl register` again"
                    );
                }
                self.missing = Some(now);
            }
            Err(e) => debug!(error = %e, "could not check the agent's permissions"),
        }
        self.checked_at = Some(Instant::now());
    }

    async fn count_nodes(&mut self, timeout: Duration) {
        if self.counted_at.is_some_and(|t| t.elapsed() < NODES_RECOUNT) {
            return;
        }
        self.counted_at = Some(Instant::now());
        match count_nodes(&self.upstream, timeout).await {
            Ok(summary) => {
                self.nodes = Some(summary);
                self.nodes_error = None;
            }
            Err(e) => {
                if self.nodes_error.as_ref() != Some(&e) {
                    warn!(error = %e, "cannot count the cluster's nodes; their numbers are not reported");
                }
                self.nodes = None;
                self.nodes_error = Some(e);
            }
        }
    }
}

/// Checks one health endpoint.
async fn health(upstream: &Upstream, path: &str, timeout: Duration) -> HealthCheck {
    match upstream.get(path, MAX_HEALTH_BODY, timeout).await {
        Ok((status, _)) if status.is_success() => {
            HealthCheck { state: HealthState::Ok as i32, detail: String::new() }
        }
        Ok((status, body)) => HealthCheck {
            state: HealthState::Failed as i32,
            detail: health_detail(status.as_u16(), &String::from_utf8_lossy(&body)),
        },
        Err(e) => HealthCheck { state: HealthState::Failed as i32, detail: shorten(&e.message) },
    }
}

/// What a failing health endpoint said: its failing checks (`[-]...`
/// lines), else its first line, else the status code.
fn health_detail(code: u16, body: &str) -> String {
    let failing: Vec<&str> = body.lines().map(str::trim).filter(|l| l.starts_with("[-]")).collect();
    let text = if !failing.is_empty() {
        failing.join("; ")
    } else {
        match body.lines().map(str::trim).find(|l| !l.is_empty()) {
            Some(line) => format!("HTTP {code}: {line}"),
            None => format!("HTTP {code}"),
        }
    };
    shorten(&text)
}

fn shorten(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(MAX_HEALTH_DETAIL).collect()
}

#[derive(Deserialize, Default)]
struct NodeList {
    #[serde(default)]
    items: Vec<Node>,
    #[serde(default)]
    metadata: ListMeta,
}

#[derive(Deserialize, Default)]
struct ListMeta {
    #[serde(rename = "continue", default)]
    next: Option<String>,
}

#[derive(Deserialize, Default)]
struct Node {
    #[serde(default)]
    status: NodeStatus,
}

#[derive(Deserialize, Default)]
struct NodeStatus {
    #[serde(default)]
    capacity: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    allocatable: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    conditions: Vec<Condition>,
}

#[derive(Deserialize, Default)]
struct Condition {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    status: String,
}

fn add(sum: &mut Resources, of: &std::collections::BTreeMap<String, String>) {
    sum.cpu_millis += of.get("cpu").and_then(|q| quantity::cpu_millis(q)).unwrap_or(0);
    sum.memory_bytes += of.get("memory").and_then(|q| quantity::bytes(q)).unwrap_or(0);
}

fn summarize(summary: &mut NodeSummary, nodes: &[Node]) {
    for n in nodes {
        let ready = n.status.conditions.iter().any(|c| c.kind == "Ready" && c.status == "True");
        if ready {
            summary.counts.ready += 1;
        } else {
            summary.counts.not_ready += 1;
        }
        add(&mut summary.capacity, &n.status.capacity);
        add(&mut summary.allocatable, &n.status.allocatable);
    }
}

/// Lists every node, page by page, and sums them up.
async fn count_nodes(upstream: &Upstream, timeout: Duration) -> Result<NodeSummary, String> {
    let mut summary = NodeSummary::default();
    let mut next: Option<String> = None;
    for _ in 0..MAX_NODE_PAGES {
        let mut path = format!("/api/v1/nodes?limit={NODES_PAGE}");
        if let Some(token) = &next {
            path.push_str("&continue=");
            path.push_str(&percent_encode(token));
        }
        let (status, body) =
            upstream.get(&path, MAX_NODE_PAGE_BYTES, timeout).await.map_err(|e| e.message)?;
        if !status.is_success() {
            return Err(format!("listing nodes was answered {status}"));
        }
        let page: NodeList = serde_json::from_slice(&body).map_err(|e| format!("node list: {e}"))?;
        summarize(&mut summary, &page.items);
        next = page.metadata.next.filter(|c| !c.is_empty());
        if next.is_none() {
            break;
        }
    }
    Ok(summary)
}

/// Percent-encodes a continue token for a query string.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_ms() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// Takes a status every `interval` and publishes it on `latest`, until
/// `stop`. The first comes one interval in (the hello carried one).
pub(crate) async fn run(
    mut probe: StatusProbe,
    interval: Duration,
    latest: watch::Sender<ClusterStatus>,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = stop.cancelled() => return,
        }
        let status = tokio::select! {
            s = probe.status(PROBE_TIMEOUT.min(interval)) => s,
            () = stop.cancelled() => return,
        };
        latest.send_replace(status);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_checks_are_named() {
        let body = "[+]ping ok\n[+]log ok\n[-]etcd failed: reason withheld\n[+]informer-sync ok\nreadyz check failed\n";
        assert_eq!(health_detail(500, body), "[-]etcd failed: reason withheld");
        assert_eq!(health_detail(503, "not ready yet\n"), "HTTP 503: not ready yet");
        assert_eq!(health_detail(500, ""), "HTTP 500");
        assert_eq!(health_detail(500, &"x".repeat(10_000)).len(), MAX_HEALTH_DETAIL);
    }

    #[test]
    fn nodes_are_counted_and_summed() {
        let list: NodeList = serde_json::from_value(serde_json::json!({
            "metadata": {"continue": "abc"},
            "items": [
                {"status": {"capacity": {"cpu": "2", "memory": "8Gi"}, "allocatable": {"cpu": "1900m", "memory": "7Gi"},
                            "conditions": [{"type": "Ready", "status": "True"}]}},
                {"status": {"capacity": {"cpu": "4", "memory": "16Gi"}, "allocatable": {"cpu": "4", "memory": "16Gi"},
                            "conditions": [{"type": "Ready", "status": "Unknown"}]}},
                {"status": {}}
            ]
        }))
        .expect("node list");
        let mut s = NodeSummary::default();
        summarize(&mut s, &list.items);
        assert_eq!(s.counts, NodeCounts { ready: 1, not_ready: 2 });
        assert_eq!(s.capacity, Resources { cpu_millis: 6000, memory_bytes: 24 << 30 });
        assert_eq!(s.allocatable, Resources { cpu_millis: 5900, memory_bytes: 23 << 30 });
        assert_eq!(list.metadata.next.as_deref(), Some("abc"));
    }

    #[test]
    fn continue_tokens_are_encoded() {
        assert_eq!(percent_encode("eyJ2Ijo+/="), "eyJ2Ijo%2B%2F%3D");
    }
}

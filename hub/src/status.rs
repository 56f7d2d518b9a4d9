//! A cluster's phase and status: derived from its approval and what its
//! agents report, and recorded in the store when something shown changes.
//!
//! - [`health`]: Ready, NotReady or Offline from the live agents alone.
//! - [`shown_phase`]: the approval first (Pending, Denied), then health.
//! - [`observe`]: the status a record should have now, with its phase
//!   history; the API shows it, the recorder stores it.
//! - [`run_recorder`]: the task that writes it to the store. It looks at
//!   the clusters the registry marks (a session came or went, a report
//!   changed, the approval changed) and at every cluster once at start, so
//!   a cluster Ready before a hub restart is recorded Offline until its
//!   agent is back. A heartbeat alone writes nothing: `last_seen` is stored
//!   with the next change.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use tracing::{debug, warn};

use crate::registry::LiveSummary;
use crate::state::HubState;
use crate::store::{Approval, CheckState, ClusterRecord, ObservedStatus, PHASE_HISTORY, Phase, PhaseChange};

/// How long the recorder waits before trying again after a store failure.
pub const RECORD_RETRY: Duration = Duration::from_secs(1);

/// Ready, NotReady or Offline, and why, from the connected agents of
/// cluster `name`. `ever_seen`: whether an agent was ever heard from (for
/// the reason).
pub fn health(name: &str, summary: &LiveSummary, ever_seen: bool) -> (Phase, String) {
    if summary.sessions == 0 {
        let reason = if ever_seen { "no agent is connected" } else { "no agent has connected yet" };
        return (Phase::Offline, reason.to_owned());
    }
    if !summary.missing_permissions.is_empty() {
        return (
            Phase::NotReady,
            format!(
                "the agent lacks permissions in the cluster ({}); apply the agent.yaml from `ferryctl register {name}` again",
                summary.missing_permissions.join(", ")
            ),
        );
    }
    let Some(best) = &summary.best else {
        return (Phase::NotReady, "no status report from the agents yet".to_owned());
    };
    if !best.apiserver_reachable {
        let why = if best.apiserver_error.is_empty() {
            String::new()
        } else {
            format!(": {}", best.apiserver_error)
        };
        return (Phase::NotReady, format!("the agents cannot reach the cluster's apiserver{why}"));
    }
    if best.readyz.state == CheckState::Failed {
        return (Phase::NotReady, format!("the apiserver is not ready (/readyz: {})", best.readyz.detail));
    }
    if best.livez.state == CheckState::Failed {
        return (Phase::NotReady, format!("the apiserver is not live (/livez: {})", best.livez.detail));
    }
    (Phase::Ready, String::new())
}

/// The phase shown for a cluster: its approval first, then its health.
pub fn shown_phase(record: &ClusterRecord, health: Phase, reason: &str) -> (Phase, String) {
    match &record.approval {
        Approval::Denied { by, at } => (
            Phase::Denied,
            format!(
                "denied by {by} at {}",
                humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(*at))
            ),
        ),
        Approval::Pending => (Phase::Pending, format!("awaits approval (ferryctl approve {})", record.name)),
        Approval::Approved => (health, reason.to_owned()),
    }
}

/// The status `record` should have now, given its live agents (`None`:
/// none since the hub started). What the agents last reported is kept while
/// none is connected; a change of the shown phase is added to the history
/// at `now`.
pub fn observe(record: &ClusterRecord, live: Option<&LiveSummary>, now: u64) -> ObservedStatus {
    let mut status = record.status.clone();
    let live_seen = live.map_or(0, |l| l.last_seen);
    status.last_seen = status.last_seen.max(live_seen);
    match live.filter(|l| l.sessions > 0) {
        Some(l) => {
            (status.health, status.reason) = health(&record.name, l, true);
            status.agents = l.sessions as u32;
            status.missing_permissions = l.missing_permissions.clone();
            if let Some(best) = &l.best {
                if !best.kubernetes_version.is_empty() {
                    status.kubernetes_version = best.kubernetes_version.clone();
                }
                if !best.platform.is_empty() {
                    status.platform = best.platform.clone();
                }
                status.readyz = best.readyz.clone();
                status.livez = best.livez.clone();
                if best.nodes.is_some() {
                    status.nodes = best.nodes;
                    status.capacity = best.capacity;
                    status.allocatable = best.allocatable;
                }
            }
        }
        None => {
            let empty = LiveSummary::default();
            (status.health, status.reason) = health(&record.name, &empty, status.last_seen > 0);
            status.agents = 0;
        }
    }
    let (phase, reason) = shown_phase(record, status.health, &status.reason);
    if status.current().map(|c| c.phase) != Some(phase) {
        status.history.push(PhaseChange { phase, reason, at: now });
        let excess = status.history.len().saturating_sub(PHASE_HISTORY);
        status.history.drain(..excess);
    }
    status
}

/// Whether two statuses show the same (`last_seen` aside: it moves with
/// every heartbeat and is stored with the next real change).
pub fn shows_same(a: &ObservedStatus, b: &ObservedStatus) -> bool {
    let strip = |s: &ObservedStatus| ObservedStatus { last_seen: 0, ..s.clone() };
    strip(a) == strip(b)
}

/// Writes cluster `name`'s status to the store if what is shown of it
/// changed. `Err` when the store failed (the caller tries again).
async fn record_one(state: &HubState, name: &str) -> Result<(), crate::store::StoreError> {
    let Some(record) = state.store.cluster(name).await? else { return Ok(()) };
    let live = state.registry.get(name).filter(|l| Some(l.id) == record.cluster_id());
    let mut summary = live.map(|l| l.summary());
    let elsewhere = sessions_elsewhere(state, name);
    if summary.as_ref().is_none_or(|s| s.sessions == 0) {
        if elsewhere > 0 {
            // Another replica holds the agents: it records their status.
            return Ok(());
        }
    } else if let Some(s) = summary.as_mut() {
        // Agents with sessions on several replicas (`--hub-connections`):
        // the count shown is every replica's.
        s.sessions += elsewhere;
    }
    let now = crate::store::unix_now();
    if shows_same(&observe(&record, summary.as_ref(), now), &record.status) {
        return Ok(());
    }
    let id = record.id.clone();
    let written = state
        .store
        .update_cluster(name, &mut |r| {
            if r.id != id {
                return false;
            }
            let next = observe(r, summary.as_ref(), now);
            let changed = !shows_same(&next, &r.status);
            r.status = next;
            changed
        })
        .await;
    match written {
        Ok(r) => {
            debug!(cluster = %name, phase = ?r.status.current().map(|c| c.phase), "status recorded");
            Ok(())
        }
        // Deleted meanwhile: nothing to record.
        Err(crate::store::StoreError::NotFound) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Agent sessions of cluster `name` on other live hub replicas (when there
/// are some and none here, those replicas record and show the status).
pub(crate) fn sessions_elsewhere(state: &HubState, name: &str) -> usize {
    let Some(set) = &state.replicas else { return 0 };
    let view = set.now();
    let me = &set.me().id;
    view.live.get(name).map_or(0, |by| {
        by.iter().filter(|(id, _)| *id != me && view.hubs.contains_key(*id)).map(|(_, n)| *n as usize).sum()
    })
}

/// Looks at a cluster's status again whenever the set of replicas holding
/// its agents changes (with several replicas): a replica that died held
/// its clusters' status, and when its lease expires the survivors record
/// Offline for those no replica holds any more (or the new count of
/// agents), within [`crate::etcd::replicas::REPLICA_TTL`] of its death.
pub async fn follow_holders(state: Arc<HubState>) {
    let Some(set) = state.replicas.clone() else { return };
    let mut view = set.view();
    let mut before = view.borrow_and_update().clone();
    loop {
        tokio::select! {
            () = state.shutdown.cancelled() => return,
            r = view.changed() => if r.is_err() { return },
        }
        let now = view.borrow_and_update().clone();
        let holding = |v: &crate::etcd::replicas::Replicas, c: &str| -> Vec<(String, u32)> {
            v.live.get(c).map(|by| by.iter().map(|(id, n)| (id.clone(), *n)).collect()).unwrap_or_default()
        };
        let clusters: std::collections::BTreeSet<&String> =
            before.live.keys().chain(now.live.keys()).collect();
        for cluster in clusters {
            if holding(&before, cluster) != holding(&now, cluster) {
                // Waiters on this replica look again too.
                match state.registry.get(cluster) {
                    Some(live) => live.changed(),
                    None => state.registry.touch(cluster),
                }
            }
        }
        before = now;
    }
}

/// Records the status of every cluster the registry marks, until the hub
/// shuts down; looks at every cluster once at start.
pub async fn run_recorder(state: Arc<HubState>) {
    match state.store.clusters().await {
        Ok(all) => all.iter().for_each(|r| state.registry.touch(&r.name)),
        Err(e) => warn!(error = %e, "cannot read the clusters to record their status"),
    }
    let feed = state.registry.feed();
    loop {
        for name in feed.take() {
            if let Err(e) = record_one(&state, &name).await {
                warn!(cluster = %name, error = %e, "cannot record the cluster's status; trying again");
                state.registry.touch(&name);
                tokio::select! {
                    () = tokio::time::sleep(RECORD_RETRY) => {}
                    () = state.shutdown.cancelled() => return,
                }
            }
        }
        tokio::select! {
            () = feed.marked() => {}
            () = state.shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::AgentReport;
    use crate::store::{ApprovalMode, Check};

    fn record(approval: Approval) -> ClusterRecord {
        ClusterRecord {
            name: "edge".into(),
            id: ferry::ids::ClusterId::new().to_string(),
            created_at: 1,
            labels: Default::default(),
            approval_mode: ApprovalMode::Auto,
            approval,
            bootstrap_tokens: Vec::new(),
            agent_certs: Vec::new(),
            status: ObservedStatus::default(),
            revision: 0,
        }
    }

    fn healthy() -> AgentReport {
        AgentReport {
            kubernetes_version: "v1.33.1".into(),
            platform: "linux/amd64".into(),
            apiserver_reachable: true,
            readyz: Check { state: CheckState::Ok, detail: String::new() },
            livez: Check { state: CheckState::Ok, detail: String::new() },
            ..Default::default()
        }
    }

    fn live(reports: &[AgentReport]) -> LiveSummary {
        LiveSummary {
            sessions: reports.len(),
            best: reports.iter().max_by_key(|r| r.apiserver_reachable).cloned(),
            last_seen: 100,
            ..Default::default()
        }
    }

    #[test]
    fn health_follows_the_reports() {
        assert_eq!(health("edge", &LiveSummary::default(), false).0, Phase::Offline);
        assert_eq!(health("edge", &live(&[healthy()]), true), (Phase::Ready, String::new()));
        let mut not_ready = healthy();
        not_ready.readyz = Check { state: CheckState::Failed, detail: "[-]etcd failed".into() };
        let (phase, reason) = health("edge", &live(&[not_ready]), true);
        assert_eq!(phase, Phase::NotReady);
        assert_eq!(reason, "the apiserver is not ready (/readyz: [-]etcd failed)");
        let unreachable = AgentReport {
            apiserver_reachable: false,
            apiserver_error: "connection refused".into(),
            ..healthy()
        };
        assert_eq!(
            health("edge", &live(std::slice::from_ref(&unreachable)), true).1,
            "the agents cannot reach the cluster's apiserver: connection refused"
        );
        assert_eq!(
            health("edge", &live(&[unreachable, healthy()]), true).0,
            Phase::Ready,
            "one healthy agent is enough"
        );
    }

    #[test]
    fn history_records_each_shown_phase_once() {
        let mut r = record(Approval::Pending);
        r.status = observe(&r, None, 10);
        assert_eq!(r.status.history.iter().map(|c| c.phase).collect::<Vec<_>>(), [Phase::Pending]);
        // An agent connects while pending: still Pending, its report is kept.
        r.status = observe(&r, Some(&live(&[healthy()])), 20);
        assert_eq!(r.status.history.len(), 1);
        assert_eq!((r.status.health, r.status.agents), (Phase::Ready, 1));
        assert_eq!(r.status.kubernetes_version, "v1.33.1");
        r.approval = Approval::Approved;
        r.status = observe(&r, Some(&live(&[healthy()])), 30);
        r.status = observe(&r, None, 40);
        let phases: Vec<(Phase, u64)> = r.status.history.iter().map(|c| (c.phase, c.at)).collect();
        assert_eq!(phases, [(Phase::Pending, 10), (Phase::Ready, 30), (Phase::Offline, 40)]);
        assert_eq!(r.status.reason, "no agent is connected");
        assert_eq!(r.status.last_seen, 100, "kept from the last live summary");
        assert_eq!(r.status.kubernetes_version, "v1.33.1", "the last known version stays");
        for t in 0..2 * PHASE_HISTORY as u64 {
            let l = live(&[healthy()]);
            r.status = observe(&r, if t % 2 == 0 { Some(&l) } else { None }, 100 + t);
        }
        assert_eq!(r.status.history.len(), PHASE_HISTORY);
    }

    #[test]
    fn last_seen_alone_is_not_a_change() {
        let r = record(Approval::Approved);
        let a = observe(&r, Some(&live(&[healthy()])), 10);
        let mut b = a.clone();
        b.last_seen += 30;
        assert!(shows_same(&a, &b));
        b.agents = 2;
        assert!(!shows_same(&a, &b));
    }
}

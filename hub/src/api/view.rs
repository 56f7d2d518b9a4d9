//! A cluster as the API shows it: the stored record, with the status the
//! hub observes now ([`live`]: `Get`, `List` and every call's answer) or as
//! it was recorded with a change ([`recorded`]: `Watch` events).

use ferry::proto::v1 as pb;

use crate::registry::{AgentReport, LiveSummary};
use crate::state::HubState;
use crate::status;
use crate::store::{
    ApprovalMode, Capacity, Check, CheckState, ClusterRecord, NodeCount, ObservedStatus, Phase,
};

/// Replicas listed per cluster (`agents` counts them all): a cluster's
/// answer stays far below gRPC's 4 MiB message limit, even in a `List` page
/// of clusters running many agents each.
pub const MAX_REPLICAS_SHOWN: usize = 64;

/// The API's phase for a stored one.
pub fn phase(p: Phase) -> pb::ClusterPhase {
    match p {
        Phase::Pending => pb::ClusterPhase::Pending,
        Phase::Ready => pb::ClusterPhase::Ready,
        Phase::NotReady => pb::ClusterPhase::NotReady,
        Phase::Offline => pb::ClusterPhase::Offline,
        Phase::Denied => pb::ClusterPhase::Denied,
    }
}

fn check(c: &Check) -> pb::HealthCheck {
    let state = match c.state {
        CheckState::Unknown => pb::HealthState::Unknown,
        CheckState::Ok => pb::HealthState::Ok,
        CheckState::Failed => pb::HealthState::Failed,
    };
    pb::HealthCheck { state: state as i32, detail: c.detail.clone() }
}

fn nodes(n: NodeCount) -> pb::NodeCounts {
    pb::NodeCounts { ready: n.ready, not_ready: n.not_ready }
}

fn resources(c: Capacity) -> pb::Resources {
    pb::Resources { cpu_millis: c.cpu_millis, memory_bytes: c.memory_bytes }
}

/// The cluster with the status it has now: agents' live reports, and the
/// connected replicas.
pub fn live(state: &HubState, record: &ClusterRecord) -> pb::Cluster {
    let live = state.registry.get(&record.name).filter(|l| Some(l.id) == record.cluster_id());
    let summary = live.map(|l| l.summary());
    let elsewhere = status::sessions_elsewhere(state, &record.name);
    if summary.as_ref().is_none_or(|s| s.sessions == 0) && elsewhere > 0 {
        // Another hub replica holds the agents and records their status.
        return recorded(record);
    }
    // Sessions on other replicas count too (as the recorder counts them).
    let counted = summary.clone().map(|s| LiveSummary { sessions: s.sessions + elsewhere, ..s });
    let status = status::observe(record, counted.as_ref(), crate::store::unix_now());
    let mut cluster = render(record, &status);
    if let Some(s) = &summary {
        cluster.replicas = replicas(s);
    }
    cluster
}

/// The cluster as recorded with its last stored change.
pub fn recorded(record: &ClusterRecord) -> pb::Cluster {
    render(record, &record.status)
}

fn replicas(summary: &LiveSummary) -> Vec<pb::AgentReplica> {
    summary
        .replicas
        .iter()
        .take(MAX_REPLICAS_SHOWN)
        .map(|r| {
            let report = r.report.clone().unwrap_or_else(AgentReport::default);
            pb::AgentReplica {
                agent_id: r.agent_id.clone(),
                agent_version: r.agent_version.clone(),
                session_id: r.session.to_string(),
                connected_at_unix: r.connected_at,
                last_heartbeat_unix_ms: r.last_heartbeat_ms,
                heartbeat_rtt_micros: report.heartbeat_rtt_micros,
                reported_at_unix_ms: report.observed_at_ms,
                apiserver_reachable: report.apiserver_reachable,
                apiserver_error: report.apiserver_error,
            }
        })
        .collect()
}

fn render(record: &ClusterRecord, status: &ObservedStatus) -> pb::Cluster {
    let (shown, reason) = status::shown_phase(record, status.health, &status.reason);
    pb::Cluster {
        name: record.name.clone(),
        id: record.id.clone(),
        connected: status.agents > 0,
        agents: status.agents,
        kubernetes_version: status.kubernetes_version.clone(),
        created_at_unix: record.created_at,
        phase: phase(shown) as i32,
        reason,
        approval: match record.approval_mode {
            ApprovalMode::Auto => pb::ApprovalMode::Auto,
            ApprovalMode::Manual => pb::ApprovalMode::Manual,
        } as i32,
        labels: record.labels.clone().into_iter().collect(),
        last_seen_unix: status.last_seen,
        platform: status.platform.clone(),
        nodes: status.nodes.map(nodes),
        capacity: status.capacity.map(resources),
        allocatable: status.allocatable.map(resources),
        readyz: Some(check(&status.readyz)),
        livez: Some(check(&status.livez)),
        replicas: Vec::new(),
        history: status
            .history
            .iter()
            .map(|c| pb::PhaseTransition {
                phase: phase(c.phase) as i32,
                reason: c.reason.clone(),
                at_unix: c.at,
            })
            .collect(),
        phase_since_unix: status.current().map_or(0, |c| c.at),
        revision: record.revision,
        missing_permissions: status.missing_permissions.clone(),
    }
}

//! How clusters, tokens and grants are printed: kubectl-style tables and
//! JSON documents.
//!
//! Both are part of `ferryctl`'s user-facing contract; scripts parse them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::management::{Cluster, Grant, GrantSubject, HealthCheck, Resources, TokenInfo};

/// Column headers of the clusters table, in order.
pub const CLUSTER_COLUMNS: [&str; 5] = ["NAME", "PHASE", "AGENTS", "VERSION", "AGE"];

/// Shown for a value the hub does not know (yet), as kubectl does.
const UNKNOWN: &str = "<unknown>";

/// Renders clusters as a table with columns [`CLUSTER_COLUMNS`], sorted by
/// name, aligned like kubectl (3 spaces between columns), ending in a
/// newline. `now` makes the AGE column testable.
pub fn clusters_table(clusters: &[Cluster], now: SystemTime) -> String {
    let mut sorted: Vec<&Cluster> = clusters.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut rows: Vec<[String; 5]> = vec![CLUSTER_COLUMNS.map(str::to_owned)];
    rows.extend(sorted.into_iter().map(|c| {
        [
            c.name.clone(),
            c.phase.to_string(),
            c.agents.to_string(),
            c.kubernetes_version.clone().unwrap_or_else(|| UNKNOWN.to_owned()),
            c.created_at.map_or_else(|| UNKNOWN.to_owned(), |t| human_age(now.duration_since(t).ok())),
        ]
    }));
    align(&rows)
}

/// One cluster as a JSON object: `name`, `id`, `phase` (`Pending`,
/// `Ready`, `NotReady`, `Offline`, `Denied`), `reason`, `connected`,
/// `agents`, `kubernetesVersion` and `platform` (string or null),
/// `approval` (`auto`/`manual`), `labels`, `createdAtUnix`, `lastSeenUnix`
/// and `phaseSinceUnix` (seconds or null), `nodes` (`{ready, notReady}` or
/// null), `capacity` and `allocatable` (`{cpuMillis, memoryBytes}` or
/// null), `readyz` and `livez` (`{state, detail}`), `missingPermissions`,
/// `replicas` (`[{agentId, agentVersion, sessionId, connectedAtUnix,
/// lastHeartbeatUnixMs, heartbeatRttMicros, reportedAtUnixMs,
/// apiserverReachable, apiserverError}]`), `history` (`[{phase, reason,
/// atUnix}]`, oldest first) and `revision`.
pub fn cluster_value(c: &Cluster) -> serde_json::Value {
    let resources = |r: Option<Resources>| {
        r.map(|r| serde_json::json!({"cpuMillis": r.cpu_millis, "memoryBytes": r.memory_bytes}))
    };
    let check = |h: &HealthCheck| serde_json::json!({"state": h.state.as_str(), "detail": h.detail});
    serde_json::json!({
        "name": c.name,
        "id": c.id.to_string(),
        "phase": c.phase.as_str(),
        "reason": c.reason,
        "connected": c.connected,
        "agents": c.agents,
        "kubernetesVersion": c.kubernetes_version,
        "platform": c.platform,
        "approval": c.approval.as_str(),
        "labels": c.labels,
        "createdAtUnix": unix_secs(c.created_at),
        "lastSeenUnix": unix_secs(c.last_seen),
        "phaseSinceUnix": unix_secs(c.phase_since),
        "nodes": c.nodes.map(|n| serde_json::json!({"ready": n.ready, "notReady": n.not_ready})),
        "capacity": resources(c.capacity),
        "allocatable": resources(c.allocatable),
        "readyz": check(&c.readyz),
        "livez": check(&c.livez),
        "missingPermissions": c.missing_permissions,
        "replicas": c.replicas.iter().map(|r| serde_json::json!({
            "agentId": r.agent_id,
            "agentVersion": r.agent_version,
            "sessionId": r.session_id,
            "connectedAtUnix": unix_secs(r.connected_at),
            "lastHeartbeatUnixMs": unix_millis(r.last_heartbeat),
            "heartbeatRttMicros": r.heartbeat_rtt.map(|d| d.as_micros() as u64),
            "reportedAtUnixMs": unix_millis(r.reported_at),
            "apiserverReachable": r.apiserver_reachable,
            "apiserverError": r.apiserver_error,
        })).collect::<Vec<_>>(),
        "history": c.history.iter().map(|h| serde_json::json!({
            "phase": h.phase.as_str(), "reason": h.reason, "atUnix": unix_secs(h.at),
        })).collect::<Vec<_>>(),
        "revision": c.revision,
    })
}

/// Renders clusters as a pretty-printed JSON array (sorted by name) of
/// [`cluster_value`] objects, ending in a newline.
pub fn clusters_json(clusters: &[Cluster]) -> String {
    let mut sorted: Vec<&Cluster> = clusters.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let items: Vec<serde_json::Value> = sorted.into_iter().map(cluster_value).collect();
    // Serialising a `Value` cannot fail; fall back to an empty array anyway.
    let mut out = serde_json::to_string_pretty(&items).unwrap_or_else(|_| "[]".to_owned());
    out.push('\n');
    out
}

fn unix_millis(t: Option<SystemTime>) -> Option<u64> {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_millis() as u64)
}

fn unix_secs(t: Option<SystemTime>) -> Option<u64> {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_secs())
}

/// A time ahead of `now` as kubectl would show a remaining duration
/// (`23h`), or `expired`.
fn remaining(until: Option<SystemTime>, now: SystemTime) -> String {
    match until.map(|t| t.duration_since(now)) {
        Some(Ok(left)) => human_age(Some(left)),
        Some(Err(_)) => "expired".to_owned(),
        None => UNKNOWN.to_owned(),
    }
}

/// Tokens as a table: ID, USER, GROUPS, CLUSTER, EXPIRES (time left), AGE.
pub fn tokens_table(tokens: &[TokenInfo], now: SystemTime) -> String {
    let mut rows: Vec<[String; 6]> =
        vec![["ID", "USER", "GROUPS", "CLUSTER", "EXPIRES", "AGE"].map(str::to_owned)];
    rows.extend(tokens.iter().map(|t| {
        [
            t.id.clone(),
            t.user.clone(),
            if t.groups.is_empty() { "<none>".to_owned() } else { t.groups.join(",") },
            t.cluster.clone().unwrap_or_else(|| "*".to_owned()),
            remaining(t.expires_at, now),
            t.created_at.map_or_else(|| UNKNOWN.to_owned(), |c| human_age(now.duration_since(c).ok())),
        ]
    }));
    align(&rows)
}

/// Grants as a table: CLUSTER, SUBJECT (`user:NAME` or `group:NAME`),
/// IMPERSONATE, CREATED-BY, AGE.
pub fn grants_table(grants: &[Grant], now: SystemTime) -> String {
    let mut rows: Vec<[String; 5]> =
        vec![["CLUSTER", "SUBJECT", "IMPERSONATE", "CREATED-BY", "AGE"].map(str::to_owned)];
    rows.extend(grants.iter().map(|g| {
        [
            g.cluster.clone(),
            g.subject.to_string(),
            if g.allow_impersonate { "yes" } else { "no" }.to_owned(),
            g.created_by.clone(),
            g.created_at.map_or_else(|| UNKNOWN.to_owned(), |c| human_age(now.duration_since(c).ok())),
        ]
    }));
    align(&rows)
}

/// Tokens as a JSON array (no secrets: the hub never returns them again).
pub fn tokens_json(tokens: &[TokenInfo]) -> String {
    let items: Vec<serde_json::Value> = tokens
        .iter()
        .map(|t| {
            serde_json::json!({
                "id": t.id, "user": t.user, "groups": t.groups, "cluster": t.cluster,
                "createdAtUnix": unix_secs(t.created_at), "expiresAtUnix": unix_secs(t.expires_at),
                "createdBy": t.created_by,
            })
        })
        .collect();
    let mut out = serde_json::to_string_pretty(&items).unwrap_or_else(|_| "[]".to_owned());
    out.push('\n');
    out
}

/// Grants as a JSON array.
pub fn grants_json(grants: &[Grant]) -> String {
    let items: Vec<serde_json::Value> = grants
        .iter()
        .map(|g| {
            let (user, group) = match &g.subject {
                GrantSubject::User(u) => (Some(u), None),
                GrantSubject::Group(gr) => (None, Some(gr)),
            };
            serde_json::json!({
                "cluster": g.cluster, "user": user, "group": group,
                "allowImpersonate": g.allow_impersonate,
                "createdAtUnix": unix_secs(g.created_at), "createdBy": g.created_by,
            })
        })
        .collect();
    let mut out = serde_json::to_string_pretty(&items).unwrap_or_else(|_| "[]".to_owned());
    out.push('\n');
    out
}

/// Pads every column but the last to its widest cell plus 3 spaces (at
/// least 6 wide), as kubectl's tabwriter does.
fn align<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            out.push_str(cell);
            if i + 1 < N {
                let width = (widths[i] + 3).max(6);
                out.extend(std::iter::repeat_n(' ', width - cell.chars().count()));
            }
        }
        out.push('\n');
    }
    out
}

/// Formats an age the way kubectl's AGE column does: `45s`, `5m3s`, `95m`,
/// `5h30m`, `20h`, `3d4h`, `200d`, `3y45d`. `None` (a creation time in the
/// future, i.e. clock skew) shows as `0s`.
pub fn human_age(age: Option<Duration>) -> String {
    let Some(age) = age else { return "0s".to_owned() };
    let seconds = age.as_secs();
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        return match seconds % 60 {
            0 => format!("{minutes}m"),
            s => format!("{minutes}m{s}s"),
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        return match minutes % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    let days = hours / 24;
    if hours < 24 * 8 {
        return match hours % 24 {
            0 => format!("{days}d"),
            h => format!("{days}d{h}h"),
        };
    }
    if days < 365 * 2 {
        return format!("{days}d");
    }
    let years = days / 365;
    if days < 365 * 8 {
        return match days % 365 {
            0 => format!("{years}y"),
            d => format!("{years}y{d}d"),
        };
    }
    format!("{years}y")
}

#[cfg(test)]
mod tests {
    use ferry::ids::ClusterId;

    use super::*;
    use crate::management::{ApprovalMode, ClusterPhase};

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn cluster(name: &str, connected: bool, agents: u32, version: Option<&str>, age: Option<u64>) -> Cluster {
        Cluster {
            name: name.into(),
            id: ClusterId::new(),
            phase: if connected { ClusterPhase::Ready } else { ClusterPhase::Offline },
            reason: String::new(),
            connected,
            agents,
            kubernetes_version: version.map(str::to_owned),
            platform: None,
            created_at: age.map(|a| now() - Duration::from_secs(a)),
            approval: ApprovalMode::Auto,
            labels: Default::default(),
            last_seen: None,
            nodes: None,
            capacity: None,
            allocatable: None,
            readyz: Default::default(),
            livez: Default::default(),
            missing_permissions: Vec::new(),
            replicas: Vec::new(),
            history: Vec::new(),
            phase_since: None,
            revision: 0,
        }
    }

    #[test]
    fn table_is_aligned_and_sorted() {
        let clusters = [
            cluster("prod-eu-west", false, 0, None, Some(3 * 86_400)),
            cluster("edge-1", true, 2, Some("v1.31.2"), Some(300)),
        ];
        let expected = "\
NAME           PHASE     AGENTS   VERSION     AGE
edge-1         Ready     2        v1.31.2     5m
prod-eu-west   Offline   0        <unknown>   3d
";
        assert_eq!(clusters_table(&clusters, now()), expected);
    }

    #[test]
    fn empty_table_is_just_the_header() {
        assert_eq!(clusters_table(&[], now()), "NAME   PHASE   AGENTS   VERSION   AGE\n");
    }

    #[test]
    fn json_has_stable_field_names() {
        let c = cluster("a", true, 1, Some("v1.30.0"), Some(10));
        let v: serde_json::Value =
            serde_json::from_str(&clusters_json(std::slice::from_ref(&c))).expect("json");
        assert_eq!(
            v,
            serde_json::json!([{
                "name": "a",
                "id": c.id.to_string(),
                "phase": "Ready",
                "reason": "",
                "connected": true,
                "agents": 1,
                "kubernetesVersion": "v1.30.0",
                "platform": null,
                "approval": "auto",
                "labels": {},
                "createdAtUnix": 1_800_000_000u64 - 10,
                "lastSeenUnix": null,
                "phaseSinceUnix": null,
                "nodes": null,
                "capacity": null,
                "allocatable": null,
                "readyz": {"state": "Unknown", "detail": ""},
                "livez": {"state": "Unknown", "detail": ""},
                "missingPermissions": [],
                "replicas": [],
                "history": [],
                "revision": 0,
            }])
        );
        assert_eq!(clusters_json(&[]), "[]\n");
    }

    #[test]
    fn token_and_grant_tables() {
        let t = TokenInfo {
            id: "0b3c".into(),
            user: "alice".into(),
            groups: vec!["dev".into(), "ops".into()],
            cluster: None,
            created_at: Some(now() - Duration::from_secs(60)),
            expires_at: Some(now() + Duration::from_secs(3 * 3600)),
            created_by: "ferry-admin".into(),
        };
        assert_eq!(
            tokens_table(&[t], now()),
            "ID     USER    GROUPS    CLUSTER   EXPIRES   AGE\n0b3c   alice   dev,ops   *         3h        60s\n"
        );
        let g = Grant {
            cluster: "edge".into(),
            subject: GrantSubject::Group("sre".into()),
            allow_impersonate: true,
            created_at: Some(now()),
            created_by: "ferry-admin".into(),
        };
        let table = grants_table(std::slice::from_ref(&g), now());
        assert!(table.contains("edge      group:sre   yes"), "{table}");
        let v: serde_json::Value = serde_json::from_str(&grants_json(&[g])).expect("json");
        assert_eq!(v[0]["group"], "sre");
        assert_eq!(v[0]["user"], serde_json::Value::Null);
    }

    #[test]
    fn ages_match_kubectl() {
        let age = |s: u64| human_age(Some(Duration::from_secs(s)));
        assert_eq!(age(0), "0s");
        assert_eq!(age(119), "119s");
        assert_eq!(age(183), "3m3s");
        assert_eq!(age(300), "5m");
        assert_eq!(age(95 * 60), "95m");
        assert_eq!(age(5 * 3600 + 30 * 60), "5h30m");
        assert_eq!(age(20 * 3600), "20h");
        assert_eq!(age(3 * 86_400 + 4 * 3600), "3d4h");
        assert_eq!(age(200 * 86_400), "200d");
        assert_eq!(age(3 * 365 * 86_400 + 45 * 86_400), "3y45d");
        assert_eq!(age(10 * 365 * 86_400), "10y");
        assert_eq!(human_age(None), "0s");
    }
}

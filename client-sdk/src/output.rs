//! How clusters, tokens and grants are printed: kubectl-style tables and
//! JSON documents.
//!
//! Both are part of `ferryctl`'s user-facing contract; scripts parse them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::management::{Cluster, Grant, GrantSubject, HealthCheck, Resources, TokenInfo};

/// Column headers of the clusters table, in order.
pub const CLUSTER_COLUMNS: [&str; 7] = ["NAME", "PHASE", "VERSION", "NODES", "AGENTS", "AGE", "LAST-SEEN"];

/// Column headers of the wide clusters table (`-o wide`), in order.
pub const WIDE_CLUSTER_COLUMNS: [&str; 12] = [
    "NAME",
    "PHASE",
    "VERSION",
    "NODES",
    "AGENTS",
    "AGE",
    "LAST-SEEN",
    "PLATFORM",
    "CPU",
    "MEMORY",
    "LABELS",
    "REASON",
];

/// Shown for a value the hub does not know (yet), as kubectl does.
const UNKNOWN: &str = "<unknown>";

/// One cluster's cells under [`CLUSTER_COLUMNS`]: NODES is `ready/total`,
/// LAST-SEEN how long ago an agent was last heard from (`<never>`).
pub fn cluster_row(c: &Cluster, now: SystemTime) -> [String; 7] {
    [
        c.name.clone(),
        c.phase.to_string(),
        c.kubernetes_version.clone().unwrap_or_else(|| UNKNOWN.to_owned()),
        c.nodes.map_or_else(|| UNKNOWN.to_owned(), |n| format!("{}/{}", n.ready, n.ready + n.not_ready)),
        c.agents.to_string(),
        c.created_at.map_or_else(|| UNKNOWN.to_owned(), |t| human_age(now.duration_since(t).ok())),
        c.last_seen.map_or_else(|| "<never>".to_owned(), |t| human_age(now.duration_since(t).ok())),
    ]
}

/// One cluster's cells under [`WIDE_CLUSTER_COLUMNS`]: CPU and MEMORY are
/// allocatable (`2`, `1900m`; `7.5Gi`).
pub fn wide_cluster_row(c: &Cluster, now: SystemTime) -> [String; 12] {
    let [name, phase, version, nodes, agents, age, seen] = cluster_row(c, now);
    let labels: Vec<String> = c.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    [
        name,
        phase,
        version,
        nodes,
        agents,
        age,
        seen,
        c.platform.clone().unwrap_or_else(|| UNKNOWN.to_owned()),
        c.allocatable.map_or_else(|| UNKNOWN.to_owned(), |r| cpu(r.cpu_millis)),
        c.allocatable.map_or_else(|| UNKNOWN.to_owned(), |r| memory(r.memory_bytes)),
        if labels.is_empty() { "<none>".to_owned() } else { labels.join(",") },
        if c.reason.is_empty() { "<none>".to_owned() } else { c.reason.clone() },
    ]
}

fn sorted(clusters: &[Cluster]) -> Vec<&Cluster> {
    let mut sorted: Vec<&Cluster> = clusters.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    sorted
}

/// Renders clusters as a table with columns [`CLUSTER_COLUMNS`], sorted by
/// name, aligned like kubectl (3 spaces between columns), ending in a
/// newline. `now` makes the AGE and LAST-SEEN columns testable.
pub fn clusters_table(clusters: &[Cluster], now: SystemTime) -> String {
    let mut rows: Vec<[String; 7]> = vec![CLUSTER_COLUMNS.map(str::to_owned)];
    rows.extend(sorted(clusters).into_iter().map(|c| cluster_row(c, now)));
    align(&rows)
}

/// Renders clusters as the wide table ([`WIDE_CLUSTER_COLUMNS`]).
pub fn clusters_wide(clusters: &[Cluster], now: SystemTime) -> String {
    let mut rows: Vec<[String; 12]> = vec![WIDE_CLUSTER_COLUMNS.map(str::to_owned)];
    rows.extend(sorted(clusters).into_iter().map(|c| wide_cluster_row(c, now)));
    align(&rows)
}

/// Renders clusters as YAML documents (one per cluster, `---` between),
/// with the fields of [`cluster_value`].
pub fn clusters_yaml(clusters: &[Cluster]) -> String {
    sorted(clusters)
        .into_iter()
        .map(|c| serde_yaml::to_string(&cluster_value(c)).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("---\n")
}

/// A point in time for people: RFC 3339 and how long ago (`2026-01-02T03:04:05Z (5m ago)`).
fn when(t: Option<SystemTime>, now: SystemTime) -> String {
    match t {
        None => "<never>".to_owned(),
        Some(t) => format!(
            "{} ({} ago)",
            humantime::format_rfc3339_seconds(t),
            human_age(now.duration_since(t).ok())
        ),
    }
}

/// `ferryctl describe cluster`: status, replicas, labels, history and
/// grants, kubectl-describe style.
pub fn describe_cluster(c: &Cluster, grants: &[Grant], now: SystemTime) -> String {
    let mut out = String::new();
    let mut field = |name: &str, value: String| {
        out.push_str(&format!("{:<14}{value}\n", format!("{name}:")));
    };
    field("Name", c.name.clone());
    field("ID", c.id.to_string());
    field("Phase", format!("{} since {}", c.phase, when(c.phase_since, now)));
    if !c.reason.is_empty() {
        field("Reason", c.reason.clone());
    }
    field("Approval", c.approval.as_str().to_owned());
    let labels: Vec<String> = c.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    field("Labels", if labels.is_empty() { "<none>".to_owned() } else { labels.join("\n              ") });
    field("Created", when(c.created_at, now));
    field("Last seen", when(c.last_seen, now));
    let version = c.kubernetes_version.clone().unwrap_or_else(|| UNKNOWN.to_owned());
    field(
        "Kubernetes",
        match &c.platform {
            Some(p) => format!("{version} ({p})"),
            None => version,
        },
    );
    let check = |h: &HealthCheck| {
        if h.detail.is_empty() {
            h.state.as_str().to_owned()
        } else {
            format!("{} ({})", h.state.as_str(), h.detail)
        }
    };
    field("Readyz", check(&c.readyz));
    field("Livez", check(&c.livez));
    field(
        "Nodes",
        c.nodes
            .map_or_else(|| UNKNOWN.to_owned(), |n| format!("{} ready, {} not ready", n.ready, n.not_ready)),
    );
    let res = |r: Option<Resources>| {
        r.map_or_else(
            || UNKNOWN.to_owned(),
            |r| format!("cpu {}, memory {}", cpu(r.cpu_millis), memory(r.memory_bytes)),
        )
    };
    field("Capacity", res(c.capacity));
    field("Allocatable", res(c.allocatable));
    if !c.missing_permissions.is_empty() {
        field("Missing", c.missing_permissions.join(", "));
    }
    out.push_str(&format!("Agents:       {}\n", c.agents));
    if !c.replicas.is_empty() {
        let mut rows: Vec<[String; 6]> = vec![
            ["AGENT-ID", "VERSION", "CONNECTED", "LAST-HEARTBEAT", "RTT", "APISERVER"].map(str::to_owned),
        ];
        rows.extend(c.replicas.iter().map(|r| {
            [
                r.agent_id.clone(),
                r.agent_version.clone(),
                r.connected_at.map_or_else(|| UNKNOWN.to_owned(), |t| human_age(now.duration_since(t).ok())),
                r.last_heartbeat
                    .map_or_else(|| UNKNOWN.to_owned(), |t| human_age(now.duration_since(t).ok())),
                r.heartbeat_rtt
                    .map_or_else(|| UNKNOWN.to_owned(), |d| format!("{:.1}ms", d.as_secs_f64() * 1000.0)),
                if r.apiserver_reachable {
                    "reachable".to_owned()
                } else {
                    format!("unreachable: {}", r.apiserver_error)
                },
            ]
        }));
        out.extend(align(&rows).lines().map(|l| format!("  {l}\n")));
    }
    out.push_str("History:\n");
    if c.history.is_empty() {
        out.push_str("  <none>\n");
    } else {
        let mut rows: Vec<[String; 3]> = vec![["TIME", "PHASE", "REASON"].map(str::to_owned)];
        rows.extend(c.history.iter().map(|h| {
            [
                h.at.map_or_else(|| UNKNOWN.to_owned(), |t| humantime::format_rfc3339_seconds(t).to_string()),
                h.phase.to_string(),
                h.reason.clone(),
            ]
        }));
        out.extend(align(&rows).lines().map(|l| format!("  {}\n", l.trim_end())));
    }
    out.push_str("Grants:\n");
    if grants.is_empty() {
        out.push_str("  <none>\n");
    } else {
        let mut rows: Vec<[String; 4]> =
            vec![["CLUSTER", "SUBJECT", "IMPERSONATE", "CREATED-BY"].map(str::to_owned)];
        rows.extend(grants.iter().map(|g| {
            [
                g.cluster.clone(),
                g.subject.to_string(),
                if g.allow_impersonate { "yes" } else { "no" }.to_owned(),
                g.created_by.clone(),
            ]
        }));
        out.extend(align(&rows).lines().map(|l| format!("  {l}\n")));
    }
    out
}

/// CPU millicores as Kubernetes writes quantities: `2`, `1900m`.
pub fn cpu(millis: u64) -> String {
    if millis.is_multiple_of(1000) { (millis / 1000).to_string() } else { format!("{millis}m") }
}

/// Bytes in binary units with one decimal at most: `8Gi`, `7.5Gi`, `512Mi`.
pub fn memory(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["Ki", "Mi", "Gi", "Ti", "Pi"];
    let mut value = bytes as f64;
    let mut unit = "";
    for u in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = u;
    }
    let text = format!("{value:.1}");
    format!("{}{unit}", text.trim_end_matches(".0"))
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

/// Column widths for rows printed one at a time (`ferryctl clusters -w`):
/// the widest cell of the rows seen so far per column, so later rows line
/// up with the first batch unless they are wider.
#[derive(Clone, Debug)]
pub struct Columns<const N: usize>([usize; N]);

impl<const N: usize> Columns<N> {
    /// Widths that fit `rows`.
    pub fn fit(rows: &[[String; N]]) -> Self {
        let mut widths = [0usize; N];
        for row in rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        Columns(widths)
    }

    /// One row, padded, ending in a newline.
    pub fn line(&mut self, row: &[String; N]) -> String {
        let mut out = String::new();
        for (i, cell) in row.iter().enumerate() {
            self.0[i] = self.0[i].max(cell.chars().count());
            out.push_str(cell);
            if i + 1 < N {
                let width = (self.0[i] + 3).max(6);
                out.extend(std::iter::repeat_n(' ', width - cell.chars().count()));
            }
        }
        out.push('\n');
        out
    }
}

/// Pads every column but the last to its widest cell plus 3 spaces (at
/// least 6 wide), as kubectl's tabwriter does.
fn align<const N: usize>(rows: &[[String; N]]) -> String {
    let mut columns = Columns::fit(rows);
    rows.iter().map(|r| columns.line(r)).collect()
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

/// Columns of `ferryctl audit`.
pub const AUDIT_COLUMNS: [&str; 7] = ["TIME", "USER", "CLUSTER", "WHAT", "CODE", "DURATION", "REQUEST-ID"];

/// One audit event as a line of `ferryctl audit`: time, user, cluster,
/// what (verb and resource, path, or the management action), status,
/// duration, request id; padded to the widths of [`audit_header`].
pub fn audit_line(e: &crate::audit::AuditEvent) -> String {
    let what = if !e.action.is_empty() {
        if e.target.is_empty() { e.action.clone() } else { format!("{} {}", e.action, e.target) }
    } else {
        let object = if !e.resource.is_empty() {
            let mut r = e.resource.clone();
            if !e.api_group.is_empty() {
                r = format!("{r}.{}", e.api_group);
            }
            if !e.name.is_empty() {
                r = format!("{r}/{}", e.name);
            }
            if !e.subresource.is_empty() {
                r = format!("{r}/{}", e.subresource);
            }
            if !e.namespace.is_empty() {
                r = format!("{r} -n {}", e.namespace);
            }
            r
        } else {
            e.path.clone()
        };
        let kind = match e.kind.as_str() {
            "session.start" => " (session start)",
            "session.end" => " (session end)",
            _ => "",
        };
        format!("{} {object}{kind}", e.verb)
    };
    let code = if e.code == 0 && e.kind == "management" { "-".to_owned() } else { e.code.to_string() };
    let duration = if e.duration_ms > 0.0 { format!("{:.1}ms", e.duration_ms) } else { "-".to_owned() };
    let user = if e.user.is_empty() { "-" } else { &e.user };
    let cluster = if e.cluster.is_empty() { "-" } else { &e.cluster };
    let id = if e.request_id.is_empty() { "-" } else { &e.request_id };
    format!(
        "{:<24}  {:<16}  {:<12}  {:<48}  {:<4}  {:>10}  {id}\n",
        e.time, user, cluster, what, code, duration
    )
}

/// The header line of `ferryctl audit`.
pub fn audit_header() -> String {
    let c = AUDIT_COLUMNS;
    format!("{:<24}  {:<16}  {:<12}  {:<48}  {:<4}  {:>10}  {}\n", c[0], c[1], c[2], c[3], c[4], c[5], c[6])
}

/// One audit event as the JSON object the hub writes to its log (empty
/// fields left out).
pub fn audit_json(e: &crate::audit::AuditEvent) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    let mut text = |k: &str, v: &str| {
        if !v.is_empty() {
            m.insert(k.to_owned(), serde_json::Value::from(v));
        }
    };
    text("time", &e.time);
    text("kind", &e.kind);
    text("requestId", &e.request_id);
    m.insert("user".into(), e.user.clone().into());
    if !e.groups.is_empty() {
        m.insert("groups".into(), e.groups.clone().into());
    }
    let mut text = |k: &str, v: &str| {
        if !v.is_empty() {
            m.insert(k.to_owned(), serde_json::Value::from(v));
        }
    };
    for (k, v) in [
        ("authMethod", &e.auth_method),
        ("impersonatedUser", &e.impersonated_user),
        ("clientAddress", &e.client_address),
        ("cluster", &e.cluster),
        ("via", &e.via),
        ("verb", &e.verb),
        ("apiGroup", &e.api_group),
        ("apiVersion", &e.api_version),
        ("resource", &e.resource),
        ("subresource", &e.subresource),
        ("namespace", &e.namespace),
        ("name", &e.name),
        ("path", &e.path),
    ] {
        text(k, v);
    }
    if e.kind != "management" || e.code != 0 {
        m.insert("code".into(), e.code.into());
    }
    if e.kind != "management" && e.kind != "session.start" {
        m.insert("bytesIn".into(), e.bytes_in.into());
        m.insert("bytesOut".into(), e.bytes_out.into());
        m.insert("durationMs".into(), e.duration_ms.into());
    }
    let mut text = |k: &str, v: &str| {
        if !v.is_empty() {
            m.insert(k.to_owned(), serde_json::Value::from(v));
        }
    };
    text("outcome", &e.outcome);
    text("action", &e.action);
    text("target", &e.target);
    serde_json::Value::Object(m)
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
NAME           PHASE     VERSION     NODES       AGENTS   AGE   LAST-SEEN
edge-1         Ready     v1.31.2     <unknown>   2        5m    <never>
prod-eu-west   Offline   <unknown>   <unknown>   0        3d    <never>
";
        assert_eq!(clusters_table(&clusters, now()), expected);
    }

    #[test]
    fn empty_table_is_just_the_header() {
        assert_eq!(clusters_table(&[], now()), "NAME   PHASE   VERSION   NODES   AGENTS   AGE   LAST-SEEN\n");
    }

    #[test]
    fn wide_table_shows_nodes_capacity_labels_and_reason() {
        let mut c = cluster("edge-1", true, 1, Some("v1.33.1"), Some(60));
        c.nodes = Some(crate::management::NodeCounts { ready: 2, not_ready: 1 });
        c.allocatable = Some(Resources { cpu_millis: 3900, memory_bytes: 15 << 29 });
        c.platform = Some("linux/arm64".into());
        c.labels = [("env".to_owned(), "prod".to_owned())].into();
        c.last_seen = Some(now() - Duration::from_secs(4));
        let table = clusters_wide(&[c], now());
        let cells: Vec<&str> = table.lines().nth(1).expect("row").split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "edge-1",
                "Ready",
                "v1.33.1",
                "2/3",
                "1",
                "60s",
                "4s",
                "linux/arm64",
                "3900m",
                "7.5Gi",
                "env=prod",
                "<none>"
            ]
        );
        assert_eq!(
            (cpu(2000), cpu(250), memory(8 << 30), memory(512 << 20), memory(1000)),
            ("2".to_owned(), "250m".to_owned(), "8Gi".to_owned(), "512Mi".to_owned(), "1000".to_owned())
        );
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

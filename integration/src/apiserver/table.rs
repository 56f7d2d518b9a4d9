//! `meta.k8s.io` `Table` rendering, with the columns kube-apiserver's
//! printers use (what `kubectl get` shows).

use std::time::SystemTime;

use serde_json::{Value, json};

use super::clock::age as age_of;
use super::resources::ResourceKind;

/// What each row carries besides its cells (`includeObject`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IncludeObject {
    /// Nothing.
    None,
    /// `PartialObjectMetadata` (the default).
    Metadata,
    /// The whole object.
    Object,
}

impl IncludeObject {
    /// From the `includeObject` query parameter.
    pub fn parse(v: Option<&str>) -> Self {
        match v {
            Some("None") => Self::None,
            Some("Object") => Self::Object,
            _ => Self::Metadata,
        }
    }
}

fn column(name: &str, ty: &str, format: &str, priority: u8, description: &str) -> Value {
    json!({ "name": name, "type": ty, "format": format, "description": description, "priority": priority })
}

fn columns(kind: ResourceKind) -> Vec<Value> {
    const NAME_DOC: &str = "Name must be unique within a namespace. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
    const AGE_DOC: &str =
        "CreationTimestamp is a timestamp representing the server time when this object was created.";
    let name = column("Name", "string", "name", 0, NAME_DOC);
    let age = column("Age", "string", "", 0, AGE_DOC);
    let created_at = column("Created At", "date", "", 0, AGE_DOC);
    let binding = || {
        vec![
            name.clone(),
            column("Role", "string", "", 0, "RoleRef references the role being bound."),
            age.clone(),
            column("Users", "string", "", 1, "Users in the binding"),
            column("Groups", "string", "", 1, "Groups in the binding"),
            column("ServiceAccounts", "string", "", 1, "ServiceAccounts in the binding"),
        ]
    };
    match kind {
        ResourceKind::ServiceAccount => {
            vec![
                name,
                column(
                    "Secrets",
                    "integer",
                    "",
                    0,
                    "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use.",
                ),
                age,
            ]
        }
        ResourceKind::Secret => vec![
            name,
            column("Type", "string", "", 0, "Used to facilitate programmatic handling of secret data."),
            column("Data", "string", "", 0, "Data contains the secret data."),
            age,
        ],
        ResourceKind::Node => vec![
            name,
            column("Status", "string", "", 0, "The status of the node"),
            column("Roles", "string", "", 0, "The roles of the node"),
            age,
            column("Version", "string", "", 0, "Kubelet Version reported by the node."),
            column("Internal-IP", "string", "", 1, "List of internal IPs."),
            column("External-IP", "string", "", 1, "List of external IPs."),
            column(
                "OS-Image",
                "string",
                "",
                1,
                "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy)).",
            ),
            column(
                "Kernel-Version",
                "string",
                "",
                1,
                "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64).",
            ),
            column(
                "Container-Runtime",
                "string",
                "",
                1,
                "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2).",
            ),
        ],
        ResourceKind::ClusterRole | ResourceKind::Role => vec![name, created_at],
        ResourceKind::ClusterRoleBinding | ResourceKind::RoleBinding => binding(),
        ResourceKind::Deployment => vec![
            name,
            column("Ready", "string", "", 0, "Number of the pod with ready state"),
            column(
                "Up-to-date",
                "string",
                "",
                0,
                "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
            ),
            column(
                "Available",
                "string",
                "",
                0,
                "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
            ),
            age,
            column("Containers", "string", "", 1, "Names of each container in the template."),
            column("Images", "string", "", 1, "Images referenced by each container in the template."),
            column(
                "Selector",
                "string",
                "",
                1,
                "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment.",
            ),
        ],
        ResourceKind::Namespace => {
            vec![name, column("Status", "string", "", 0, "The status of the namespace"), age]
        }
        ResourceKind::ConfigMap => {
            vec![name, column("Data", "integer", "", 0, "Data contains the configuration data."), age]
        }
        ResourceKind::Event => vec![
            column("Last Seen", "string", "", 0, "Time when this Event was last observed."),
            column("Type", "string", "", 0, "Type of this event (Normal, Warning)."),
            column("Reason", "string", "", 0, "Reason is why the action was taken."),
            column("Object", "string", "", 0, "The object that this event is about."),
            column(
                "Message",
                "string",
                "",
                0,
                "A human-readable description of the status of this operation.",
            ),
            column("Name", "string", "name", 1, NAME_DOC),
        ],
        ResourceKind::Pod => vec![
            name,
            column(
                "Ready",
                "string",
                "",
                0,
                "The aggregate readiness state of this pod for accepting traffic.",
            ),
            column("Status", "string", "", 0, "The aggregate status of the containers in this pod."),
            column(
                "Restarts",
                "string",
                "",
                0,
                "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
            ),
            age,
            column(
                "IP",
                "string",
                "",
                1,
                "IP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated.",
            ),
            column(
                "Node",
                "string",
                "",
                1,
                "NodeName is a request to schedule this pod onto a specific node.",
            ),
            column(
                "Nominated Node",
                "string",
                "",
                1,
                "nominatedNodeName is set when this pod preempts other pods on the node.",
            ),
            column(
                "Readiness Gates",
                "string",
                "",
                1,
                "If specified, all readiness gates will be evaluated for pod readiness.",
            ),
        ],
    }
}

fn str_at<'a>(obj: &'a Value, pointer: &str) -> &'a str {
    obj.pointer(pointer).and_then(Value::as_str).unwrap_or_default()
}

fn count(obj: &Value, pointer: &str) -> usize {
    obj.pointer(pointer).and_then(Value::as_object).map_or(0, |m| m.len())
}

fn int_at(obj: &Value, pointer: &str) -> i64 {
    obj.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

fn or_none(s: String) -> String {
    if s.is_empty() { "<none>".to_string() } else { s }
}

/// The subjects of a binding of one kind, comma-separated.
fn subjects(obj: &Value, kind: &str) -> String {
    let names: Vec<String> = obj
        .get("subjects")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|s| s.get("kind").and_then(Value::as_str) == Some(kind))
        .map(|s| match (kind, str_at(s, "/namespace")) {
            ("ServiceAccount", ns) => format!("{ns}/{}", str_at(s, "/name")),
            _ => str_at(s, "/name").to_string(),
        })
        .collect();
    names.join(", ")
}

fn node_cells(obj: &Value, name: &str, age: String) -> Vec<Value> {
    let conditions = obj.pointer("/status/conditions").and_then(Value::as_array);
    let ready = conditions.into_iter().flatten().find(|c| c["type"] == "Ready");
    let mut status = match ready.and_then(|c| c["status"].as_str()) {
        Some("True") => "Ready".to_string(),
        Some(_) => "NotReady".to_string(),
        None => "Unknown".to_string(),
    };
    if obj.pointer("/spec/unschedulable") == Some(&Value::Bool(true)) {
        status.push_str(",SchedulingDisabled");
    }
    let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
    let roles: Vec<&str> = labels
        .into_iter()
        .flatten()
        .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/"))
        .filter(|r| !r.is_empty())
        .collect();
    let address = |t: &str| {
        let found = obj.pointer("/status/addresses").and_then(Value::as_array).into_iter().flatten();
        or_none(
            found
                .filter(|a| a["type"] == t)
                .filter_map(|a| a["address"].as_str())
                .collect::<Vec<_>>()
                .join(","),
        )
    };
    let info = |f: &str| or_none(str_at(obj, &format!("/status/nodeInfo/{f}")).to_string());
    vec![
        json!(name),
        json!(status),
        json!(or_none(roles.join(","))),
        json!(age),
        json!(str_at(obj, "/status/nodeInfo/kubeletVersion")),
        json!(address("InternalIP")),
        json!(address("ExternalIP")),
        json!(info("osImage")),
        json!(info("kernelVersion")),
        json!(info("containerRuntimeVersion")),
    ]
}

fn deployment_cells(obj: &Value, name: &str, age: String) -> Vec<Value> {
    let containers = obj.pointer("/spec/template/spec/containers").and_then(Value::as_array);
    let of_containers = |f: &str| {
        containers.into_iter().flatten().filter_map(|c| c[f].as_str()).collect::<Vec<_>>().join(",")
    };
    let selector = obj
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect::<Vec<_>>()
        .join(",");
    vec![
        json!(name),
        json!(format!("{}/{}", int_at(obj, "/status/readyReplicas"), int_at(obj, "/spec/replicas"))),
        json!(int_at(obj, "/status/updatedReplicas")),
        json!(int_at(obj, "/status/availableReplicas")),
        json!(age),
        json!(of_containers("name")),
        json!(of_containers("image")),
        json!(or_none(selector)),
    ]
}

fn cells(kind: ResourceKind, obj: &Value, now: SystemTime) -> Vec<Value> {
    let name = str_at(obj, "/metadata/name");
    let age = age_of(obj.pointer("/metadata/creationTimestamp").and_then(Value::as_str), now);
    let terminating = obj.pointer("/metadata/deletionTimestamp").is_some();
    match kind {
        ResourceKind::ServiceAccount => {
            let secrets = obj.get("secrets").and_then(Value::as_array).map_or(0, Vec::len);
            vec![json!(name), json!(secrets), json!(age)]
        }
        ResourceKind::Secret => {
            vec![json!(name), json!(str_at(obj, "/type")), json!(count(obj, "/data")), json!(age)]
        }
        ResourceKind::Node => node_cells(obj, name, age),
        ResourceKind::ClusterRole | ResourceKind::Role => {
            vec![json!(name), json!(str_at(obj, "/metadata/creationTimestamp"))]
        }
        ResourceKind::ClusterRoleBinding | ResourceKind::RoleBinding => vec![
            json!(name),
            json!(format!("{}/{}", str_at(obj, "/roleRef/kind"), str_at(obj, "/roleRef/name"))),
            json!(age),
            json!(subjects(obj, "User")),
            json!(subjects(obj, "Group")),
            json!(subjects(obj, "ServiceAccount")),
        ],
        ResourceKind::Deployment => deployment_cells(obj, name, age),
        ResourceKind::Namespace => {
            vec![json!(name), json!(str_at(obj, "/status/phase")), json!(age)]
        }
        ResourceKind::Event => {
            let seen = obj
                .get("lastTimestamp")
                .or_else(|| obj.get("eventTime"))
                .and_then(Value::as_str)
                .or_else(|| obj.pointer("/metadata/creationTimestamp").and_then(Value::as_str));
            let object = format!(
                "{}/{}",
                str_at(obj, "/involvedObject/kind").to_lowercase(),
                str_at(obj, "/involvedObject/name")
            );
            vec![
                json!(age_of(seen, now)),
                json!(str_at(obj, "/type")),
                json!(str_at(obj, "/reason")),
                json!(object),
                json!(str_at(obj, "/message")),
                json!(name),
            ]
        }
        ResourceKind::ConfigMap => {
            vec![json!(name), json!(count(obj, "/data") + count(obj, "/binaryData")), json!(age)]
        }
        ResourceKind::Pod => {
            let statuses = obj.pointer("/status/containerStatuses").and_then(Value::as_array);
            let total = obj.pointer("/spec/containers").and_then(Value::as_array).map_or(0, Vec::len);
            let ready = statuses.map_or(0, |s| s.iter().filter(|c| c["ready"] == json!(true)).count());
            let restarts: i64 =
                statuses.map_or(0, |s| s.iter().filter_map(|c| c["restartCount"].as_i64()).sum());
            let status = if terminating { "Terminating" } else { str_at(obj, "/status/phase") };
            let ip = str_at(obj, "/status/podIP").to_string();
            let node = str_at(obj, "/spec/nodeName").to_string();
            let nominated = str_at(obj, "/status/nominatedNodeName").to_string();
            vec![
                json!(name),
                json!(format!("{ready}/{total}")),
                json!(status),
                json!(restarts.to_string()),
                json!(age),
                json!(or_none(ip)),
                json!(or_none(node)),
                json!(or_none(nominated)),
                json!("<none>"),
            ]
        }
    }
}

fn row(kind: ResourceKind, obj: &Value, include: IncludeObject, now: SystemTime) -> Value {
    let mut row = json!({ "cells": cells(kind, obj, now) });
    match include {
        IncludeObject::None => {}
        IncludeObject::Metadata => {
            row["object"] = json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
            });
        }
        IncludeObject::Object => row["object"] = obj.clone(),
    }
    row
}

/// A Table of `objects`; `list_meta` becomes the Table's metadata.
pub(crate) fn table(
    kind: ResourceKind,
    version: &str,
    objects: &[Value],
    list_meta: Value,
    include: IncludeObject,
    now: SystemTime,
) -> Value {
    json!({
        "kind": "Table",
        "apiVersion": format!("meta.k8s.io/{version}"),
        "metadata": list_meta,
        "columnDefinitions": columns(kind),
        "rows": objects.iter().map(|o| row(kind, o, include, now)).collect::<Vec<_>>(),
    })
}

/// The response media type of a Table.
pub(crate) fn content_type(version: &str) -> String {
    format!("application/json;as=Table;v={version};g=meta.k8s.io")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_rows_show_ready_and_status() {
        let pod = json!({
            "metadata": {"name": "p", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n"},
            "status": {"phase": "Running", "podIP": "10.0.0.2", "containerStatuses": [{"ready": true, "restartCount": 1}, {"ready": false, "restartCount": 2}]}
        });
        let t = table(
            ResourceKind::Pod,
            "v1",
            &[pod],
            json!({"resourceVersion": "5"}),
            IncludeObject::Metadata,
            SystemTime::now(),
        );
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[0], "p");
        assert_eq!(cells[1], "1/2");
        assert_eq!(cells[2], "Running");
        assert_eq!(cells[3], "3");
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(t["columnDefinitions"][0]["name"], "Name");
        assert_eq!(t["metadata"]["resourceVersion"], "5");
    }
}

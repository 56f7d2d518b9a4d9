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
    match kind {
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

fn cells(kind: ResourceKind, obj: &Value, now: SystemTime) -> Vec<Value> {
    let name = str_at(obj, "/metadata/name");
    let age = age_of(obj.pointer("/metadata/creationTimestamp").and_then(Value::as_str), now);
    let terminating = obj.pointer("/metadata/deletionTimestamp").is_some();
    match kind {
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
            let data = obj.get("data").and_then(Value::as_object).map_or(0, |m| m.len())
                + obj.get("binaryData").and_then(Value::as_object).map_or(0, |m| m.len());
            vec![json!(name), json!(data), json!(age)]
        }
        ResourceKind::Pod => {
            let statuses = obj.pointer("/status/containerStatuses").and_then(Value::as_array);
            let total = obj.pointer("/spec/containers").and_then(Value::as_array).map_or(0, Vec::len);
            let ready = statuses.map_or(0, |s| s.iter().filter(|c| c["ready"] == json!(true)).count());
            let restarts: i64 =
                statuses.map_or(0, |s| s.iter().filter_map(|c| c["restartCount"].as_i64()).sum());
            let status = if terminating { "Terminating" } else { str_at(obj, "/status/phase") };
            let ip = str_at(obj, "/status/podIP");
            let node = str_at(obj, "/spec/nodeName");
            let nominated = str_at(obj, "/status/nominatedNodeName");
            let or_none = |s: &str| if s.is_empty() { "<none>".to_string() } else { s.to_string() };
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

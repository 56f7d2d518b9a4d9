//! What the server fills in: conversion and defaulting while decoding
//! (`normalize`), object metadata on create and update, the defaults
//! kube-apiserver applies, the status a running pod would have (there is no
//! kubelet, so pods are running and ready from creation), and the node the
//! cluster starts with.

use std::time::SystemTime;

use serde_json::{Map, Value, json};

use base64::Engine as _;

use super::clock::rfc3339;
use super::discovery::KUBE_VERSION;
use super::resources::{RBAC_GROUP, ResourceKind};

/// The node every pod is "scheduled" to.
pub(crate) const NODE_NAME: &str = "test-node";
const HOST_IP: &str = "10.0.0.1";
const NAME_LABEL: &str = "kubernetes.io/metadata.name";
const GENERATE_NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// The object at `v[key]`, made an (empty) object if it is not one; `None`
/// only if `v` itself is not an object.
fn obj_mut<'a>(v: &'a mut Value, key: &str) -> Option<&'a mut Map<String, Value>> {
    let slot = v.as_object_mut()?.entry(key).or_insert_with(|| json!({}));
    if !slot.is_object() {
        *slot = json!({});
    }
    slot.as_object_mut()
}

fn set(v: &mut Value, key: &str, value: Value) {
    if let Some(m) = v.as_object_mut() {
        m.insert(key.to_string(), value);
    }
}

fn default(map: &mut Map<String, Value>, key: &str, value: Value) {
    map.entry(key.to_string()).or_insert(value);
}

/// A `generateName` suffix, like the apiserver's five random characters.
pub(crate) fn name_suffix() -> String {
    uuid::Uuid::new_v4()
        .as_bytes()
        .iter()
        .take(5)
        .map(|b| char::from(GENERATE_NAME_ALPHABET[usize::from(*b) % GENERATE_NAME_ALPHABET.len()]))
        .collect()
}

/// What kube-apiserver does to an incoming object while decoding it, before
/// validation: a Secret's `stringData` is merged into `data` (and never
/// stored) and its `type` defaults to `Opaque`; binding subjects get their
/// default `apiGroup`.
pub(crate) fn normalize(kind: ResourceKind, obj: &mut Value) {
    match kind {
        ResourceKind::Secret => {
            let Some(m) = obj.as_object_mut() else { return };
            if let Some(Value::Object(plain)) = m.remove("stringData") {
                let data = m.entry("data").or_insert_with(|| json!({}));
                if !data.is_object() {
                    *data = json!({});
                }
                for (k, v) in plain {
                    let text = v.as_str().unwrap_or_default().as_bytes().to_vec();
                    set(data, &k, json!(base64::engine::general_purpose::STANDARD.encode(text)));
                }
            }
            if m.get("type").and_then(Value::as_str).is_none_or(str::is_empty) {
                m.insert("type".into(), json!("Opaque"));
            }
        }
        ResourceKind::RoleBinding | ResourceKind::ClusterRoleBinding => {
            for s in obj.get_mut("subjects").and_then(Value::as_array_mut).into_iter().flatten() {
                let Some(s) = s.as_object_mut() else { continue };
                if s.get("apiGroup").and_then(Value::as_str).is_none_or(str::is_empty) {
                    // A ServiceAccount's is "", which Go's JSON leaves out.
                    s.remove("apiGroup");
                    if matches!(s.get("kind").and_then(Value::as_str), Some("User" | "Group")) {
                        s.insert("apiGroup".into(), json!(RBAC_GROUP));
                    }
                }
            }
        }
        _ => {}
    }
}

/// Fills in a new object: identity, timestamps, defaults, status.
pub(crate) fn prepare_create(
    kind: ResourceKind,
    obj: &mut Value,
    namespace: &str,
    pod_ip: &str,
    now: SystemTime,
) {
    set(obj, "apiVersion", json!(kind.api_version()));
    set(obj, "kind", json!(kind.kind()));
    let Some(meta) = obj_mut(obj, "metadata") else { return };
    if kind.namespaced() {
        meta.insert("namespace".into(), json!(namespace));
    } else {
        meta.remove("namespace");
    }
    meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
    meta.insert("creationTimestamp".into(), json!(rfc3339(now)));
    for field in
        ["resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink", "generation"]
    {
        meta.remove(field);
    }
    match kind {
        ResourceKind::Namespace => {
            default_namespace(obj);
            set(obj, "status", json!({ "phase": "Active" }));
        }
        ResourceKind::Pod => {
            default_pod_spec(obj);
            let status = pod_status(obj, pod_ip, now);
            set(obj, "status", status);
        }
        ResourceKind::Deployment => {
            if let Some(meta) = obj_mut(obj, "metadata") {
                meta.insert("generation".into(), json!(1));
            }
            default_deployment(obj);
            set(obj, "status", json!({}));
        }
        // Nodes keep the status they are created with, as in kube-apiserver.
        _ => {}
    }
}

/// Carries server-owned fields from the stored object into a replacement.
pub(crate) fn prepare_update(kind: ResourceKind, new: &mut Value, old: &Value) {
    set(new, "apiVersion", json!(kind.api_version()));
    set(new, "kind", json!(kind.kind()));
    let Some(meta) = obj_mut(new, "metadata") else { return };
    for field in [
        "uid",
        "creationTimestamp",
        "namespace",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
    ] {
        match old.pointer(&format!("/metadata/{field}")) {
            Some(v) => meta.insert(field.into(), v.clone()),
            None => meta.remove(field),
        };
    }
    meta.remove("selfLink");
    match kind {
        ResourceKind::Namespace => default_namespace(new),
        ResourceKind::Pod => default_pod_spec(new),
        ResourceKind::Deployment => {
            default_deployment(new);
            // The generation counts changes of the spec.
            let generation = old.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
            let bumped = if new.get("spec") == old.get("spec") { generation } else { generation + 1 };
            if let Some(meta) = obj_mut(new, "metadata") {
                meta.insert("generation".into(), json!(bumped));
            }
        }
        _ => {}
    }
    // `status` is a subresource: writes to the main resource leave it alone.
    if let Some(status) = old.get("status") {
        set(new, "status", status.clone());
    } else if let Some(m) = new.as_object_mut() {
        m.remove("status");
    }
}

fn default_namespace(obj: &mut Value) {
    let name = obj.pointer("/metadata/name").cloned().unwrap_or(Value::Null);
    if let Some(meta) = obj_mut(obj, "metadata") {
        let labels = meta.entry("labels").or_insert_with(|| json!({}));
        set(labels, NAME_LABEL, name);
    }
    if let Some(spec) = obj_mut(obj, "spec") {
        default(spec, "finalizers", json!(["kubernetes"]));
    }
}

fn pull_policy(image: &str) -> &'static str {
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        _ if last.contains('@') => "IfNotPresent",
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn default_containers(spec: &mut Map<String, Value>, field: &str) {
    let Some(containers) = spec.get_mut(field).and_then(Value::as_array_mut) else { return };
    for c in containers.iter_mut().filter_map(Value::as_object_mut) {
        let image = c.get("image").and_then(Value::as_str).unwrap_or_default().to_string();
        default(c, "imagePullPolicy", json!(pull_policy(&image)));
        default(c, "resources", json!({}));
        default(c, "terminationMessagePath", json!("/dev/termination-log"));
        default(c, "terminationMessagePolicy", json!("File"));
    }
}

/// The defaults of every pod spec, a pod's or a template's.
fn default_template_spec(spec: &mut Map<String, Value>) {
    default(spec, "restartPolicy", json!("Always"));
    default(spec, "terminationGracePeriodSeconds", json!(30));
    default(spec, "dnsPolicy", json!("ClusterFirst"));
    default(spec, "securityContext", json!({}));
    default(spec, "schedulerName", json!("default-scheduler"));
    default_containers(spec, "initContainers");
    default_containers(spec, "containers");
}

/// `apps/v1` Deployment defaults.
fn default_deployment(obj: &mut Value) {
    let Some(spec) = obj_mut(obj, "spec") else { return };
    default(spec, "replicas", json!(1));
    default(
        spec,
        "strategy",
        json!({ "type": "RollingUpdate", "rollingUpdate": { "maxUnavailable": "25%", "maxSurge": "25%" } }),
    );
    default(spec, "revisionHistoryLimit", json!(10));
    default(spec, "progressDeadlineSeconds", json!(600));
    if let Some(template) = spec.get_mut("template")
        && let Some(pod_spec) = obj_mut(template, "spec")
    {
        default_template_spec(pod_spec);
    }
}

fn default_pod_spec(obj: &mut Value) {
    let Some(spec) = obj_mut(obj, "spec") else { return };
    default_template_spec(spec);
    default(spec, "serviceAccountName", json!("default"));
    let sa = spec.get("serviceAccountName").cloned().unwrap_or(json!("default"));
    default(spec, "serviceAccount", sa);
    default(spec, "enableServiceLinks", json!(true));
    default(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
    default(spec, "priority", json!(0));
    default(spec, "nodeName", json!(NODE_NAME));
}

/// The node every pod runs on, Ready, as a kubelet would report it.
pub(crate) fn initial_node(now: SystemTime) -> Value {
    let (major, minor, patch) = KUBE_VERSION;
    let now = rfc3339(now);
    let condition = |t: &str, status: &str, reason: &str, message: &str| json!({ "type": t, "status": status, "reason": reason, "message": message, "lastHeartbeatTime": now, "lastTransitionTime": now });
    let capacity = json!({ "cpu": "2", "memory": "8Gi", "pods": "110", "ephemeral-storage": "100Gi" });
    json!({
        "metadata": {
            "name": NODE_NAME,
            "labels": {
                "kubernetes.io/hostname": NODE_NAME,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
            },
        },
        "spec": { "podCIDR": "10.244.0.0/24", "podCIDRs": ["10.244.0.0/24"] },
        "status": {
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                condition("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
            ],
            "addresses": [{ "type": "InternalIP", "address": HOST_IP }, { "type": "Hostname", "address": NODE_NAME }],
            "daemonEndpoints": { "kubeletEndpoint": { "Port": 10250 } },
            "nodeInfo": {
                "machineID": "", "systemUUID": "", "bootID": "",
                "kernelVersion": "6.8.0", "osImage": "Test Linux", "containerRuntimeVersion": "containerd://2.0.0",
                "kubeletVersion": format!("v{major}.{minor}.{patch}"),
                "operatingSystem": "linux", "architecture": "amd64",
            },
        },
    })
}

fn container_status(c: &Value, now: &str, init: bool) -> Value {
    let name = c.get("name").cloned().unwrap_or(Value::Null);
    let image = c.get("image").and_then(Value::as_str).unwrap_or_default();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let state = if init {
        json!({ "terminated": { "exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now, "containerID": format!("containerd://{id}") } })
    } else {
        json!({ "running": { "startedAt": now } })
    };
    json!({
        "name": name,
        "state": state,
        "lastState": {},
        "ready": true,
        "restartCount": 0,
        "image": image,
        "imageID": format!("{image}@sha256:{id}{id}"),
        "containerID": format!("containerd://{id}"),
        "started": !init,
    })
}

fn pod_status(obj: &Value, pod_ip: &str, now: SystemTime) -> Value {
    let now = rfc3339(now);
    let statuses = |field: &str, init: bool| -> Vec<Value> {
        obj.pointer(&format!("/spec/{field}"))
            .and_then(Value::as_array)
            .map(|cs| cs.iter().map(|c| container_status(c, &now, init)).collect())
            .unwrap_or_default()
    };
    let condition =
        |t: &str| json!({ "type": t, "status": "True", "lastProbeTime": null, "lastTransitionTime": now });
    let conditions = ["PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled"]
        .map(condition);
    let mut status = json!({
        "phase": "Running",
        "conditions": conditions,
        "hostIP": HOST_IP,
        "hostIPs": [{ "ip": HOST_IP }],
        "podIP": pod_ip,
        "podIPs": [{ "ip": pod_ip }],
        "startTime": now,
        "containerStatuses": statuses("containers", false),
        "qosClass": "BestEffort",
    });
    let init = statuses("initContainers", true);
    if !init.is_empty() {
        status["initContainerStatuses"] = json!(init);
    }
    status
}

/// Marks an object as being deleted, as the copy a delete returns shows.
pub(crate) fn mark_deleted(obj: &mut Value, now: SystemTime, grace_seconds: i64) {
    let Some(meta) = obj_mut(obj, "metadata") else { return };
    meta.insert("deletionTimestamp".into(), json!(rfc3339(now)));
    meta.insert("deletionGracePeriodSeconds".into(), json!(grace_seconds));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_get_defaults_and_a_running_status() {
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "nginx:1.27"}]}});
        prepare_create(ResourceKind::Pod, &mut pod, "default", "10.244.0.7", SystemTime::now());
        assert_eq!(pod["kind"], "Pod");
        assert_eq!(pod["metadata"]["namespace"], "default");
        assert!(pod["metadata"]["uid"].is_string());
        assert_eq!(pod["spec"]["restartPolicy"], "Always");
        assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(pod["status"]["phase"], "Running");
        assert_eq!(pod["status"]["podIP"], "10.244.0.7");
        assert_eq!(pod["status"]["containerStatuses"][0]["ready"], true);
        assert_eq!(pod["status"]["containerStatuses"][0]["started"], true);
    }

    #[test]
    fn namespaces_get_their_name_label() {
        let mut ns = json!({"metadata": {"name": "team", "labels": {"a": "b"}}});
        prepare_create(ResourceKind::Namespace, &mut ns, "", "", SystemTime::now());
        assert_eq!(ns["metadata"]["labels"]["kubernetes.io/metadata.name"], "team");
        assert_eq!(ns["metadata"]["labels"]["a"], "b");
        assert_eq!(ns["status"]["phase"], "Active");
        assert_eq!(ns["spec"]["finalizers"][0], "kubernetes");
    }

    #[test]
    fn updates_keep_server_fields() {
        let mut old =
            json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}]}});
        prepare_create(ResourceKind::Pod, &mut old, "default", "10.244.0.1", SystemTime::now());
        let mut new = json!({"metadata": {"name": "p", "uid": "forged"}, "spec": {"containers": [{"name": "c", "image": "j"}]}, "status": {"phase": "Failed"}});
        prepare_update(ResourceKind::Pod, &mut new, &old);
        assert_eq!(new["metadata"]["uid"], old["metadata"]["uid"]);
        assert_eq!(new["status"]["phase"], "Running");
        assert_eq!(pull_policy("repo/x"), "Always");
        assert_eq!(pull_policy("localhost:5000/x:1"), "IfNotPresent");
    }

    #[test]
    fn secrets_merge_string_data_and_default_their_type() {
        let mut secret =
            json!({"metadata": {"name": "s"}, "data": {"a": "eA=="}, "stringData": {"b": "token"}});
        normalize(ResourceKind::Secret, &mut secret);
        assert_eq!(secret["data"], json!({"a": "eA==", "b": "dG9rZW4="}));
        assert!(secret.get("stringData").is_none());
        assert_eq!(secret["type"], "Opaque");
        let mut binding =
            json!({"subjects": [{"kind": "User", "name": "u"}, {"kind": "ServiceAccount", "name": "s"}]});
        normalize(ResourceKind::RoleBinding, &mut binding);
        assert_eq!(binding["subjects"][0]["apiGroup"], RBAC_GROUP);
        assert!(binding["subjects"][1].get("apiGroup").is_none());
    }

    #[test]
    fn deployments_get_defaults_and_a_generation() {
        let mut d = json!({"metadata": {"name": "d"}, "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i:1"}]}}}});
        prepare_create(ResourceKind::Deployment, &mut d, "ns", "", SystemTime::now());
        assert_eq!(d["apiVersion"], "apps/v1");
        assert_eq!(d["metadata"]["generation"], 1);
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["spec"]["template"]["spec"]["restartPolicy"], "Always");
        assert!(d["spec"]["template"]["spec"].get("nodeName").is_none());
        let mut scaled = d.clone();
        scaled["spec"]["replicas"] = json!(3);
        prepare_update(ResourceKind::Deployment, &mut scaled, &d);
        assert_eq!(scaled["metadata"]["generation"], 2);
        let mut same = d.clone();
        prepare_update(ResourceKind::Deployment, &mut same, &d);
        assert_eq!(same["metadata"]["generation"], 1);
    }
}

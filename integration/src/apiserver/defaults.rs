//! What the server fills in: object metadata on create and update, the
//! defaults kube-apiserver applies, and the status a running pod would have
//! (there is no kubelet, so pods are running and ready from creation).

use std::time::SystemTime;

use serde_json::{Map, Value, json};

use super::clock::rfc3339;
use super::resources::ResourceKind;

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

/// Fills in a new object: identity, timestamps, defaults, status.
pub(crate) fn prepare_create(
    kind: ResourceKind,
    obj: &mut Value,
    namespace: &str,
    pod_ip: &str,
    now: SystemTime,
) {
    set(obj, "apiVersion", json!("v1"));
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
        ResourceKind::ConfigMap | ResourceKind::Event => {}
    }
}

/// Carries server-owned fields from the stored object into a replacement.
pub(crate) fn prepare_update(kind: ResourceKind, new: &mut Value, old: &Value) {
    set(new, "apiVersion", json!("v1"));
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
        ResourceKind::ConfigMap | ResourceKind::Event => {}
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

fn default_pod_spec(obj: &mut Value) {
    let Some(spec) = obj_mut(obj, "spec") else { return };
    default(spec, "restartPolicy", json!("Always"));
    default(spec, "terminationGracePeriodSeconds", json!(30));
    default(spec, "dnsPolicy", json!("ClusterFirst"));
    default(spec, "serviceAccountName", json!("default"));
    let sa = spec.get("serviceAccountName").cloned().unwrap_or(json!("default"));
    default(spec, "serviceAccount", sa);
    default(spec, "securityContext", json!({}));
    default(spec, "schedulerName", json!("default-scheduler"));
    default(spec, "enableServiceLinks", json!(true));
    default(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
    default(spec, "priority", json!(0));
    default(spec, "nodeName", json!(NODE_NAME));
    default_containers(spec, "initContainers");
    default_containers(spec, "containers");
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
}

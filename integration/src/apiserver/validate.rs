//! Validation of decoded objects, as kube-apiserver's (422 `Invalid`,
//! listing every problem): names, labels, and per-kind rules.

use serde_json::{Value, json};

use super::resources::{RBAC_GROUP, ResourceKind};
use super::selector::{valid_label_key, valid_label_value};
use super::status::{ApiError, Cause};

const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const CONFIG_KEY_MSG: &str = "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')";
/// The largest ConfigMap (or Secret) payload a real apiserver accepts.
const MAX_CONFIGMAP_BYTES: usize = 1024 * 1024;

/// Whether `s` is an RFC 1123 label (`[a-z0-9]([-a-z0-9]*[a-z0-9])?`, ≤ 63).
pub(crate) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Whether `s` is an RFC 1123 subdomain (dot-separated labels, ≤ 253).
pub(crate) fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn invalid(field: &str, value: &str, why: &str) -> Cause {
    Cause {
        reason: "FieldValueInvalid",
        field: field.to_string(),
        message: format!("Invalid value: {value:?}: {why}"),
    }
}

/// An invalid value shown as kube-apiserver would (`-1`, `["a"]`, ...).
fn invalid_value(field: &str, value: &Value, why: &str) -> Cause {
    Cause {
        reason: "FieldValueInvalid",
        field: field.to_string(),
        message: format!("Invalid value: {value}: {why}"),
    }
}

fn not_supported(field: &str, value: &str, supported: &[&str]) -> Cause {
    let list = supported.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ");
    Cause {
        reason: "FieldValueNotSupported",
        field: field.to_string(),
        message: format!("Unsupported value: {value:?}: supported values: {list}"),
    }
}

fn required(field: &str, why: &str) -> Cause {
    let message =
        if why.is_empty() { "Required value".to_string() } else { format!("Required value: {why}") };
    Cause { reason: "FieldValueRequired", field: field.to_string(), message }
}

/// Why `name` is not a valid RBAC object name (a path segment), if it is not.
fn path_segment_problem(name: &str) -> Option<&'static str> {
    match name {
        "." => Some("may not be '.'"),
        ".." => Some("may not be '..'"),
        n if n.contains('/') => Some("may not contain '/'"),
        n if n.contains('%') => Some("may not contain '%'"),
        _ => None,
    }
}

fn validate_meta(kind: ResourceKind, obj: &Value, causes: &mut Vec<Cause>) {
    let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
    let problem = match kind {
        ResourceKind::Namespace => (!is_dns_label(name)).then_some(LABEL_MSG),
        k if k.group() == RBAC_GROUP => path_segment_problem(name),
        _ => (!is_dns_subdomain(name)).then_some(SUBDOMAIN_MSG),
    };
    if name.is_empty() {
        causes.push(required("metadata.name", "name or generateName is required"));
    } else if let Some(why) = problem {
        causes.push(invalid("metadata.name", name, why));
    }
    for (k, v) in obj.pointer("/metadata/labels").and_then(Value::as_object).into_iter().flatten() {
        if !valid_label_key(k) {
            causes.push(invalid("metadata.labels", k, "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
        }
        if !valid_label_value(v.as_str().unwrap_or_default()) {
            causes.push(invalid(
                "metadata.labels",
                v.as_str().unwrap_or_default(),
                "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')",
            ));
        }
    }
    for k in
        obj.pointer("/metadata/annotations").and_then(Value::as_object).into_iter().flat_map(|m| m.keys())
    {
        if !valid_label_key(k) {
            causes.push(invalid("metadata.annotations", k, "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
        }
    }
}

fn valid_config_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 253
        && k != "."
        && k != ".."
        && !k.starts_with("..")
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}

fn validate_configmap(obj: &Value, causes: &mut Vec<Cause>) {
    let mut size = 0;
    let data = obj.get("data").and_then(Value::as_object);
    let binary = obj.get("binaryData").and_then(Value::as_object);
    for (k, v) in data.into_iter().flatten() {
        size += k.len() + v.as_str().map_or(0, str::len);
        if !valid_config_key(k) {
            causes.push(invalid(&format!("data[{k}]"), k, CONFIG_KEY_MSG));
        }
    }
    for (k, v) in binary.into_iter().flatten() {
        size += k.len() + v.as_str().map_or(0, str::len) * 3 / 4;
        if !valid_config_key(k) {
            causes.push(invalid(&format!("binaryData[{k}]"), k, CONFIG_KEY_MSG));
        }
        if data.is_some_and(|d| d.contains_key(k)) {
            causes.push(invalid(&format!("data[{k}]"), k, "duplicate of key present in binaryData"));
        }
    }
    if size > MAX_CONFIGMAP_BYTES {
        causes.push(Cause {
            reason: "FieldValueTooLong",
            field: "[]".into(),
            message: format!("Too long: must have at most {MAX_CONFIGMAP_BYTES} bytes"),
        });
    }
}

fn validate_secret(obj: &Value, causes: &mut Vec<Cause>) {
    use base64::Engine as _;
    let mut size = 0;
    for (k, v) in obj.get("data").and_then(Value::as_object).into_iter().flatten() {
        let decoded = base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap_or_default());
        size += decoded.map_or(0, |d| d.len());
        if !valid_config_key(k) {
            causes.push(invalid(&format!("data[{k}]"), k, CONFIG_KEY_MSG));
        }
    }
    if size > MAX_CONFIGMAP_BYTES {
        causes.push(Cause {
            reason: "FieldValueTooLong",
            field: "data".into(),
            message: format!("Too long: must have at most {MAX_CONFIGMAP_BYTES} bytes"),
        });
    }
}

/// A pod spec (of a pod, `spec`, or of a template, `spec.template.spec`).
fn validate_pod_spec(spec: Option<&Value>, prefix: &str, causes: &mut Vec<Cause>) {
    let containers = spec.and_then(|s| s.get("containers")).and_then(Value::as_array);
    if containers.is_none_or(|c| c.is_empty()) {
        causes.push(required(&format!("{prefix}.containers"), ""));
    }
    let mut seen: Vec<&str> = Vec::new();
    for field in ["initContainers", "containers"] {
        for (i, c) in
            spec.and_then(|s| s.get(field)).and_then(Value::as_array).into_iter().flatten().enumerate()
        {
            let path = format!("{prefix}.{field}[{i}]");
            match c.get("name").and_then(Value::as_str) {
                None | Some("") => causes.push(required(&format!("{path}.name"), "")),
                Some(n) if !is_dns_label(n) => causes.push(invalid(&format!("{path}.name"), n, LABEL_MSG)),
                Some(n) if seen.contains(&n) => causes.push(Cause {
                    reason: "FieldValueDuplicate",
                    field: format!("{path}.name"),
                    message: format!("Duplicate value: {n:?}"),
                }),
                Some(n) => seen.push(n),
            }
            if c.get("image").and_then(Value::as_str).is_none_or(|i| i.trim().is_empty()) {
                causes.push(required(&format!("{path}.image"), ""));
            }
        }
    }
}

fn strs(v: Option<&Value>) -> Vec<&str> {
    v.and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect()
}

fn labels_match(selector: &Value, labels: Option<&Value>) -> bool {
    let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    let by_label = selector
        .get("matchLabels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .all(|(k, v)| label(k) == v.as_str());
    let by_expression =
        selector.get("matchExpressions").and_then(Value::as_array).into_iter().flatten().all(|e| {
            let key = e.get("key").and_then(Value::as_str).unwrap_or_default();
            let values = strs(e.get("values"));
            match e.get("operator").and_then(Value::as_str).unwrap_or_default() {
                "In" => label(key).is_some_and(|v| values.contains(&v)),
                "NotIn" => label(key).is_none_or(|v| !values.contains(&v)),
                "Exists" => label(key).is_some(),
                "DoesNotExist" => label(key).is_none(),
                _ => false,
            }
        });
    by_label && by_expression
}

fn validate_deployment(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = obj.get("spec");
    let field = |f: &str| spec.and_then(|s| s.get(f)).filter(|v| !v.is_null());
    if let Some(r) = field("replicas").and_then(Value::as_i64).filter(|r| *r < 0) {
        causes.push(invalid_value("spec.replicas", &json!(r), "must be greater than or equal to 0"));
    }
    let template = field("template");
    let labels = template.and_then(|t| t.pointer("/metadata/labels"));
    match field("selector") {
        None => causes.push(required("spec.selector", "")),
        Some(sel)
            if sel.get("matchLabels").and_then(Value::as_object).is_none_or(|m| m.is_empty())
                && sel.get("matchExpressions").and_then(Value::as_array).is_none_or(Vec::is_empty) =>
        {
            causes.push(invalid_value("spec.selector", sel, "empty selector is invalid for deployment"));
        }
        Some(sel) if !labels_match(sel, labels) => causes.push(invalid_value(
            "spec.template.metadata.labels",
            labels.unwrap_or(&json!({})),
            "`selector` does not match template `labels`",
        )),
        Some(_) => {}
    }
    let pod_spec = template.and_then(|t| t.get("spec"));
    validate_pod_spec(pod_spec, "spec.template.spec", causes);
    if let Some(policy) =
        pod_spec.and_then(|s| s.get("restartPolicy")).and_then(Value::as_str).filter(|p| *p != "Always")
    {
        causes.push(not_supported("spec.template.spec.restartPolicy", policy, &["Always"]));
    }
}

/// `rules` of a Role or ClusterRole (`ValidatePolicyRule`).
fn validate_rules(obj: &Value, namespaced: bool, causes: &mut Vec<Cause>) {
    for (i, rule) in obj.get("rules").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let path = |f: &str| format!("rules[{i}].{f}");
        let list = |f: &str| strs(rule.get(f));
        if list("verbs").is_empty() {
            causes.push(required(&path("verbs"), "verbs must contain at least one value"));
        }
        let urls = list("nonResourceURLs");
        if !urls.is_empty() {
            if namespaced {
                causes.push(invalid_value(
                    &path("nonResourceURLs"),
                    &json!(urls),
                    "namespaced rules cannot apply to non-resource URLs",
                ));
            }
            if !list("apiGroups").is_empty()
                || !list("resources").is_empty()
                || !list("resourceNames").is_empty()
            {
                causes.push(invalid_value(
                    &path("nonResourceURLs"),
                    &json!(urls),
                    "rules cannot apply to both regular resources and non-resource URLs",
                ));
            }
            continue;
        }
        if rule.get("apiGroups").and_then(Value::as_array).is_none_or(Vec::is_empty) {
            causes.push(required(&path("apiGroups"), "resource rules must supply at least one api group"));
        }
        if list("resources").is_empty() {
            causes.push(required(&path("resources"), "resource rules must supply at least one resource"));
        }
    }
}

/// `roleRef` and `subjects` of a RoleBinding or ClusterRoleBinding.
fn validate_binding(obj: &Value, namespaced: bool, causes: &mut Vec<Cause>) {
    let s = |v: Option<&Value>, f: &str| {
        v.and_then(|v| v.get(f)).and_then(Value::as_str).unwrap_or_default().to_string()
    };
    let role_ref = obj.get("roleRef");
    let api_group = s(role_ref, "apiGroup");
    if api_group != RBAC_GROUP {
        causes.push(not_supported("roleRef.apiGroup", &api_group, &[RBAC_GROUP]));
    }
    let kinds: &[&str] = if namespaced { &["Role", "ClusterRole"] } else { &["ClusterRole"] };
    let kind = s(role_ref, "kind");
    if !kinds.contains(&kind.as_str()) {
        causes.push(not_supported("roleRef.kind", &kind, kinds));
    }
    let name = s(role_ref, "name");
    if name.is_empty() {
        causes.push(required("roleRef.name", ""));
    } else if let Some(why) = path_segment_problem(&name) {
        causes.push(invalid("roleRef.name", &name, why));
    }
    for (i, subject) in obj.get("subjects").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let path = |f: &str| format!("subjects[{i}].{f}");
        let (kind, name, group) =
            (s(Some(subject), "kind"), s(Some(subject), "name"), s(Some(subject), "apiGroup"));
        if name.is_empty() {
            causes.push(required(&path("name"), ""));
        }
        match kind.as_str() {
            "ServiceAccount" => {
                if !name.is_empty() && !is_dns_subdomain(&name) {
                    causes.push(invalid(&path("name"), &name, SUBDOMAIN_MSG));
                }
                if !group.is_empty() {
                    causes.push(not_supported(&path("apiGroup"), &group, &[""]));
                }
                if !namespaced && s(Some(subject), "namespace").is_empty() {
                    causes.push(required(&path("namespace"), ""));
                }
            }
            "User" | "Group" if group != RBAC_GROUP => {
                causes.push(not_supported(&path("apiGroup"), &group, &[RBAC_GROUP]))
            }
            "User" | "Group" => {}
            other => causes.push(not_supported(&path("kind"), other, &["ServiceAccount", "User", "Group"])),
        }
    }
}

fn name_of(obj: &Value) -> &str {
    obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default()
}

/// Validates a complete object (422 Invalid listing every problem).
pub(crate) fn validate(kind: ResourceKind, obj: &Value) -> Result<(), ApiError> {
    let mut causes = Vec::new();
    validate_meta(kind, obj, &mut causes);
    match kind {
        ResourceKind::ConfigMap => validate_configmap(obj, &mut causes),
        ResourceKind::Secret => validate_secret(obj, &mut causes),
        ResourceKind::Pod => validate_pod_spec(obj.get("spec"), "spec", &mut causes),
        ResourceKind::Deployment => validate_deployment(obj, &mut causes),
        ResourceKind::Role | ResourceKind::ClusterRole => validate_rules(obj, kind.namespaced(), &mut causes),
        ResourceKind::RoleBinding | ResourceKind::ClusterRoleBinding => {
            validate_binding(obj, kind.namespaced(), &mut causes);
        }
        ResourceKind::Namespace | ResourceKind::Event | ResourceKind::ServiceAccount | ResourceKind::Node => {
        }
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(&kind.qualified_kind(), name_of(obj), causes))
    }
}

const POD_UPDATE_MSG: &str = "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

fn mutable_masked(spec: &Value) -> Value {
    let mut s = spec.clone();
    for field in ["containers", "initContainers"] {
        for c in s.get_mut(field).and_then(Value::as_array_mut).into_iter().flatten() {
            if let Some(c) = c.as_object_mut() {
                c.remove("image");
            }
        }
    }
    if let Some(m) = s.as_object_mut() {
        m.remove("activeDeadlineSeconds");
        m.remove("tolerations");
    }
    s
}

/// Validates an update against the stored object (immutability rules).
pub(crate) fn validate_update(kind: ResourceKind, old: &Value, new: &Value) -> Result<(), ApiError> {
    validate(kind, new)?;
    let one = |cause: Cause| ApiError::invalid(&kind.qualified_kind(), name_of(new), vec![cause]);
    let forbidden = |field: &str, why: &str| {
        one(Cause {
            reason: "FieldValueForbidden",
            field: field.into(),
            message: format!("Forbidden: {why}"),
        })
    };
    let changed = |pointer: &str| old.pointer(pointer) != new.pointer(pointer);
    match kind {
        ResourceKind::Secret if changed("/type") => {
            return Err(one(invalid_value(
                "type",
                new.get("type").unwrap_or(&Value::Null),
                "field is immutable",
            )));
        }
        ResourceKind::RoleBinding | ResourceKind::ClusterRoleBinding if changed("/roleRef") => {
            return Err(one(invalid_value(
                "roleRef",
                new.get("roleRef").unwrap_or(&Value::Null),
                "cannot change roleRef",
            )));
        }
        ResourceKind::Deployment if changed("/spec/selector") => {
            return Err(one(invalid_value(
                "spec.selector",
                new.pointer("/spec/selector").unwrap_or(&Value::Null),
                "field is immutable",
            )));
        }
        ResourceKind::ConfigMap | ResourceKind::Secret
            if old.get("immutable") == Some(&Value::Bool(true)) =>
        {
            const WHY: &str = "field is immutable when `immutable` is set";
            if new.get("immutable") != Some(&Value::Bool(true)) {
                return Err(forbidden("immutable", WHY));
            }
            if new.get("data") != old.get("data") {
                return Err(forbidden("data", WHY));
            }
            if new.get("binaryData") != old.get("binaryData") {
                return Err(forbidden("binaryData", WHY));
            }
        }
        ResourceKind::Pod => {
            let (o, n) = (old.get("spec").unwrap_or(&Value::Null), new.get("spec").unwrap_or(&Value::Null));
            let old_tolerations = o.get("tolerations").and_then(Value::as_array).cloned().unwrap_or_default();
            let new_tolerations = n.get("tolerations").and_then(Value::as_array).cloned().unwrap_or_default();
            if mutable_masked(o) != mutable_masked(n)
                || !old_tolerations.iter().all(|t| new_tolerations.contains(t))
            {
                return Err(forbidden("spec", POD_UPDATE_MSG));
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn validation_rejects_what_kube_rejects() {
        assert!(validate(ResourceKind::ConfigMap, &json!({"metadata": {"name": "ok.name"}})).is_ok());
        let err =
            validate(ResourceKind::ConfigMap, &json!({"metadata": {"name": "Bad_Name"}})).expect_err("bad");
        assert_eq!(err.code, 422);
        assert!(
            err.message
                .starts_with("ConfigMap \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\"")
        );
        assert!(validate(ResourceKind::Namespace, &json!({"metadata": {"name": "a.b"}})).is_err());
        assert!(
            validate(ResourceKind::ConfigMap, &json!({"metadata": {"name": "a"}, "data": {"bad key": ""}}))
                .is_err()
        );
        assert!(validate(ResourceKind::Pod, &json!({"metadata": {"name": "p"}, "spec": {}})).is_err());
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}]}});
        assert!(validate(ResourceKind::Pod, &pod).is_ok());
        let mut changed = pod.clone();
        changed["spec"]["containers"][0]["image"] = json!("j");
        assert!(validate_update(ResourceKind::Pod, &pod, &changed).is_ok());
        changed["spec"]["containers"][0]["command"] = json!(["sh"]);
        assert!(validate_update(ResourceKind::Pod, &pod, &changed).is_err());
        let frozen = json!({"metadata": {"name": "a"}, "immutable": true, "data": {"a": "b"}});
        let thawed = json!({"metadata": {"name": "a"}, "immutable": true, "data": {"a": "c"}});
        assert!(validate_update(ResourceKind::ConfigMap, &frozen, &thawed).is_err());
    }

    #[test]
    fn new_kinds_are_validated_like_kube() {
        let role = json!({"metadata": {"name": "system:x"}, "rules": [{"verbs": [], "apiGroups": [""], "resources": ["pods"]}, {"verbs": ["get"], "nonResourceURLs": ["/x"]}]});
        let err = validate(ResourceKind::Role, &role).expect_err("bad rules");
        assert_eq!(
            err.message,
            "Role.rbac.authorization.k8s.io \"system:x\" is invalid: [rules[0].verbs: Required value: verbs must contain at least one value, rules[1].nonResourceURLs: Invalid value: [\"/x\"]: namespaced rules cannot apply to non-resource URLs]"
        );
        let cluster_role = json!({"metadata": {"name": "system:x"}, "rules": [{"verbs": ["get"], "nonResourceURLs": ["/x"]}]});
        assert!(validate(ResourceKind::ClusterRole, &cluster_role).is_ok());
        let binding = json!({"metadata": {"name": "b"}, "roleRef": {"apiGroup": RBAC_GROUP, "kind": "Role", "name": "r"},
            "subjects": [{"kind": "ServiceAccount", "name": "sa"}, {"kind": "User", "name": "u", "apiGroup": RBAC_GROUP}]});
        assert!(validate(ResourceKind::RoleBinding, &binding).is_ok());
        let err = validate(ResourceKind::ClusterRoleBinding, &binding).expect_err("cluster binding");
        assert!(
            err.message
                .contains("roleRef.kind: Unsupported value: \"Role\": supported values: \"ClusterRole\""),
            "{}",
            err.message
        );
        assert!(err.message.contains("subjects[0].namespace: Required value"), "{}", err.message);
        let mut rebound = binding.clone();
        rebound["roleRef"]["name"] = json!("other");
        assert!(
            validate_update(ResourceKind::RoleBinding, &binding, &rebound)
                .expect_err("roleRef")
                .message
                .contains("cannot change roleRef")
        );
        let deploy = json!({"metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": {"app": "a"}},
            "template": {"metadata": {"labels": {"app": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        let err = validate(ResourceKind::Deployment, &deploy).expect_err("selector");
        assert!(
            err.message.starts_with("Deployment.apps \"d\" is invalid: spec.template.metadata.labels"),
            "{}",
            err.message
        );
        let secret = json!({"metadata": {"name": "s"}, "type": "Opaque", "data": {"ok": "eA=="}});
        let mut retyped = secret.clone();
        retyped["type"] = json!("kubernetes.io/tls");
        assert!(validate(ResourceKind::Secret, &secret).is_ok());
        assert!(validate_update(ResourceKind::Secret, &secret, &retyped).is_err());
    }
}

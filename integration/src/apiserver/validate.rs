//! Checks a real apiserver makes on incoming objects: decoding (types and,
//! per `fieldValidation`, unknown fields: 400) and validation (422).

use serde_json::Value;

use super::resources::ResourceKind;
use super::selector::{valid_label_key, valid_label_value};
use super::status::{ApiError, Cause};

/// What to do with unknown fields (`fieldValidation` query parameter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FieldValidation {
    /// Reject with 400.
    Strict,
    /// Accept, with a `Warning` header per field (the server default).
    Warn,
    /// Accept silently.
    Ignore,
}

impl FieldValidation {
    /// From the query parameter (absent means `Warn`).
    pub fn parse(v: Option<&str>) -> Result<Self, ApiError> {
        match v {
            None | Some("" | "Warn") => Ok(Self::Warn),
            Some("Strict") => Ok(Self::Strict),
            Some("Ignore") => Ok(Self::Ignore),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation must be one of \"Ignore\", \"Warn\", or \"Strict\", got {other:?}"
            ))),
        }
    }
}

const TOP: [&str; 3] = ["apiVersion", "kind", "metadata"];
const OBJECT_META: [&str; 15] = [
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];
const CONFIGMAP: [&str; 3] = ["data", "binaryData", "immutable"];
const EVENT: [&str; 14] = [
    "involvedObject",
    "reason",
    "message",
    "source",
    "firstTimestamp",
    "lastTimestamp",
    "count",
    "type",
    "eventTime",
    "series",
    "action",
    "related",
    "reportingComponent",
    "reportingInstance",
];
const NAMESPACE_SPEC: [&str; 1] = ["finalizers"];
const NAMESPACE_STATUS: [&str; 2] = ["phase", "conditions"];
const POD_SPEC: [&str; 41] = [
    "volumes",
    "initContainers",
    "containers",
    "ephemeralContainers",
    "restartPolicy",
    "terminationGracePeriodSeconds",
    "activeDeadlineSeconds",
    "dnsPolicy",
    "nodeSelector",
    "serviceAccountName",
    "serviceAccount",
    "automountServiceAccountToken",
    "nodeName",
    "hostNetwork",
    "hostPID",
    "hostIPC",
    "shareProcessNamespace",
    "securityContext",
    "imagePullSecrets",
    "hostname",
    "subdomain",
    "affinity",
    "schedulerName",
    "tolerations",
    "hostAliases",
    "priorityClassName",
    "priority",
    "dnsConfig",
    "readinessGates",
    "runtimeClassName",
    "enableServiceLinks",
    "preemptionPolicy",
    "overhead",
    "topologySpreadConstraints",
    "setHostnameAsFQDN",
    "os",
    "hostUsers",
    "schedulingGates",
    "resourceClaims",
    "resources",
    "hostnameOverride",
];
const CONTAINER: [&str; 24] = [
    "name",
    "image",
    "command",
    "args",
    "workingDir",
    "ports",
    "envFrom",
    "env",
    "resources",
    "resizePolicy",
    "restartPolicy",
    "restartPolicyRules",
    "volumeMounts",
    "volumeDevices",
    "livenessProbe",
    "readinessProbe",
    "startupProbe",
    "lifecycle",
    "terminationMessagePath",
    "terminationMessagePolicy",
    "imagePullPolicy",
    "securityContext",
    "stdin",
    "stdinOnce",
];
const CONTAINER_EXTRA: [&str; 1] = ["tty"];

fn unknown(obj: &Value, known: &[&[&str]], prefix: &str, out: &mut Vec<String>) {
    if let Some(map) = obj.as_object() {
        for key in map.keys() {
            if !known.iter().any(|set| set.contains(&key.as_str())) {
                out.push(format!("{prefix}{key}"));
            }
        }
    }
}

/// The unknown fields of an object, as paths (`spec.containers[0].foo`).
fn unknown_fields(kind: ResourceKind, obj: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let body: &[&str] = match kind {
        ResourceKind::ConfigMap => &CONFIGMAP,
        ResourceKind::Event => &EVENT,
        ResourceKind::Namespace | ResourceKind::Pod => &["spec", "status"],
    };
    unknown(obj, &[&TOP, body], "", &mut out);
    if let Some(meta) = obj.get("metadata") {
        unknown(meta, &[&OBJECT_META], "metadata.", &mut out);
    }
    match kind {
        ResourceKind::Namespace => {
            if let Some(spec) = obj.get("spec") {
                unknown(spec, &[&NAMESPACE_SPEC], "spec.", &mut out);
            }
            if let Some(status) = obj.get("status") {
                unknown(status, &[&NAMESPACE_STATUS], "status.", &mut out);
            }
        }
        ResourceKind::Pod => {
            if let Some(spec) = obj.get("spec") {
                unknown(spec, &[&POD_SPEC], "spec.", &mut out);
                for field in ["initContainers", "containers"] {
                    for (i, c) in spec.get(field).and_then(Value::as_array).into_iter().flatten().enumerate()
                    {
                        unknown(c, &[&CONTAINER, &CONTAINER_EXTRA], &format!("spec.{field}[{i}]."), &mut out);
                    }
                }
            }
        }
        ResourceKind::ConfigMap | ResourceKind::Event => {}
    }
    out
}

fn decode_error(kind: ResourceKind, what: &str) -> ApiError {
    ApiError::bad_request(format!("{0} in version \"v1\" cannot be handled as a {0}: {what}", kind.kind()))
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn expect(
    kind: ResourceKind,
    v: Option<&Value>,
    path: &str,
    ok: fn(&Value) -> bool,
    go_type: &str,
) -> Result<(), ApiError> {
    match v {
        Some(v) if !v.is_null() && !ok(v) => Err(decode_error(
            kind,
            &format!(
                "json: cannot unmarshal {} into Go struct field {}.{path} of type {go_type}",
                type_name(v),
                kind.kind()
            ),
        )),
        _ => Ok(()),
    }
}

fn string_map(v: &Value) -> bool {
    v.as_object().is_some_and(|m| m.values().all(Value::is_string))
}

fn string_list(v: &Value) -> bool {
    v.as_array().is_some_and(|a| a.iter().all(Value::is_string))
}

/// Decodes the body as the given kind: the shape must be right (400), and
/// unknown fields are handled per `validation`. Returns warnings to send.
pub(crate) fn decode(
    kind: ResourceKind,
    obj: &Value,
    validation: FieldValidation,
) -> Result<Vec<String>, ApiError> {
    if !obj.is_object() {
        return Err(decode_error(
            kind,
            &format!("json: cannot unmarshal {} into Go value of type struct", type_name(obj)),
        ));
    }
    match obj.get("kind").and_then(Value::as_str) {
        None | Some("") => {
            return Err(ApiError::bad_request(format!("Object 'Kind' is missing in '{obj}'")));
        }
        Some(k) if k != kind.kind() => {
            return Err(ApiError::bad_request(format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (kind {k:?} is not {:?})",
                kind.kind()
            )));
        }
        Some(_) => {}
    }
    if obj.get("apiVersion").and_then(Value::as_str) != Some("v1") {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({}) does not match the expected API version (v1)",
            obj.get("apiVersion").and_then(Value::as_str).unwrap_or_default()
        )));
    }
    let m = obj.get("metadata");
    expect(kind, m, "metadata", Value::is_object, "v1.ObjectMeta")?;
    for f in ["name", "generateName", "namespace", "resourceVersion", "uid"] {
        expect(kind, m.and_then(|m| m.get(f)), &format!("metadata.{f}"), Value::is_string, "string")?;
    }
    for f in ["labels", "annotations"] {
        expect(kind, m.and_then(|m| m.get(f)), &format!("metadata.{f}"), string_map, "map[string]string")?;
    }
    expect(kind, m.and_then(|m| m.get("finalizers")), "metadata.finalizers", string_list, "[]string")?;
    match kind {
        ResourceKind::ConfigMap => {
            expect(kind, obj.get("data"), "data", string_map, "map[string]string")?;
            expect(kind, obj.get("binaryData"), "binaryData", string_map, "map[string][]uint8")?;
            expect(kind, obj.get("immutable"), "immutable", Value::is_boolean, "bool")?;
            for v in obj.get("binaryData").and_then(Value::as_object).into_iter().flat_map(|m| m.values()) {
                use base64::Engine as _;
                if base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap_or_default()).is_err() {
                    return Err(decode_error(kind, "illegal base64 data in binaryData"));
                }
            }
        }
        ResourceKind::Pod => {
            let spec = obj.get("spec");
            expect(kind, spec, "spec", Value::is_object, "v1.PodSpec")?;
            for f in ["containers", "initContainers"] {
                let ok: fn(&Value) -> bool = |v| v.as_array().is_some_and(|a| a.iter().all(Value::is_object));
                expect(kind, spec.and_then(|s| s.get(f)), &format!("spec.{f}"), ok, "[]v1.Container")?;
            }
        }
        ResourceKind::Namespace => {
            expect(kind, obj.get("spec"), "spec", Value::is_object, "v1.NamespaceSpec")?;
        }
        ResourceKind::Event => {
            expect(
                kind,
                obj.get("involvedObject"),
                "involvedObject",
                Value::is_object,
                "v1.ObjectReference",
            )?;
            expect(kind, obj.get("count"), "count", Value::is_i64, "int32")?;
        }
    }
    let unknown = unknown_fields(kind, obj);
    match validation {
        FieldValidation::Strict if !unknown.is_empty() => {
            let list =
                unknown.iter().map(|f| format!("unknown field \"{f}\"")).collect::<Vec<_>>().join(", ");
            Err(decode_error(kind, &format!("strict decoding error: {list}")))
        }
        FieldValidation::Warn => Ok(unknown.iter().map(|f| format!("unknown field \"{f}\"")).collect()),
        _ => Ok(Vec::new()),
    }
}

const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const CONFIG_KEY_MSG: &str = "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')";
/// The largest ConfigMap payload a real apiserver accepts.
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

fn required(field: &str, why: &str) -> Cause {
    let message =
        if why.is_empty() { "Required value".to_string() } else { format!("Required value: {why}") };
    Cause { reason: "FieldValueRequired", field: field.to_string(), message }
}

fn validate_meta(kind: ResourceKind, obj: &Value, causes: &mut Vec<Cause>) {
    let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
    let name_ok = match kind {
        ResourceKind::Namespace => is_dns_label(name),
        _ => is_dns_subdomain(name),
    };
    if name.is_empty() {
        causes.push(required("metadata.name", "name or generateName is required"));
    } else if !name_ok {
        let why = if kind == ResourceKind::Namespace { LABEL_MSG } else { SUBDOMAIN_MSG };
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

fn validate_pod(obj: &Value, causes: &mut Vec<Cause>) {
    let containers = obj.pointer("/spec/containers").and_then(Value::as_array);
    if containers.is_none_or(|c| c.is_empty()) {
        causes.push(required("spec.containers", ""));
    }
    let mut seen: Vec<&str> = Vec::new();
    for field in ["initContainers", "containers"] {
        for (i, c) in
            obj.pointer(&format!("/spec/{field}")).and_then(Value::as_array).into_iter().flatten().enumerate()
        {
            let path = format!("spec.{field}[{i}]");
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

fn name_of(obj: &Value) -> &str {
    obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default()
}

/// Validates a complete object (422 Invalid listing every problem).
pub(crate) fn validate(kind: ResourceKind, obj: &Value) -> Result<(), ApiError> {
    let mut causes = Vec::new();
    validate_meta(kind, obj, &mut causes);
    match kind {
        ResourceKind::ConfigMap => validate_configmap(obj, &mut causes),
        ResourceKind::Pod => validate_pod(obj, &mut causes),
        ResourceKind::Namespace | ResourceKind::Event => {}
    }
    if causes.is_empty() { Ok(()) } else { Err(ApiError::invalid(kind.kind(), name_of(obj), causes)) }
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
    let forbidden = |field: &str, why: &str| {
        ApiError::invalid(
            kind.kind(),
            name_of(new),
            vec![Cause {
                reason: "FieldValueForbidden",
                field: field.into(),
                message: format!("Forbidden: {why}"),
            }],
        )
    };
    match kind {
        ResourceKind::ConfigMap if old.get("immutable") == Some(&Value::Bool(true)) => {
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
    fn decoding_checks_types_and_unknown_fields() {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"k": "v"}, "extra": 1});
        assert_eq!(
            decode(ResourceKind::ConfigMap, &cm, FieldValidation::Warn).expect("warn"),
            ["unknown field \"extra\""]
        );
        let err = decode(ResourceKind::ConfigMap, &cm, FieldValidation::Strict).expect_err("strict");
        assert_eq!(
            err.message,
            "ConfigMap in version \"v1\" cannot be handled as a ConfigMap: strict decoding error: unknown field \"extra\""
        );
        assert!(decode(ResourceKind::ConfigMap, &cm, FieldValidation::Ignore).expect("ignore").is_empty());
        let bad =
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"k": 1}});
        assert_eq!(
            decode(ResourceKind::ConfigMap, &bad, FieldValidation::Ignore).expect_err("type").code,
            400
        );
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i", "bogus": 1}]}});
        assert_eq!(
            decode(ResourceKind::Pod, &pod, FieldValidation::Warn).expect("warn"),
            ["unknown field \"spec.containers[0].bogus\""]
        );
        let wrong_kind = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"}});
        assert!(decode(ResourceKind::ConfigMap, &wrong_kind, FieldValidation::Warn).is_err());
    }

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
}

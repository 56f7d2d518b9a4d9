//! Decoding an incoming object as kube-apiserver does before validation:
//! the shape must fit the kind's Go type (400), and fields the type does not
//! have are rejected, warned about or ignored per `fieldValidation`.
//!
//! The Go types are stood in for by `k8s-openapi`'s: the object goes
//! through the typed struct and back, and every field present in the input
//! but gone after the round trip is unknown. A type error is located by
//! decoding a layout of the input with one value per line, so the failing
//! line names the field.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::resources::ResourceKind;
use super::status::ApiError;

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

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

/// `v` as JSON with every value on its own line, and the field path of
/// each line (index 0 is line 1).
fn layout(v: &Value) -> (String, Vec<String>) {
    fn newline(out: &mut String, paths: &mut Vec<String>, path: &str) {
        out.push('\n');
        paths.push(path.to_string());
    }
    fn write(v: &Value, path: &str, out: &mut String, paths: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                out.push('{');
                for (i, (k, child)) in m.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let p = join(path, k);
                    newline(out, paths, &p);
                    out.push_str(&Value::String(k.clone()).to_string());
                    out.push(':');
                    write(child, &p, out, paths);
                }
                newline(out, paths, path);
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for (i, child) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let p = format!("{path}[{i}]");
                    newline(out, paths, &p);
                    write(child, &p, out, paths);
                }
                newline(out, paths, path);
                out.push(']');
            }
            scalar => out.push_str(&scalar.to_string()),
        }
    }
    let (mut out, mut paths) = (String::new(), vec![String::new()]);
    write(v, "", &mut out, &mut paths);
    (out, paths)
}

/// The fields of `input` (paths like `spec.containers[0].foo`) that the
/// typed round trip `output` no longer has. Nulls are skipped: an unknown
/// field that is null is indistinguishable from an unset known one.
fn unknown_fields(input: &Value, output: &Value, path: &str, out: &mut Vec<String>) {
    match (input, output) {
        (Value::Object(i), Value::Object(o)) => {
            for (k, v) in i.iter().filter(|(_, v)| !v.is_null()) {
                match o.get(k) {
                    None => out.push(join(path, k)),
                    Some(ov) => unknown_fields(v, ov, &join(path, k), out),
                }
            }
        }
        (Value::Array(i), Value::Array(o)) => {
            for (n, (iv, ov)) in i.iter().zip(o).enumerate() {
                unknown_fields(iv, ov, &format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

fn pointer(path: &str) -> String {
    let mut p = String::new();
    for part in path.split('.').filter(|s| !s.is_empty()) {
        let (field, indexes) = part.split_once('[').map_or((part, ""), |(f, rest)| (f, rest));
        p.push('/');
        p.push_str(&field.replace('~', "~0").replace('/', "~1"));
        for index in indexes.split('[').filter(|s| !s.is_empty()) {
            p.push('/');
            p.push_str(index.trim_end_matches(']'));
        }
    }
    p
}

/// Decodes `obj` as the Go type of `kind_name` (stood in for by `T`):
/// `kind` and `apiVersion` must be right, the shape must fit (400), and
/// unknown fields are handled per `validation`. Returns warnings to send.
pub(crate) fn decode_as<T: DeserializeOwned + Serialize>(
    kind_name: &str,
    api_version: &str,
    obj: &Value,
    validation: FieldValidation,
) -> Result<Vec<String>, ApiError> {
    let version = api_version.rsplit('/').next().unwrap_or(api_version);
    let decode_error = |what: &str| {
        ApiError::bad_request(format!(
            "{kind_name} in version \"{version}\" cannot be handled as a {kind_name}: {what}"
        ))
    };
    if !obj.is_object() {
        return Err(decode_error(&format!(
            "json: cannot unmarshal {} into Go value of type struct",
            type_name(obj)
        )));
    }
    match obj.get("kind").and_then(Value::as_str) {
        None | Some("") => {
            return Err(ApiError::bad_request(format!("Object 'Kind' is missing in '{obj}'")));
        }
        Some(k) if k != kind_name => {
            return Err(ApiError::bad_request(format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (kind {k:?} is not {kind_name:?})"
            )));
        }
        Some(_) => {}
    }
    if obj.get("apiVersion").and_then(Value::as_str) != Some(api_version) {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({}) does not match the expected API version ({api_version})",
            obj.get("apiVersion").and_then(Value::as_str).unwrap_or_default()
        )));
    }
    let (text, paths) = layout(obj);
    let typed = serde_json::from_str::<T>(&text).map_err(|e| {
        let path = paths.get(e.line().saturating_sub(1)).cloned().unwrap_or_default();
        let message = e.to_string();
        let message = message.rsplit_once(" at line ").map_or(message.as_str(), |(m, _)| m);
        match message.strip_prefix("invalid type: ").and_then(|m| m.split_once(", expected ")) {
            Some((_, expected)) => {
                let found = obj.pointer(&pointer(&path)).map_or("value", type_name);
                decode_error(&format!(
                    "json: cannot unmarshal {found} into Go struct field {kind_name}.{path} of type {expected}"
                ))
            }
            None => decode_error(&format!("{path}: {message}")),
        }
    })?;
    let round = serde_json::to_value(&typed)
        .map_err(|e| ApiError::internal(format!("re-encoding the decoded {kind_name}: {e}")))?;
    let mut unknown = Vec::new();
    unknown_fields(obj, &round, "", &mut unknown);
    let listed = unknown.iter().map(|f| format!("unknown field \"{f}\""));
    match validation {
        FieldValidation::Strict if !unknown.is_empty() => {
            Err(decode_error(&format!("strict decoding error: {}", listed.collect::<Vec<_>>().join(", "))))
        }
        FieldValidation::Warn => Ok(listed.collect()),
        _ => Ok(Vec::new()),
    }
}

/// Decodes the body as a stored kind (see [`decode_as`]).
pub(crate) fn decode(
    kind: ResourceKind,
    obj: &Value,
    validation: FieldValidation,
) -> Result<Vec<String>, ApiError> {
    use k8s_openapi::api::{apps, core, rbac};
    let (name, version) = (kind.kind(), kind.api_version());
    match kind {
        ResourceKind::Namespace => decode_as::<core::v1::Namespace>(name, &version, obj, validation),
        ResourceKind::ConfigMap => decode_as::<core::v1::ConfigMap>(name, &version, obj, validation),
        ResourceKind::Pod => decode_as::<core::v1::Pod>(name, &version, obj, validation),
        ResourceKind::Event => decode_as::<core::v1::Event>(name, &version, obj, validation),
        ResourceKind::ServiceAccount => {
            decode_as::<core::v1::ServiceAccount>(name, &version, obj, validation)
        }
        ResourceKind::Secret => decode_as::<core::v1::Secret>(name, &version, obj, validation),
        ResourceKind::Node => decode_as::<core::v1::Node>(name, &version, obj, validation),
        ResourceKind::ClusterRole => decode_as::<rbac::v1::ClusterRole>(name, &version, obj, validation),
        ResourceKind::ClusterRoleBinding => {
            decode_as::<rbac::v1::ClusterRoleBinding>(name, &version, obj, validation)
        }
        ResourceKind::Role => decode_as::<rbac::v1::Role>(name, &version, obj, validation),
        ResourceKind::RoleBinding => decode_as::<rbac::v1::RoleBinding>(name, &version, obj, validation),
        ResourceKind::Deployment => decode_as::<apps::v1::Deployment>(name, &version, obj, validation),
    }
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
        let err = decode(ResourceKind::ConfigMap, &bad, FieldValidation::Ignore).expect_err("type");
        assert_eq!(err.code, 400);
        assert!(
            err.message.contains("cannot unmarshal number into Go struct field ConfigMap.data.k"),
            "{}",
            err.message
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
    fn new_kinds_are_decoded_deeply() {
        let deploy = json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "labels": {"a": "b"}},
            "spec": {"replicas": 2, "foo": true, "selector": {"matchLabels": {"a": "b"}},
                     "template": {"metadata": {"labels": {"a": "b"}},
                                  "spec": {"containers": [{"name": "c", "image": "i", "env": [{"name": "x", "valu": "y"}]}]}}},
        });
        let err = decode(ResourceKind::Deployment, &deploy, FieldValidation::Strict).expect_err("strict");
        assert_eq!(
            err.message,
            "Deployment in version \"v1\" cannot be handled as a Deployment: strict decoding error: unknown field \"spec.foo\", unknown field \"spec.template.spec.containers[0].env[0].valu\""
        );
        let mut typo = deploy.clone();
        typo["spec"]["replicas"] = json!("two");
        let err = decode(ResourceKind::Deployment, &typo, FieldValidation::Ignore).expect_err("type");
        assert!(
            err.message.contains(
                "cannot unmarshal string into Go struct field Deployment.spec.replicas of type i32"
            ),
            "{}",
            err.message
        );
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"k": "not base64!"}});
        let err = decode(ResourceKind::Secret, &secret, FieldValidation::Ignore).expect_err("base64");
        assert!(err.message.contains("data.k: "), "{}", err.message);
        let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "b"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"},
            "subjects": [{"kind": "ServiceAccount", "name": "sa", "namespace": "ns"}]});
        assert!(decode(ResourceKind::RoleBinding, &binding, FieldValidation::Strict).expect("ok").is_empty());
        let wrong_version = json!({"apiVersion": "v1", "kind": "Role", "metadata": {"name": "r"}});
        assert_eq!(
            decode(ResourceKind::Role, &wrong_version, FieldValidation::Warn).expect_err("version").code,
            400
        );
    }
}

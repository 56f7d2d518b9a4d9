//! Decoding of Kubernetes protobuf request bodies
//! (`application/vnd.kubernetes.protobuf`) into JSON.
//!
//! kubectl 1.32+ sends protobuf for typed-client writes (`kubectl create
//! configmap`, `create namespace`, `create serviceaccount`, `create secret
//! generic`, `create role`/`clusterrole`/`rolebinding`/`clusterrolebinding`,
//! `create token`, `auth whoami`, `auth can-i`). Only the messages those
//! send are described here; a field this server does not
//! know is refused (400) rather than silently dropped. Responses are always
//! JSON, which every client also accepts.

use base64::Engine as _;
use serde_json::{Map, Value, json};

use super::clock::rfc3339;
use super::status::ApiError;

/// The media type.
pub(crate) const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";
const MAGIC: &[u8] = b"k8s\0";

#[derive(Clone, Copy)]
enum Ty {
    Str,
    Bool,
    Int,
    Time,
    Msg(&'static [Field]),
    /// `map<string, string>`.
    StrMap,
    /// `map<string, bytes>` (base64 in JSON).
    BytesMap,
    /// `map<string, ExtraValue>` where `ExtraValue { repeated string items = 1 }`.
    ExtraMap,
}

#[derive(Clone, Copy)]
struct Field {
    num: u64,
    name: &'static str,
    ty: Ty,
    repeated: bool,
}

const fn f(num: u64, name: &'static str, ty: Ty) -> Field {
    Field { num, name, ty, repeated: false }
}

const fn rep(num: u64, name: &'static str, ty: Ty) -> Field {
    Field { num, name, ty, repeated: true }
}

const OWNER_REFERENCE: &[Field] = &[
    f(1, "kind", Ty::Str),
    f(3, "name", Ty::Str),
    f(4, "uid", Ty::Str),
    f(5, "apiVersion", Ty::Str),
    f(6, "controller", Ty::Bool),
    f(7, "blockOwnerDeletion", Ty::Bool),
];

const OBJECT_META: &[Field] = &[
    f(1, "name", Ty::Str),
    f(2, "generateName", Ty::Str),
    f(3, "namespace", Ty::Str),
    f(4, "selfLink", Ty::Str),
    f(5, "uid", Ty::Str),
    f(6, "resourceVersion", Ty::Str),
    f(7, "generation", Ty::Int),
    f(8, "creationTimestamp", Ty::Time),
    f(9, "deletionTimestamp", Ty::Time),
    f(10, "deletionGracePeriodSeconds", Ty::Int),
    f(11, "labels", Ty::StrMap),
    f(12, "annotations", Ty::StrMap),
    rep(13, "ownerReferences", Ty::Msg(OWNER_REFERENCE)),
    rep(14, "finalizers", Ty::Str),
];

const CONFIG_MAP: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(2, "data", Ty::StrMap),
    f(3, "binaryData", Ty::BytesMap),
    f(4, "immutable", Ty::Bool),
];

const OBJECT_REFERENCE: &[Field] = &[
    f(1, "kind", Ty::Str),
    f(2, "namespace", Ty::Str),
    f(3, "name", Ty::Str),
    f(4, "uid", Ty::Str),
    f(5, "apiVersion", Ty::Str),
    f(6, "resourceVersion", Ty::Str),
    f(7, "fieldPath", Ty::Str),
];

const SERVICE_ACCOUNT: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    rep(2, "secrets", Ty::Msg(OBJECT_REFERENCE)),
    rep(3, "imagePullSecrets", Ty::Msg(&[f(1, "name", Ty::Str)])),
    f(4, "automountServiceAccountToken", Ty::Bool),
];

const SECRET: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(2, "data", Ty::BytesMap),
    f(3, "type", Ty::Str),
    f(4, "stringData", Ty::StrMap),
    f(5, "immutable", Ty::Bool),
];

const POLICY_RULE: &[Field] = &[
    rep(1, "verbs", Ty::Str),
    rep(2, "apiGroups", Ty::Str),
    rep(3, "resources", Ty::Str),
    rep(4, "resourceNames", Ty::Str),
    rep(5, "nonResourceURLs", Ty::Str),
];

const LABEL_SELECTOR: &[Field] = &[
    f(1, "matchLabels", Ty::StrMap),
    rep(
        2,
        "matchExpressions",
        Ty::Msg(&[f(1, "key", Ty::Str), f(2, "operator", Ty::Str), rep(3, "values", Ty::Str)]),
    ),
];

const ROLE: &[Field] = &[f(1, "metadata", Ty::Msg(OBJECT_META)), rep(2, "rules", Ty::Msg(POLICY_RULE))];

const CLUSTER_ROLE: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    rep(2, "rules", Ty::Msg(POLICY_RULE)),
    f(3, "aggregationRule", Ty::Msg(&[rep(1, "clusterRoleSelectors", Ty::Msg(LABEL_SELECTOR))])),
];

const ROLE_BINDING: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    rep(
        2,
        "subjects",
        Ty::Msg(&[
            f(1, "kind", Ty::Str),
            f(2, "apiGroup", Ty::Str),
            f(3, "name", Ty::Str),
            f(4, "namespace", Ty::Str),
        ]),
    ),
    f(3, "roleRef", Ty::Msg(&[f(1, "apiGroup", Ty::Str), f(2, "kind", Ty::Str), f(3, "name", Ty::Str)])),
];

const TOKEN_REQUEST: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(
        2,
        "spec",
        Ty::Msg(&[
            rep(1, "audiences", Ty::Str),
            f(
                3,
                "boundObjectRef",
                Ty::Msg(&[
                    f(1, "kind", Ty::Str),
                    f(2, "apiVersion", Ty::Str),
                    f(3, "name", Ty::Str),
                    f(4, "uid", Ty::Str),
                ]),
            ),
            f(4, "expirationSeconds", Ty::Int),
        ]),
    ),
    f(3, "status", Ty::Msg(&[f(1, "token", Ty::Str), f(2, "expirationTimestamp", Ty::Time)])),
];

const NAMESPACE_CONDITION: &[Field] = &[
    f(1, "type", Ty::Str),
    f(2, "status", Ty::Str),
    f(4, "lastTransitionTime", Ty::Time),
    f(5, "reason", Ty::Str),
    f(6, "message", Ty::Str),
];

const NAMESPACE: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(2, "spec", Ty::Msg(&[rep(1, "finalizers", Ty::Str)])),
    f(3, "status", Ty::Msg(&[f(1, "phase", Ty::Str), rep(2, "conditions", Ty::Msg(NAMESPACE_CONDITION))])),
];

const USER_INFO: &[Field] = &[
    f(1, "username", Ty::Str),
    f(2, "uid", Ty::Str),
    rep(3, "groups", Ty::Str),
    f(4, "extra", Ty::ExtraMap),
];

const SELF_SUBJECT_REVIEW: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(2, "status", Ty::Msg(&[f(1, "userInfo", Ty::Msg(USER_INFO))])),
];

const RESOURCE_ATTRIBUTES: &[Field] = &[
    f(1, "namespace", Ty::Str),
    f(2, "verb", Ty::Str),
    f(3, "group", Ty::Str),
    f(4, "version", Ty::Str),
    f(5, "resource", Ty::Str),
    f(6, "subresource", Ty::Str),
    f(7, "name", Ty::Str),
];

const SELF_SUBJECT_ACCESS_REVIEW: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(
        2,
        "spec",
        Ty::Msg(&[
            f(1, "resourceAttributes", Ty::Msg(RESOURCE_ATTRIBUTES)),
            f(2, "nonResourceAttributes", Ty::Msg(&[f(1, "path", Ty::Str), f(2, "verb", Ty::Str)])),
        ]),
    ),
    f(
        3,
        "status",
        Ty::Msg(&[
            f(1, "allowed", Ty::Bool),
            f(2, "reason", Ty::Str),
            f(3, "evaluationError", Ty::Str),
            f(4, "denied", Ty::Bool),
        ]),
    ),
];

fn schema(api_version: &str, kind: &str) -> Option<&'static [Field]> {
    Some(match (api_version, kind) {
        ("v1", "ConfigMap") => CONFIG_MAP,
        ("v1", "Namespace") => NAMESPACE,
        ("v1", "ServiceAccount") => SERVICE_ACCOUNT,
        ("v1", "Secret") => SECRET,
        ("rbac.authorization.k8s.io/v1", "Role") => ROLE,
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => CLUSTER_ROLE,
        ("rbac.authorization.k8s.io/v1", "RoleBinding" | "ClusterRoleBinding") => ROLE_BINDING,
        ("authentication.k8s.io/v1", "TokenRequest") => TOKEN_REQUEST,
        (v, "SelfSubjectReview") if v.starts_with("authentication.k8s.io/") => SELF_SUBJECT_REVIEW,
        ("authorization.k8s.io/v1", "SelfSubjectAccessReview") => SELF_SUBJECT_ACCESS_REVIEW,
        _ => return None,
    })
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::bad_request(format!("protobuf: {}", msg.into()))
}

struct Reader<'a> {
    buf: &'a [u8],
}

enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, ApiError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.buf.split_first().ok_or_else(|| bad("truncated varint"))?;
            self.buf = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(bad("varint too long"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ApiError> {
        if n > self.buf.len() {
            return Err(bad("truncated field"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn next(&mut self) -> Result<Option<(u64, Wire<'a>)>, ApiError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let tag = self.varint()?;
        let wire = match tag & 7 {
            0 => Wire::Varint(self.varint()?),
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| bad("length overflow"))?;
                Wire::Bytes(self.take(len)?)
            }
            1 => Wire::Bytes(self.take(8)?),
            5 => Wire::Bytes(self.take(4)?),
            w => return Err(bad(format!("unsupported wire type {w}"))),
        };
        Ok(Some((tag >> 3, wire)))
    }
}

fn string(bytes: &[u8]) -> Result<String, ApiError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| bad("string is not UTF-8"))
}

fn map_entry(bytes: &[u8]) -> Result<(String, Option<&[u8]>), ApiError> {
    let mut r = Reader { buf: bytes };
    let (mut key, mut value) = (String::new(), None);
    while let Some((num, wire)) = r.next()? {
        match (num, wire) {
            (1, Wire::Bytes(b)) => key = string(b)?,
            (2, Wire::Bytes(b)) => value = Some(b),
            _ => return Err(bad("malformed map entry")),
        }
    }
    Ok((key, value))
}

fn scalar(ty: Ty, wire: Wire<'_>, context: &str) -> Result<Value, ApiError> {
    Ok(match (ty, wire) {
        (Ty::Str, Wire::Bytes(b)) => Value::String(string(b)?),
        (Ty::Bool, Wire::Varint(v)) => Value::Bool(v != 0),
        // int32/int64 are two's complement varints.
        (Ty::Int, Wire::Varint(v)) => json!(v as i64),
        (Ty::Time, Wire::Bytes(b)) => {
            let mut r = Reader { buf: b };
            let mut seconds = 0i64;
            while let Some((num, wire)) = r.next()? {
                if let (1, Wire::Varint(v)) = (num, wire) {
                    seconds = v as i64;
                }
            }
            if seconds == 0 {
                // The zero time: JSON leaves it out.
                return Ok(Value::Null);
            }
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds.max(0).unsigned_abs());
            Value::String(rfc3339(t))
        }
        (Ty::Msg(fields), Wire::Bytes(b)) => message(fields, b, context)?,
        _ => return Err(bad(format!("wrong wire type in {context}"))),
    })
}

fn message(fields: &[Field], bytes: &[u8], context: &str) -> Result<Value, ApiError> {
    let mut out = Map::new();
    let mut r = Reader { buf: bytes };
    while let Some((num, wire)) = r.next()? {
        let field = fields.iter().find(|f| f.num == num).ok_or_else(|| {
            bad(format!("field {num} of {context} is not supported by the test apiserver; send JSON"))
        })?;
        let path = format!("{context}.{}", field.name);
        match field.ty {
            Ty::StrMap | Ty::BytesMap | Ty::ExtraMap => {
                let Wire::Bytes(b) = wire else { return Err(bad(format!("wrong wire type in {path}"))) };
                let (k, v) = map_entry(b)?;
                let v = v.unwrap_or_default();
                let value = match field.ty {
                    Ty::StrMap => Value::String(string(v)?),
                    Ty::BytesMap => Value::String(base64::engine::general_purpose::STANDARD.encode(v)),
                    _ => {
                        let mut items = Vec::new();
                        let mut er = Reader { buf: v };
                        while let Some((n, w)) = er.next()? {
                            if let (1, Wire::Bytes(s)) = (n, w) {
                                items.push(Value::String(string(s)?));
                            }
                        }
                        Value::Array(items)
                    }
                };
                let slot = out.entry(field.name).or_insert_with(|| json!({}));
                if let Some(m) = slot.as_object_mut() {
                    m.insert(k, value);
                }
            }
            _ if field.repeated => {
                let v = scalar(field.ty, wire, &path)?;
                let slot = out.entry(field.name).or_insert_with(|| json!([]));
                if let Some(a) = slot.as_array_mut() {
                    a.push(v);
                }
            }
            _ => {
                // Go's JSON encoding omits empty strings, zero numbers and
                // zero times, which protobuf sends explicitly.
                let v = scalar(field.ty, wire, &path)?;
                let empty = v.is_null() || v == json!("") || v == json!(0);
                if !empty {
                    out.insert(field.name.to_string(), v);
                }
            }
        }
    }
    Ok(Value::Object(out))
}

/// Decodes a protobuf-encoded object (with its `k8s\0` envelope) to JSON,
/// `kind` and `apiVersion` included.
pub(crate) fn decode(body: &[u8]) -> Result<Value, ApiError> {
    let envelope = body.strip_prefix(MAGIC).ok_or_else(|| bad("missing the k8s envelope"))?;
    let mut r = Reader { buf: envelope };
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    while let Some((num, wire)) = r.next()? {
        match (num, wire) {
            (1, Wire::Bytes(b)) => {
                let mut tm = Reader { buf: b };
                while let Some((n, w)) = tm.next()? {
                    match (n, w) {
                        (1, Wire::Bytes(s)) => api_version = string(s)?,
                        (2, Wire::Bytes(s)) => kind = string(s)?,
                        _ => {}
                    }
                }
            }
            (2, Wire::Bytes(b)) => raw = b,
            (3 | 4, Wire::Bytes(b)) if !b.is_empty() => {
                return Err(bad("encoded envelopes are not supported"));
            }
            _ => {}
        }
    }
    let fields = schema(&api_version, &kind).ok_or_else(|| {
        ApiError::unsupported_media_type(format!(
            "the test apiserver cannot decode {kind} ({api_version}) from protobuf; send application/json"
        ))
    })?;
    let mut obj = message(fields, raw, &kind)?;
    if let Some(m) = obj.as_object_mut() {
        m.insert("apiVersion".into(), Value::String(api_version));
        m.insert("kind".into(), Value::String(kind));
    }
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(num: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![(num << 3) | 2, u8::try_from(payload.len()).expect("short")];
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn decodes_a_configmap() {
        let meta = [field(1, b"cm"), field(11, &[field(1, b"app"), field(2, b"web")].concat())].concat();
        let cm =
            [field(1, &meta), field(2, &[field(1, b"k"), field(2, b"v")].concat()), vec![4 << 3, 1]].concat();
        let type_meta = [field(1, b"v1"), field(2, b"ConfigMap")].concat();
        let body = [MAGIC.to_vec(), field(1, &type_meta), field(2, &cm)].concat();
        let v = decode(&body).expect("decode");
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm", "labels": {"app": "web"}}, "data": {"k": "v"}, "immutable": true})
        );
        let unknown = [MAGIC.to_vec(), field(1, &type_meta), field(2, &field(9, b"x"))].concat();
        assert_eq!(decode(&unknown).expect_err("unknown field").code, 400);
        let pod_meta = [field(1, b"v1"), field(2, b"Pod")].concat();
        assert_eq!(decode(&[MAGIC.to_vec(), field(1, &pod_meta)].concat()).expect_err("pod").code, 415);
    }
}

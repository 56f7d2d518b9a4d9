//! PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and
//! strategic merge patch for the kinds stored here.

use serde_json::{Map, Value};

use super::status::ApiError;

/// The supported patch media types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PatchType {
    /// `application/json-patch+json`.
    Json,
    /// `application/merge-patch+json`.
    Merge,
    /// `application/strategic-merge-patch+json`.
    Strategic,
    /// `application/apply-patch+yaml` (server-side apply).
    Apply,
}

const ACCEPTED: &str = "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json";

impl PatchType {
    /// From the request's `Content-Type` (415 for anything else).
    pub fn from_content_type(ct: Option<&str>) -> Result<Self, ApiError> {
        let media = ct.unwrap_or_default().split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        match media.as_str() {
            "application/json-patch+json" => Ok(Self::Json),
            "application/merge-patch+json" => Ok(Self::Merge),
            "application/strategic-merge-patch+json" => Ok(Self::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => Ok(Self::Apply),
            _ => Err(ApiError::unsupported_media_type(ACCEPTED)),
        }
    }
}

/// Applies a JSON merge patch (RFC 7386): objects merge, `null` deletes,
/// anything else replaces.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(patch) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Some(t) = target.as_object_mut() {
        for (k, v) in patch {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// List fields that strategic merge patch merges by a key, with that key;
/// matched by field name (unambiguous for namespaces, configmaps and pods).
fn merge_key(field: &str) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "resourceClaims"
        | "schedulingGates" => "name",
        "ports" => "containerPort",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "hostAliases" => "ip",
        "conditions" => "type",
        "ownerReferences" => "uid",
        "topologySpreadConstraints" => "topologyKey",
        _ => return None,
    })
}

/// Lists of scalars that strategic merge patch unions instead of replacing.
fn merges_primitives(field: &str) -> bool {
    field == "finalizers"
}

fn smp_error(msg: impl Into<String>) -> ApiError {
    ApiError::bad_request(msg)
}

/// Applies a strategic merge patch: like a merge patch, but lists with a
/// merge key merge element by element, and the `$patch`, `$retainKeys` and
/// `$deleteFromPrimitiveList/` directives are honoured. `$setElementOrder/`
/// is accepted and ignored (new elements are appended).
pub(crate) fn strategic_merge_patch(target: &mut Value, patch: &Value) -> Result<(), ApiError> {
    let Some(patch) = patch.as_object() else {
        return Err(smp_error("strategic merge patch must be a JSON object"));
    };
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut p = patch.clone();
            p.remove("$patch");
            *target = Value::Object(p);
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Object(Map::new());
            return Ok(());
        }
        Some(other) => return Err(smp_error(format!("Unknown patch type: {other}"))),
        None => {}
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Some(t) = target.as_object_mut() else { return Ok(()) };
    if let Some(keep) = patch.get("$retainKeys") {
        let keep: Vec<&str> = keep.as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        t.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (k, v) in patch {
        if k == "$retainKeys" || k.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let remove = v.as_array().cloned().unwrap_or_default();
            if let Some(list) = t.get_mut(field).and_then(Value::as_array_mut) {
                list.retain(|x| !remove.contains(x));
            }
            continue;
        }
        if v.is_null() || v.get("$patch").and_then(Value::as_str) == Some("delete") {
            t.remove(k);
            continue;
        }
        match (merge_key(k), v) {
            (Some(key), Value::Array(items)) => {
                let slot = t.entry(k.clone()).or_insert(Value::Array(Vec::new()));
                merge_list(slot, items, key)?;
            }
            (None, Value::Array(items)) if merges_primitives(k) => {
                let slot = t.entry(k.clone()).or_insert(Value::Array(Vec::new()));
                if let Some(list) = slot.as_array_mut() {
                    for item in items {
                        if !list.contains(item) {
                            list.push(item.clone());
                        }
                    }
                } else {
                    *slot = v.clone();
                }
            }
            (_, Value::Object(_)) if t.get(k).is_some_and(Value::is_object) => {
                if let Some(slot) = t.get_mut(k) {
                    strategic_merge_patch(slot, v)?;
                }
            }
            (_, Value::Object(_)) => {
                let mut fresh = Value::Object(Map::new());
                strategic_merge_patch(&mut fresh, v)?;
                t.insert(k.clone(), fresh);
            }
            _ => {
                t.insert(k.clone(), v.clone());
            }
        }
    }
    Ok(())
}

fn merge_list(slot: &mut Value, items: &[Value], key: &str) -> Result<(), ApiError> {
    if !slot.is_array() {
        *slot = Value::Array(Vec::new());
    }
    let Some(list) = slot.as_array_mut() else { return Ok(()) };
    if items.iter().any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace")) {
        *list = items.iter().filter(|i| i.get("$patch").is_none()).cloned().collect();
        return Ok(());
    }
    for item in items {
        let Some(id) = item.get(key) else {
            return Err(smp_error(format!("map: {item} does not contain declared merge key: {key}")));
        };
        let pos = list.iter().position(|e| e.get(key) == Some(id));
        match (item.get("$patch").and_then(Value::as_str), pos) {
            (Some("delete"), Some(p)) => {
                list.remove(p);
            }
            (Some("delete"), None) => {}
            (_, Some(p)) => strategic_merge_patch(&mut list[p], item)?,
            (_, None) => {
                let mut fresh = Value::Object(Map::new());
                strategic_merge_patch(&mut fresh, item)?;
                list.push(fresh);
            }
        }
    }
    Ok(())
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

fn split_pointer(path: &str) -> Result<(String, String), String> {
    if path.is_empty() {
        return Err("the root document cannot be the target of this operation".into());
    }
    if !path.starts_with('/') {
        return Err(format!("invalid JSON pointer: {path:?}"));
    }
    let (parent, last) = path.rsplit_once('/').unwrap_or(("", path));
    Ok((parent.to_string(), unescape(last)))
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, last) = split_pointer(path)?;
    match doc.pointer_mut(&parent) {
        Some(Value::Object(m)) => {
            m.insert(last, value);
            Ok(())
        }
        Some(Value::Array(a)) => {
            let idx = if last == "-" {
                a.len()
            } else {
                last.parse().map_err(|_| format!("invalid index {last:?}"))?
            };
            if idx > a.len() {
                return Err(format!("add operation does not apply: index {idx} out of bounds"));
            }
            a.insert(idx, value);
            Ok(())
        }
        _ => Err(format!("add operation does not apply: doc is missing path: {path:?}")),
    }
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, last) = split_pointer(path)?;
    let missing = || format!("remove operation does not apply: doc is missing path: {path:?}");
    match doc.pointer_mut(&parent) {
        Some(Value::Object(m)) => m.remove(&last).ok_or_else(missing),
        Some(Value::Array(a)) => {
            let idx: usize = last.parse().map_err(|_| missing())?;
            if idx < a.len() { Ok(a.remove(idx)) } else { Err(missing()) }
        }
        _ => Err(missing()),
    }
}

/// Applies a JSON patch. `Err(400)` for a malformed patch document,
/// `Err(422)` for one that does not apply, as kube-apiserver answers.
pub(crate) fn json_patch(doc: &mut Value, patch: &Value) -> Result<(), ApiError> {
    let Some(ops) = patch.as_array() else {
        return Err(ApiError::bad_request(
            "json: cannot unmarshal object into Go value of type jsonpatch.Patch",
        ));
    };
    for op in ops {
        let name = op.get("op").and_then(Value::as_str).unwrap_or_default();
        let path = op.get("path").and_then(Value::as_str);
        let Some(path) = path else {
            return Err(ApiError::bad_request(format!("missing path in JSON patch operation {op}")));
        };
        let value = || {
            op.get("value").cloned().ok_or_else(|| ApiError::bad_request(format!("missing value in {op}")))
        };
        let from = || {
            op.get("from")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::bad_request(format!("missing from in {op}")))
        };
        let result = match name {
            "add" => add(doc, path, value()?),
            "remove" => remove(doc, path).map(drop),
            "replace" => match doc.pointer_mut(path) {
                Some(slot) => {
                    *slot = value()?;
                    Ok(())
                }
                None => Err(format!("replace operation does not apply: doc is missing key: {path}")),
            },
            "move" => {
                let from = from()?;
                remove(doc, from).and_then(|v| add(doc, path, v))
            }
            "copy" => {
                let from = from()?;
                match doc.pointer(from).cloned() {
                    Some(v) => add(doc, path, v),
                    None => Err(format!("copy operation does not apply: doc is missing from path: {from}")),
                }
            }
            "test" => {
                let want = value()?;
                if doc.pointer(path) == Some(&want) {
                    Ok(())
                } else {
                    Err(format!("testing value {path} failed: test failed"))
                }
            }
            other => return Err(ApiError::bad_request(format!("Unexpected kind: {other}"))),
        };
        result.map_err(ApiError::unprocessable)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc7386() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut doc, &json!({"a": "z", "c": {"f": null}, "n": [1]}));
        assert_eq!(doc, json!({"a": "z", "c": {"d": "e"}, "n": [1]}));
    }

    #[test]
    fn strategic_merge_merges_lists_by_key() {
        let mut pod = json!({"spec": {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "1"}]}, "metadata": {"finalizers": ["x"]}});
        let patch = json!({
            "spec": {
                "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
                "containers": [{"name": "b", "image": "2"}, {"name": "c", "image": "3"}, {"name": "a", "$patch": "delete"}]
            },
            "metadata": {"finalizers": ["y"]}
        });
        strategic_merge_patch(&mut pod, &patch).expect("smp");
        assert_eq!(
            pod["spec"]["containers"],
            json!([{"name": "b", "image": "2"}, {"name": "c", "image": "3"}])
        );
        assert_eq!(pod["metadata"]["finalizers"], json!(["x", "y"]));
        let mut cm = json!({"data": {"a": "1", "b": "2"}});
        strategic_merge_patch(&mut cm, &json!({"data": {"a": null, "c": "3"}})).expect("smp");
        assert_eq!(cm, json!({"data": {"b": "2", "c": "3"}}));
        let mut l = json!({"spec": {"containers": [{"name": "a"}]}});
        strategic_merge_patch(
            &mut l,
            &json!({"spec": {"$deleteFromPrimitiveList/x": [1], "containers": [{"image": "i"}]}}),
        )
        .expect_err("no merge key");
    }

    #[test]
    fn json_patch_applies_or_fails_like_kube() {
        let mut doc = json!({"data": {"a": "1"}, "list": [1, 2]});
        let patch = json!([
            {"op": "add", "path": "/data/b", "value": "2"},
            {"op": "replace", "path": "/data/a", "value": "x"},
            {"op": "remove", "path": "/list/0"},
            {"op": "add", "path": "/list/-", "value": 3},
            {"op": "copy", "from": "/data/b", "path": "/data/c"},
            {"op": "move", "from": "/data/c", "path": "/data/d"},
            {"op": "test", "path": "/data/d", "value": "2"}
        ]);
        json_patch(&mut doc, &patch).expect("patch");
        assert_eq!(doc, json!({"data": {"a": "x", "b": "2", "d": "2"}, "list": [2, 3]}));
        let err = json_patch(&mut doc, &json!([{"op": "test", "path": "/data/a", "value": "no"}]))
            .expect_err("test");
        assert_eq!(err.code, 422);
        let err = json_patch(&mut doc, &json!({"op": "add"})).expect_err("shape");
        assert_eq!(err.code, 400);
        assert_eq!(
            json_patch(&mut doc, &json!([{"op": "remove", "path": "/nope"}])).expect_err("missing").code,
            422
        );
    }
}

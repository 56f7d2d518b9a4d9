//! Discovery documents (legacy and aggregated), `/version`, and the small
//! OpenAPI v3 documents kubectl consults before writing.

use serde_json::{Value, json};

use super::media::DiscoveryVersion;
use super::resources::ResourceKind;

/// The Kubernetes version this server claims to be.
pub(crate) const KUBE_VERSION: (u32, u32, u32) = (1, 33, 0);

/// A non-core API group with its (cluster-scoped, create-only) review
/// resources: `(plural, singular, kind)`.
pub(crate) struct ApiGroup {
    pub name: &'static str,
    /// Served versions, preferred first.
    pub versions: &'static [&'static str],
    pub resources: &'static [(&'static str, &'static str, &'static str)],
}

/// The non-core groups served.
pub(crate) const GROUPS: [ApiGroup; 2] = [
    ApiGroup {
        name: "authentication.k8s.io",
        versions: &["v1", "v1beta1", "v1alpha1"],
        resources: &[("selfsubjectreviews", "selfsubjectreview", "SelfSubjectReview")],
    },
    ApiGroup {
        name: "authorization.k8s.io",
        versions: &["v1"],
        resources: &[("selfsubjectaccessreviews", "selfsubjectaccessreview", "SelfSubjectAccessReview")],
    },
];

/// The group, if it serves `version`.
pub(crate) fn group(name: &str, version: Option<&str>) -> Option<&'static ApiGroup> {
    GROUPS.iter().find(|g| g.name == name && version.is_none_or(|v| g.versions.contains(&v)))
}

/// `/version`.
pub(crate) fn version() -> Value {
    let (major, minor, patch) = KUBE_VERSION;
    json!({
        "major": major.to_string(),
        "minor": minor.to_string(),
        "emulationMajor": major.to_string(),
        "emulationMinor": minor.to_string(),
        "minCompatibilityMajor": major.to_string(),
        "minCompatibilityMinor": (minor - 1).to_string(),
        "gitVersion": format!("v{major}.{minor}.{patch}"),
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-04-23T00:00:00Z",
        "goVersion": "go1.24.2",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// `/api`.
pub(crate) fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{ "clientCIDR": "0.0.0.0/0", "serverAddress": server_address }],
    })
}

fn group_versions(g: &ApiGroup) -> Value {
    let versions: Vec<Value> = g
        .versions
        .iter()
        .map(|v| json!({ "groupVersion": format!("{}/{v}", g.name), "version": v }))
        .collect();
    json!({ "name": g.name, "versions": versions, "preferredVersion": versions.first().cloned() })
}

/// `/apis/{group}`.
pub(crate) fn api_group(g: &ApiGroup) -> Value {
    let mut v = group_versions(g);
    v["kind"] = json!("APIGroup");
    v["apiVersion"] = json!("v1");
    v
}

/// `/apis`.
pub(crate) fn api_group_list() -> Value {
    json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": GROUPS.iter().map(group_versions).collect::<Vec<_>>() })
}

/// `/api/v1`.
pub(crate) fn core_resource_list() -> Value {
    let mut resources = Vec::new();
    for k in ResourceKind::ALL {
        let mut r = json!({
            "name": k.plural(),
            "singularName": k.singular(),
            "namespaced": k.namespaced(),
            "kind": k.kind(),
            "verbs": k.verbs(),
            "shortNames": k.short_names(),
        });
        if !k.categories().is_empty() {
            r["categories"] = json!(k.categories());
        }
        resources.push(r);
        let mut subs: Vec<_> = k.subresources().iter().collect();
        subs.sort_by_key(|s| s.name);
        for s in subs {
            resources.push(json!({
                "name": format!("{}/{}", k.plural(), s.name),
                "singularName": "",
                "namespaced": k.namespaced(),
                "kind": s.kind,
                "verbs": s.verbs,
            }));
        }
    }
    json!({ "kind": "APIResourceList", "groupVersion": "v1", "resources": resources })
}

/// `/apis/{group}/{version}`.
pub(crate) fn group_resource_list(g: &ApiGroup, version: &str) -> Value {
    let resources: Vec<Value> = g
        .resources
        .iter()
        .map(|(plural, singular, kind)| {
            json!({ "name": plural, "singularName": singular, "namespaced": false, "kind": kind, "verbs": ["create"] })
        })
        .collect();
    json!({ "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": format!("{}/{version}", g.name), "resources": resources })
}

fn discovery_list(version: DiscoveryVersion, items: Vec<Value>) -> Value {
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": format!("apidiscovery.k8s.io/{}", version.as_str()),
        "metadata": {},
        "items": items,
    })
}

/// Aggregated discovery for `/api`.
pub(crate) fn aggregated_core(version: DiscoveryVersion) -> Value {
    let resources: Vec<Value> = ResourceKind::ALL
        .iter()
        .map(|k| {
            let response_kind = json!({ "group": "", "version": "v1", "kind": k.kind() });
            let mut r = json!({
                "resource": k.plural(),
                "responseKind": response_kind,
                "scope": if k.namespaced() { "Namespaced" } else { "Cluster" },
                "singularResource": k.singular(),
                "verbs": k.verbs(),
                "shortNames": k.short_names(),
            });
            if !k.categories().is_empty() {
                r["categories"] = json!(k.categories());
            }
            let subs: Vec<Value> = k
                .subresources()
                .iter()
                .map(|s| {
                    json!({
                        "subresource": s.name,
                        "responseKind": { "group": "", "version": "v1", "kind": s.kind },
                        "verbs": s.verbs,
                    })
                })
                .collect();
            if !subs.is_empty() {
                r["subresources"] = json!(subs);
            }
            r
        })
        .collect();
    discovery_list(
        version,
        vec![
            json!({ "metadata": {}, "versions": [{ "version": "v1", "resources": resources, "freshness": "Current" }] }),
        ],
    )
}

/// Aggregated discovery for `/apis`.
pub(crate) fn aggregated_groups(version: DiscoveryVersion) -> Value {
    let items = GROUPS
        .iter()
        .map(|g| {
            let versions: Vec<Value> = g
                .versions
                .iter()
                .map(|v| {
                    let resources: Vec<Value> = g
                        .resources
                        .iter()
                        .map(|(plural, singular, kind)| {
                            json!({
                                "resource": plural,
                                "responseKind": { "group": g.name, "version": v, "kind": kind },
                                "scope": "Cluster",
                                "singularResource": singular,
                                "verbs": ["create"],
                            })
                        })
                        .collect();
                    json!({ "version": v, "resources": resources, "freshness": "Current" })
                })
                .collect();
            json!({ "metadata": { "name": g.name }, "versions": versions })
        })
        .collect();
    discovery_list(version, items)
}

fn hash(s: &str) -> String {
    // FNV-1a: any stable digest works; kubectl only compares it.
    let h =
        s.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    format!("{h:016X}")
}

const PATCH_TYPES: [&str; 4] = [
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
];

fn query_param(name: &str) -> Value {
    json!({ "name": name, "in": "query", "schema": { "type": "string", "uniqueItems": true } })
}

fn operation(id: String, action: &str, gvk: &Value, patch: bool) -> Value {
    let mut params = vec![query_param("dryRun"), query_param("fieldManager")];
    if matches!(action, "post" | "put" | "patch") {
        params.push(query_param("fieldValidation"));
    }
    let mut op = json!({
        "operationId": id,
        "parameters": params,
        "responses": { "200": { "description": "OK" } },
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk,
    });
    if patch {
        let content: serde_json::Map<String, Value> =
            PATCH_TYPES.iter().map(|t| (t.to_string(), json!({ "schema": { "type": "object" } }))).collect();
        op["requestBody"] = json!({ "content": content, "required": true });
    }
    op
}

/// The OpenAPI v3 document of one group-version, e.g. `api/v1`: every path
/// with its operations, their `x-kubernetes-group-version-kind`, and the
/// `fieldValidation` parameter (kubectl checks it to use server-side
/// validation) and patch types. Schemas are left out; kubectl then falls
/// back to its compiled-in types.
pub(crate) fn openapi_v3_doc(gv_path: &str) -> Option<Value> {
    let mut paths = serde_json::Map::new();
    let (major, minor, patch) = KUBE_VERSION;
    if gv_path == "api/v1" {
        for k in ResourceKind::ALL {
            let gvk = json!({ "group": "", "version": "v1", "kind": k.kind() });
            let (collection, item) = if k.namespaced() {
                (
                    format!("/api/v1/namespaces/{{namespace}}/{}", k.plural()),
                    format!("/api/v1/namespaces/{{namespace}}/{}/{{name}}", k.plural()),
                )
            } else {
                (format!("/api/v1/{}", k.plural()), format!("/api/v1/{}/{{name}}", k.plural()))
            };
            let kind = k.kind();
            let scope = if k.namespaced() { "Namespaced" } else { "" };
            paths.insert(
                collection,
                json!({
                    "get": operation(format!("listCoreV1{scope}{kind}"), "list", &gvk, false),
                    "post": operation(format!("createCoreV1{scope}{kind}"), "post", &gvk, false),
                }),
            );
            paths.insert(
                item,
                json!({
                    "get": operation(format!("readCoreV1{scope}{kind}"), "get", &gvk, false),
                    "put": operation(format!("replaceCoreV1{scope}{kind}"), "put", &gvk, false),
                    "patch": operation(format!("patchCoreV1{scope}{kind}"), "patch", &gvk, true),
                    "delete": operation(format!("deleteCoreV1{scope}{kind}"), "delete", &gvk, false),
                }),
            );
        }
    } else {
        let (group_name, version) = gv_path.strip_prefix("apis/")?.split_once('/')?;
        let g = group(group_name, Some(version))?;
        for (plural, _, kind) in g.resources {
            let gvk = json!({ "group": g.name, "version": version, "kind": kind });
            paths.insert(
                format!("/apis/{}/{version}/{plural}", g.name),
                json!({ "post": operation(format!("create{kind}"), "post", &gvk, false) }),
            );
        }
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": { "title": "Kubernetes", "version": format!("v{major}.{minor}.{patch}") },
        "paths": paths,
        "components": { "schemas": {} },
    }))
}

fn proto_bytes(field: u8, payload: &[u8]) -> Vec<u8> {
    // Short payloads only: one-byte lengths.
    let len = u8::try_from(payload.len()).unwrap_or(u8::MAX);
    let mut out = vec![(field << 3) | 2, len];
    out.extend_from_slice(&payload[..usize::from(len)]);
    out
}

/// `/openapi/v2` as protobuf (a gnostic `openapi_v2.Document`), which
/// kubectl 1.27 and 1.28 load before every write: `swagger: "2.0"` and
/// `info` only. Without definitions, kubectl falls back to its compiled-in
/// types, as it does for the v3 documents.
pub(crate) fn openapi_v2_protobuf() -> Vec<u8> {
    let (major, minor, patch) = KUBE_VERSION;
    let version = format!("v{major}.{minor}.{patch}");
    let info = [proto_bytes(1, b"Kubernetes"), proto_bytes(2, version.as_bytes())].concat();
    [proto_bytes(1, b"2.0"), proto_bytes(2, &info)].concat()
}

/// `/openapi/v2` as JSON: the same minimal document.
pub(crate) fn openapi_v2_json() -> Value {
    let (major, minor, patch) = KUBE_VERSION;
    json!({ "swagger": "2.0", "info": { "title": "Kubernetes", "version": format!("v{major}.{minor}.{patch}") }, "paths": {}, "definitions": {} })
}

/// `/openapi/v3`: where each group-version's document is.
pub(crate) fn openapi_v3_root() -> Value {
    let mut gv_paths = vec!["api/v1".to_string()];
    for g in &GROUPS {
        for v in g.versions {
            gv_paths.push(format!("apis/{}/{v}", g.name));
        }
    }
    let paths: serde_json::Map<String, Value> = gv_paths
        .into_iter()
        .filter_map(|p| {
            let doc = openapi_v3_doc(&p)?;
            let url = format!("/openapi/v3/{p}?hash={}", hash(&doc.to_string()));
            Some((p, json!({ "serverRelativeURL": url })))
        })
        .collect();
    json!({ "paths": paths })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_cover_the_served_resources() {
        let list = core_resource_list();
        let names: Vec<&str> =
            list["resources"].as_array().into_iter().flatten().filter_map(|r| r["name"].as_str()).collect();
        for want in
            ["configmaps", "namespaces", "pods", "pods/log", "pods/exec", "pods/attach", "pods/portforward"]
        {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        let agg = aggregated_core(DiscoveryVersion::V2);
        assert_eq!(agg["apiVersion"], "apidiscovery.k8s.io/v2");
        assert_eq!(agg["items"][0]["versions"][0]["resources"][0]["resource"], "configmaps");
        let root = openapi_v3_root();
        assert!(
            root["paths"]["api/v1"]["serverRelativeURL"]
                .as_str()
                .is_some_and(|u| u.starts_with("/openapi/v3/api/v1?hash="))
        );
        assert!(openapi_v3_doc("apis/authentication.k8s.io/v1").is_some());
        assert!(openapi_v3_doc("apis/nope/v1").is_none());
        assert_eq!(version()["gitVersion"], "v1.33.0");
    }
}

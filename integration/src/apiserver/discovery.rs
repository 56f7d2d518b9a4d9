//! Discovery documents (legacy and aggregated), `/version`, and the small
//! OpenAPI v3 documents kubectl consults before writing.

use serde_json::{Value, json};

use super::media::DiscoveryVersion;
use super::resources::{RBAC_GROUP, ResourceKind, Subresource};

/// The Kubernetes version this server claims to be.
pub(crate) const KUBE_VERSION: (u32, u32, u32) = (1, 33, 0);

/// A non-core API group: its versions and the create-only review
/// resources it serves besides stored kinds: `(plural, singular, kind)`.
pub(crate) struct ApiGroup {
    pub name: &'static str,
    /// Served versions, preferred first.
    pub versions: &'static [&'static str],
    pub reviews: &'static [(&'static str, &'static str, &'static str)],
}

/// The non-core groups served.
pub(crate) const GROUPS: [ApiGroup; 4] = [
    ApiGroup { name: "apps", versions: &["v1"], reviews: &[] },
    ApiGroup {
        name: "authentication.k8s.io",
        versions: &["v1", "v1beta1", "v1alpha1"],
        reviews: &[("selfsubjectreviews", "selfsubjectreview", "SelfSubjectReview")],
    },
    ApiGroup {
        name: "authorization.k8s.io",
        versions: &["v1"],
        reviews: &[
            ("selfsubjectaccessreviews", "selfsubjectaccessreview", "SelfSubjectAccessReview"),
            ("subjectaccessreviews", "subjectaccessreview", "SubjectAccessReview"),
        ],
    },
    ApiGroup { name: RBAC_GROUP, versions: &["v1"], reviews: &[] },
];

/// The group, if it serves `version`.
pub(crate) fn group(name: &str, version: Option<&str>) -> Option<&'static ApiGroup> {
    GROUPS.iter().find(|g| g.name == name && version.is_none_or(|v| g.versions.contains(&v)))
}

/// One resource as discovery lists it.
struct Listed {
    plural: &'static str,
    singular: String,
    kind: &'static str,
    namespaced: bool,
    verbs: &'static [&'static str],
    short_names: &'static [&'static str],
    categories: &'static [&'static str],
    subresources: &'static [Subresource],
}

/// The resources of one group-version: stored kinds, then reviews.
fn listed(group_name: &str, version: &str) -> Vec<Listed> {
    let stored = ResourceKind::ALL
        .into_iter()
        .filter(|k| k.group() == group_name && k.version() == version)
        .map(|k| Listed {
            plural: k.plural(),
            singular: k.singular(),
            kind: k.kind(),
            namespaced: k.namespaced(),
            verbs: k.verbs(),
            short_names: k.short_names(),
            categories: k.categories(),
            subresources: k.subresources(),
        });
    let reviews = group(group_name, Some(version)).into_iter().flat_map(|g| g.reviews).map(
        |(plural, singular, kind)| Listed {
            plural,
            singular: singular.to_string(),
            kind,
            namespaced: false,
            verbs: &["create"],
            short_names: &[],
            categories: &[],
            subresources: &[],
        },
    );
    stored.chain(reviews).collect()
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

/// `/api/v1` (`group_name` empty) or `/apis/{group}/{version}`.
pub(crate) fn resource_list(group_name: &str, version: &str) -> Value {
    let mut resources = Vec::new();
    for r in listed(group_name, version) {
        let mut v = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": r.verbs,
        });
        if !r.short_names.is_empty() {
            v["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            v["categories"] = json!(r.categories);
        }
        resources.push(v);
        let mut subs: Vec<_> = r.subresources.iter().collect();
        subs.sort_by_key(|s| s.name);
        for s in subs {
            let mut v = json!({
                "name": format!("{}/{}", r.plural, s.name),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": s.kind,
                "verbs": s.verbs,
            });
            if let Some((g, ver)) = s.group_version {
                v["group"] = json!(g);
                v["version"] = json!(ver);
            }
            resources.push(v);
        }
    }
    if group_name.is_empty() {
        json!({ "kind": "APIResourceList", "groupVersion": version, "resources": resources })
    } else {
        json!({ "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": format!("{group_name}/{version}"), "resources": resources })
    }
}

fn discovery_list(version: DiscoveryVersion, items: Vec<Value>) -> Value {
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": format!("apidiscovery.k8s.io/{}", version.as_str()),
        "metadata": {},
        "items": items,
    })
}

/// One group-version in aggregated discovery.
fn aggregated_version(group_name: &str, version: &str) -> Value {
    let resources: Vec<Value> = listed(group_name, version)
        .into_iter()
        .map(|r| {
            let mut v = json!({
                "resource": r.plural,
                "responseKind": { "group": group_name, "version": version, "kind": r.kind },
                "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                "singularResource": r.singular,
                "verbs": r.verbs,
            });
            if !r.short_names.is_empty() {
                v["shortNames"] = json!(r.short_names);
            }
            if !r.categories.is_empty() {
                v["categories"] = json!(r.categories);
            }
            let subs: Vec<Value> = r
                .subresources
                .iter()
                .map(|s| {
                    let (g, ver) = s.group_version.unwrap_or((group_name, version));
                    json!({
                        "subresource": s.name,
                        "responseKind": { "group": g, "version": ver, "kind": s.kind },
                        "verbs": s.verbs,
                    })
                })
                .collect();
            if !subs.is_empty() {
                v["subresources"] = json!(subs);
            }
            v
        })
        .collect();
    json!({ "version": version, "resources": resources, "freshness": "Current" })
}

/// Aggregated discovery for `/api`.
pub(crate) fn aggregated_core(version: DiscoveryVersion) -> Value {
    discovery_list(version, vec![json!({ "metadata": {}, "versions": [aggregated_version("", "v1")] })])
}

/// Aggregated discovery for `/apis`.
pub(crate) fn aggregated_groups(version: DiscoveryVersion) -> Value {
    let items = GROUPS
        .iter()
        .map(|g| {
            let versions: Vec<Value> = g.versions.iter().map(|v| aggregated_version(g.name, v)).collect();
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

/// `Core`, `Apps`, `RbacAuthorization`: a group as operation ids name it.
fn group_camel(group_name: &str) -> String {
    if group_name.is_empty() {
        return "Core".to_string();
    }
    group_name
        .trim_end_matches(".k8s.io")
        .split('.')
        .map(|w| {
            let mut c = w.chars();
            c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
        })
        .collect()
}

/// The OpenAPI v3 document of one group-version, e.g. `api/v1`: every path
/// with its operations, their `x-kubernetes-group-version-kind`, and the
/// `fieldValidation` parameter (kubectl checks it to use server-side
/// validation) and patch types. Schemas are left out; kubectl then falls
/// back to its compiled-in types.
pub(crate) fn openapi_v3_doc(gv_path: &str) -> Option<Value> {
    let (group_name, version) = match gv_path {
        "api/v1" => ("", "v1"),
        other => {
            let (g, v) = other.strip_prefix("apis/")?.split_once('/')?;
            group(g, Some(v))?;
            (g, v)
        }
    };
    let prefix = format!("/{gv_path}");
    let id = format!("{}{}", group_camel(group_name), version[..1].to_ascii_uppercase() + &version[1..]);
    let mut paths = serde_json::Map::new();
    for r in listed(group_name, version) {
        let gvk = json!({ "group": group_name, "version": version, "kind": r.kind });
        let kind = r.kind;
        if r.verbs == ["create"] {
            paths.insert(
                format!("{prefix}/{}", r.plural),
                json!({ "post": operation(format!("create{id}{kind}"), "post", &gvk, false) }),
            );
            continue;
        }
        let (collection, item) = if r.namespaced {
            (
                format!("{prefix}/namespaces/{{namespace}}/{}", r.plural),
                format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", r.plural),
            )
        } else {
            (format!("{prefix}/{}", r.plural), format!("{prefix}/{}/{{name}}", r.plural))
        };
        let scope = if r.namespaced { "Namespaced" } else { "" };
        paths.insert(
            collection,
            json!({
                "get": operation(format!("list{id}{scope}{kind}"), "list", &gvk, false),
                "post": operation(format!("create{id}{scope}{kind}"), "post", &gvk, false),
            }),
        );
        paths.insert(
            item,
            json!({
                "get": operation(format!("read{id}{scope}{kind}"), "get", &gvk, false),
                "put": operation(format!("replace{id}{scope}{kind}"), "put", &gvk, false),
                "patch": operation(format!("patch{id}{scope}{kind}"), "patch", &gvk, true),
                "delete": operation(format!("delete{id}{scope}{kind}"), "delete", &gvk, false),
            }),
        );
    }
    let (major, minor, patch) = KUBE_VERSION;
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
        let list = resource_list("", "v1");
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
        let token =
            list["resources"].as_array().into_iter().flatten().find(|r| r["name"] == "serviceaccounts/token");
        assert_eq!(
            token.map(|t| (t["group"].clone(), t["kind"].clone())),
            Some((json!("authentication.k8s.io"), json!("TokenRequest")))
        );
        let apps = resource_list("apps", "v1");
        assert_eq!(apps["resources"][0]["shortNames"], json!(["deploy"]));
        let rbac = aggregated_groups(DiscoveryVersion::V2);
        let groups: Vec<&str> = rbac["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|g| g["metadata"]["name"].as_str())
            .collect();
        assert_eq!(groups, ["apps", "authentication.k8s.io", "authorization.k8s.io", RBAC_GROUP]);
        let doc = openapi_v3_doc("apis/rbac.authorization.k8s.io/v1").expect("rbac doc");
        assert_eq!(
            doc["paths"]["/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/roles/{name}"]["patch"]["operationId"],
            "patchRbacAuthorizationV1NamespacedRole"
        );
        assert!(openapi_v3_doc("apis/nope/v1").is_none());
        assert_eq!(version()["gitVersion"], "v1.33.0");
    }
}

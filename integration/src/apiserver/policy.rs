//! RBAC from objects: the ClusterRoles, Roles and bindings in the store,
//! evaluated as kube-apiserver's RBAC authorizer does (`RuleAllows`,
//! `appliesTo`, ClusterRoleBindings first, then the RoleBindings of the
//! request's namespace), whether one set of rules covers another (for the
//! escalation check), and the default ClusterRoles a cluster starts with.

use serde_json::{Value, json};

use super::auth::{UserInfo, service_account_user};
use super::request_info::RequestInfo;
use super::resources::{RBAC_GROUP, ResourceKind};
use super::store::{ObjectKey, Store};

fn strs<'a>(v: &'a Value, field: &str) -> Vec<&'a str> {
    v.get(field).and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect()
}

fn str_of<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or_default()
}

/// Whether one `PolicyRule` allows the request.
fn rule_allows(rule: &Value, info: &RequestInfo) -> bool {
    let verbs = strs(rule, "verbs");
    match info {
        RequestInfo::Resource(r) => {
            let resources = strs(rule, "resources");
            let names = strs(rule, "resourceNames");
            let combined = r.combined_resource();
            (verbs.contains(&"*") || verbs.contains(&r.verb.as_str()))
                && strs(rule, "apiGroups").iter().any(|g| *g == "*" || *g == r.group)
                && resources.iter().any(|res| {
                    *res == "*"
                        || *res == combined
                        || (!r.subresource.is_empty()
                            && res.strip_prefix("*/") == Some(r.subresource.as_str()))
                })
                && (names.is_empty() || names.contains(&r.name.as_str()))
        }
        RequestInfo::NonResource { path, verb } => {
            (verbs.contains(&"*") || verbs.contains(&verb.as_str()))
                && strs(rule, "nonResourceURLs").iter().any(|u| {
                    *u == "*"
                        || u == path
                        || u.strip_suffix('*').is_some_and(|prefix| path.starts_with(prefix))
                })
        }
    }
}

/// The subject of `binding` that `user` is, described as kube-apiserver's
/// reasons describe it (`User "alice"`, `ServiceAccount "name/ns"`).
fn applying_subject(binding: &Value, user: &UserInfo, binding_ns: &str) -> Option<String> {
    binding.get("subjects").and_then(Value::as_array).into_iter().flatten().find_map(|s| {
        let name = str_of(s, "/name");
        match str_of(s, "/kind") {
            "User" if user.username == name => Some(format!("User {name:?}")),
            "Group" if user.groups.iter().any(|g| g == name) => Some(format!("Group {name:?}")),
            "ServiceAccount" => {
                let ns = Some(str_of(s, "/namespace")).filter(|n| !n.is_empty()).unwrap_or(binding_ns);
                (!ns.is_empty() && user.username == service_account_user(ns, name))
                    .then(|| format!("ServiceAccount \"{name}/{ns}\""))
            }
            _ => None,
        }
    })
}

/// The rules of the role a binding refers to, or why they are missing.
pub(crate) fn referenced_rules(
    store: &Store,
    binding: &Value,
    binding_ns: &str,
) -> Result<Vec<Value>, String> {
    let name = str_of(binding, "/roleRef/name");
    let (kind, ns) = match str_of(binding, "/roleRef/kind") {
        "Role" => (ResourceKind::Role, binding_ns),
        _ => (ResourceKind::ClusterRole, ""),
    };
    let role = store
        .get(&ObjectKey::new(kind, ns, name))
        .ok_or_else(|| format!("{} {name:?} not found", kind.qualified_plural()))?;
    Ok(role.get("rules").and_then(Value::as_array).cloned().unwrap_or_default())
}

/// Evaluates the RBAC objects for `user`: `Ok(reason)` when some binding
/// allows the request, else `Err` with the problems met on the way (a
/// binding whose role is missing), which a denial reports.
pub(crate) fn evaluate(store: &Store, user: &UserInfo, info: &RequestInfo) -> Result<String, Vec<String>> {
    let mut errors = Vec::new();
    let namespace = match info {
        RequestInfo::Resource(r) => r.namespace.as_str(),
        RequestInfo::NonResource { .. } => "",
    };
    let cluster = store.list(ResourceKind::ClusterRoleBinding, None).0.into_iter().map(|b| (b, ""));
    let local = if namespace.is_empty() {
        Vec::new()
    } else {
        store.list(ResourceKind::RoleBinding, Some(namespace)).0.into_iter().map(|b| (b, namespace)).collect()
    };
    for (binding, ns) in cluster.chain(local) {
        let Some(subject) = applying_subject(&binding, user, ns) else { continue };
        match referenced_rules(store, &binding, ns) {
            Err(e) => errors.push(e),
            Ok(rules) if rules.iter().any(|r| rule_allows(r, info)) => {
                let name = str_of(&binding, "/metadata/name");
                let what = if ns.is_empty() {
                    format!("ClusterRoleBinding {name:?}")
                } else {
                    format!("RoleBinding \"{name}/{ns}\"")
                };
                return Ok(format!(
                    "RBAC: allowed by {what} of {} {:?} to {subject}",
                    str_of(&binding, "/roleRef/kind"),
                    str_of(&binding, "/roleRef/name")
                ));
            }
            Ok(_) => {}
        }
    }
    Err(errors)
}

/// Every rule `user` holds in `namespace` (cluster-wide ones included), as
/// kube-apiserver's `RulesFor`; bindings whose role is missing add nothing.
pub(crate) fn rules_for(store: &Store, user: &UserInfo, namespace: &str) -> Vec<Value> {
    let cluster = store.list(ResourceKind::ClusterRoleBinding, None).0.into_iter().map(|b| (b, ""));
    let local = if namespace.is_empty() {
        Vec::new()
    } else {
        store.list(ResourceKind::RoleBinding, Some(namespace)).0.into_iter().map(|b| (b, namespace)).collect()
    };
    cluster
        .chain(local)
        .filter(|(b, ns)| applying_subject(b, user, ns).is_some())
        .filter_map(|(b, ns)| referenced_rules(store, &b, ns).ok())
        .flatten()
        .collect()
}

/// One permission: a verb on one group/resource/name, or on one path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Atom<'a> {
    Resource { group: &'a str, resource: &'a str, name: Option<&'a str>, verb: &'a str },
    Path { url: &'a str, verb: &'a str },
}

/// A rule's single permissions (kube-apiserver's `BreakdownRule`).
fn atoms(rule: &Value) -> Vec<Atom<'_>> {
    let verbs = strs(rule, "verbs");
    let urls = strs(rule, "nonResourceURLs");
    let mut out = Vec::new();
    for verb in verbs {
        out.extend(urls.iter().map(|url| Atom::Path { url, verb }));
        for group in strs(rule, "apiGroups") {
            for resource in strs(rule, "resources") {
                let names = strs(rule, "resourceNames");
                if names.is_empty() {
                    out.push(Atom::Resource { group, resource, name: None, verb });
                }
                out.extend(names.into_iter().map(|n| Atom::Resource {
                    group,
                    resource,
                    name: Some(n),
                    verb,
                }));
            }
        }
    }
    out
}

/// Whether an owner's rule grants `atom` (a literal `*` in the atom is
/// granted only by a `*`, as in kube-apiserver's `Covers`).
fn grants(owner: &Value, atom: &Atom<'_>) -> bool {
    let has = |field: &str, want: &str| strs(owner, field).iter().any(|v| *v == "*" || *v == want);
    match atom {
        Atom::Resource { group, resource, name, verb } => {
            let names = strs(owner, "resourceNames");
            let resources = strs(owner, "resources");
            has("verbs", verb)
                && has("apiGroups", group)
                && (resources.iter().any(|r| *r == "*" || r == resource)
                    || resource
                        .split_once('/')
                        .is_some_and(|(_, sub)| resources.contains(&format!("*/{sub}").as_str())))
                && (names.is_empty() || name.is_some_and(|n| names.contains(&n)))
        }
        Atom::Path { url, verb } => {
            has("verbs", verb)
                && strs(owner, "nonResourceURLs")
                    .iter()
                    .any(|u| u == url || u.strip_suffix('*').is_some_and(|prefix| url.starts_with(prefix)))
        }
    }
}

fn quoted(items: &[&str]) -> String {
    items.iter().map(|i| format!("{i:?}")).collect::<Vec<_>>().join(" ")
}

/// The permissions of `granted` that `owned` does not cover, written as
/// kube-apiserver writes them (`{APIGroups:[""], Resources:["secrets"],
/// Verbs:["get" "list"]}`), the verbs of one resource together.
pub(crate) fn uncovered(owned: &[Value], granted: &[Value]) -> Vec<String> {
    let mut missing: Vec<(Atom<'_>, Vec<&str>)> = Vec::new();
    for atom in granted.iter().flat_map(atoms).filter(|a| !owned.iter().any(|o| grants(o, a))) {
        let (key, verb) = match atom {
            Atom::Resource { group, resource, name, verb } => {
                (Atom::Resource { group, resource, name, verb: "" }, verb)
            }
            Atom::Path { url, verb } => (Atom::Path { url, verb: "" }, verb),
        };
        match missing.iter_mut().find(|(k, _)| *k == key) {
            Some((_, verbs)) if !verbs.contains(&verb) => verbs.push(verb),
            Some(_) => {}
            None => missing.push((key, vec![verb])),
        }
    }
    let mut out: Vec<String> = missing
        .into_iter()
        .map(|(key, verbs)| match key {
            Atom::Resource { group, resource, name, .. } => {
                let names = name.map(|n| format!(" ResourceNames:[{}],", quoted(&[n]))).unwrap_or_default();
                format!(
                    "{{APIGroups:[{}], Resources:[{}],{names} Verbs:[{}]}}",
                    quoted(&[group]),
                    quoted(&[resource]),
                    quoted(&verbs)
                )
            }
            Atom::Path { url, .. } => {
                format!("{{NonResourceURLs:[{}], Verbs:[{}]}}", quoted(&[url]), quoted(&verbs))
            }
        })
        .collect();
    out.sort();
    out
}

const READ: [&str; 3] = ["get", "list", "watch"];
const WRITE: [&str; 5] = ["create", "delete", "deletecollection", "patch", "update"];

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({ "apiGroups": groups, "resources": resources, "verbs": verbs })
}

/// The rules of `view`: read everything namespaced but Secrets (and the
/// exec-like subresources).
fn view_rules() -> Vec<Value> {
    vec![
        rule(
            &[""],
            &[
                "configmaps",
                "endpoints",
                "persistentvolumeclaims",
                "persistentvolumeclaims/status",
                "pods",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "serviceaccounts",
                "services",
                "services/status",
                "bindings",
                "events",
                "limitranges",
                "namespaces/status",
                "pods/log",
                "pods/status",
                "replicationcontrollers/status",
                "resourcequotas",
                "resourcequotas/status",
                "namespaces",
            ],
            &READ,
        ),
        rule(
            &["apps"],
            &[
                "controllerrevisions",
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "statefulsets",
                "statefulsets/scale",
                "statefulsets/status",
            ],
            &READ,
        ),
        rule(&["batch"], &["cronjobs", "cronjobs/status", "jobs", "jobs/status"], &READ),
        rule(&["autoscaling"], &["horizontalpodautoscalers", "horizontalpodautoscalers/status"], &READ),
        rule(&["policy"], &["poddisruptionbudgets", "poddisruptionbudgets/status"], &READ),
        rule(&["networking.k8s.io"], &["ingresses", "ingresses/status", "networkpolicies"], &READ),
        rule(&["discovery.k8s.io"], &["endpointslices"], &READ),
    ]
}

/// The rules of `edit`: `view`, plus Secrets, exec and writes to
/// workloads (but not to Roles or bindings).
fn edit_rules() -> Vec<Value> {
    let mut rules = view_rules();
    rules.extend([
        rule(
            &[""],
            &["pods/attach", "pods/exec", "pods/portforward", "pods/proxy", "secrets", "services/proxy"],
            &READ,
        ),
        rule(&[""], &["serviceaccounts"], &["impersonate"]),
        rule(&[""], &["pods", "pods/attach", "pods/exec", "pods/portforward", "pods/proxy"], &WRITE),
        rule(&[""], &["pods/eviction"], &["create"]),
        rule(
            &[""],
            &[
                "configmaps",
                "events",
                "persistentvolumeclaims",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "secrets",
                "serviceaccounts",
                "services",
                "services/proxy",
            ],
            &WRITE,
        ),
        rule(&[""], &["serviceaccounts/token"], &["create"]),
        rule(
            &["apps"],
            &[
                "daemonsets",
                "deployments",
                "deployments/rollback",
                "deployments/scale",
                "replicasets",
                "replicasets/scale",
                "statefulsets",
                "statefulsets/scale",
            ],
            &WRITE,
        ),
        rule(&["batch"], &["cronjobs", "jobs"], &WRITE),
        rule(&["autoscaling"], &["horizontalpodautoscalers"], &WRITE),
        rule(&["policy"], &["poddisruptionbudgets"], &WRITE),
        rule(&["networking.k8s.io"], &["ingresses", "networkpolicies"], &WRITE),
    ]);
    rules
}

/// The rules of `admin`: `edit`, plus Roles and RoleBindings.
fn admin_rules() -> Vec<Value> {
    let mut rules = edit_rules();
    rules.push(rule(&["authorization.k8s.io"], &["localsubjectaccessreviews"], &["create"]));
    rules.push(rule(&[RBAC_GROUP], &["rolebindings", "roles"], &[READ.as_slice(), &WRITE].concat()));
    rules
}

fn bootstrap_meta(name: &str) -> Value {
    json!({
        "name": name,
        "labels": { "kubernetes.io/bootstrapping": "rbac-defaults" },
        "annotations": { "rbac.authorization.kubernetes.io/autoupdate": "true" },
    })
}

/// The RBAC objects a cluster starts with: the ClusterRoles
/// `cluster-admin`, `admin`, `edit` and `view` (their rules written out,
/// not aggregated), and the ClusterRoleBinding of `cluster-admin` to
/// `system:masters`.
pub(crate) fn bootstrap_objects() -> Vec<(ResourceKind, Value)> {
    let role = |name: &str, rules: Vec<Value>| {
        (ResourceKind::ClusterRole, json!({ "metadata": bootstrap_meta(name), "rules": rules }))
    };
    vec![
        role(
            "cluster-admin",
            vec![rule(&["*"], &["*"], &["*"]), json!({ "nonResourceURLs": ["*"], "verbs": ["*"] })],
        ),
        role("admin", admin_rules()),
        role("edit", edit_rules()),
        role("view", view_rules()),
        (
            ResourceKind::ClusterRoleBinding,
            json!({
                "metadata": bootstrap_meta("cluster-admin"),
                "roleRef": { "apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": "cluster-admin" },
                "subjects": [{ "apiGroup": RBAC_GROUP, "kind": "Group", "name": "system:masters" }],
            }),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::query::Query;
    use crate::apiserver::request_info::classify;
    use http::Method;

    fn store() -> Store {
        let store = Store::new();
        for ns in ["ns", "other"] {
            store
                .create(
                    ObjectKey::new(ResourceKind::Namespace, "", ns),
                    json!({"metadata": {"name": ns}}),
                    false,
                )
                .expect("ns");
        }
        for (kind, obj) in bootstrap_objects() {
            let name = str_of(&obj, "/metadata/name").to_string();
            store.create(ObjectKey::new(kind, "", &name), obj, false).expect("bootstrap");
        }
        store
    }

    fn put(store: &Store, kind: ResourceKind, ns: &str, obj: Value) {
        let name = str_of(&obj, "/metadata/name").to_string();
        store.create(ObjectKey::new(kind, ns, &name), obj, false).expect("create");
    }

    fn sa(ns: &str, name: &str) -> UserInfo {
        UserInfo { username: service_account_user(ns, name), ..UserInfo::default() }
    }

    fn info(method: Method, path: &str) -> RequestInfo {
        classify(&method, path, &Query::default())
    }

    #[test]
    fn bindings_grant_their_roles_rules() {
        let store = store();
        put(
            &store,
            ResourceKind::Role,
            "ns",
            json!({"metadata": {"name": "secret"}, "rules": [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["cred"], "verbs": ["get", "update"]}]}),
        );
        put(
            &store,
            ResourceKind::RoleBinding,
            "ns",
            json!({"metadata": {"name": "agent"}, "roleRef": {"kind": "Role", "name": "secret"}, "subjects": [{"kind": "ServiceAccount", "name": "agent"}]}),
        );
        put(
            &store,
            ResourceKind::ClusterRole,
            "",
            json!({"metadata": {"name": "imp"}, "rules": [{"apiGroups": [""], "resources": ["users", "groups"], "verbs": ["impersonate"]}, {"nonResourceURLs": ["/metrics/*"], "verbs": ["get"]}]}),
        );
        put(
            &store,
            ResourceKind::ClusterRoleBinding,
            "",
            json!({"metadata": {"name": "imp"}, "roleRef": {"kind": "ClusterRole", "name": "imp"}, "subjects": [{"kind": "ServiceAccount", "name": "agent", "namespace": "ns"}]}),
        );
        let agent = sa("ns", "agent");
        let ok = |m: Method, p: &str| evaluate(&store, &agent, &info(m, p));
        assert_eq!(
            ok(Method::PUT, "/api/v1/namespaces/ns/secrets/cred"),
            Ok("RBAC: allowed by RoleBinding \"agent/ns\" of Role \"secret\" to ServiceAccount \"agent/ns\""
                .into())
        );
        assert!(ok(Method::PUT, "/api/v1/namespaces/ns/secrets/other").is_err(), "resourceNames");
        assert!(ok(Method::GET, "/api/v1/namespaces/other/secrets/cred").is_err(), "other namespace");
        assert!(ok(Method::GET, "/metrics/cadvisor").is_ok(), "trailing *");
        assert!(ok(Method::GET, "/metrics").is_err());
        assert!(evaluate(&store, &sa("other", "agent"), &info(Method::GET, "/metrics/x")).is_err());
        let mut attrs = info(Method::GET, "/api/v1/users/alice");
        if let RequestInfo::Resource(r) = &mut attrs {
            r.verb = "impersonate".into();
        }
        assert!(evaluate(&store, &agent, &attrs).is_ok());
        let admin =
            UserInfo { username: "x".into(), groups: vec!["system:masters".into()], ..UserInfo::default() };
        assert!(
            evaluate(&store, &admin, &info(Method::DELETE, "/apis/apps/v1/namespaces/ns/deployments/d"))
                .is_ok()
        );
    }

    #[test]
    fn coverage_is_checked_permission_by_permission() {
        let owned = vec![
            json!({"apiGroups": [""], "resources": ["secrets", "*/status"], "verbs": ["get", "list"]}),
            json!({"apiGroups": ["apps"], "resources": ["deployments"], "resourceNames": ["d"], "verbs": ["*"]}),
            json!({"nonResourceURLs": ["/metrics/*"], "verbs": ["get"]}),
        ];
        let granted = |rule: Value| uncovered(&owned, &[rule]);
        assert!(
            granted(
                json!({"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["x"], "verbs": ["get"]})
            )
            .is_empty()
        );
        assert!(
            granted(json!({"apiGroups": [""], "resources": ["pods/status"], "verbs": ["list"]})).is_empty()
        );
        assert!(granted(json!({"apiGroups": ["apps"], "resources": ["deployments"], "resourceNames": ["d"], "verbs": ["delete"]})).is_empty());
        assert!(granted(json!({"nonResourceURLs": ["/metrics/cadvisor"], "verbs": ["get"]})).is_empty());
        assert_eq!(
            granted(
                json!({"apiGroups": ["", "apps"], "resources": ["secrets", "deployments"], "verbs": ["get", "update"]})
            ),
            [
                "{APIGroups:[\"\"], Resources:[\"deployments\"], Verbs:[\"get\" \"update\"]}",
                "{APIGroups:[\"\"], Resources:[\"secrets\"], Verbs:[\"update\"]}",
                "{APIGroups:[\"apps\"], Resources:[\"deployments\"], Verbs:[\"get\" \"update\"]}",
                "{APIGroups:[\"apps\"], Resources:[\"secrets\"], Verbs:[\"get\" \"update\"]}",
            ]
        );
        assert_eq!(
            granted(json!({"apiGroups": ["*"], "resources": ["secrets"], "verbs": ["get"]})).len(),
            1,
            "a literal *"
        );
        assert_eq!(
            granted(json!({"nonResourceURLs": ["/healthz"], "verbs": ["get"]})),
            ["{NonResourceURLs:[\"/healthz\"], Verbs:[\"get\"]}"]
        );
    }

    #[test]
    fn missing_roles_are_reported() {
        let store = store();
        put(
            &store,
            ResourceKind::ClusterRoleBinding,
            "",
            json!({"metadata": {"name": "b"}, "roleRef": {"kind": "ClusterRole", "name": "gone"}, "subjects": [{"kind": "User", "name": "alice"}]}),
        );
        let alice = UserInfo { username: "alice".into(), ..UserInfo::default() };
        assert_eq!(
            evaluate(&store, &alice, &info(Method::GET, "/api/v1/nodes")),
            Err(vec!["clusterroles.rbac.authorization.k8s.io \"gone\" not found".to_string()])
        );
        put(
            &store,
            ResourceKind::RoleBinding,
            "ns",
            json!({"metadata": {"name": "view"}, "roleRef": {"kind": "ClusterRole", "name": "view"}, "subjects": [{"kind": "User", "name": "alice"}]}),
        );
        let view = |path: &str| evaluate(&store, &alice, &info(Method::GET, path)).is_ok();
        assert!(view("/api/v1/namespaces/ns/pods"));
        assert!(!view("/api/v1/namespaces/ns/secrets"), "view does not read secrets");
    }
}

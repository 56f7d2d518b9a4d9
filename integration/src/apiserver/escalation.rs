//! RBAC escalation prevention, as kube-apiserver's storage for roles and
//! bindings does it: a Role or ClusterRole may be written only by someone
//! who holds every permission it grants (in its namespace) or may
//! `escalate`; a binding only by someone who holds every permission of its
//! role or may `bind` that role. Members of `system:masters` (and, in demo
//! mode, impersonated humans) may do both, as the authorizer allows them
//! those verbs.

use serde_json::Value;

use super::auth::UserInfo;
use super::authz::decide;
use super::policy::{referenced_rules, rules_for, uncovered};
use super::request_info::{RequestInfo, ResourceRequest};
use super::resources::{RBAC_GROUP, ResourceKind};
use super::server::State;
use super::status::ApiError;

fn may(state: &State, user: &UserInfo, verb: &str, resource: &str, namespace: &str, name: &str) -> bool {
    let info = RequestInfo::Resource(ResourceRequest {
        verb: verb.to_string(),
        group: RBAC_GROUP.to_string(),
        version: "v1".to_string(),
        namespace: namespace.to_string(),
        resource: resource.to_string(),
        name: name.to_string(),
        ..ResourceRequest::default()
    });
    decide(state, user, &info).allowed
}

/// Refuses (403) writing `obj`, a Role, ClusterRole or binding in
/// `namespace`, if it would grant `user` permissions it does not hold.
/// Other kinds pass.
pub(crate) fn confirm(
    state: &State,
    user: &UserInfo,
    kind: ResourceKind,
    namespace: &str,
    obj: &Value,
) -> Result<(), ApiError> {
    let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
    let forbidden = |why: &str| {
        ApiError::forbidden(
            format!("{} \"{name}\" is forbidden: {why}", kind.qualified_plural()),
            RBAC_GROUP,
            kind.plural(),
            name,
        )
    };
    let granted = match kind {
        ResourceKind::Role | ResourceKind::ClusterRole => {
            if may(state, user, "escalate", kind.plural(), namespace, name) {
                return Ok(());
            }
            obj.get("rules").and_then(Value::as_array).cloned().unwrap_or_default()
        }
        ResourceKind::RoleBinding | ResourceKind::ClusterRoleBinding => {
            let role = obj.pointer("/roleRef/name").and_then(Value::as_str).unwrap_or_default();
            let resource = match obj.pointer("/roleRef/kind").and_then(Value::as_str) {
                Some("Role") => "roles",
                _ => "clusterroles",
            };
            if may(state, user, "bind", resource, namespace, role) {
                return Ok(());
            }
            referenced_rules(&state.store, obj, namespace).map_err(|e| forbidden(&e))?
        }
        _ => return Ok(()),
    };
    let missing = uncovered(&rules_for(&state.store, user, namespace), &granted);
    if missing.is_empty() {
        return Ok(());
    }
    let groups = user.groups.iter().map(|g| format!("{g:?}")).collect::<Vec<_>>().join(" ");
    Err(forbidden(&format!(
        "user {:?} (groups=[{groups}]) is attempting to grant RBAC permissions not currently held:\n{}",
        user.username,
        missing.join("\n")
    )))
}

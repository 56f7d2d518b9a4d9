//! Authorization, decided as kube-apiserver's authorizer chain decides it,
//! the impersonation check, and the `403 Forbidden` a real apiserver sends.
//!
//! One user's request is allowed, in this order, when:
//! 1. the user is in `system:masters` (the admin token's group);
//! 2. it is public: `get` on discovery, `/version`, `/openapi`, health, or
//!    creating a self review (`system:discovery`,
//!    `system:public-info-viewer`, `system:basic-user`);
//! 3. an RBAC object allows it (see `policy`);
//! 4. a rule of the table allows it (resource requests only);
//! 5. demo mode is on (no table was configured and the server is not
//!    strict), the request is for a resource, and the user is a human (not
//!    `system:anonymous` or unauthenticated): ServiceAccounts are never let
//!    in by demo mode, whether they come with a token, impersonated, or in
//!    a SubjectAccessReview.

use super::auth::{Impersonation, UserInfo, service_account_of};
use super::policy;
use super::rbac::table_allows;
use super::request_info::{RequestInfo, ResourceRequest};
use super::resources::qualified_resource;
use super::server::State;
use super::status::ApiError;

/// The group whose members may do anything.
pub(crate) const PRIVILEGED_GROUP: &str = "system:masters";

/// An authorization decision and the reason given for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Decision {
    /// Whether the request is allowed.
    pub allowed: bool,
    /// Why (for an allow), or what went wrong on the way (for a denial);
    /// may be empty.
    pub reason: String,
}

impl Decision {
    fn allow(reason: impl Into<String>) -> Self {
        Self { allowed: true, reason: reason.into() }
    }
}

/// Paths every authenticated user may read (`system:discovery`,
/// `system:public-info-viewer`).
fn public_path(path: &str) -> bool {
    const EXACT: [&str; 8] =
        ["/api", "/apis", "/healthz", "/livez", "/readyz", "/version", "/version/", "/openapi"];
    const PREFIX: [&str; 6] = ["/api/", "/apis/", "/healthz/", "/livez/", "/readyz/", "/openapi/"];
    EXACT.contains(&path) || PREFIX.iter().any(|p| path.starts_with(p))
}

/// Self reviews every authenticated user may create (`system:basic-user`).
fn self_review(r: &ResourceRequest) -> bool {
    r.verb == "create"
        && matches!(
            (r.group.as_str(), r.resource.as_str()),
            ("authentication.k8s.io", "selfsubjectreviews")
                | ("authorization.k8s.io", "selfsubjectaccessreviews" | "selfsubjectrulesreviews")
        )
}

/// Whether `user` may do what `info` describes (see the module docs).
pub(crate) fn decide(state: &State, user: &UserInfo, info: &RequestInfo) -> Decision {
    let in_group = |g: &str| user.groups.iter().any(|have| have == g);
    if in_group(PRIVILEGED_GROUP) {
        return Decision::allow("");
    }
    match info {
        RequestInfo::NonResource { path, verb } if verb == "get" && public_path(path) => {
            return Decision::allow("");
        }
        RequestInfo::Resource(r) if self_review(r) => return Decision::allow(""),
        _ => {}
    }
    let errors = match policy::evaluate(&state.store, user, info) {
        Ok(reason) => return Decision::allow(reason),
        Err(errors) => errors,
    };
    if let RequestInfo::Resource(r) = info {
        if table_allows(&state.rules(), user, r) {
            return Decision::allow("allowed by a test-apiserver RBAC rule");
        }
        let human = service_account_of(&user.username).is_none()
            && user.username != "system:anonymous"
            && !in_group("system:unauthenticated");
        if state.demo_mode() && human {
            return Decision::allow("allowed in demo mode (no RBAC rules configured)");
        }
    }
    let reason = match errors.as_slice() {
        [] => String::new(),
        [one] => format!("RBAC: {one}"),
        many => format!("RBAC: [{}]", many.join(", ")),
    };
    Decision { allowed: false, reason }
}

/// The 403 kube-apiserver sends when `user` may not do what `info` says.
pub(crate) fn forbidden(user: &str, info: &RequestInfo, reason: &str) -> ApiError {
    let because = if reason.is_empty() { String::new() } else { format!(": {reason}") };
    match info {
        RequestInfo::NonResource { path, verb } => ApiError::forbidden(
            format!("forbidden: User \"{user}\" cannot {verb} path \"{path}\"{because}"),
            "",
            "",
            "",
        ),
        RequestInfo::Resource(r) => {
            let qualified = qualified_resource(&r.resource, &r.group);
            let what = if r.name.is_empty() {
                format!("{qualified} is forbidden")
            } else {
                format!("{qualified} \"{}\" is forbidden", r.name)
            };
            let scope = if r.namespace.is_empty() {
                "at the cluster scope".to_string()
            } else {
                format!("in the namespace \"{}\"", r.namespace)
            };
            ApiError::forbidden(
                format!(
                    "{what}: User \"{user}\" cannot {} resource \"{}\" in API group \"{}\" {scope}{because}",
                    r.verb,
                    r.combined_resource(),
                    r.group
                ),
                &r.group,
                &r.resource,
                &r.name,
            )
        }
    }
}

/// Authorizes `user`'s request, or the 403 a real apiserver would answer.
pub(crate) fn authorize(state: &State, user: &UserInfo, info: &RequestInfo) -> Result<(), ApiError> {
    let d = decide(state, user, info);
    if d.allowed { Ok(()) } else { Err(forbidden(&user.username, info, &d.reason)) }
}

fn impersonate(group: &str, resource: &str, subresource: &str, namespace: &str, name: &str) -> RequestInfo {
    RequestInfo::Resource(ResourceRequest {
        verb: "impersonate".to_string(),
        group: group.to_string(),
        version: "v1".to_string(),
        namespace: namespace.to_string(),
        resource: resource.to_string(),
        subresource: subresource.to_string(),
        name: name.to_string(),
        name_in_path: false,
    })
}

/// Checks that `requester` may impersonate what the headers ask for, in
/// kube-apiserver's order: the user (`users`, or `serviceaccounts` for a
/// `system:serviceaccount:NS:NAME` user), each group, each extra value
/// (`userextras/KEY`), the uid. The first denial is the 403.
pub(crate) fn authorize_impersonation(
    state: &State,
    requester: &UserInfo,
    imp: &Impersonation,
) -> Result<(), ApiError> {
    let mut checks = vec![match service_account_of(&imp.user) {
        Some((ns, name)) => impersonate("", "serviceaccounts", "", ns, name),
        None => impersonate("", "users", "", "", &imp.user),
    }];
    checks.extend(imp.groups.iter().map(|g| impersonate("", "groups", "", "", g)));
    for (key, values) in &imp.extra {
        checks.extend(values.iter().map(|v| impersonate("authentication.k8s.io", "userextras", key, "", v)));
    }
    if let Some(uid) = &imp.uid {
        checks.push(impersonate("authentication.k8s.io", "uids", "", "", uid));
    }
    checks.iter().try_for_each(|info| authorize(state, requester, info))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::query::Query;
    use crate::apiserver::request_info::classify;
    use http::Method;

    #[test]
    fn forbidden_messages_are_kubernetes_like() {
        let info = |m: Method, p: &str| classify(&m, p, &Query::default());
        let err = forbidden("bob", &info(Method::GET, "/api/v1/namespaces/default/configmaps/x"), "");
        assert_eq!(err.code, http::StatusCode::FORBIDDEN);
        assert_eq!(
            err.message,
            "configmaps \"x\" is forbidden: User \"bob\" cannot get resource \"configmaps\" in API group \"\" in the namespace \"default\""
        );
        let err = forbidden("bob", &info(Method::GET, "/api/v1/namespaces"), "");
        assert_eq!(
            err.message,
            "namespaces is forbidden: User \"bob\" cannot list resource \"namespaces\" in API group \"\" at the cluster scope"
        );
        let err =
            forbidden("bob", &info(Method::PATCH, "/apis/apps/v1/namespaces/ns/deployments/d"), "RBAC: x");
        assert_eq!(
            err.message,
            "deployments.apps \"d\" is forbidden: User \"bob\" cannot patch resource \"deployments\" in API group \"apps\" in the namespace \"ns\": RBAC: x"
        );
        assert_eq!(
            err.to_value()["details"],
            serde_json::json!({"name": "d", "group": "apps", "kind": "deployments"})
        );
        let extra = impersonate("authentication.k8s.io", "userextras", "scopes", "", "a");
        assert_eq!(
            forbidden("sa", &extra, "").message,
            "userextras.authentication.k8s.io \"a\" is forbidden: User \"sa\" cannot impersonate resource \"userextras/scopes\" in API group \"authentication.k8s.io\" at the cluster scope"
        );
        assert_eq!(
            forbidden("bob", &info(Method::GET, "/metrics"), "").message,
            "forbidden: User \"bob\" cannot get path \"/metrics\""
        );
    }
}

//! Authorization: a small RBAC table, matched the way Kubernetes RBAC
//! matches `PolicyRule`s, and the `403 Forbidden` a real apiserver sends.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::auth::Identity;
use super::request_info::{RequestInfo, ResourceRequest};
use super::status::ApiError;

/// Who a rule applies to: `user:alice` or `group:dev` in JSON.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Subject {
    /// A user name.
    User(String),
    /// A group name.
    Group(String),
}

impl Subject {
    /// A user subject.
    pub fn user(name: impl Into<String>) -> Self {
        Self::User(name.into())
    }
    /// A group subject.
    pub fn group(name: impl Into<String>) -> Self {
        Self::Group(name.into())
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::User(u) => write!(f, "user:{u}"),
            Self::Group(g) => write!(f, "group:{g}"),
        }
    }
}

impl FromStr for Subject {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            Some(("user", u)) if !u.is_empty() => Ok(Self::User(u.to_string())),
            Some(("group", g)) if !g.is_empty() => Ok(Self::Group(g.to_string())),
            _ => Err(format!("subject {s:?} is neither \"user:NAME\" nor \"group:NAME\"")),
        }
    }
}

impl Serialize for Subject {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Subject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// One allow rule. A request is allowed when some rule has a matching
/// subject, verb, resource and namespace (and name, if `names` is set).
///
/// `"*"` matches any verb, resource or namespace. A resource `pods` does not
/// cover `pods/log`; `*/log` does. A namespace list without `"*"` behaves
/// like a RoleBinding in each namespace: it never allows cluster-scope
/// requests (listing all namespaces, or configmaps across namespaces).
/// For `namespaces` objects, the namespace is the object's own name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RbacRule {
    /// `user:NAME` or `group:NAME` entries.
    pub subjects: Vec<Subject>,
    /// Verbs (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
    /// `deletecollection`) or `*`.
    pub verbs: Vec<String>,
    /// Resources (`configmaps`, `pods`, `pods/log`, `namespaces`, ...) or `*`.
    pub resources: Vec<String>,
    /// Namespaces, or `*` for every namespace and the cluster scope.
    pub namespaces: Vec<String>,
    /// Object names the rule is limited to (like `resourceNames`); empty
    /// means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
}

fn strings<I: IntoIterator<Item = S>, S: Into<String>>(items: I) -> Vec<String> {
    items.into_iter().map(Into::into).collect()
}

impl RbacRule {
    /// A rule for one user; add verbs, resources and namespaces.
    pub fn for_user(name: impl Into<String>) -> Self {
        Self { subjects: vec![Subject::user(name)], ..Self::default() }
    }

    /// A rule for one group; add verbs, resources and namespaces.
    pub fn for_group(name: impl Into<String>) -> Self {
        Self { subjects: vec![Subject::group(name)], ..Self::default() }
    }

    /// The demo-mode rule: every authenticated user may do anything.
    pub fn allow_all() -> Self {
        Self::for_group("system:authenticated").verbs(["*"]).resources(["*"]).namespaces(["*"])
    }

    /// Sets the verbs.
    pub fn verbs<I: IntoIterator<Item = S>, S: Into<String>>(mut self, verbs: I) -> Self {
        self.verbs = strings(verbs);
        self
    }

    /// Sets the resources.
    pub fn resources<I: IntoIterator<Item = S>, S: Into<String>>(mut self, resources: I) -> Self {
        self.resources = strings(resources);
        self
    }

    /// Sets the namespaces.
    pub fn namespaces<I: IntoIterator<Item = S>, S: Into<String>>(mut self, namespaces: I) -> Self {
        self.namespaces = strings(namespaces);
        self
    }

    /// Limits the rule to these object names.
    pub fn names<I: IntoIterator<Item = S>, S: Into<String>>(mut self, names: I) -> Self {
        self.names = strings(names);
        self
    }

    fn applies_to(&self, id: &Identity) -> bool {
        self.subjects.iter().any(|s| match s {
            Subject::User(u) => *u == id.user.username,
            Subject::Group(g) => id.user.groups.contains(g),
        })
    }

    fn allows(&self, r: &ResourceRequest) -> bool {
        let verb = self.verbs.iter().any(|v| v == "*" || *v == r.verb);
        let combined = r.combined_resource();
        let resource = self.resources.iter().any(|res| {
            res == "*"
                || *res == combined
                || (!r.subresource.is_empty() && res.strip_prefix("*/") == Some(r.subresource.as_str()))
        });
        let namespace =
            self.namespaces.iter().any(|n| n == "*" || (!r.namespace.is_empty() && *n == r.namespace));
        let name = self.names.is_empty() || (!r.name.is_empty() && self.names.contains(&r.name));
        verb && resource && namespace && name
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

/// Whether `id` may do what `info` describes under `rules`.
pub(crate) fn allowed(rules: &[RbacRule], id: &Identity, info: &RequestInfo) -> bool {
    if id.is_admin() {
        return true;
    }
    match info {
        RequestInfo::NonResource { path, verb } => verb == "get" && public_path(path),
        RequestInfo::Resource(r) => {
            self_review(r) || rules.iter().any(|rule| rule.applies_to(id) && rule.allows(r))
        }
    }
}

/// Authorizes the request, or the 403 a real apiserver would answer.
pub(crate) fn authorize(rules: &[RbacRule], id: &Identity, info: &RequestInfo) -> Result<(), ApiError> {
    if allowed(rules, id, info) {
        return Ok(());
    }
    let user = &id.user.username;
    Err(match info {
        RequestInfo::NonResource { path, verb } => {
            ApiError::forbidden(format!("forbidden: User \"{user}\" cannot {verb} path \"{path}\""), "", "")
        }
        RequestInfo::Resource(r) => {
            let what = if r.name.is_empty() {
                format!("{} is forbidden", r.resource)
            } else {
                format!("{} \"{}\" is forbidden", r.resource, r.name)
            };
            let scope = if r.namespace.is_empty() {
                "at the cluster scope".to_string()
            } else {
                format!("in the namespace \"{}\"", r.namespace)
            };
            ApiError::forbidden(
                format!(
                    "{what}: User \"{user}\" cannot {} resource \"{}\" in API group \"{}\" {scope}",
                    r.verb,
                    r.combined_resource(),
                    r.group
                ),
                &r.resource,
                &r.name,
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::auth::UserInfo;
    use crate::apiserver::query::Query;
    use crate::apiserver::request_info::classify;
    use http::Method;

    fn user(name: &str, groups: &[&str]) -> Identity {
        let mut groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        groups.push("system:authenticated".into());
        Identity {
            user: UserInfo { username: name.into(), groups, ..UserInfo::default() },
            impersonated: true,
        }
    }

    fn info(method: Method, path: &str) -> RequestInfo {
        classify(&method, path, &Query::default())
    }

    #[test]
    fn rules_match_like_rbac() {
        let rules = vec![
            RbacRule::for_user("alice")
                .verbs(["get", "list"])
                .resources(["configmaps"])
                .namespaces(["default"]),
            RbacRule::for_group("dev").verbs(["*"]).resources(["pods", "pods/log"]).namespaces(["*"]),
        ];
        let alice = user("alice", &[]);
        let bob = user("bob", &["dev"]);
        let ok = |id: &Identity, m: Method, p: &str| allowed(&rules, id, &info(m, p));
        assert!(ok(&alice, Method::GET, "/api/v1/namespaces/default/configmaps/x"));
        assert!(ok(&alice, Method::GET, "/api/v1/namespaces/default/configmaps"));
        assert!(!ok(&alice, Method::GET, "/api/v1/configmaps"));
        assert!(!ok(&alice, Method::DELETE, "/api/v1/namespaces/default/configmaps/x"));
        assert!(!ok(&alice, Method::GET, "/api/v1/namespaces/other/configmaps/x"));
        assert!(ok(&alice, Method::GET, "/api"));
        assert!(ok(&alice, Method::POST, "/apis/authentication.k8s.io/v1/selfsubjectreviews"));
        assert!(!ok(&alice, Method::GET, "/metrics"));
        assert!(ok(&bob, Method::GET, "/api/v1/pods"));
        assert!(ok(&bob, Method::GET, "/api/v1/namespaces/x/pods/p/log"));
        assert!(!ok(&bob, Method::GET, "/api/v1/namespaces/x/pods/p/exec"));
        let admin = Identity { user: UserInfo::admin(), impersonated: false };
        assert!(allowed(&[], &admin, &info(Method::DELETE, "/api/v1/namespaces/x")));
    }

    #[test]
    fn forbidden_message_is_kubernetes_like() {
        let bob = user("bob", &[]);
        let err = authorize(&[], &bob, &info(Method::GET, "/api/v1/namespaces/default/configmaps/x"))
            .expect_err("denied");
        assert_eq!(err.code, http::StatusCode::FORBIDDEN);
        assert_eq!(
            err.message,
            "configmaps \"x\" is forbidden: User \"bob\" cannot get resource \"configmaps\" in API group \"\" in the namespace \"default\""
        );
        let err = authorize(&[], &bob, &info(Method::GET, "/api/v1/namespaces")).expect_err("denied");
        assert_eq!(
            err.message,
            "namespaces is forbidden: User \"bob\" cannot list resource \"namespaces\" in API group \"\" at the cluster scope"
        );
    }

    #[test]
    fn subjects_parse_and_print() {
        let rule: RbacRule = serde_json::from_str(
            r#"{"subjects":["user:alice","group:dev"],"verbs":["get"],"resources":["pods"],"namespaces":["*"]}"#,
        )
        .expect("rule");
        assert_eq!(rule.subjects, [Subject::user("alice"), Subject::group("dev")]);
        assert!(
            serde_json::from_str::<RbacRule>(
                r#"{"subjects":["alice"],"verbs":[],"resources":[],"namespaces":[]}"#
            )
            .is_err()
        );
        assert_eq!(serde_json::to_value(Subject::group("g")).expect("json"), "group:g");
    }
}

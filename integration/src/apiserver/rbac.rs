//! The rule table: a small list of allow rules set by the test (builder,
//! `PUT /_test/rbac`), matched the way Kubernetes RBAC matches
//! `PolicyRule`s. RBAC objects (ClusterRoles, bindings, ...) are in
//! `policy`; how both combine is in `authz`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::auth::UserInfo;
use super::request_info::ResourceRequest;

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

    /// Every authenticated user may do anything with any resource (what
    /// demo mode allows, but for ServiceAccounts too).
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

    fn applies_to(&self, user: &UserInfo) -> bool {
        self.subjects.iter().any(|s| match s {
            Subject::User(u) => *u == user.username,
            Subject::Group(g) => user.groups.contains(g),
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

/// Whether some rule of the table allows `user` the request `r`.
pub(crate) fn table_allows(rules: &[RbacRule], user: &UserInfo, r: &ResourceRequest) -> bool {
    rules.iter().any(|rule| rule.applies_to(user) && rule.allows(r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::query::Query;
    use crate::apiserver::request_info::{RequestInfo, classify};
    use http::Method;

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        let mut groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        groups.push("system:authenticated".into());
        UserInfo { username: name.into(), groups, ..UserInfo::default() }
    }

    fn request(method: Method, path: &str) -> ResourceRequest {
        match classify(&method, path, &Query::default()) {
            RequestInfo::Resource(r) => r,
            other => panic!("not a resource request: {other:?}"),
        }
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
        let ok = |u: &UserInfo, m: Method, p: &str| table_allows(&rules, u, &request(m, p));
        assert!(ok(&alice, Method::GET, "/api/v1/namespaces/default/configmaps/x"));
        assert!(ok(&alice, Method::GET, "/api/v1/namespaces/default/configmaps"));
        assert!(!ok(&alice, Method::GET, "/api/v1/configmaps"));
        assert!(!ok(&alice, Method::DELETE, "/api/v1/namespaces/default/configmaps/x"));
        assert!(!ok(&alice, Method::GET, "/api/v1/namespaces/other/configmaps/x"));
        assert!(ok(&bob, Method::GET, "/api/v1/pods"));
        assert!(ok(&bob, Method::GET, "/api/v1/namespaces/x/pods/p/log"));
        assert!(!ok(&bob, Method::GET, "/api/v1/namespaces/x/pods/p/exec"));
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

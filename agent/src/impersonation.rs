//! A caller's `kubectl --as`: the hub lets it through only with a grant
//! that allows it, and the agent then asks the child cluster, with
//! SubjectAccessReviews, whether the caller may impersonate whom they ask,
//! resource by resource as kube-apiserver's own impersonation filter does
//! (`users` or `serviceaccounts`, each of `groups`, `uids`, each
//! `userextras/KEY`). Only if every answer is yes does the agent
//! impersonate the target instead of the caller; the child's RBAC decides.

use std::time::Duration;

use ferry::identity::Identity;
use http::Method;
use serde_json::{Value, json};

use crate::upstream::Upstream;

/// How long one SubjectAccessReview may take.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest review answer read.
const MAX_REVIEW_BODY: usize = 64 * 1024;
const REVIEW_PATH: &str = "/apis/authorization.k8s.io/v1/subjectaccessreviews";

/// Why `caller` may not act as the target.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    /// The child cluster said no.
    #[error("{0}")]
    Forbidden(String),
    /// The child cluster could not be asked.
    #[error("cannot check impersonation with the cluster: {0}")]
    Unchecked(String),
}

/// One impersonation check, as kube-apiserver makes it.
#[derive(Debug, PartialEq, Eq)]
struct Attributes {
    group: &'static str,
    resource: &'static str,
    subresource: String,
    namespace: String,
    name: String,
}

fn checks(target: &Identity) -> Vec<Attributes> {
    let mut out = Vec::new();
    let at = |group, resource, subresource: &str, namespace: &str, name: &str| Attributes {
        group,
        resource,
        subresource: subresource.to_owned(),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    };
    match target.user.strip_prefix("system:serviceaccount:").and_then(|r| r.split_once(':')) {
        Some((ns, name)) => out.push(at("", "serviceaccounts", "", ns, name)),
        None => out.push(at("", "users", "", "", &target.user)),
    }
    for g in &target.groups {
        out.push(at("", "groups", "", "", g));
    }
    if !target.uid.is_empty() {
        out.push(at("authentication.k8s.io", "uids", "", "", &target.uid));
    }
    for (key, values) in &target.extra {
        for v in values {
            out.push(at("authentication.k8s.io", "userextras", key, "", v));
        }
    }
    out
}

/// Asks the child cluster whether `caller` may impersonate `target`.
pub(crate) async fn check(upstream: &Upstream, caller: &Identity, target: &Identity) -> Result<(), Refusal> {
    for a in checks(target) {
        let review = json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": caller.user,
                "uid": caller.uid,
                "groups": caller.groups,
                "extra": caller.extra,
                "resourceAttributes": {
                    "verb": "impersonate",
                    "group": a.group,
                    "resource": a.resource,
                    "subresource": a.subresource,
                    "namespace": a.namespace,
                    "name": a.name,
                }
            }
        });
        let body = serde_json::to_vec(&review).map_err(|e| Refusal::Unchecked(e.to_string()))?;
        let (status, answer) = upstream
            .call_json(Method::POST, REVIEW_PATH, body, MAX_REVIEW_BODY, REVIEW_TIMEOUT)
            .await
            .map_err(Refusal::Unchecked)?;
        if !status.is_success() {
            return Err(Refusal::Unchecked(format!("the SubjectAccessReview was answered {status}")));
        }
        let answer: Value = serde_json::from_slice(&answer).map_err(|e| Refusal::Unchecked(e.to_string()))?;
        if answer["status"]["allowed"] != Value::Bool(true) {
            let what = if a.subresource.is_empty() {
                a.resource.to_owned()
            } else {
                format!("{}/{}", a.resource, a.subresource)
            };
            let scope = if a.namespace.is_empty() {
                "at the cluster scope".to_owned()
            } else {
                format!("in the namespace {:?}", a.namespace)
            };
            return Err(Refusal::Forbidden(format!(
                "{what} {:?} is forbidden: User {:?} cannot impersonate resource {what:?} in API group {:?} {scope}",
                a.name, caller.user, a.group
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn every_part_of_the_target_is_checked() {
        let target = Identity {
            user: "bob".into(),
            uid: "42".into(),
            groups: vec!["dev".into(), "ops".into()],
            extra: BTreeMap::from([("scopes".into(), vec!["a".into(), "b".into()])]),
        };
        let c = checks(&target);
        let summary: Vec<(&str, &str, &str)> =
            c.iter().map(|a| (a.resource, a.subresource.as_str(), a.name.as_str())).collect();
        assert_eq!(
            summary,
            vec![
                ("users", "", "bob"),
                ("groups", "", "dev"),
                ("groups", "", "ops"),
                ("uids", "", "42"),
                ("userextras", "scopes", "a"),
                ("userextras", "scopes", "b"),
            ]
        );
        let sa = checks(&Identity { user: "system:serviceaccount:ns1:builder".into(), ..Default::default() });
        assert_eq!(
            (sa[0].resource, sa[0].namespace.as_str(), sa[0].name.as_str()),
            ("serviceaccounts", "ns1", "builder")
        );
    }
}

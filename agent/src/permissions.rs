//! Whether the agent's own identity in its cluster may do what the agent
//! needs, asked with SelfSubjectAccessReviews (which any authenticated
//! identity may create). A manifest missing a verb (a peer's classic:
//! impersonation refused only when the first caller arrives) shows up at
//! once, in the agent's log and in the cluster's status at the hub.

use std::time::Duration;

use http::Method;
use serde_json::{Value, json};

use crate::config::SecretRef;
use crate::upstream::Upstream;

/// How long one review may take.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest review answer read.
const MAX_REVIEW_BODY: usize = 64 * 1024;
const REVIEW_PATH: &str = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";

/// One permission the agent needs.
struct Needed {
    verb: &'static str,
    group: &'static str,
    resource: &'static str,
    namespace: String,
    name: String,
}

impl Needed {
    fn describe(&self) -> String {
        let resource = if self.group.is_empty() {
            self.resource.to_owned()
        } else {
            format!("{}.{}", self.resource, self.group)
        };
        match (self.namespace.is_empty(), self.name.is_empty()) {
            (true, _) => format!("{} {resource}", self.verb),
            (false, true) => format!("{} {resource} in {}", self.verb, self.namespace),
            (false, false) => format!("{} {resource} {}/{}", self.verb, self.namespace, self.name),
        }
    }
}

fn needed(secret: Option<&SecretRef>) -> Vec<Needed> {
    let cluster = |verb, group, resource| Needed {
        verb,
        group,
        resource,
        namespace: String::new(),
        name: String::new(),
    };
    let mut out = vec![
        cluster("impersonate", "", "users"),
        cluster("impersonate", "", "groups"),
        cluster("impersonate", "authentication.k8s.io", "uids"),
        cluster("create", "authorization.k8s.io", "subjectaccessreviews"),
    ];
    if let Some(s) = secret {
        for verb in ["get", "patch"] {
            out.push(Needed {
                verb,
                group: "",
                resource: "secrets",
                namespace: s.namespace.clone(),
                name: s.name.clone(),
            });
        }
    }
    out
}

/// The permissions the agent lacks (empty: none), or why it could not ask.
pub(crate) async fn missing(upstream: &Upstream, secret: Option<&SecretRef>) -> Result<Vec<String>, String> {
    let mut lacking = Vec::new();
    for n in needed(secret) {
        let review = json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": {
                "verb": n.verb, "group": n.group, "resource": n.resource,
                "namespace": n.namespace, "name": n.name,
            }}
        });
        let body = serde_json::to_vec(&review).map_err(|e| e.to_string())?;
        let (status, answer) =
            upstream.call_json(Method::POST, REVIEW_PATH, body, MAX_REVIEW_BODY, REVIEW_TIMEOUT).await?;
        if !status.is_success() {
            return Err(format!("the SelfSubjectAccessReview was answered {status}"));
        }
        let answer: Value = serde_json::from_slice(&answer).map_err(|e| e.to_string())?;
        if answer["status"]["allowed"] != Value::Bool(true) {
            lacking.push(n.describe());
        }
    }
    Ok(lacking)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_checked_reads_like_rbac() {
        let secret = SecretRef { namespace: "ferry-system".into(), name: "ferry-agent-credential".into() };
        let all: Vec<String> = needed(Some(&secret)).iter().map(Needed::describe).collect();
        assert_eq!(
            all,
            [
                "impersonate users",
                "impersonate groups",
                "impersonate uids.authentication.k8s.io",
                "create subjectaccessreviews.authorization.k8s.io",
                "get secrets ferry-system/ferry-agent-credential",
                "patch secrets ferry-system/ferry-agent-credential",
            ]
        );
        assert_eq!(needed(None).len(), 4);
    }
}

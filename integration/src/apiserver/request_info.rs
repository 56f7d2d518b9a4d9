//! What a request asks for, in RBAC terms (a port of kube-apiserver's
//! `RequestInfoFactory`): verb, API group, namespace, resource, name.

use http::Method;

use super::query::Query;
use super::selector::FieldSelector;

/// A request for an API resource.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ResourceRequest {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
    /// `deletecollection`.
    pub verb: String,
    /// API group (`""` for core).
    pub group: String,
    /// API version.
    pub version: String,
    /// Namespace, empty for cluster-scoped requests.
    pub namespace: String,
    /// Resource (plural), e.g. `pods`.
    pub resource: String,
    /// Subresource, e.g. `log`, or empty.
    pub subresource: String,
    /// Object name, empty for collections.
    pub name: String,
    /// Whether the path names the object (not only a field selector).
    pub name_in_path: bool,
}

impl ResourceRequest {
    /// `pods/log` or `pods`: what RBAC rules match against.
    pub fn combined_resource(&self) -> String {
        if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        }
    }
}

/// What one request is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RequestInfo {
    /// An API resource request.
    Resource(ResourceRequest),
    /// Any other path (discovery, `/version`, ...), with a lower-case verb.
    NonResource {
        /// The request path.
        path: String,
        /// `get`, `post`, ...
        verb: String,
    },
}

const NAMESPACE_SUBRESOURCES: [&str; 2] = ["status", "finalize"];

/// Classifies a request like kube-apiserver does before authorization.
pub(crate) fn classify(method: &Method, path: &str, query: &Query) -> RequestInfo {
    let non_resource =
        || RequestInfo::NonResource { path: path.to_string(), verb: method.as_str().to_lowercase() };
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match parts.first() {
        Some(&"api") if parts.len() >= 3 => ("", &parts[1..]),
        Some(&"apis") if parts.len() >= 4 => (parts[1], &parts[2..]),
        _ => return non_resource(),
    };
    let mut info =
        ResourceRequest { group: group.to_string(), version: rest[0].to_string(), ..Default::default() };
    let mut rest = &rest[1..];
    info.verb = match *method {
        Method::POST => "create",
        Method::GET | Method::HEAD => "get",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "",
    }
    .to_string();
    if rest[0] == "namespaces" && rest.len() > 1 {
        info.namespace = rest[1].to_string();
        if rest.len() > 2 && !NAMESPACE_SUBRESOURCES.contains(&rest[2]) {
            rest = &rest[2..];
        }
    }
    info.resource = rest[0].to_string();
    if rest.len() >= 2 {
        info.name = rest[1].to_string();
        info.name_in_path = true;
    }
    if rest.len() >= 3 {
        info.subresource = rest[2].to_string();
    }
    if info.name.is_empty() && info.verb == "get" {
        info.verb = if query.flag("watch") { "watch" } else { "list" }.to_string();
        if let Some(Ok(fields)) = query.get("fieldSelector").map(FieldSelector::parse)
            && let Some(name) = fields.exact("metadata.name")
        {
            info.name = name.to_string();
        }
    }
    if info.name.is_empty() && info.verb == "delete" {
        info.verb = "deletecollection".to_string();
    }
    RequestInfo::Resource(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(method: Method, path: &str, query: &str) -> ResourceRequest {
        match classify(&method, path, &Query::parse(Some(query))) {
            RequestInfo::Resource(r) => r,
            other => panic!("not a resource request: {other:?}"),
        }
    }

    #[test]
    fn classifies_like_kube() {
        let r = res(Method::GET, "/api/v1/namespaces/default/configmaps/x", "");
        assert_eq!(
            (r.verb.as_str(), r.namespace.as_str(), r.resource.as_str(), r.name.as_str()),
            ("get", "default", "configmaps", "x")
        );
        let r = res(Method::GET, "/api/v1/namespaces/default/pods", "watch=true");
        assert_eq!(r.verb, "watch");
        let r = res(Method::GET, "/api/v1/pods", "fieldSelector=metadata.name%3Dp");
        assert_eq!((r.verb.as_str(), r.name.as_str(), r.namespace.as_str()), ("list", "p", ""));
        let r = res(Method::GET, "/api/v1/namespaces/default", "");
        assert_eq!(
            (r.resource.as_str(), r.namespace.as_str(), r.name.as_str()),
            ("namespaces", "default", "default")
        );
        let r = res(Method::GET, "/api/v1/namespaces/d/pods/p/log", "");
        assert_eq!(r.combined_resource(), "pods/log");
        let r = res(Method::DELETE, "/api/v1/namespaces/d/configmaps", "");
        assert_eq!(r.verb, "deletecollection");
        let r = res(Method::POST, "/apis/authentication.k8s.io/v1/selfsubjectreviews", "");
        assert_eq!(
            (r.group.as_str(), r.resource.as_str(), r.verb.as_str()),
            ("authentication.k8s.io", "selfsubjectreviews", "create")
        );
        assert!(matches!(
            classify(&Method::GET, "/api/v1", &Query::default()),
            RequestInfo::NonResource { .. }
        ));
        assert!(matches!(
            classify(&Method::GET, "/apis/g/v1", &Query::default()),
            RequestInfo::NonResource { .. }
        ));
        assert!(matches!(
            classify(&Method::GET, "/version", &Query::default()),
            RequestInfo::NonResource { .. }
        ));
    }
}

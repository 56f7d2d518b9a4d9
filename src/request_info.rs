//! What a Kubernetes API request asks for, read from its method, path and
//! query the way kube-apiserver's `RequestInfoFactory` reads them before
//! authorization (`k8s.io/apiserver/pkg/endpoints/request/requestinfo.go`):
//! verb, API group and version, namespace, resource, subresource, name.
//!
//! The hub records it in its audit log and labels its metrics with the verb
//! and group; neither needs more than the path and query, so nothing here
//! reads a body. Parsing allocates only when a segment is percent-encoded.
//!
//! Fidelity notes: like the apiserver, a `GET` of a collection is `list`,
//! or `watch` when `watch` is set to anything but `0`/`false`; a
//! `fieldSelector` that requires `metadata.name` to equal a valid name gives
//! the request that name. Where the apiserver would fail to decode the list
//! options (an unparsable `fieldSelector`, `limit` or `timeoutSeconds`), the
//! name is left empty and only `watch` is read, as it does. Label selectors
//! are not parsed (they cannot change the verb or the name).

use std::borrow::Cow;

/// What one request is about, in RBAC terms.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestInfo<'a> {
    /// Whether the path names an API resource (under `/api` or `/apis`);
    /// otherwise only `path` and `verb` are set.
    pub is_resource_request: bool,
    /// The request path (without the query).
    pub path: Cow<'a, str>,
    /// For resource requests `get`, `list`, `watch`, `create`, `update`,
    /// `patch`, `delete`, `deletecollection` or `proxy` (empty for another
    /// method); for other paths the lower-case HTTP method.
    pub verb: Cow<'a, str>,
    /// `api` or `apis` (empty for other paths).
    pub api_prefix: &'static str,
    /// The API group, empty for the core group.
    pub api_group: Cow<'a, str>,
    /// The API version.
    pub api_version: Cow<'a, str>,
    /// The namespace, empty for cluster-scoped requests.
    pub namespace: Cow<'a, str>,
    /// The resource (plural), e.g. `pods`.
    pub resource: Cow<'a, str>,
    /// The subresource, e.g. `log`, `exec`, `status`.
    pub subresource: Cow<'a, str>,
    /// The object's name, empty for collections.
    pub name: Cow<'a, str>,
}

/// The `verb` label of a request in metrics: the apiserver's verbs for resource
/// requests, the lower-case method for other paths, `other` for anything
/// else (so a caller cannot mint values with made-up methods).
pub fn verb_label(verb: &str) -> &'static str {
    const VERBS: [&str; 16] = [
        "get",
        "list",
        "watch",
        "create",
        "update",
        "patch",
        "delete",
        "deletecollection",
        "proxy",
        "post",
        "put",
        "head",
        "options",
        "connect",
        "trace",
        "",
    ];
    VERBS.iter().find(|v| **v == verb).copied().filter(|v| !v.is_empty()).unwrap_or("other")
}

/// Verbs given in the path (`/api/v1/watch/...`, `/api/v1/proxy/...`), the
/// apiserver's legacy forms.
const SPECIAL_VERBS: [&str; 2] = ["proxy", "watch"];
/// Namespace subresources: `/api/v1/namespaces/NAME/status` is the
/// namespace's status, not a resource `status` in namespace NAME.
const NAMESPACE_SUBRESOURCES: [&str; 2] = ["status", "finalize"];
/// Verbs of long-running requests (the apiserver's default
/// `LongRunningRequestCheck`).
const LONG_RUNNING_VERBS: [&str; 2] = ["watch", "proxy"];
/// Subresources of long-running requests.
const LONG_RUNNING_SUBRESOURCES: [&str; 5] = ["attach", "exec", "proxy", "log", "portforward"];
/// Path segments looked at; the apiserver ignores everything after the
/// subresource.
const MAX_PARTS: usize = 10;

impl<'a> RequestInfo<'a> {
    /// Classifies a request from its method, path and raw query (without
    /// `?`).
    pub fn parse(method: &http::Method, path: &'a str, query: Option<&'a str>) -> RequestInfo<'a> {
        let mut info =
            RequestInfo { path: Cow::Borrowed(path), verb: lower_method(method), ..Default::default() };
        let mut parts: [&'a str; MAX_PARTS] = [""; MAX_PARTS];
        let mut len = 0;
        let trimmed = path.trim_matches('/');
        if !trimmed.is_empty() {
            for segment in trimmed.split('/').take(MAX_PARTS) {
                parts[len] = segment;
                len += 1;
            }
        }
        let mut parts = &parts[..len];
        info.api_prefix = match parts.first() {
            Some(&"api") if parts.len() >= 3 => "api",
            Some(&"apis") if parts.len() >= 3 => "apis",
            _ => return info,
        };
        parts = &parts[1..];
        if info.api_prefix == "apis" {
            // The prefix is consumed: "do we have four parts?"
            if parts.len() < 3 {
                return info;
            }
            info.api_group = decode(parts[0]);
            parts = &parts[1..];
        }
        info.is_resource_request = true;
        info.api_version = decode(parts[0]);
        parts = &parts[1..];

        if SPECIAL_VERBS.contains(&parts[0]) {
            if parts.len() < 2 {
                // The apiserver fails such a request; nothing more to read.
                info.verb = Cow::Borrowed(parts[0]);
                return info;
            }
            info.verb = Cow::Borrowed(parts[0]);
            parts = &parts[1..];
        } else {
            info.verb = Cow::Borrowed(match *method {
                http::Method::POST => "create",
                http::Method::GET | http::Method::HEAD => "get",
                http::Method::PUT => "update",
                http::Method::PATCH => "patch",
                http::Method::DELETE => "delete",
                _ => "",
            });
        }

        if parts[0] == "namespaces" && parts.len() > 1 {
            info.namespace = decode(parts[1]);
            if parts.len() > 2 && !NAMESPACE_SUBRESOURCES.contains(&parts[2]) {
                parts = &parts[2..];
            }
        }
        if parts.len() >= 3 && info.verb != "proxy" {
            info.subresource = decode(parts[2]);
        }
        if parts.len() >= 2 {
            info.name = decode(parts[1]);
        }
        if !parts.is_empty() {
            info.resource = decode(parts[0]);
        }

        if info.name.is_empty() && info.verb == "get" {
            let options = ListOptions::parse(query.unwrap_or(""));
            info.verb = Cow::Borrowed(if options.watch { "watch" } else { "list" });
            if let Some(name) = options.name.filter(|n| valid_path_segment_name(n)) {
                info.name = name;
            }
        }
        if info.name.is_empty() && info.verb == "delete" {
            info.verb = Cow::Borrowed("deletecollection");
        }
        info
    }

    /// Whether the apiserver treats the request as long-running (watches,
    /// proxies, exec, attach, port-forward and logs): their duration says
    /// how long someone watched or typed, not how fast the cluster answered.
    pub fn is_long_running(&self) -> bool {
        self.is_resource_request
            && (LONG_RUNNING_VERBS.contains(&self.verb.as_ref())
                || LONG_RUNNING_SUBRESOURCES.contains(&self.subresource.as_ref()))
    }

    /// An owned copy.
    pub fn into_owned(self) -> RequestInfo<'static> {
        let own = |c: Cow<'a, str>| Cow::Owned(c.into_owned());
        RequestInfo {
            is_resource_request: self.is_resource_request,
            path: own(self.path),
            verb: own(self.verb),
            api_prefix: self.api_prefix,
            api_group: own(self.api_group),
            api_version: own(self.api_version),
            namespace: own(self.namespace),
            resource: own(self.resource),
            subresource: own(self.subresource),
            name: own(self.name),
        }
    }
}

fn lower_method(method: &http::Method) -> Cow<'static, str> {
    Cow::Borrowed(match *method {
        http::Method::GET => "get",
        http::Method::POST => "post",
        http::Method::PUT => "put",
        http::Method::PATCH => "patch",
        http::Method::DELETE => "delete",
        http::Method::HEAD => "head",
        http::Method::OPTIONS => "options",
        http::Method::CONNECT => "connect",
        http::Method::TRACE => "trace",
        ref other => return Cow::Owned(other.as_str().to_ascii_lowercase()),
    })
}

/// `path.IsValidPathSegmentName`: what a name taken from a field selector
/// must be to count as the request's name.
fn valid_path_segment_name(name: &str) -> bool {
    name != "." && name != ".." && !name.contains('/') && !name.contains('%')
}

/// The list options that matter here.
#[derive(Default)]
struct ListOptions<'a> {
    watch: bool,
    name: Option<Cow<'a, str>>,
}

impl<'a> ListOptions<'a> {
    /// Decodes the query as the apiserver's parameter codec does; on a
    /// decoding error only `watch` is kept.
    fn parse(query: &'a str) -> ListOptions<'a> {
        let mut watch: Option<Cow<'a, str>> = None;
        let mut field_selector: Option<Cow<'a, str>> = None;
        let mut failed = false;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let (key, value) = (decode_form(key), decode_form(value));
            // Go's url.Values keep every value; the codec reads the first.
            match key.as_ref() {
                "watch" if watch.is_none() => watch = Some(value),
                "fieldSelector" if field_selector.is_none() => field_selector = Some(value),
                "limit" | "timeoutSeconds" if value.parse::<i64>().is_err() => failed = true,
                _ => {}
            }
        }
        // Go's Convert_Slice_string_To_bool: anything but "0" and "false".
        let watch = watch.is_some_and(|v| v != "0" && !v.eq_ignore_ascii_case("false"));
        let name = match field_selector {
            Some(s) if !failed => match exact_name(&s) {
                Ok(name) => name.map(|n| Cow::Owned(n.into_owned())),
                Err(()) => None,
            },
            _ => None,
        };
        ListOptions { watch, name }
    }
}

/// `fields.ParseSelector(s).RequiresExactMatch("metadata.name")`: the value
/// a `metadata.name=` or `metadata.name==` term requires; `Err` when the
/// selector does not parse.
fn exact_name(selector: &str) -> Result<Option<Cow<'_, str>>, ()> {
    let mut found = None;
    for term in split_unescaped(selector, ',') {
        if term.is_empty() {
            continue;
        }
        let (field, value, equals) = if let Some(i) = find_unescaped(term, "!=") {
            (&term[..i], &term[i + 2..], false)
        } else if let Some(i) = find_unescaped(term, "==") {
            (&term[..i], &term[i + 2..], true)
        } else if let Some(i) = find_unescaped(term, "=") {
            (&term[..i], &term[i + 1..], true)
        } else {
            return Err(());
        };
        let value = unescape_field_value(value)?;
        if equals && field.trim() == "metadata.name" && found.is_none() {
            found = Some(value);
        }
    }
    Ok(found)
}

/// Splits on `sep` where it is not escaped with a backslash.
fn split_unescaped(s: &str, sep: char) -> impl Iterator<Item = &str> {
    let mut start = 0;
    let mut escaped = false;
    let mut out = Vec::new();
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            c if c == sep => {
                out.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter()
}

/// The first unescaped occurrence of `op` in `term`.
fn find_unescaped(term: &str, op: &str) -> Option<usize> {
    let bytes = term.as_bytes();
    let mut escaped = false;
    for i in 0..bytes.len() {
        if escaped {
            escaped = false;
            continue;
        }
        if bytes[i] == b'\\' {
            escaped = true;
            continue;
        }
        if term[i..].starts_with(op) {
            return Some(i);
        }
    }
    None
}

/// `fields.UnescapeValue`: `\\`, `\,` and `\=` only.
fn unescape_field_value(value: &str) -> Result<Cow<'_, str>, ()> {
    if !value.contains('\\') {
        return Ok(Cow::Borrowed(value));
    }
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some(e @ ('\\' | ',' | '=')) => out.push(e),
            _ => return Err(()),
        }
    }
    Ok(Cow::Owned(out))
}

/// Percent-decodes a path segment (Go's `URL.Path` is decoded); invalid
/// escapes are kept as they are.
fn decode(segment: &str) -> Cow<'_, str> {
    percent_decode(segment, false)
}

/// Decodes a query key or value (`+` is a space).
fn decode_form(s: &str) -> Cow<'_, str> {
    percent_decode(s, true)
}

fn percent_decode(s: &str, plus_is_space: bool) -> Cow<'_, str> {
    if !(s.contains('%') || (plus_is_space && s.contains('+'))) {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    /// (method, path?query, resource request, verb, group, version,
    /// namespace, resource, subresource, name), from the apiserver's own
    /// `TestGetAPIRequestInfo` table and what kubectl sends.
    type Row = (
        &'static str,
        &'static str,
        bool,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
    );

    const TABLE: &[Row] = &[
        // Collections and objects, core and named groups.
        ("GET", "/api/v1/namespaces", true, "list", "", "v1", "", "namespaces", "", ""),
        ("GET", "/api/v1/namespaces/other", true, "get", "", "v1", "other", "namespaces", "", "other"),
        ("GET", "/api/v1/namespaces/other/pods", true, "list", "", "v1", "other", "pods", "", ""),
        ("GET", "/api/v1/namespaces/other/pods/foo", true, "get", "", "v1", "other", "pods", "", "foo"),
        ("HEAD", "/api/v1/namespaces/other/pods/foo", true, "get", "", "v1", "other", "pods", "", "foo"),
        ("GET", "/api/v1/pods", true, "list", "", "v1", "", "pods", "", ""),
        ("GET", "/api/v1/nodes/n1", true, "get", "", "v1", "", "nodes", "", "n1"),
        (
            "GET",
            "/apis/apps/v1/namespaces/default/deployments",
            true,
            "list",
            "apps",
            "v1",
            "default",
            "deployments",
            "",
            "",
        ),
        ("GET", "/apis/apps/v1/deployments?limit=500", true, "list", "apps", "v1", "", "deployments", "", ""),
        ("POST", "/api/v1/namespaces/other/pods", true, "create", "", "v1", "other", "pods", "", ""),
        ("PUT", "/api/v1/namespaces/other/pods/foo", true, "update", "", "v1", "other", "pods", "", "foo"),
        ("PATCH", "/api/v1/namespaces/other/pods/foo", true, "patch", "", "v1", "other", "pods", "", "foo"),
        ("DELETE", "/api/v1/namespaces/other/pods/foo", true, "delete", "", "v1", "other", "pods", "", "foo"),
        (
            "DELETE",
            "/api/v1/namespaces/other/pods",
            true,
            "deletecollection",
            "",
            "v1",
            "other",
            "pods",
            "",
            "",
        ),
        ("OPTIONS", "/api/v1/namespaces/other/pods", true, "", "", "v1", "other", "pods", "", ""),
        // Watches: the query flag and the legacy path form.
        ("GET", "/api/v1/namespaces/other/pods?watch=true", true, "watch", "", "v1", "other", "pods", "", ""),
        (
            "GET",
            "/api/v1/namespaces/other/pods?watch=1&resourceVersion=10",
            true,
            "watch",
            "",
            "v1",
            "other",
            "pods",
            "",
            "",
        ),
        ("GET", "/api/v1/namespaces/other/pods?watch=false", true, "list", "", "v1", "other", "pods", "", ""),
        ("GET", "/api/v1/namespaces/other/pods?watch=0", true, "list", "", "v1", "other", "pods", "", ""),
        ("GET", "/api/v1/namespaces/other/pods?watch=FALSE", true, "list", "", "v1", "other", "pods", "", ""),
        ("GET", "/api/v1/namespaces/other/pods?watch=yes", true, "watch", "", "v1", "other", "pods", "", ""),
        ("GET", "/api/v1/namespaces/other/pods?watch=", true, "watch", "", "v1", "other", "pods", "", ""),
        ("GET", "/api/v1/watch/namespaces/other/pods", true, "watch", "", "v1", "other", "pods", "", ""),
        ("GET", "/api/v1/watch/pods", true, "watch", "", "v1", "", "pods", "", ""),
        (
            "GET",
            "/api/v1/watch/namespaces/other/pods/foo",
            true,
            "watch",
            "",
            "v1",
            "other",
            "pods",
            "",
            "foo",
        ),
        // A field selector naming one object (kubectl get pod foo -w).
        (
            "GET",
            "/api/v1/namespaces/other/pods?fieldSelector=metadata.name%3Dfoo&watch=true",
            true,
            "watch",
            "",
            "v1",
            "other",
            "pods",
            "",
            "foo",
        ),
        (
            "GET",
            "/api/v1/namespaces/other/pods?fieldSelector=metadata.name%3D%3Dfoo",
            true,
            "list",
            "",
            "v1",
            "other",
            "pods",
            "",
            "foo",
        ),
        (
            "GET",
            "/api/v1/namespaces/other/pods?fieldSelector=metadata.name%21%3Dfoo",
            true,
            "list",
            "",
            "v1",
            "other",
            "pods",
            "",
            "",
        ),
        (
            "GET",
            "/api/v1/namespaces/other/pods?fieldSelector=spec.nodeName%3Dn1,metadata.name%3Dfoo",
            true,
            "list",
            "",
            "v1",
            "other",
            "pods",
            "",
            "foo",
        ),
        (
            "GET",
            "/api/v1/namespaces/other/pods?fieldSelector=metadata.name%3D..",
            true,
            "list",
            "",
            "v1",
            "other",
            "pods",
            "",
            "",
        ),
        (
            "GET",
            "/api/v1/namespaces/other/pods?fieldSelector=metadata.name%3Dfoo&limit=x",
            true,
            "list",
            "",
            "v1",
            "other",
            "pods",
            "",
            "",
        ),
        (
            "GET",
            "/api/v1/namespaces/other/pods?fieldSelector=garbage&watch=true",
            true,
            "watch",
            "",
            "v1",
            "other",
            "pods",
            "",
            "",
        ),
        // Subresources.
        (
            "GET",
            "/api/v1/namespaces/other/pods/foo/log?follow=true",
            true,
            "get",
            "",
            "v1",
            "other",
            "pods",
            "log",
            "foo",
        ),
        (
            "POST",
            "/api/v1/namespaces/other/pods/foo/exec?command=ls",
            true,
            "create",
            "",
            "v1",
            "other",
            "pods",
            "exec",
            "foo",
        ),
        (
            "GET",
            "/api/v1/namespaces/other/pods/foo/exec?command=ls",
            true,
            "get",
            "",
            "v1",
            "other",
            "pods",
            "exec",
            "foo",
        ),
        (
            "POST",
            "/api/v1/namespaces/other/pods/foo/attach",
            true,
            "create",
            "",
            "v1",
            "other",
            "pods",
            "attach",
            "foo",
        ),
        (
            "POST",
            "/api/v1/namespaces/other/pods/foo/portforward",
            true,
            "create",
            "",
            "v1",
            "other",
            "pods",
            "portforward",
            "foo",
        ),
        (
            "PUT",
            "/apis/apps/v1/namespaces/d/deployments/web/scale",
            true,
            "update",
            "apps",
            "v1",
            "d",
            "deployments",
            "scale",
            "web",
        ),
        (
            "GET",
            "/api/v1/namespaces/other/pods/foo/status/extra/parts",
            true,
            "get",
            "",
            "v1",
            "other",
            "pods",
            "status",
            "foo",
        ),
        // Namespace subresources stay with the namespace.
        (
            "PUT",
            "/api/v1/namespaces/terminating/finalize",
            true,
            "update",
            "",
            "v1",
            "terminating",
            "namespaces",
            "finalize",
            "terminating",
        ),
        (
            "GET",
            "/api/v1/namespaces/other/status",
            true,
            "get",
            "",
            "v1",
            "other",
            "namespaces",
            "status",
            "other",
        ),
        // Proxy: never a subresource.
        (
            "GET",
            "/api/v1/proxy/namespaces/other/pods/foo/some/path",
            true,
            "proxy",
            "",
            "v1",
            "other",
            "pods",
            "",
            "foo",
        ),
        (
            "GET",
            "/api/v1/namespaces/other/services/web:80/proxy/index.html",
            true,
            "get",
            "",
            "v1",
            "other",
            "services",
            "proxy",
            "web:80",
        ),
        // Cluster-scoped objects in named groups; reviews.
        (
            "POST",
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            true,
            "create",
            "authorization.k8s.io",
            "v1",
            "",
            "selfsubjectaccessreviews",
            "",
            "",
        ),
        (
            "GET",
            "/apis/rbac.authorization.k8s.io/v1/clusterroles/admin",
            true,
            "get",
            "rbac.authorization.k8s.io",
            "v1",
            "",
            "clusterroles",
            "",
            "admin",
        ),
        // Percent-encoded segments are decoded, as Go's URL.Path is.
        ("GET", "/api/v1/namespaces/other/pods/a%3Ab", true, "get", "", "v1", "other", "pods", "", "a:b"),
        // Not resource requests: discovery, health, version, short paths.
        ("GET", "/api", false, "get", "", "", "", "", "", ""),
        ("GET", "/api/v1", false, "get", "", "", "", "", "", ""),
        ("GET", "/apis", false, "get", "", "", "", "", "", ""),
        ("GET", "/apis/apps", false, "get", "", "", "", "", "", ""),
        ("GET", "/apis/apps/v1", false, "get", "", "", "", "", "", ""),
        ("GET", "/version", false, "get", "", "", "", "", "", ""),
        ("GET", "/readyz?verbose", false, "get", "", "", "", "", "", ""),
        ("POST", "/openapi/v3", false, "post", "", "", "", "", "", ""),
        ("GET", "/", false, "get", "", "", "", "", "", ""),
        ("GET", "/other/v1/pods", false, "get", "", "", "", "", "", ""),
    ];

    #[test]
    fn classifies_like_the_apiserver() {
        for &(method, uri, resource, verb, group, version, namespace, res, sub, name) in TABLE {
            let (path, query) = match uri.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (uri, None),
            };
            let method = Method::from_bytes(method.as_bytes()).expect("method");
            let info = RequestInfo::parse(&method, path, query);
            let got = (
                info.is_resource_request,
                info.verb.as_ref(),
                info.api_group.as_ref(),
                info.api_version.as_ref(),
                info.namespace.as_ref(),
                info.resource.as_ref(),
                info.subresource.as_ref(),
                info.name.as_ref(),
            );
            assert_eq!(got, (resource, verb, group, version, namespace, res, sub, name), "{method} {uri}");
            assert_eq!(info.path, path);
            assert_eq!(info.clone().into_owned(), info);
        }
    }

    #[test]
    fn long_running_requests_are_told_apart() {
        let long = |m: Method, p: &str, q: Option<&str>| RequestInfo::parse(&m, p, q).is_long_running();
        assert!(long(Method::GET, "/api/v1/pods", Some("watch=true")));
        assert!(long(Method::GET, "/api/v1/namespaces/d/pods/p/log", None));
        assert!(long(Method::POST, "/api/v1/namespaces/d/pods/p/exec", None));
        assert!(long(Method::POST, "/api/v1/namespaces/d/pods/p/portforward", None));
        assert!(!long(Method::GET, "/api/v1/pods", None));
        assert!(!long(Method::GET, "/version", None));
        assert!(!long(Method::PUT, "/apis/apps/v1/namespaces/d/deployments/w/scale", None));
    }

    #[test]
    fn percent_decoding_keeps_invalid_escapes() {
        assert_eq!(decode("a%3Ab"), "a:b");
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%zz"), "%zz");
        assert_eq!(decode("%4"), "%4");
        assert_eq!(decode_form("a+b%2Bc"), "a b+c");
        assert!(matches!(decode("plain"), Cow::Borrowed(_)));
    }

    #[test]
    fn field_selectors_parse_like_kubernetes() {
        assert_eq!(exact_name("metadata.name=a"), Ok(Some(Cow::Borrowed("a"))));
        assert_eq!(exact_name("metadata.name==a,x=y"), Ok(Some(Cow::Borrowed("a"))));
        assert_eq!(exact_name("x=y"), Ok(None));
        assert_eq!(exact_name("metadata.name!=a"), Ok(None));
        assert_eq!(exact_name("metadata.name=a\\,b"), Ok(Some(Cow::Owned("a,b".to_owned()))));
        assert_eq!(exact_name("metadata.name=a\\x"), Err(()));
        assert_eq!(exact_name("nonsense"), Err(()));
        assert_eq!(exact_name(""), Ok(None));
    }
}

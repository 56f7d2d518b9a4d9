//! Which request paths may cross the tunnel.
//!
//! The agent appends the path to its apiserver's base URL, which may carry
//! a path prefix of its own (an apiserver behind a path-routing proxy). A
//! dot-segment (`..`, also percent-encoded), an encoded slash or an empty
//! segment could then climb out of that prefix or be read differently by a
//! normalising proxy in front of the apiserver, and reach another backend
//! with the agent's credential. Kubernetes API paths never contain any of
//! them, so they are refused outright, at the hub and again at the agent.

/// Why a path is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Not an absolute path (`/...`): a scheme or authority could make the
    /// agent dial another host.
    #[error("the path must start with a single '/'")]
    NotAbsolute,
    /// A `.` or `..` segment, raw or percent-encoded.
    #[error("the path contains a dot-segment ('.' or '..')")]
    DotSegment,
    /// `%2F` or `%5C` (an encoded slash or backslash), or a raw backslash.
    #[error("the path contains an encoded slash or a backslash")]
    EncodedSlash,
    /// Two slashes in a row.
    #[error("the path contains an empty segment ('//')")]
    EmptySegment,
    /// A byte that has no place in a request path (control characters,
    /// spaces, `#`).
    #[error("the path contains a character that is not allowed")]
    BadCharacter,
}

/// Checks a request path (without the query) before it is forwarded.
///
/// Runs on every request at the hub and again at the agent, so it reads the
/// path in place (no lower-cased copy, no list of segments).
pub fn check(path: &str) -> Result<(), PathError> {
    if !path.starts_with('/') || path.starts_with("//") {
        return Err(PathError::NotAbsolute);
    }
    let bytes = path.as_bytes();
    if bytes.iter().any(|&b| b.is_ascii_control() || b == b' ' || b == b'#') {
        return Err(PathError::BadCharacter);
    }
    if bytes.contains(&b'\\') {
        return Err(PathError::EncodedSlash);
    }
    let encoded_slash = bytes.windows(3).any(|w| {
        w[0] == b'%'
            && ((w[1] == b'2' && w[2].eq_ignore_ascii_case(&b'f'))
                || (w[1] == b'5' && w[2].eq_ignore_ascii_case(&b'c')))
    });
    if encoded_slash {
        return Err(PathError::EncodedSlash);
    }
    // The leading '/' makes the first segment empty; any other empty one is
    // a '//' (a trailing '/' is fine: `/api/` is a real request).
    let mut segments = bytes[1..].split(|&b| b == b'/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if segment.is_empty() && !last {
            return Err(PathError::EmptySegment);
        }
        if is_dot_segment(segment) {
            return Err(PathError::DotSegment);
        }
    }
    Ok(())
}

/// Whether a segment is `.` or `..`, each dot raw or as `%2e` (any case).
fn is_dot_segment(mut segment: &[u8]) -> bool {
    let mut dots = 0;
    while !segment.is_empty() {
        segment = match segment {
            [b'.', rest @ ..] => rest,
            [b'%', b'2', e, rest @ ..] if e.eq_ignore_ascii_case(&b'e') => rest,
            _ => return false,
        };
        dots += 1;
        if dots > 2 {
            return false;
        }
    }
    dots > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_paths_pass() {
        for p in [
            "/",
            "/api",
            "/api/",
            "/api/v1/namespaces/default/pods/web-0/exec",
            "/apis/apps/v1/deployments",
            "/version",
            "/openapi/v3/apis/apps/v1",
            "/api/v1/namespaces/a/configmaps/x.y",
            "/api/v1/namespaces/a/configmaps/..x",
            "/api/v1/namespaces/a/pods/p:8080/proxy/",
            "/api/v1/namespaces/a/configmaps/...",
            "/api/v1/namespaces/a/configmaps/%2e%2e%2e",
            "/api/v1/namespaces/a/configmaps/%2",
            "/api/v1/namespaces/a/configmaps/%2%2e",
        ] {
            assert_eq!(check(p), Ok(()), "{p}");
        }
    }

    #[test]
    fn escapes_are_refused() {
        let cases = [
            ("/../other/api", PathError::DotSegment),
            ("/api/../../other", PathError::DotSegment),
            ("/api/%2e%2e/other", PathError::DotSegment),
            ("/api/%2E%2e/other", PathError::DotSegment),
            ("/api/.%2e/other", PathError::DotSegment),
            ("/api/./v1", PathError::DotSegment),
            ("/api/..", PathError::DotSegment),
            ("/api/%2fv1", PathError::EncodedSlash),
            ("/api/%2Fv1", PathError::EncodedSlash),
            ("/api/%5cv1", PathError::EncodedSlash),
            ("/api\\v1", PathError::EncodedSlash),
            ("//evil.example.com/api", PathError::NotAbsolute),
            ("/api//v1", PathError::EmptySegment),
            ("http://evil/api", PathError::NotAbsolute),
            ("api/v1", PathError::NotAbsolute),
            ("", PathError::NotAbsolute),
            ("/api/v1\n", PathError::BadCharacter),
            ("/api/v1#x", PathError::BadCharacter),
            ("/api/%2E", PathError::DotSegment),
            ("/api/.%2E/", PathError::DotSegment),
            ("/api/%5Cv1", PathError::EncodedSlash),
        ];
        for (p, want) in cases {
            assert_eq!(check(p), Err(want.clone()), "{p:?}");
        }
    }
}

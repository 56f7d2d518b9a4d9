//! Header policy: what crosses the tunnel and what never does.
//!
//! Applied at the hub (caller to frame) and again at the agent (frame to
//! apiserver), so a bug on one side cannot leak a caller's credential or let
//! a caller choose whom to impersonate; and to response heads at both ends.
//!
//! Never forwarded: credentials (`Authorization`, `Impersonate-*`,
//! `X-Remote-*`, and `Sec-WebSocket-Protocol` entries that kube-apiserver
//! reads as a bearer token), hop-by-hop headers and every header a
//! `Connection` header names, and forwarding headers (`X-Forwarded-*`,
//! `Forwarded`, `X-Real-Ip`), which would let a caller choose the source
//! address an apiserver's audit log records: the agent sets
//! `X-Forwarded-For` itself from the address the hub saw.

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::limits::{MAX_HEADER_BYTES, MAX_HEADER_COUNT};
use crate::proto::v1::Header;

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus `host`: they describe one
/// connection, not the request, and are never forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "http2-settings",
];

/// True for headers that carry or choose a credential: `Authorization`,
/// every `Impersonate-*`, and the front-proxy `X-Remote-*` headers an
/// apiserver may trust for authentication.
pub fn is_credential_header(name: &str) -> bool {
    name.eq_ignore_ascii_case("authorization")
        || starts_with_ignore_case(name, "impersonate-")
        || starts_with_ignore_case(name, "x-remote-")
}

/// `prefix` (lower case) starts `name`, in any case. The policy runs on
/// every header of every request at both ends, so names are compared in
/// place rather than lower-cased into new strings.
fn starts_with_ignore_case(name: &str, prefix: &str) -> bool {
    name.as_bytes().get(..prefix.len()).is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes()))
}

/// True for connection-scoped headers that a proxy must not forward.
pub fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// True for headers that say where a request came from; see the module
/// docs.
pub fn is_forwarding_header(name: &str) -> bool {
    starts_with_ignore_case(name, "x-forwarded-")
        || name.eq_ignore_ascii_case("forwarded")
        || name.eq_ignore_ascii_case("x-real-ip")
}

/// The prefix of `Sec-WebSocket-Protocol` entries that kube-apiserver's
/// WebSocket authenticator reads as a bearer token.
pub const WEBSOCKET_BEARER_PREFIX: &str = "base64url.bearer.authorization.k8s.io.";

/// A `Sec-WebSocket-Protocol` value without its bearer-token entries;
/// `None` when nothing else is left (or the value is not text).
fn without_websocket_bearer(value: &[u8]) -> Option<HeaderValue> {
    let text = std::str::from_utf8(value).ok()?;
    let kept: Vec<&str> = text
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty() && !p.to_ascii_lowercase().starts_with(WEBSOCKET_BEARER_PREFIX))
        .collect();
    if kept.is_empty() { None } else { HeaderValue::from_str(&kept.join(", ")).ok() }
}

/// Header names listed in `Connection` (RFC 9110 §7.6.1: they too are
/// hop-by-hop), lower-case.
fn connection_listed(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// The request-header policy for one header: its value to forward, or
/// `None` to drop it. `upgrade` keeps the `Upgrade` header; `listed` are
/// the names a `Connection` header named.
fn admit_request_header(name: &str, value: &[u8], upgrade: bool, listed: &[String]) -> Option<HeaderValue> {
    if is_credential_header(name) || is_forwarding_header(name) {
        return None;
    }
    if name.eq_ignore_ascii_case("upgrade") {
        return if upgrade { HeaderValue::from_bytes(value).ok() } else { None };
    }
    if is_hop_by_hop(name) || is_listed(name, listed) {
        return None;
    }
    if name.eq_ignore_ascii_case("sec-websocket-protocol") {
        return without_websocket_bearer(value);
    }
    HeaderValue::from_bytes(value).ok()
}

/// Headers of a caller's request as frame headers, by the policy in the
/// module docs. For an upgrade request the `Upgrade` header is kept (the
/// agent re-adds `Connection: Upgrade`).
pub fn request_to_frame(headers: &HeaderMap, upgrade: bool) -> Vec<Header> {
    let listed = connection_listed(headers);
    headers
        .iter()
        .filter_map(|(name, value)| {
            let value = admit_request_header(name.as_str(), value.as_bytes(), upgrade, &listed)?;
            Some(Header { name: name.as_str().to_owned(), value: value.as_bytes().to_vec().into() })
        })
        .collect()
}

/// Whether a response header may be passed on: not hop-by-hop (but for
/// `Upgrade` on a 101, so the caller sees the protocol chosen) and not
/// named by a `Connection` header.
fn admit_response_header(name: &str, switching: bool, listed: &[String]) -> bool {
    (switching && name.eq_ignore_ascii_case("upgrade")) || !(is_hop_by_hop(name) || is_listed(name, listed))
}

/// Whether a `Connection` header named `name` (`listed` is lower case).
fn is_listed(name: &str, listed: &[String]) -> bool {
    listed.iter().any(|l| l.eq_ignore_ascii_case(name))
}

/// Headers of an apiserver response as frame headers.
pub fn response_to_frame(headers: &HeaderMap, switching: bool) -> Vec<Header> {
    let listed = connection_listed(headers);
    headers
        .iter()
        .filter(|(name, _)| admit_response_header(name.as_str(), switching, &listed))
        .map(|(name, value)| Header {
            name: name.as_str().to_owned(),
            value: value.as_bytes().to_vec().into(),
        })
        .collect()
}

/// Why frame headers were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    /// More than [`MAX_HEADER_COUNT`] headers.
    #[error("too many headers ({0}, limit {MAX_HEADER_COUNT})")]
    TooMany(usize),
    /// More than [`MAX_HEADER_BYTES`] of names and values.
    #[error("headers too large ({0} bytes, limit {MAX_HEADER_BYTES})")]
    TooLarge(usize),
    /// A name or value HTTP does not allow.
    #[error("invalid header {0:?}")]
    Invalid(String),
}

/// Checks a header map against [`MAX_HEADER_COUNT`] and `max_bytes` (at
/// most [`MAX_HEADER_BYTES`], which the other end enforces too).
pub fn check_limits(headers: &HeaderMap, max_bytes: usize) -> Result<(), HeaderError> {
    if headers.len() > MAX_HEADER_COUNT {
        return Err(HeaderError::TooMany(headers.len()));
    }
    let bytes: usize = headers.iter().map(|(n, v)| n.as_str().len() + v.len()).sum();
    if bytes > max_bytes.min(MAX_HEADER_BYTES) {
        return Err(HeaderError::TooLarge(bytes));
    }
    Ok(())
}

/// How [`frame_to_map`] filters what the peer sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Headers as a caller sent them (the gRPC `Proxy` call): checked for
    /// limits and validity only, then filtered like any caller's request
    /// by [`request_to_frame`] (after the hub read `Impersonate-*` from
    /// them for `--as`).
    Caller,
    /// A request head at the agent: the request policy again, whatever the
    /// hub sent (`Upgrade` kept for the agent to check).
    Request,
    /// A response head at the hub; `switching` for a 101.
    Response {
        /// Whether the status is 101.
        switching: bool,
    },
}

/// Frame headers back into a header map, enforcing limits and applying
/// `policy` again, whatever the peer sent.
pub fn frame_to_map(headers: &[Header], policy: Policy) -> Result<HeaderMap, HeaderError> {
    if headers.len() > MAX_HEADER_COUNT {
        return Err(HeaderError::TooMany(headers.len()));
    }
    let bytes: usize = headers.iter().map(|h| h.name.len() + h.value.len()).sum();
    if bytes > MAX_HEADER_BYTES {
        return Err(HeaderError::TooLarge(bytes));
    }
    let mut map = HeaderMap::with_capacity(headers.len());
    for h in headers {
        let name =
            HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| HeaderError::Invalid(h.name.clone()))?;
        HeaderValue::from_bytes(&h.value).map_err(|_| HeaderError::Invalid(h.name.clone()))?;
        let value = match policy {
            Policy::Caller => HeaderValue::from_bytes(&h.value).ok(),
            Policy::Request => admit_request_header(name.as_str(), &h.value, true, &[]),
            Policy::Response { switching } => admit_response_header(name.as_str(), switching, &[])
                .then(|| HeaderValue::from_bytes(&h.value).ok())
                .flatten(),
        };
        if let Some(value) = value {
            map.append(name, value);
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("accept", HeaderValue::from_static("application/json"));
        h.insert("authorization", HeaderValue::from_static("Bearer stolen"));
        h.insert("Impersonate-User", HeaderValue::from_static("admin"));
        h.append("impersonate-group", HeaderValue::from_static("system:masters"));
        h.insert("impersonate-extra-scopes", HeaderValue::from_static("x"));
        h.insert("x-remote-user", HeaderValue::from_static("admin"));
        h.insert("connection", HeaderValue::from_static("keep-alive"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("host", HeaderValue::from_static("hub:8443"));
        h.insert("upgrade", HeaderValue::from_static("SPDY/3.1"));
        h.insert("accept-encoding", HeaderValue::from_static("gzip"));
        h
    }

    fn names(h: &[Header]) -> Vec<&str> {
        h.iter().map(|h| h.name.as_str()).collect()
    }

    #[test]
    fn credentials_and_hop_by_hop_never_cross() {
        let f = request_to_frame(&caller_headers(), false);
        assert_eq!(names(&f), vec!["accept", "accept-encoding"]);
    }

    #[test]
    fn forwarding_and_connection_listed_headers_never_cross() {
        let mut h = HeaderMap::new();
        h.insert("accept", HeaderValue::from_static("*/*"));
        h.insert("x-forwarded-for", HeaderValue::from_static("10.9.9.9"));
        h.insert("X-Forwarded-Proto", HeaderValue::from_static("https"));
        h.insert("forwarded", HeaderValue::from_static("for=10.9.9.9"));
        h.insert("x-real-ip", HeaderValue::from_static("10.9.9.9"));
        h.insert("connection", HeaderValue::from_static("keep-alive, X-Secret-Hop"));
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        assert_eq!(names(&request_to_frame(&h, false)), vec!["accept"]);
        let mut resp = h.clone();
        resp.remove("accept");
        resp.insert("content-type", HeaderValue::from_static("application/json"));
        assert!(!names(&response_to_frame(&resp, false)).contains(&"x-secret-hop"));
    }

    #[test]
    fn websocket_bearer_tokens_are_removed_from_the_protocol_list() {
        let mut h = HeaderMap::new();
        h.insert(
            "sec-websocket-protocol",
            HeaderValue::from_static("base64url.bearer.authorization.k8s.io.c2VjcmV0, v5.channel.k8s.io"),
        );
        let f = request_to_frame(&h, true);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].value.as_ref(), b"v5.channel.k8s.io");
        h.insert(
            "sec-websocket-protocol",
            HeaderValue::from_static("Base64url.Bearer.Authorization.K8s.Io.eA"),
        );
        assert!(request_to_frame(&h, true).is_empty(), "nothing but a token: the header goes");
        // The agent applies it again to whatever the hub sent.
        let hostile = vec![Header {
            name: "sec-websocket-protocol".into(),
            value: b"base64url.bearer.authorization.k8s.io.eA,v4.channel.k8s.io".to_vec().into(),
        }];
        let m = frame_to_map(&hostile, Policy::Request).expect("valid");
        assert_eq!(m["sec-websocket-protocol"], "v4.channel.k8s.io");
    }

    #[test]
    fn upgrade_header_survives_for_upgrades_only() {
        let f = request_to_frame(&caller_headers(), true);
        assert_eq!(names(&f), vec!["accept", "upgrade", "accept-encoding"]);
    }

    #[test]
    fn agent_strips_again_whatever_the_peer_sent() {
        let hostile = vec![
            Header { name: "Authorization".into(), value: "Bearer x".as_bytes().to_vec().into() },
            Header { name: "IMPERSONATE-USER".into(), value: "admin".as_bytes().to_vec().into() },
            Header { name: "accept".into(), value: "*/*".as_bytes().to_vec().into() },
        ];
        let m = frame_to_map(&hostile, Policy::Request).expect("valid");
        assert_eq!(m.len(), 1);
        assert_eq!(m["accept"], "*/*");
        let forged = vec![
            Header { name: "X-Forwarded-For".into(), value: b"1.2.3.4".to_vec().into() },
            Header { name: "transfer-encoding".into(), value: b"chunked".to_vec().into() },
        ];
        assert!(frame_to_map(&forged, Policy::Request).expect("valid").is_empty());
        let response = vec![
            Header { name: "upgrade".into(), value: b"websocket".to_vec().into() },
            Header { name: "content-type".into(), value: b"text/plain".to_vec().into() },
        ];
        let m = frame_to_map(&response, Policy::Response { switching: false }).expect("valid");
        assert_eq!(m.len(), 1, "no Upgrade header on a response that switches nothing");
        assert_eq!(frame_to_map(&response, Policy::Response { switching: true }).expect("valid").len(), 2);
    }

    #[test]
    fn limits_are_enforced() {
        let many: Vec<Header> = (0..MAX_HEADER_COUNT + 1)
            .map(|i| Header { name: format!("x-h{i}"), value: "v".as_bytes().to_vec().into() })
            .collect();
        let response = Policy::Response { switching: false };
        assert_eq!(frame_to_map(&many, response), Err(HeaderError::TooMany(MAX_HEADER_COUNT + 1)));
        let big = vec![Header { name: "x-big".into(), value: vec![b'a'; MAX_HEADER_BYTES].into() }];
        assert!(matches!(frame_to_map(&big, response), Err(HeaderError::TooLarge(_))));
        let bad = vec![Header { name: "bad name".into(), value: "v".as_bytes().to_vec().into() }];
        assert_eq!(frame_to_map(&bad, response), Err(HeaderError::Invalid("bad name".into())));
        let crlf = vec![Header { name: "x-a".into(), value: "a\r\nb".as_bytes().to_vec().into() }];
        assert_eq!(frame_to_map(&crlf, response), Err(HeaderError::Invalid("x-a".into())));
    }

    #[test]
    fn caller_header_limit_is_capped_by_the_protocol_limit() {
        let mut h = HeaderMap::new();
        h.insert("x-big", HeaderValue::from_bytes(&vec![b'a'; 1000]).expect("value"));
        assert!(check_limits(&h, 2000).is_ok());
        assert!(matches!(check_limits(&h, 500), Err(HeaderError::TooLarge(_))));
        h.insert("x-huge", HeaderValue::from_bytes(&vec![b'a'; MAX_HEADER_BYTES]).expect("value"));
        assert!(matches!(check_limits(&h, usize::MAX), Err(HeaderError::TooLarge(_))));
    }

    #[test]
    fn response_keeps_upgrade_on_101() {
        let mut h = HeaderMap::new();
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("connection", HeaderValue::from_static("Upgrade"));
        h.insert("sec-websocket-protocol", HeaderValue::from_static("v5.channel.k8s.io"));
        assert_eq!(names(&response_to_frame(&h, true)), vec!["upgrade", "sec-websocket-protocol"]);
        assert_eq!(names(&response_to_frame(&h, false)), vec!["sec-websocket-protocol"]);
    }
}

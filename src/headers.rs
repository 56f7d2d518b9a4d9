//! Header policy: what crosses the tunnel and what never does.
//!
//! Applied at the hub (caller to frame) and again at the agent (frame to
//! apiserver), so a bug on one side cannot leak a caller's credential or let
//! a caller choose whom to impersonate.

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
    let n = name.to_ascii_lowercase();
    n == "authorization" || n.starts_with("impersonate-") || n.starts_with("x-remote-")
}

/// True for connection-scoped headers that a proxy must not forward.
pub fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// Headers of a caller's request as frame headers: credentials and
/// hop-by-hop headers removed. For an upgrade request the `Upgrade` header is
/// kept (the agent re-adds `Connection: Upgrade`).
pub fn request_to_frame(headers: &HeaderMap, upgrade: bool) -> Vec<Header> {
    headers
        .iter()
        .filter(|(name, _)| {
            let n = name.as_str();
            !is_credential_header(n) && (!is_hop_by_hop(n) || (upgrade && n == "upgrade"))
        })
        .map(|(name, value)| Header {
            name: name.as_str().to_owned(),
            value: value.as_bytes().to_vec().into(),
        })
        .collect()
}

/// Headers of an apiserver response as frame headers: hop-by-hop removed
/// (for a 101, `Upgrade` is kept so the caller sees the protocol chosen).
pub fn response_to_frame(headers: &HeaderMap, switching: bool) -> Vec<Header> {
    headers
        .iter()
        .filter(|(name, _)| !is_hop_by_hop(name.as_str()) || (switching && name.as_str() == "upgrade"))
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

/// Frame headers back into a header map, enforcing limits. When
/// `strip_credentials` is set (the agent's side) credential and hop-by-hop
/// headers are dropped again whatever the peer sent.
pub fn frame_to_map(headers: &[Header], strip_credentials: bool) -> Result<HeaderMap, HeaderError> {
    if headers.len() > MAX_HEADER_COUNT {
        return Err(HeaderError::TooMany(headers.len()));
    }
    let bytes: usize = headers.iter().map(|h| h.name.len() + h.value.len()).sum();
    if bytes > MAX_HEADER_BYTES {
        return Err(HeaderError::TooLarge(bytes));
    }
    let mut map = HeaderMap::with_capacity(headers.len());
    for h in headers {
        if strip_credentials
            && (is_credential_header(&h.name)
                || (is_hop_by_hop(&h.name) && !h.name.eq_ignore_ascii_case("upgrade")))
        {
            continue;
        }
        let name =
            HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| HeaderError::Invalid(h.name.clone()))?;
        let value = HeaderValue::from_bytes(&h.value).map_err(|_| HeaderError::Invalid(h.name.clone()))?;
        map.append(name, value);
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
        let m = frame_to_map(&hostile, true).expect("valid");
        assert_eq!(m.len(), 1);
        assert_eq!(m["accept"], "*/*");
    }

    #[test]
    fn limits_are_enforced() {
        let many: Vec<Header> = (0..MAX_HEADER_COUNT + 1)
            .map(|i| Header { name: format!("x-h{i}"), value: "v".as_bytes().to_vec().into() })
            .collect();
        assert_eq!(frame_to_map(&many, false), Err(HeaderError::TooMany(MAX_HEADER_COUNT + 1)));
        let big = vec![Header { name: "x-big".into(), value: vec![b'a'; MAX_HEADER_BYTES].into() }];
        assert!(matches!(frame_to_map(&big, false), Err(HeaderError::TooLarge(_))));
        let bad = vec![Header { name: "bad name".into(), value: "v".as_bytes().to_vec().into() }];
        assert_eq!(frame_to_map(&bad, false), Err(HeaderError::Invalid("bad name".into())));
        let crlf = vec![Header { name: "x-a".into(), value: "a\r\nb".as_bytes().to_vec().into() }];
        assert_eq!(frame_to_map(&crlf, false), Err(HeaderError::Invalid("x-a".into())));
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

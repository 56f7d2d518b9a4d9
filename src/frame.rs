//! Conversion between HTTP messages and tunnel frames.
//!
//! The hub turns a caller's request into a [`RequestHead`]; the agent turns
//! it back into a request for its apiserver with [`decode_request_head`]
//! (which applies the header policy a second time). Responses go the other
//! way with [`response_head`] and [`decode_response_head`].

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, StatusCode};

use crate::headers::{self, HeaderError};
use crate::identity::{Identity, IdentityError};
use crate::ids::RequestId;
use crate::limits::MAX_BODY_CHUNK;

/// Largest response body an agent sends inside its response head (the
/// `whole_response` layout: head, body and End in one message) instead of
/// as body frames after it. One body chunk: a response this small is one
/// message either way, and the agent waits for all of it (known by its
/// length) before answering, which holds at most this much per request.
pub const MAX_WHOLE_BODY: usize = MAX_BODY_CHUNK;
use crate::proto::v1::{self as pb, RequestHead, ResponseHead};

/// Why a frame was refused.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Unknown or malformed HTTP method.
    #[error("invalid method {0:?}")]
    Method(String),
    /// Path not absolute or not a valid URI path and query.
    #[error("invalid path {0:?}")]
    Path(String),
    /// A path the tunnel never forwards (dot-segments, encoded slashes).
    #[error("path refused: {0}")]
    PathRefused(#[from] crate::path::PathError),
    /// Missing or unparsable request id.
    #[error("invalid request id {0:?}")]
    RequestId(String),
    /// Head without an identity.
    #[error("request head carries no identity")]
    MissingIdentity,
    /// Identity that cannot be impersonated.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// Headers over the limits or invalid.
    #[error(transparent)]
    Header(#[from] HeaderError),
    /// Status code outside 100..=999.
    #[error("invalid status {0}")]
    Status(u32),
    /// An upgrade head that also says its body ended or asks for a whole
    /// response (an upgraded stream has neither).
    #[error("an upgrade request cannot end its body with the head or ask for a whole response")]
    UpgradeLayout,
}

/// Who a request is from, as the hub puts it in the head.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    /// The caller, as the child cluster sees it (prefixes applied).
    pub identity: Identity,
    /// Whom the caller asked to act as, when the hub allowed it.
    pub impersonate: Option<Identity>,
    /// The caller's address as the hub saw it.
    pub client_address: Option<std::net::IpAddr>,
}

/// The hub's side: a request head for the agent.
pub fn request_head(
    request_id: RequestId,
    method: &Method,
    path_and_query: &PathAndQuery,
    headers: &HeaderMap,
    upgrade: bool,
    origin: Origin,
) -> RequestHead {
    let Origin { identity, impersonate, client_address } = origin;
    RequestHead {
        request_id: request_id.to_string(),
        method: method.as_str().to_owned(),
        path: path_and_query.path().to_owned(),
        query: path_and_query.query().unwrap_or_default().to_owned(),
        headers: headers::request_to_frame(headers, upgrade),
        identity: Some(identity.into()),
        upgrade,
        impersonate: impersonate.map(Into::into),
        client_address: client_address.map(|a| a.to_string()).unwrap_or_default(),
        // Set by the hub's gateway where the layout allows (see the proto).
        body_ended: false,
        whole_response: false,
    }
}

/// A request head as the agent replays it.
#[derive(Debug)]
pub struct ProxiedRequest {
    /// Id assigned by the hub.
    pub request_id: RequestId,
    /// HTTP method.
    pub method: Method,
    /// Path and query on the apiserver.
    pub path_and_query: PathAndQuery,
    /// Headers with credentials and hop-by-hop headers removed.
    pub headers: HeaderMap,
    /// The caller, as the hub authenticated it.
    pub identity: Identity,
    /// Whom the caller asked to act as (kubectl `--as`), when the hub
    /// allowed it; the agent impersonates this identity only after the
    /// child cluster confirms `identity` may impersonate it.
    pub impersonate: Option<Identity>,
    /// Whether this is an HTTP/1.1 upgrade.
    pub upgrade: bool,
    /// The caller's address as the hub saw it, if it said (and it parses).
    pub client_address: Option<std::net::IpAddr>,
    /// The request has no body: nothing but the next request's head (or
    /// the end of the stream) follows this head.
    pub body_ended: bool,
    /// The hub takes a whole small response in one message.
    pub whole_response: bool,
}

/// The agent's side: validates a request head and applies the header policy
/// again, whatever the hub sent.
pub fn decode_request_head(head: RequestHead) -> Result<ProxiedRequest, FrameError> {
    let request_id =
        RequestId::parse(&head.request_id).ok_or_else(|| FrameError::RequestId(head.request_id.clone()))?;
    let method =
        Method::from_bytes(head.method.as_bytes()).map_err(|_| FrameError::Method(head.method.clone()))?;
    crate::path::check(&head.path)?;
    let pq = if head.query.is_empty() { head.path.clone() } else { format!("{}?{}", head.path, head.query) };
    let path_and_query = PathAndQuery::try_from(pq.as_str()).map_err(|_| FrameError::Path(pq.clone()))?;
    let identity: Identity = head.identity.ok_or(FrameError::MissingIdentity)?.into();
    identity.validate()?;
    let impersonate: Option<Identity> = head.impersonate.map(Into::into);
    if let Some(target) = &impersonate {
        target.validate()?;
    }
    let headers = headers::frame_to_map(&head.headers, headers::Policy::Request)?;
    if head.upgrade && (head.body_ended || head.whole_response) {
        return Err(FrameError::UpgradeLayout);
    }
    Ok(ProxiedRequest {
        request_id,
        method,
        path_and_query,
        headers,
        identity,
        impersonate,
        upgrade: head.upgrade,
        client_address: head.client_address.parse().ok(),
        body_ended: head.body_ended,
        whole_response: head.whole_response,
    })
}

/// The agent's side: a response head for the hub.
pub fn response_head(status: StatusCode, headers: &HeaderMap) -> ResponseHead {
    ResponseHead {
        status: u32::from(status.as_u16()),
        headers: headers::response_to_frame(headers, status == StatusCode::SWITCHING_PROTOCOLS),
        body: Bytes::new(),
        end: None,
    }
}

/// The hub's side: status and headers to send to the caller.
pub fn decode_response_head(head: &ResponseHead) -> Result<(StatusCode, HeaderMap), FrameError> {
    let status = u16::try_from(head.status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or(FrameError::Status(head.status))?;
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    let headers = headers::frame_to_map(&head.headers, headers::Policy::Response { switching })?;
    Ok((status, headers))
}

/// Splits a body buffer into frame-sized chunks without copying.
pub fn chunks(mut data: Bytes) -> impl Iterator<Item = Bytes> {
    std::iter::from_fn(move || {
        if data.is_empty() {
            None
        } else {
            let n = data.len().min(MAX_BODY_CHUNK);
            Some(data.split_to(n))
        }
    })
}

/// An error frame for the hub.
pub fn agent_error(code: pb::ErrorCode, message: impl Into<String>) -> pb::AgentFrame {
    pb::AgentFrame {
        frame: Some(pb::agent_frame::Frame::Error(pb::Error { code: code as i32, message: message.into() })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn alice() -> Identity {
        Identity { user: "alice".into(), groups: vec!["dev".into()], ..Default::default() }
    }

    #[test]
    fn request_round_trip() {
        let mut h = HeaderMap::new();
        h.insert("accept", HeaderValue::from_static("application/json"));
        h.insert("authorization", HeaderValue::from_static("Bearer x"));
        let id = RequestId::new();
        let pq = PathAndQuery::from_static("/api/v1/namespaces?labelSelector=a%3Db&watch=true");
        let bob = Identity { user: "bob".into(), ..Default::default() };
        let from = "192.0.2.7".parse().ok();
        let origin = Origin { identity: alice(), impersonate: Some(bob.clone()), client_address: from };
        let head = request_head(id, &Method::GET, &pq, &h, false, origin);
        let req = decode_request_head(head).expect("valid");
        assert_eq!(req.impersonate, Some(bob));
        assert_eq!(req.client_address, from);
        assert_eq!(req.request_id, id);
        assert_eq!(req.method, Method::GET);
        assert_eq!(req.path_and_query, pq);
        assert_eq!(req.identity, alice());
        assert_eq!(req.headers.len(), 1);
        assert!(!req.upgrade);
    }

    #[test]
    fn hostile_heads_are_refused() {
        let good = request_head(
            RequestId::new(),
            &Method::GET,
            &PathAndQuery::from_static("/api"),
            &HeaderMap::new(),
            false,
            Origin { identity: alice(), ..Default::default() },
        );
        for path in ["api", "//evil/api", "/../api", "/api/%2e%2e/x", "/api%2fv1"] {
            let mut h = good.clone();
            h.path = path.into();
            assert!(matches!(decode_request_head(h), Err(FrameError::PathRefused(_))), "{path}");
        }
        let mut h = good.clone();
        h.impersonate = Some(
            Identity { user: "eve".into(), groups: vec!["system:masters".into()], ..Default::default() }
                .into(),
        );
        assert!(matches!(decode_request_head(h), Err(FrameError::Identity(_))), "no escalation through --as");
        let mut h = good.clone();
        h.upgrade = true;
        h.body_ended = true;
        assert!(matches!(decode_request_head(h), Err(FrameError::UpgradeLayout)));
        let mut h = good.clone();
        h.method = "GE T".into();
        assert!(matches!(decode_request_head(h), Err(FrameError::Method(_))));
        let mut h = good.clone();
        h.identity = None;
        assert!(matches!(decode_request_head(h), Err(FrameError::MissingIdentity)));
        let mut h = good.clone();
        h.request_id = "x".into();
        assert!(matches!(decode_request_head(h), Err(FrameError::RequestId(_))));
        let mut h = good;
        h.identity = Some(
            Identity { user: "eve".into(), groups: vec!["system:masters".into()], ..Default::default() }
                .into(),
        );
        assert!(matches!(decode_request_head(h), Err(FrameError::Identity(_))));
    }

    #[test]
    fn response_round_trip() {
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("application/json"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        let head = response_head(StatusCode::FORBIDDEN, &h);
        let (s, m) = decode_response_head(&head).expect("valid");
        assert_eq!(s, StatusCode::FORBIDDEN);
        assert_eq!(m.len(), 1);
        assert!(
            decode_response_head(&ResponseHead { status: 70000, headers: vec![], ..Default::default() })
                .is_err()
        );
    }

    #[test]
    fn chunks_cover_the_body() {
        let data = Bytes::from(vec![7u8; MAX_BODY_CHUNK * 2 + 5]);
        let parts: Vec<Bytes> = chunks(data.clone()).collect();
        assert_eq!(parts.iter().map(Bytes::len).collect::<Vec<_>>(), vec![MAX_BODY_CHUNK, MAX_BODY_CHUNK, 5]);
        assert_eq!(parts.concat(), data.to_vec());
        assert_eq!(chunks(Bytes::new()).count(), 0);
    }
}

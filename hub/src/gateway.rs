//! The HTTPS gateway: `/clusters/{name}/...` for kubectl and every other
//! Kubernetes client, sent through that cluster's agent.
//!
//! One request takes one parked stream: the hub sends the head and streams
//! the body; the agent answers with a head and a streamed body. Nothing is
//! buffered whole, so watches and `logs -f` flow as the apiserver writes
//! them, and each request's memory is bounded by the frame channel and the
//! HTTP/2 window of its own stream.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use ferry::frame::{self, FrameError};
use ferry::headers;
use ferry::identity::Identity;
use ferry::ids::RequestId;
use ferry::proto::v1::{AgentFrame, End, ErrorCode, HubFrame, agent_frame, hub_frame};
use ferry::status::KubeStatus;
use futures_util::Stream;
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use tokio::sync::mpsc::error::SendError;
use tokio::task::JoinHandle;
use tonic::Streaming;
use tracing::{Instrument, debug, info_span, warn};

use crate::access;
use crate::api::valid_cluster_name;
use crate::auth::{self, AuthError, Authenticated, Peer};
use crate::observe::{ObservedBody, Outcome, RequestRecord, Via};
use crate::registry::{Busy, FrameTx, LiveCluster, NoStream, Parked};
use crate::request_body::{self, BodySource, Piece};
use crate::state::HubState;
use crate::store::{Approval, StoreError};

/// Error type of response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Body type of every hub response.
pub type HubBody = UnsyncBoxBody<Bytes, BoxError>;

/// Times the gateway retries a parked stream that turned out to be dead
/// before the head reached the agent.
const HEAD_ATTEMPTS: usize = 3;

/// How long the hub waits for the agent to close its side of a stream the
/// hub is done with. Closing in order (instead of dropping the stream) keeps
/// HTTP/2 from resetting it, and h2 counts such resets against a per-
/// connection limit that ends in GOAWAY.
const CLOSE_DRAIN: Duration = Duration::from_secs(5);

fn full(data: impl Into<Bytes>) -> HubBody {
    http_body_util::Full::new(data.into()).map_err(|never| match never {}).boxed_unsync()
}

fn status_response(s: &KubeStatus) -> Response<HubBody> {
    let r: Response<Vec<u8>> = s.to_response();
    r.map(full)
}

/// Whether `path` (below `/clusters/NAME`) is API discovery: `/api`,
/// `/api/VERSION`, `/apis`, `/apis/GROUP`, `/apis/GROUP/VERSION`.
fn is_discovery(path: &str) -> bool {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    matches!(segments.as_slice(), ["api"] | ["api", _] | ["apis"] | ["apis", _] | ["apis", _, _])
}

/// A hub refusal. client-go's discovery (what every `kubectl get` runs
/// first) reads error bodies only when they are text, and shows "unknown"
/// for a JSON `Status`; so discovery requests get the message as text, and
/// a 403 reads `Error from server (Forbidden): user "bob" may not reach...`
/// instead. Everything else gets the JSON `Status` kubectl decodes.
fn refusal(s: &KubeStatus, path: &str) -> Response<HubBody> {
    if !is_discovery(path) {
        return status_response(s);
    }
    let mut resp = Response::new(full(s.message.clone()));
    *resp.status_mut() = s.code;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

/// The caller's address, an extension on every request the hub serves
/// (the gRPC `Proxy` call reads it; the agent passes it on as
/// `X-Forwarded-For`).
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub std::net::SocketAddr);

/// Splits `/clusters/NAME/rest` into `NAME` and `/rest`.
pub fn split_cluster_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/clusters/")?;
    match rest.find('/') {
        Some(i) => Some((&rest[..i], &rest[i..])),
        None => Some((rest, "/")),
    }
}

/// True for an HTTP/1.1 upgrade request (exec, attach, port-forward).
fn is_upgrade<B>(req: &Request<B>) -> bool {
    is_upgrade_headers(req.headers())
}

/// True when `headers` ask for an HTTP/1.1 upgrade.
pub(crate) fn is_upgrade_headers(headers: &http::HeaderMap) -> bool {
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    connection_upgrade && headers.contains_key(header::UPGRADE)
}

/// Handles one gateway request. `peer` is what the connection's TLS
/// handshake proved; a request without a caller certificate may carry a hub
/// bearer token.
pub async fn handle(
    state: Arc<HubState>,
    peer: Peer,
    client: std::net::SocketAddr,
    req: Request<Incoming>,
) -> Response<HubBody> {
    let auth =
        auth::authenticate(state.store.as_ref(), &peer, auth::authorization_header(req.headers())).await;
    let path = req.uri().path();
    // The hub's own health, unless a credential bound to one cluster asks
    // (then `kubectl get --raw /readyz` means the cluster's).
    let bound = matches!(&auth, Ok(Some(c)) if c.bound_cluster().is_some());
    if !bound && let Some((code, text)) = crate::health::answer(&state, path).await {
        let mut resp = Response::new(full(text));
        *resp.status_mut() = code;
        return resp;
    }
    let request_id = RequestId::new();
    let mut record = Some(RequestRecord::start(
        &state,
        request_id,
        Via::Gateway,
        req.method(),
        path,
        req.uri().query(),
        Some(client.ip()),
    ));
    let resp = route(state, auth, client, req, request_id, &mut record).await;
    match record {
        // Upgraded: the relay task has the record.
        None => resp,
        Some(mut record) => {
            let status = resp.status();
            record.head(status.as_u16(), false);
            resp.map(|body| ObservedBody::wrap(body, record, status))
        }
    }
}

/// Authorizes, routes and forwards one gateway request; `record` is left
/// for the response body, or taken by an upgraded connection.
async fn route(
    state: Arc<HubState>,
    auth: Result<Option<Authenticated>, AuthError>,
    client: std::net::SocketAddr,
    req: Request<Incoming>,
    request_id: RequestId,
    record: &mut Option<RequestRecord>,
) -> Response<HubBody> {
    let path = req.uri().path();
    let caller = match auth {
        Ok(Some(caller)) => caller,
        Ok(None) => {
            return status_response(&KubeStatus::unauthorized(
                "a client certificate issued by the hub (ferryctl kubeconfig) or a hub bearer token is required",
            ));
        }
        Err(AuthError::Store(e)) => {
            warn!(error = %e, "store failure");
            return status_response(&KubeStatus::unavailable("hub store unavailable"));
        }
        Err(e) => return status_response(&KubeStatus::unauthorized(e.to_string())),
    };
    if let Some(r) = record.as_mut() {
        r.caller(&caller);
    }
    let route = match (split_cluster_path(path), caller.bound_cluster()) {
        (Some((name, _)), Some((bound, _))) if name != bound => Err(KubeStatus::forbidden(format!(
            "this credential of user {:?} is valid for cluster {bound:?} only; get one for {name:?} with `ferryctl kubeconfig {name}`",
            caller.identity.user
        ))),
        (Some((name, rest)), _) => Ok((name.to_owned(), rest.to_owned())),
        // Clients that drop the server URL's path (`kubectl get --raw`,
        // client-go's AbsPath) still reach the one cluster a bound
        // credential is for.
        (None, Some((bound, _))) => Ok((bound.to_owned(), path.to_owned())),
        (None, None) => Err(KubeStatus::not_found(format!(
            "the hub serves clusters under /clusters/NAME/, not {path:?} (for `kubectl get --raw`, include the prefix: /clusters/NAME{path})"
        ))),
    };
    let (name, rest) = match route {
        Ok(r) => r,
        Err(s) => return status_response(&s),
    };

    let rest_path = rest.clone();
    if let Some(r) = record.as_mut() {
        r.set_path(&rest);
        r.cluster(&state, &name, false);
    }
    let span = info_span!("request", cluster = %name, request_id = %request_id, method = %req.method(), path = %rest, user = %caller.identity.user);
    match forward(state, name, rest, caller, request_id, client, req, record).instrument(span.clone()).await {
        Ok(resp) => {
            span.in_scope(|| debug!(status = resp.status().as_u16(), "response head sent"));
            resp
        }
        Err(s) => {
            span.in_scope(|| {
                if s.code.is_server_error() {
                    warn!(status = s.code.as_u16(), message = %s.message, "request failed");
                } else {
                    debug!(status = s.code.as_u16(), message = %s.message, "request refused");
                }
            });
            refusal(&s, &rest_path)
        }
    }
}

/// Why a request found no agent, and where to look next.
fn no_agent(name: &str) -> String {
    format!(
        "cluster {name:?} has no connected agent; `ferryctl describe cluster {name}` shows when one was last seen"
    )
}

/// Checks everything about a request that does not need the agent: path,
/// limits, the cluster, the caller's grant and impersonation, approval.
/// Returns the cluster's live state and the identities to forward.
async fn admit(
    state: &HubState,
    name: &str,
    rest: &str,
    caller: &Authenticated,
    headers: &http::HeaderMap,
) -> Result<(Option<Arc<LiveCluster>>, Identity, Option<Identity>), KubeStatus> {
    if !valid_cluster_name(name) {
        return Err(KubeStatus::not_found(format!("clusters {name:?} not found")));
    }
    ferry::path::check(rest).map_err(|e| KubeStatus::bad_request(format!("path {rest:?} refused: {e}")))?;
    caller.identity.validate().map_err(|e| KubeStatus::forbidden(e.to_string()))?;
    headers::check_limits(headers, state.limits.max_header_bytes)
        .map_err(|e| KubeStatus::headers_too_large(e.to_string()))?;
    let max_body = state.limits.max_request_body;
    if let Some(len) = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        && len > max_body
    {
        return Err(KubeStatus::too_large(format!(
            "request body of {len} bytes exceeds the limit of {max_body}"
        )));
    }
    let store_failed = |e: StoreError| {
        warn!(error = %e, "store failure");
        KubeStatus::unavailable("hub store unavailable")
    };
    let record = state.store.cluster(name).await.map_err(store_failed)?;
    let record = match (record, caller.bound_cluster()) {
        (Some(r), Some((_, id))) if r.cluster_id() != Some(id) => {
            return Err(KubeStatus::forbidden(format!(
                "this credential was issued for an earlier cluster named {name:?} (deleted since); get a new one with `ferryctl kubeconfig {name}`"
            )));
        }
        (Some(r), _) => r,
        (None, Some(_)) => {
            return Err(KubeStatus::forbidden(format!(
                "cluster {name:?}, which this credential was issued for, has been deleted"
            )));
        }
        (None, None) => return Err(KubeStatus::not_found(format!("clusters {name:?} not found"))),
    };
    let access = access::check(state.store.as_ref(), caller, name)
        .await
        .map_err(store_failed)?
        .ok_or_else(|| KubeStatus::forbidden(access::no_grant_message(caller, name)))?;
    let impersonate = access::requested(headers).map_err(|e| KubeStatus::bad_request(e.to_string()))?;
    if let Some(target) = &impersonate {
        if !access.allow_impersonate {
            return Err(KubeStatus::forbidden(format!(
                "user {:?} may not act as another user on cluster {name:?} (kubectl --as): that needs a grant with --allow-impersonate",
                caller.identity.user
            )));
        }
        if let Some(g) = target.groups.iter().find(|g| state.identity_policy.denies_group(g)) {
            return Err(KubeStatus::forbidden(format!(
                "group {g:?} may never be impersonated through Ferry"
            )));
        }
        target.validate().map_err(|e| KubeStatus::forbidden(e.to_string()))?;
    }
    match record.approval {
        Approval::Approved => {}
        Approval::Pending => {
            return Err(KubeStatus::unavailable(format!(
                "cluster {name:?} awaits approval by a hub administrator (ferryctl approve {name})"
            )));
        }
        Approval::Denied { .. } => {
            return Err(KubeStatus::forbidden(format!("cluster {name:?} was denied by a hub administrator")));
        }
    }
    // None: no agent here (another replica may hold one).
    let live = state
        .registry
        .get(&record.name)
        .filter(|l| Some(l.id) == record.cluster_id() && (l.session_count() > 0 || state.replicas.is_none()));
    Ok((live, state.identity_policy.map(&caller.identity), impersonate))
}

/// A request admitted, its head sent to one of the cluster's agents.
pub(crate) struct Opened {
    /// The cluster's live state (where a reusable stream is parked again);
    /// `None` when forwarded to another hub replica.
    pub live: Option<Arc<LiveCluster>>,
    /// The request's slot among the cluster's limit (the holding replica
    /// keeps it for forwarded requests).
    pub permit: Option<crate::registry::StreamPermit>,
    /// The stream carrying it.
    pub parked: Parked,
    /// The head went out in the [`Layout::Whole`] layout: no `End` follows
    /// it when the request has no body, and the answer may be a whole
    /// response (see [`response_start`]).
    pub whole: bool,
}

/// How a request's frames are laid out on its stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// A head, body frames and an `End` each way: what a request forwarded
    /// to another hub replica (its relay passes frames one by one) and the
    /// gRPC `Proxy` call use, and every upgrade.
    Stepwise,
    /// For an ordinary request sent straight to an agent: a bodyless
    /// request is its head alone (`body_ended`), and a small response comes
    /// back whole in one message (`whole_response`). One message each way
    /// for a small GET instead of two and three; each message costs a gRPC
    /// encode and decode, a channel hop and task wake-ups at both ends.
    Whole {
        /// The request has no body.
        bodyless: bool,
    },
}

/// Admits a request (see [`admit`]), takes a slot and a parked stream, and
/// sends the request head. Shared by the gateway and the gRPC `Proxy` call
/// (which uses [`Layout::Stepwise`]); `layout` applies only when the stream
/// goes straight to an agent that understands it (forwarded requests are
/// always stepwise).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn open(
    state: &HubState,
    name: &str,
    rest: &str,
    caller: &Authenticated,
    request_id: RequestId,
    method: &http::Method,
    pq: &PathAndQuery,
    headers: &http::HeaderMap,
    upgrade: bool,
    client: Option<std::net::IpAddr>,
    layout: Layout,
) -> Result<Opened, KubeStatus> {
    let (live, identity, impersonate) = admit(state, name, rest, caller, headers).await?;
    let unavailable = || KubeStatus::unavailable(no_agent(name));
    let mut head = Box::new(frame::request_head(
        request_id,
        method,
        pq,
        headers,
        upgrade,
        frame::Origin { identity, impersonate, client_address: client },
    ));
    let Some(live) = live else {
        // Another hub replica may hold the cluster's agents (docs/ha.md).
        let head = HubFrame { frame: Some(hub_frame::Frame::Head(head)) };
        return match crate::peer::open(state, name, head).await {
            Ok(Some(parked)) => Ok(Opened { live: None, permit: None, parked, whole: false }),
            Ok(None) => Err(unavailable()),
            Err(status) => Err(KubeStatus::bad_gateway(format!(
                "forwarding to the hub replica holding cluster {name:?}'s agent failed: {}",
                status.message()
            ))),
        };
    };
    // The whole layout, if the agent of the stream taken below understands it.
    let whole_bodyless = match layout {
        Layout::Whole { bodyless } if !upgrade => Some(bodyless),
        _ => None,
    };
    let limits = &state.limits;
    let permit = live
        .try_acquire(limits.max_streams_per_cluster, &caller.identity.user, limits.max_streams_per_caller)
        .map_err(|busy| match busy {
            Busy::Cluster => KubeStatus::too_many_requests(format!(
                "cluster {name:?} has too many requests in flight (--max-streams-per-cluster)"
            )),
            Busy::Caller => KubeStatus::too_many_requests(format!(
                "user {:?} has too many requests in flight to cluster {name:?} (--max-streams-per-caller)",
                caller.identity.user
            )),
        })?;
    let mut attempt = 0;
    let (parked, whole) = loop {
        attempt += 1;
        let waiting = std::time::Instant::now();
        let p = live.take_stream(state.limits.stream_wait).await;
        state.metrics.stream_wait(waiting.elapsed());
        let p = p.map_err(|e| match e {
            NoStream::NoAgent => unavailable(),
            NoStream::Timeout => KubeStatus::unavailable(format!("cluster {name:?}: {e}")),
        })?;
        let closed = || KubeStatus::bad_gateway("the tunnel to the agent closed before the request was sent");
        let whole = p.whole_layout && whole_bodyless.is_some();
        head.body_ended = whole && whole_bodyless == Some(true);
        head.whole_response = whole;
        match p.tx.send(Ok(HubFrame { frame: Some(hub_frame::Frame::Head(head)) })).await {
            Ok(()) => break (p, whole),
            // A dead stream hands the head back for the next attempt.
            Err(SendError(Ok(HubFrame { frame: Some(hub_frame::Frame::Head(h)) }))) => head = h,
            Err(_) => return Err(closed()),
        }
        if attempt >= HEAD_ATTEMPTS {
            return Err(closed());
        }
    };
    Ok(Opened { live: Some(live), permit: Some(permit), parked, whole })
}

/// Reads the agent's response head; `too_large` tells a closed stream
/// apart from one the request-body pump ended past the body limit.
pub(crate) async fn response_head(
    rx: &mut Streaming<AgentFrame>,
    too_large: &AtomicBool,
    max_body: u64,
    upgrade: bool,
) -> Result<(StatusCode, http::HeaderMap), KubeStatus> {
    let start = response_start(rx, too_large, max_body, upgrade, false).await?;
    Ok((start.status, start.headers))
}

/// The start of the agent's answer.
struct ResponseStart {
    /// Response status.
    status: StatusCode,
    /// Response headers (policy applied).
    headers: http::HeaderMap,
    /// The whole response, when the agent sent it in one message: the body
    /// and the `End` that would have followed it.
    whole: Option<(Bytes, End)>,
}

/// [`response_head`], taking a whole response when `whole` (the head asked
/// for one); a whole response the head did not ask for, or larger than
/// [`frame::MAX_WHOLE_BODY`], breaks the protocol.
async fn response_start(
    rx: &mut Streaming<AgentFrame>,
    too_large: &AtomicBool,
    max_body: u64,
    upgrade: bool,
    whole: bool,
) -> Result<ResponseStart, KubeStatus> {
    let mut head = match rx.message().await {
        Ok(Some(AgentFrame { frame: Some(agent_frame::Frame::Head(h)) })) => h,
        Ok(Some(AgentFrame { frame: Some(agent_frame::Frame::Error(e)) })) => {
            return Err(agent_error_status(e.code, &e.message));
        }
        _ if too_large.load(Ordering::Relaxed) => {
            return Err(KubeStatus::too_large(format!("request body exceeds the limit of {max_body} bytes")));
        }
        Ok(Some(_)) => {
            return Err(KubeStatus::bad_gateway("the agent broke the protocol (no response head)"));
        }
        Ok(None) | Err(_) => {
            return Err(KubeStatus::bad_gateway("the tunnel to the agent closed before the response"));
        }
    };
    let (status, resp_headers) = frame::decode_response_head(&head).map_err(|e: FrameError| {
        KubeStatus::bad_gateway(format!("the agent sent an invalid response head: {e}"))
    })?;
    let complete = match head.end.take() {
        Some(_) if !whole || upgrade => {
            return Err(KubeStatus::bad_gateway("the agent broke the protocol (an unasked whole response)"));
        }
        Some(_) if head.body.len() > frame::MAX_WHOLE_BODY => {
            return Err(KubeStatus::bad_gateway(format!(
                "the agent broke the protocol (a whole response over {} bytes)",
                frame::MAX_WHOLE_BODY
            )));
        }
        Some(end) => Some((std::mem::take(&mut head.body), end)),
        None if !head.body.is_empty() => {
            return Err(KubeStatus::bad_gateway("the agent broke the protocol (a body in a response head)"));
        }
        None => None,
    };
    // An informational head is a protocol switch or nothing: a 101 only for
    // a request that asked to upgrade, never another 1xx.
    if status.is_informational() && !(upgrade && status == StatusCode::SWITCHING_PROTOCOLS) {
        return Err(KubeStatus::bad_gateway(format!(
            "the agent answered {} to a request that {}",
            status.as_u16(),
            if upgrade { "asked for a protocol switch" } else { "asked for no protocol switch" }
        )));
    }
    Ok(ResponseStart { status, headers: resp_headers, whole: complete })
}

/// A whole response's body. The stream is done: parked again when the agent
/// offered it (and the request body is all sent), else closed in order.
fn whole_body(state: &HubState, opened: Opened, pump: AbortOnDrop, body: Bytes, end: End) -> HubBody {
    let Opened { live, permit, parked, .. } = opened;
    drop(permit);
    match live {
        Some(live) if end.reuse && pump.done() => {
            // A refusal (the session just ended) drops the stream with its
            // session.
            let _ = live.park(parked);
        }
        _ => {
            state.tasks.spawn(close_stream(parked.tx, parked.rx, false).in_current_span());
        }
    }
    full(body)
}

/// The response body of an opened request, read from the agent's frames
/// (see [`TunnelBody`]); `pump` is the request-body pump, stopped with it.
pub(crate) fn response_body(
    state: &HubState,
    opened: Opened,
    pump: Option<JoinHandle<()>>,
    reusable: bool,
) -> TunnelBody {
    let Opened { live, permit, parked, .. } = opened;
    TunnelBody {
        rx: Some(parked.rx),
        tx: Some(parked.tx),
        reuse: live.filter(|_| reusable).map(|l| (l, parked.session)),
        pump: AbortOnDrop(pump),
        _permit: permit,
        state: BodyState::Streaming,
        tasks: state.tasks.clone(),
    }
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    state: Arc<HubState>,
    name: String,
    rest: String,
    caller: Authenticated,
    request_id: RequestId,
    client: std::net::SocketAddr,
    mut req: Request<Incoming>,
    record: &mut Option<RequestRecord>,
) -> Result<Response<HubBody>, KubeStatus> {
    let max_body = state.limits.max_request_body;
    let query = req.uri().query().map(|q| format!("{rest}?{q}")).unwrap_or_else(|| rest.clone());
    let pq = PathAndQuery::try_from(query.as_str())
        .map_err(|_| KubeStatus::bad_request("invalid request path"))?;
    let upgrade = is_upgrade(&req);
    let bodyless = req.body().is_end_stream();
    let layout = if upgrade { Layout::Stepwise } else { Layout::Whole { bodyless } };
    let mut opened = open(
        &state,
        &name,
        &rest,
        &caller,
        request_id,
        req.method(),
        &pq,
        req.headers(),
        upgrade,
        Some(client.ip()),
        layout,
    )
    .await?;
    let Some(rec) = record.as_mut() else { return Err(KubeStatus::unavailable("request record missing")) };
    rec.cluster(&state, &name, true);
    if let Ok(Some(target)) = access::requested(req.headers()) {
        rec.impersonating(&target.user);
    }

    let too_large = Arc::new(AtomicBool::new(false));
    let on_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let pump = if upgrade {
        None
    } else if bodyless {
        // No body (most GETs): the head said so, or an `End` goes right
        // after it instead of spawning a pump. The channel holds only the
        // head, so there is room.
        if !opened.whole {
            let end = HubFrame { frame: Some(hub_frame::Frame::End(End::default())) };
            let _ = opened.parked.tx.try_send(Ok(end));
        }
        None
    } else {
        let (tx, flag) = (opened.parked.tx.clone(), too_large.clone());
        let (count, flow) = (rec.body_count(), state.metrics.flow());
        let counted = move |n| count.add(n);
        Some(tokio::spawn(
            request_body::pump(HttpBody(req.into_body()), tx, max_body, flag, counted, Some(flow))
                .in_current_span(),
        ))
    };
    let pump = AbortOnDrop(pump);

    let start = response_start(&mut opened.parked.rx, &too_large, max_body, upgrade, opened.whole).await?;
    let (status, mut resp_headers) = (start.status, start.headers);
    rec.head(status.as_u16(), true);
    if let Some((data, end)) = start.whole {
        let mut resp = Response::new(whole_body(&state, opened, pump, data, end));
        *resp.status_mut() = status;
        *resp.headers_mut() = resp_headers;
        return Ok(resp);
    }

    if let (Some(on_upgrade), StatusCode::SWITCHING_PROTOCOLS) = (on_upgrade, status)
        && let Some(mut session) = record.take()
    {
        resp_headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        let mut resp = Response::new(full(Bytes::new()));
        *resp.status_mut() = status;
        *resp.headers_mut() = resp_headers;
        let shutdown = state.shutdown.clone();
        let idle_timeout = state.limits.upgrade_idle_timeout;
        let Opened { permit, parked, .. } = opened;
        session.session_started();
        state.tasks.spawn(
            async move {
                let _permit = permit;
                let meter = session.meter();
                tokio::select! {
                    _ = shutdown.cancelled() => session.end(Outcome::Failed("the hub shut down".into())),
                    r = crate::upgraded::relay(on_upgrade, parked, idle_timeout, &meter) => session.relayed(r),
                }
            }
            .in_current_span(),
        );
        return Ok(resp);
    }

    let body = response_body(&state, opened, pump.take(), !upgrade);
    let mut resp = Response::new(body.boxed_unsync());
    *resp.status_mut() = status;
    *resp.headers_mut() = resp_headers;
    Ok(resp)
}

/// Longest agent error message passed on to a caller (it ends up in a
/// `Status` body and in logs).
pub const MAX_AGENT_MESSAGE: usize = 1024;

fn agent_error_status(code: i32, message: &str) -> KubeStatus {
    let message = &crate::tunnel::clean(message, MAX_AGENT_MESSAGE);
    match ErrorCode::try_from(code).unwrap_or(ErrorCode::Unspecified) {
        ErrorCode::UpstreamUnreachable => {
            KubeStatus::bad_gateway(format!("the cluster's apiserver is unreachable: {message}"))
        }
        ErrorCode::Limit => KubeStatus::too_large(message.to_owned()),
        ErrorCode::Protocol => KubeStatus::bad_gateway(format!("the agent refused the request: {message}")),
        _ => KubeStatus::bad_gateway(format!("the agent failed the request: {message}")),
    }
}

/// The gateway's request body: a hyper body, whose end is the request's.
struct HttpBody(Incoming);

impl BodySource for HttpBody {
    async fn next_piece(&mut self) -> Piece {
        loop {
            match self.0.frame().await {
                None => return Piece::End,
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        return Piece::Data(d);
                    }
                }
                Some(Err(e)) => {
                    debug!(error = %e, "caller's request body failed");
                    return Piece::Failed(ErrorCode::Cancelled, "caller's request body failed");
                }
            }
        }
    }
}

pub(crate) fn error_frame(code: ErrorCode, message: &str) -> HubFrame {
    HubFrame {
        frame: Some(hub_frame::Frame::Error(ferry::proto::v1::Error {
            code: code as i32,
            message: message.to_owned(),
        })),
    }
}

/// Ends the hub's side of a request stream in order: an error frame when
/// the hub gives up early, then the end of its frames, then waits (bounded)
/// for the agent to end its side, so the stream closes without a reset.
pub(crate) async fn close_stream(tx: FrameTx, mut rx: Streaming<AgentFrame>, cancelled: bool) {
    if cancelled {
        let _ = tx.try_send(Ok(error_frame(ErrorCode::Cancelled, "the caller went away")));
    }
    drop(tx);
    let _ = tokio::time::timeout(CLOSE_DRAIN, async { while let Ok(Some(_)) = rx.message().await {} }).await;
}

/// Aborts the request-body pump when the response is dropped.
struct AbortOnDrop(Option<JoinHandle<()>>);

impl AbortOnDrop {
    /// Whether the request body is all sent (or there was none).
    fn done(&self) -> bool {
        self.0.as_ref().is_none_or(JoinHandle::is_finished)
    }

    fn take(mut self) -> Option<JoinHandle<()>> {
        self.0.take()
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            h.abort();
        }
    }
}

/// A response body read from the agent's frames. Dropped before the end
/// (the caller went away), it cancels the request at the agent. When the
/// agent ends the response with `End { reuse: true }` (it had the hub's
/// `End` first, so both directions finished), the stream is parked again
/// for the next request instead of being closed.
pub(crate) struct TunnelBody {
    rx: Option<Streaming<AgentFrame>>,
    tx: Option<FrameTx>,
    /// Where to park the stream again if the agent offers it; `None` for
    /// responses to upgrade requests, whose streams are never reused.
    reuse: Option<(Arc<LiveCluster>, ferry::ids::SessionId)>,
    pump: AbortOnDrop,
    _permit: Option<crate::registry::StreamPermit>,
    state: BodyState,
    tasks: tokio_util::task::TaskTracker,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum BodyState {
    /// Body frames are flowing.
    Streaming,
    /// The agent sent `End`; waiting for it to close its side.
    Draining,
    /// Complete, and the agent closed its side.
    Finished,
    /// Ended with an error.
    Failed,
}

impl Body for TunnelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if matches!(self.state, BodyState::Finished | BodyState::Failed) {
                return Poll::Ready(None);
            }
            let Some(rx) = self.rx.as_mut() else { return Poll::Ready(None) };
            let next = match Pin::new(rx).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(n) => n,
            };
            if self.state == BodyState::Draining {
                // Anything but the end of the agent's side is ignored now.
                if matches!(next, None | Some(Err(_))) {
                    self.state = BodyState::Finished;
                    return Poll::Ready(None);
                }
                continue;
            }
            let fail = |this: &mut Self, e: BoxError| {
                this.state = BodyState::Failed;
                Poll::Ready(Some(Err(e)))
            };
            match next {
                Some(Ok(AgentFrame { frame: Some(agent_frame::Frame::Body(b)) })) => {
                    if !b.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(b))));
                    }
                }
                Some(Ok(AgentFrame { frame: Some(agent_frame::Frame::End(end)) })) => {
                    // Reuse is offered only once both directions ended; an
                    // agent offering it while the hub still sends the body
                    // is ignored (the stream closes instead of carrying the
                    // next request's head behind this body).
                    if end.reuse
                        && self.pump.done()
                        && let Some((live, session)) = self.reuse.take()
                        && let (Some(tx), Some(rx)) = (self.tx.take(), self.rx.take())
                    {
                        // A refusal (the session just ended) drops the
                        // stream with its session.
                        let _ = live.park(Parked { session, tx, rx, whole_layout: false });
                        self.state = BodyState::Finished;
                        return Poll::Ready(None);
                    }
                    self.state = BodyState::Draining;
                }
                Some(Ok(AgentFrame { frame: Some(agent_frame::Frame::Error(e)) })) => {
                    let message = crate::tunnel::clean(&e.message, MAX_AGENT_MESSAGE);
                    return fail(&mut self, format!("agent: {message}").into());
                }
                Some(Ok(_)) => return fail(&mut self, "agent broke the protocol mid-response".into()),
                Some(Err(status)) => {
                    return fail(
                        &mut self,
                        format!("tunnel failed mid-response: {}", status.message()).into(),
                    );
                }
                None => return fail(&mut self, "tunnel closed mid-response".into()),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, BodyState::Finished | BodyState::Failed)
    }
}

impl Drop for TunnelBody {
    fn drop(&mut self) {
        let (Some(tx), Some(rx)) = (self.tx.take(), self.rx.take()) else { return };
        match self.state {
            // Both sides ended in order: dropping closes nothing abruptly.
            BodyState::Finished => {}
            state => {
                let cancelled = state == BodyState::Streaming;
                self.tasks.spawn(close_stream(tx, rx, cancelled).in_current_span());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_paths() {
        assert_eq!(split_cluster_path("/clusters/a/api/v1/pods"), Some(("a", "/api/v1/pods")));
        assert_eq!(split_cluster_path("/clusters/a"), Some(("a", "/")));
        assert_eq!(split_cluster_path("/api/v1"), None);
    }

    #[test]
    fn discovery_paths() {
        for p in ["/api", "/api/v1", "/apis", "/apis/apps", "/apis/apps/v1", "/api/"] {
            assert!(is_discovery(p), "{p}");
        }
        for p in ["/api/v1/pods", "/apis/apps/v1/deployments", "/version", "/"] {
            assert!(!is_discovery(p), "{p}");
        }
    }

    #[test]
    fn upgrade_detection() {
        let r = Request::builder()
            .header("connection", "keep-alive, Upgrade")
            .header("upgrade", "SPDY/3.1")
            .body(())
            .expect("request");
        assert!(is_upgrade(&r));
        let r = Request::builder().header("upgrade", "websocket").body(()).expect("request");
        assert!(!is_upgrade(&r));
    }
}

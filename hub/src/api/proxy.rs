//! `ferry.v1.Proxy`: one HTTP request to a child cluster over a gRPC
//! stream, for callers that cannot use the HTTPS gateway.
//!
//! The request goes the gateway's way ([`gateway::open`]: the same
//! authentication, grants, impersonation checks, limits and parked
//! streams); only the caller's side differs. Memory per request is bounded
//! as on the gateway: [`RESPONSE_BUFFER`] frames towards the caller, the
//! tunnel's frame channel towards the agent, and each side's HTTP/2 window;
//! a slow caller holds back only its own request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ferry::frame;
use ferry::headers;
use ferry::ids::RequestId;
use ferry::limits::FRAME_CHANNEL_CAPACITY;
use ferry::proto::v1::proxy_server::Proxy;
use ferry::proto::v1::{
    AgentFrame, End, ErrorCode, HubFrame, ProxyEnd, ProxyRequest, ProxyResponse, agent_frame, hub_frame,
    proxy_request, proxy_response,
};
use ferry::status::KubeStatus;
use http::StatusCode;
use http::uri::PathAndQuery;
use http_body_util::BodyExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug, info_span};

use super::store_error;
use crate::auth::{self, AuthError, Authenticated, Peer};
use crate::gateway::{self, Opened};
use crate::idle::IdleTimer;
use crate::observe::{Meter, Outcome, Relayed, RequestRecord, Via};
use crate::request_body::{self, BodySource, Piece};
use crate::state::HubState;

/// How long a caller has to send the request head after opening the call.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Response messages buffered towards one caller (as many as request
/// frames towards an agent: the same bound both ways).
pub const RESPONSE_BUFFER: usize = FRAME_CHANNEL_CAPACITY;

type ResponseTx = mpsc::Sender<Result<ProxyResponse, Status>>;

/// The `Proxy` service.
#[derive(Clone)]
pub struct ProxyService {
    state: Arc<HubState>,
}

impl ProxyService {
    /// A service over the hub's shared state.
    pub fn new(state: Arc<HubState>) -> Self {
        ProxyService { state }
    }
}

/// A hub refusal as the gRPC status a caller can act on.
fn grpc_status(s: &KubeStatus) -> Status {
    let message = s.message.clone();
    match s.code {
        StatusCode::BAD_REQUEST => Status::invalid_argument(message),
        StatusCode::UNAUTHORIZED => Status::unauthenticated(message),
        StatusCode::FORBIDDEN => Status::permission_denied(message),
        StatusCode::NOT_FOUND => Status::not_found(message),
        StatusCode::PAYLOAD_TOO_LARGE
        | StatusCode::TOO_MANY_REQUESTS
        | StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => Status::resource_exhausted(message),
        StatusCode::GATEWAY_TIMEOUT => Status::deadline_exceeded(message),
        _ => Status::unavailable(message),
    }
}

fn message(msg: proxy_response::Msg) -> Result<ProxyResponse, Status> {
    Ok(ProxyResponse { msg: Some(msg) })
}

/// The caller: a client certificate or bearer token. Unlike the rest of the
/// management API, a credential bound to one cluster may proxy to it (it is
/// the gateway's traffic, over gRPC).
async fn caller(
    state: &HubState,
    request: &Request<Streaming<ProxyRequest>>,
) -> Result<Authenticated, Status> {
    let peer = request.extensions().get::<Peer>().cloned().unwrap_or_default();
    let authorization = request.metadata().get("authorization").and_then(|v| v.to_str().ok());
    match auth::authenticate(state.store.as_ref(), &peer, authorization).await {
        Ok(Some(c)) => Ok(c),
        Ok(None) => Err(Status::unauthenticated(
            "a client certificate from the hub CA or a hub bearer token is required",
        )),
        Err(AuthError::Store(e)) => Err(store_error(e)),
        Err(e) => Err(Status::unauthenticated(e.to_string())),
    }
}

#[tonic::async_trait]
impl Proxy for ProxyService {
    type RequestStream = ReceiverStream<Result<ProxyResponse, Status>>;

    async fn request(
        &self,
        request: Request<Streaming<ProxyRequest>>,
    ) -> Result<Response<Self::RequestStream>, Status> {
        let state = &self.state;
        let who = caller(state, &request).await?;
        let client = request.extensions().get::<gateway::ClientAddr>().map(|a| a.0.ip());
        let mut inbound = request.into_inner();
        let head = match tokio::time::timeout(HEAD_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(ProxyRequest { msg: Some(proxy_request::Msg::Head(h)) }))) => h,
            Ok(Err(status)) => return Err(status),
            Err(_) => return Err(Status::deadline_exceeded("no request head within 10s")),
            _ => return Err(Status::invalid_argument("the first message must be the request head")),
        };
        if let Some((bound, _)) = who.bound_cluster()
            && bound != head.cluster
        {
            return Err(Status::permission_denied(format!(
                "this credential of user {:?} is valid for cluster {bound:?} only",
                who.identity.user
            )));
        }
        let pq = PathAndQuery::try_from(head.path.as_str())
            .ok()
            .filter(|pq| pq.path().starts_with('/'))
            .ok_or_else(|| {
                Status::invalid_argument(format!("path {:?} is not an absolute path", head.path))
            })?;
        let method = http::Method::from_bytes(head.method.as_bytes())
            .map_err(|_| Status::invalid_argument(format!("invalid HTTP method {:?}", head.method)))?;
        let request_headers = headers::frame_to_map(&head.headers, headers::Policy::Caller)
            .map_err(|e| Status::invalid_argument(format!("request headers: {e}")))?;
        let upgrade = gateway::is_upgrade_headers(&request_headers);
        let request_id = RequestId::new();
        let mut record =
            RequestRecord::start(state, request_id, Via::Grpc, &method, pq.path(), pq.query(), client);
        record.caller(&who);
        record.cluster(state, &head.cluster, false);
        let span = info_span!("proxy", cluster = %head.cluster, request_id = %request_id, method = %method, path = %pq.path(), user = %who.identity.user);
        let mut opened = gateway::open(
            state,
            &head.cluster,
            pq.path(),
            &who,
            request_id,
            &method,
            &pq,
            &request_headers,
            upgrade,
            client,
            gateway::Layout::Stepwise,
        )
        .instrument(span.clone())
        .await
        .map_err(|s| {
            record.head(s.code.as_u16(), false);
            grpc_status(&s)
        })?;
        record.cluster(state, &head.cluster, true);
        if let Ok(Some(target)) = crate::access::requested(&request_headers) {
            record.impersonating(&target.user);
        }

        let max_body = state.limits.max_request_body;
        let too_large = Arc::new(AtomicBool::new(false));
        let (inbound, pump) = if upgrade {
            (Some(inbound), None)
        } else {
            let (tx, flag) = (opened.parked.tx.clone(), too_large.clone());
            let count = record.body_count();
            let counted = move |n| count.add(n);
            let pump = request_body::pump(CallBody(inbound), tx, max_body, flag, counted, None);
            (None, Some(tokio::spawn(pump.instrument(span.clone()))))
        };
        let (status, response_headers) =
            match gateway::response_head(&mut opened.parked.rx, &too_large, max_body, upgrade)
                .instrument(span.clone())
                .await
            {
                Ok(h) => h,
                Err(s) => {
                    if let Some(p) = &pump {
                        p.abort();
                    }
                    record.head(s.code.as_u16(), false);
                    return Err(grpc_status(&s));
                }
            };
        record.head(status.as_u16(), true);
        let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
        let head = frame::response_head(status, &response_headers);
        // A fresh channel has room for the head.
        let _ = tx.try_send(message(proxy_response::Msg::Head(head)));
        let shutdown = state.shutdown.clone();
        match inbound {
            Some(inbound) if status == StatusCode::SWITCHING_PROTOCOLS => {
                let idle = state.limits.upgrade_idle_timeout;
                record.session_started();
                state.tasks.spawn(
                    async move {
                        let meter = record.meter();
                        tokio::select! {
                            () = shutdown.cancelled() => record.end(Outcome::Failed("the hub shut down".into())),
                            r = pump_upgraded(inbound, opened, tx, idle, &meter) => record.relayed(r),
                        }
                    }
                    .instrument(span),
                );
            }
            _ => {
                let body = gateway::response_body(state, opened, pump, !upgrade);
                state.tasks.spawn(
                    async move {
                        tokio::select! {
                            () = shutdown.cancelled() => record.end(Outcome::Failed("the hub shut down".into())),
                            () = stream_body(body, tx, &mut record) => {}
                        }
                    }
                    .instrument(span),
                );
            }
        }
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// A `Proxy` call's request body: `body` messages up to `end`.
struct CallBody(Streaming<ProxyRequest>);

impl BodySource for CallBody {
    async fn next_piece(&mut self) -> Piece {
        match self.0.message().await {
            Ok(Some(ProxyRequest { msg: Some(proxy_request::Msg::Body(b)) })) => Piece::Data(b),
            Ok(Some(ProxyRequest { msg: Some(proxy_request::Msg::End(_)) })) => Piece::End,
            Ok(Some(_)) => Piece::Failed(ErrorCode::Protocol, "a second request head"),
            Ok(None) | Err(_) => Piece::Failed(ErrorCode::Cancelled, "the caller went away"),
        }
    }
}

/// Sends the response body to the caller as it arrives, then `end`. The
/// caller going away drops the body, which cancels the request at the
/// agent.
async fn stream_body(mut body: gateway::TunnelBody, tx: ResponseTx, record: &mut RequestRecord) {
    loop {
        let next = tokio::select! {
            f = body.frame() => f,
            () = tx.closed() => return,
        };
        let msg = match next {
            Some(Ok(f)) => match f.into_data() {
                Ok(data) => {
                    record.sent(data.len());
                    message(proxy_response::Msg::Body(data))
                }
                Err(_) => continue,
            },
            Some(Err(e)) => {
                record.end(Outcome::Failed(e.to_string()));
                Err(Status::unavailable(format!("the response broke off: {e}")))
            }
            None => {
                record.end(Outcome::Completed);
                message(proxy_response::Msg::End(ProxyEnd {}))
            }
        };
        let last = !matches!(msg, Ok(ProxyResponse { msg: Some(proxy_response::Msg::Body(_)) }));
        if tx.send(msg).await.is_err() || last {
            return;
        }
    }
}

/// Copies bytes both ways between the caller's gRPC stream and the tunnel
/// stream of an upgraded connection, half-closes included, as the gateway
/// does for its callers; gives up after `idle_timeout` without traffic.
async fn pump_upgraded(
    mut inbound: Streaming<ProxyRequest>,
    opened: Opened,
    tx: ResponseTx,
    idle_timeout: Option<Duration>,
    meter: &Meter,
) -> Relayed {
    let Opened { permit, parked, .. } = opened;
    let _permit = permit;
    let (up_tx, mut rx) = (parked.tx, parked.rx);
    let timer = IdleTimer::new();
    let (to_cluster, to_caller) = (AtomicU64::new(0), AtomicU64::new(0));
    let touch = || timer.touch();
    let idle = timer.expired(idle_timeout);
    let up = async {
        loop {
            match inbound.message().await {
                Ok(Some(ProxyRequest { msg: Some(proxy_request::Msg::Body(b)) })) => {
                    touch();
                    for chunk in frame::chunks(b) {
                        let len = chunk.len() as u64;
                        let body = Ok(HubFrame { frame: Some(hub_frame::Frame::Body(chunk)) });
                        if meter.flow.send(&up_tx, body).await.is_err() {
                            return Ok(());
                        }
                        to_cluster.fetch_add(len, Ordering::Relaxed);
                        meter.to_cluster.inc_by(len);
                    }
                }
                Ok(Some(ProxyRequest { msg: Some(proxy_request::Msg::End(_)) })) => {
                    let _ =
                        up_tx.send(Ok(HubFrame { frame: Some(hub_frame::Frame::End(End::default())) })).await;
                    return Ok(());
                }
                Ok(Some(_)) => return Err("a second request head on an upgraded connection".to_owned()),
                Ok(None) | Err(_) => return Err("the caller went away".to_owned()),
            }
        }
    };
    let down = async {
        loop {
            let frame = match rx.message().await {
                Ok(f) => f,
                Err(e) => return Err(format!("tunnel failed: {}", e.message())),
            };
            match frame {
                Some(AgentFrame { frame: Some(agent_frame::Frame::Body(b)) }) => {
                    touch();
                    let len = b.len() as u64;
                    if tx.send(message(proxy_response::Msg::Body(b))).await.is_err() {
                        return Err("the caller went away".to_owned());
                    }
                    to_caller.fetch_add(len, Ordering::Relaxed);
                    meter.to_caller.inc_by(len);
                }
                Some(AgentFrame { frame: Some(agent_frame::Frame::End(_)) }) | None => {
                    let _ = tx.send(message(proxy_response::Msg::End(ProxyEnd {}))).await;
                    return Ok(());
                }
                Some(AgentFrame { frame: Some(agent_frame::Frame::Error(e)) }) => {
                    let _ = tx.send(Err(Status::unavailable(format!("agent: {}", e.message)))).await;
                    return Err(e.message);
                }
                Some(_) => return Err("the agent broke the protocol on an upgraded stream".to_owned()),
            }
        }
    };
    // A direction that ends cleanly is a half-close: wait for the other.
    let both = async {
        tokio::pin!(up, down);
        tokio::select! {
            u = &mut up => match u {
                Ok(()) => down.await,
                Err(e) => Err(e),
            },
            d = &mut down => match d {
                Ok(()) => up.await,
                Err(e) => Err(e),
            },
        }
    };
    let result = tokio::select! {
        r = both => r,
        _ = idle => {
            let _ = tx.try_send(Err(Status::deadline_exceeded("closed without traffic for the hub's --upgrade-idle-timeout")));
            Err("closed without traffic for the hub's --upgrade-idle-timeout".to_owned())
        }
    };
    if let Err(e) = &result {
        debug!(error = %e, "upgraded proxy stream ended with an error");
    }
    gateway::close_stream(up_tx, rx, result.is_err()).await;
    Relayed {
        to_cluster: to_cluster.load(Ordering::Relaxed),
        to_caller: to_caller.load(Ordering::Relaxed),
        failure: result.err(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_map_to_codes_a_caller_can_act_on() {
        let code = |s: KubeStatus| grpc_status(&s).code();
        assert_eq!(code(KubeStatus::forbidden("x")), tonic::Code::PermissionDenied);
        assert_eq!(code(KubeStatus::not_found("x")), tonic::Code::NotFound);
        assert_eq!(code(KubeStatus::unavailable("x")), tonic::Code::Unavailable);
        assert_eq!(code(KubeStatus::too_many_requests("x")), tonic::Code::ResourceExhausted);
        assert_eq!(code(KubeStatus::too_large("x")), tonic::Code::ResourceExhausted);
        assert_eq!(code(KubeStatus::bad_request("x")), tonic::Code::InvalidArgument);
        assert_eq!(code(KubeStatus::bad_gateway("x")), tonic::Code::Unavailable);
    }
}

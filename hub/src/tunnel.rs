//! The agent endpoint: `ferry.v1.Tunnel` (enroll, control stream, parked
//! request streams).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry::ids::{ClusterId, SessionId};
use ferry::limits::{CONTROL_CHANNEL_CAPACITY, FRAME_CHANNEL_CAPACITY, HEARTBEAT_MISSES};
use ferry::metadata;
use ferry::proto::v1::tunnel_server::Tunnel;
use ferry::proto::v1::{
    AgentControl, AgentFrame, EnrollRequest, EnrollResponse, Heartbeat, HubControl, HubFrame, Welcome,
    agent_control, hub_control,
};
use ferry::secret::{Secret, TokenKind, generate_token, hashes_equal, token_cluster};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, info, info_span, warn};

use crate::gateway::close_stream;
use crate::registry::{LiveCluster, PARKED_IDLE_TRIM, Parked, SessionInfo};
use crate::state::HubState;
use crate::store::{ClusterRecord, StoreError};

/// How long an agent has to send its hello after opening the control stream.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The `Tunnel` service.
#[derive(Clone)]
pub struct TunnelService {
    state: Arc<HubState>,
}

impl TunnelService {
    /// A service over the hub's shared state.
    pub fn new(state: Arc<HubState>) -> Self {
        TunnelService { state }
    }

    /// Checks the `authorization: Bearer <credential>` metadata against the
    /// stored hashes of the cluster the credential names.
    async fn authenticate(&self, md: &tonic::metadata::MetadataMap) -> Result<ClusterRecord, Status> {
        let denied = || Status::unauthenticated("invalid agent credential");
        let value = md.get(metadata::AUTHORIZATION).and_then(|v| v.to_str().ok()).ok_or_else(denied)?;
        let token = value.strip_prefix("Bearer ").ok_or_else(denied)?;
        let id = token_cluster(TokenKind::AgentCredential, token).ok_or_else(denied)?;
        let record = self.state.store.cluster_by_id(id).await.map_err(internal)?.ok_or_else(denied)?;
        let hash = Secret::new(token).hash();
        if record.credential_hashes.iter().any(|h| hashes_equal(h, &hash)) {
            Ok(record)
        } else {
            Err(denied())
        }
    }

    fn live(&self, record: &ClusterRecord) -> Result<Arc<LiveCluster>, Status> {
        let id = ClusterId::parse(&record.id).ok_or_else(|| Status::internal("corrupt cluster id"))?;
        Ok(self.state.registry.cluster(&record.name, id))
    }
}

fn internal(e: StoreError) -> Status {
    warn!(error = %e, "store failure");
    Status::unavailable("hub store unavailable")
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or_default()
}

#[tonic::async_trait]
impl Tunnel for TunnelService {
    async fn enroll(&self, request: Request<EnrollRequest>) -> Result<Response<EnrollResponse>, Status> {
        let req = request.into_inner();
        let denied = || Status::unauthenticated("invalid, used or expired bootstrap token");
        let id = token_cluster(TokenKind::Bootstrap, &req.bootstrap_token).ok_or_else(denied)?;
        let credential =
            generate_token(TokenKind::AgentCredential, id).map_err(|_| Status::internal("no randomness"))?;
        let token_hash = Secret::new(req.bootstrap_token).hash();
        let record = match self.state.store.enroll(id, &token_hash, credential.hash()).await {
            Ok(r) => r,
            Err(StoreError::BadToken) => return Err(denied()),
            Err(e) => return Err(internal(e)),
        };
        info!(cluster = %record.name, agent_id = %req.agent_id, "agent enrolled");
        Ok(Response::new(EnrollResponse {
            cluster_name: record.name,
            credential: credential.expose().to_owned(),
        }))
    }

    type ControlStream = ReceiverStream<Result<HubControl, Status>>;

    async fn control(
        &self,
        request: Request<Streaming<AgentControl>>,
    ) -> Result<Response<Self::ControlStream>, Status> {
        let record = self.authenticate(request.metadata()).await?;
        let live = self.live(&record)?;
        let mut inbound = request.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(AgentControl { msg: Some(agent_control::Msg::Hello(h)) }))) => h,
            Ok(Err(status)) => return Err(status),
            Err(_) => return Err(Status::deadline_exceeded("no hello from agent")),
            _ => return Err(Status::invalid_argument("the first control message must be a hello")),
        };
        if hello.protocol_version != ferry::PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!(
                "protocol version {} not supported; this hub speaks {}",
                hello.protocol_version,
                ferry::PROTOCOL_VERSION
            )));
        }
        let session = SessionId::new();
        let (tx, rx) = mpsc::channel(CONTROL_CHANNEL_CAPACITY);
        let limits = &self.state.limits;
        let welcome = HubControl {
            msg: Some(hub_control::Msg::Welcome(Welcome {
                protocol_version: ferry::PROTOCOL_VERSION,
                cluster_name: record.name.clone(),
                session_id: session.to_string(),
                pool_size: limits.pool_size,
                heartbeat_interval_ms: limits.heartbeat_interval.as_millis() as u32,
            })),
        };
        tx.try_send(Ok(welcome)).map_err(|_| Status::internal("control channel full"))?;
        live.add_session(
            session,
            SessionInfo {
                agent_id: hello.agent_id.clone(),
                agent_version: hello.agent_version.clone(),
                kubernetes_version: String::new(),
                control: tx.clone(),
            },
        );
        let span =
            info_span!("session", cluster = %record.name, session = %session, agent_id = %hello.agent_id);
        let dead_after = limits.heartbeat_interval * HEARTBEAT_MISSES;
        let shutdown = self.state.shutdown.clone();
        let (tasks, pool_size) = (self.state.tasks.clone(), limits.pool_size as usize);
        self.state.tasks.spawn(
            async move {
                info!(agent_version = %hello.agent_version, "agent connected");
                let reason = loop {
                    let msg = tokio::select! {
                        _ = shutdown.cancelled() => break "hub shutting down",
                        m = tokio::time::timeout(dead_after, inbound.message()) => m,
                    };
                    match msg {
                        Err(_) => break "heartbeats missed",
                        Ok(Ok(None)) => break "control stream closed",
                        Ok(Err(_)) => break "control stream failed",
                        Ok(Ok(Some(AgentControl { msg: Some(agent_control::Msg::Heartbeat(hb)) }))) => {
                            if let Some(status) = hb.status {
                                live.set_kubernetes_version(session, status.kubernetes_version);
                            }
                            for parked in live.trim_idle(pool_size, PARKED_IDLE_TRIM) {
                                tasks.spawn(close_stream(parked.tx, parked.rx, false));
                            }
                            let echo = Heartbeat { sent_at_unix_ms: unix_ms(), status: None };
                            let _ =
                                tx.try_send(Ok(HubControl { msg: Some(hub_control::Msg::Heartbeat(echo)) }));
                        }
                        Ok(Ok(Some(_))) => break "unexpected control message",
                    }
                };
                live.remove_session(session);
                info!(reason, "agent disconnected");
            }
            .instrument(span),
        );
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type ProxyStream = ReceiverStream<Result<HubFrame, Status>>;

    async fn proxy(
        &self,
        request: Request<Streaming<AgentFrame>>,
    ) -> Result<Response<Self::ProxyStream>, Status> {
        let record = self.authenticate(request.metadata()).await?;
        let session = request
            .metadata()
            .get(metadata::SESSION)
            .and_then(|v| v.to_str().ok())
            .and_then(SessionId::parse)
            .ok_or_else(|| Status::invalid_argument("missing or malformed ferry-session metadata"))?;
        let live = self.live(&record)?;
        let (tx, rx) = mpsc::channel(FRAME_CHANNEL_CAPACITY);
        live.park(Parked { session, tx, rx: request.into_inner() })
            .map_err(|_| Status::failed_precondition("unknown session; reconnect the control stream"))?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

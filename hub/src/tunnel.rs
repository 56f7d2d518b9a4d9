//! The agent endpoint: `ferry.v1.Tunnel` (enroll, control stream, parked
//! request streams).
//!
//! Agents authenticate with short-lived client certificates bound to their
//! cluster's id. `Enroll` trades a single-use bootstrap token and a
//! certificate request for the first one; the control stream renews it
//! before it expires, on the same connection, so nothing in flight is
//! dropped. The hub records only serials: a certificate whose serial is not
//! recorded (or whose cluster was deleted) opens no session, and a session
//! ends when its certificate expires unrenewed or its cluster is deleted or
//! denied.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry::ids::SessionId;
use ferry::limits::{CONTROL_CHANNEL_CAPACITY, FRAME_CHANNEL_CAPACITY, HEARTBEAT_MISSES};
use ferry::metadata;
use ferry::proto::v1::tunnel_server::Tunnel;
use ferry::proto::v1::{
    AgentControl, AgentFrame, EnrollRequest, EnrollResponse, Heartbeat, HubControl, HubFrame, RenewResponse,
    Welcome, agent_control, hub_control,
};
use ferry::secret::{Secret, bootstrap_token_cluster, hashes_equal};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, info, info_span, warn};

use crate::audit::{self, AuditEvent};
use crate::auth::Peer;
use crate::gateway::close_stream;
use crate::metrics::DisconnectReason;
use crate::pki::{AgentPeer, IssuedAgentCert};
use crate::registry::{
    AgentReport, LiveCluster, MAX_PARKED_PER_SESSION, PARKED_IDLE_TRIM, Parked, SessionInfo, unix_ms,
};
use crate::state::HubState;
use crate::store::{
    AgentCert, Approval, Capacity, Check, CheckState, ClusterRecord, NodeCount, StoreError, TokenUse,
    unix_now,
};

/// How long an agent has to send its hello after opening the control stream.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long after a bootstrap token was used the same agent (same agent id)
/// may enroll with it again, for an enrollment whose response was lost.
pub const ENROLL_RETRY_WINDOW: Duration = Duration::from_secs(10 * 60);
/// Valid agent certificates one cluster may hold at once (each replica
/// holds one or two: its current and, around renewal, the next).
pub const MAX_AGENT_CERTS_PER_CLUSTER: usize = 64;
/// Longest agent id the hub accepts (a uuid is 36).
pub const MAX_AGENT_ID_LEN: usize = 64;
/// Longest agent version string kept.
pub const MAX_AGENT_VERSION_LEN: usize = 64;
/// Longest Kubernetes version string kept.
pub const MAX_KUBERNETES_VERSION_LEN: usize = 64;
/// Missing permissions kept per agent report.
pub const MAX_REPORTED_PERMISSIONS: usize = 16;
/// Longest missing-permission description kept.
pub const MAX_PERMISSION_LEN: usize = 128;
/// Longest platform, health detail or apiserver error kept from a report.
pub const MAX_REPORT_TEXT_LEN: usize = 256;

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

    /// The agent certificate of the call's connection and its cluster.
    /// Deleted clusters and denied ones are refused; with `current`, the
    /// certificate must also be recorded and unexpired (new sessions).
    async fn agent<T>(
        &self,
        request: &Request<T>,
        current: bool,
    ) -> Result<(AgentPeer, ClusterRecord), Status> {
        let peer = match request.extensions().get::<Peer>() {
            Some(Peer::Agent(a)) => a.clone(),
            Some(Peer::User(_)) => {
                return Err(Status::unauthenticated("a caller certificate cannot be used by an agent"));
            }
            _ => {
                return Err(Status::unauthenticated(
                    "no agent certificate: enroll first with a bootstrap token from `ferryctl register`",
                ));
            }
        };
        let record = self.state.store.cluster_by_id(peer.cluster_id).await.map_err(internal)?.ok_or_else(|| {
            Status::unauthenticated(
                "the cluster of this agent certificate was deleted; register it again and apply the new agent.yaml",
            )
        })?;
        if let Approval::Denied { .. } = record.approval {
            return Err(denied(&record.name));
        }
        if current && !record.knows_cert(&peer.serial, unix_now()) {
            return Err(Status::unauthenticated(format!(
                "agent certificate {} is unknown, revoked or expired; enroll again with a fresh bootstrap token (ferryctl register {})",
                peer.serial, record.name
            )));
        }
        Ok((peer, record))
    }

    /// Enrollment: a bootstrap token and a certificate request for the
    /// agent's first certificate.
    async fn enroll_agent(
        &self,
        request: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        let client = request.extensions().get::<crate::gateway::ClientAddr>().map(|a| a.0.ip());
        let req = request.into_inner();
        let invalid = || Status::unauthenticated("invalid bootstrap token");
        let id = bootstrap_token_cluster(&req.bootstrap_token).ok_or_else(invalid)?;
        let agent_id = clean(&req.agent_id, MAX_AGENT_ID_LEN);
        let record = self.state.store.cluster_by_id(id).await.map_err(internal)?.ok_or_else(|| {
            Status::unauthenticated(
                "invalid bootstrap token: its cluster is no longer registered; run `ferryctl register NAME` for a new one",
            )
        })?;
        if let Approval::Denied { .. } = record.approval {
            return Err(denied(&record.name));
        }
        let hash = Secret::new(req.bootstrap_token.as_str()).hash();
        let issued = |r: &ClusterRecord| r.bootstrap_tokens.iter().any(|t| hashes_equal(&t.hash, &hash));
        let mut record = record;
        if !issued(&record) {
            // Issued on another hub replica a moment ago?
            self.state.store.refresh().await.map_err(internal)?;
            if let Some(r) = self.state.store.cluster_by_id(id).await.map_err(internal)? {
                record = r;
            }
        }
        // Nothing is signed for a token the cluster never issued.
        if !issued(&record) {
            return Err(invalid());
        }
        // Sign before the store update that consumes the token (the serial
        // goes into that same update); an unrecorded certificate opens
        // nothing.
        let issued = self
            .state
            .ca
            .agent_cert(&req.csr_der, id, &record.name, self.state.limits.agent_cert_ttl)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let now = unix_now();
        let retry_window = ENROLL_RETRY_WINDOW.as_secs();
        let mut check = TokenCheck::Unknown;
        self.state
            .store
            .update_cluster(&record.name, &mut |r| {
                if r.id != record.id {
                    check = TokenCheck::Unknown;
                    return false;
                }
                let Some(t) = r.bootstrap_tokens.iter().position(|t| hashes_equal(&t.hash, &hash)) else {
                    check = TokenCheck::Unknown;
                    return false;
                };
                let token = r.bootstrap_tokens[t].clone();
                check = match &token.used {
                    Some(u) if u.agent_id == agent_id && now.saturating_sub(u.at) <= retry_window => {
                        TokenCheck::Retry
                    }
                    Some(u) => TokenCheck::Used(u.clone()),
                    None if token.superseded => TokenCheck::Superseded,
                    None if token.expires_at <= now => TokenCheck::Expired(token.expires_at),
                    None => TokenCheck::Accepted,
                };
                if !matches!(check, TokenCheck::Accepted | TokenCheck::Retry) {
                    return false;
                }
                if !record_cert(r, &issued, &agent_id, now) {
                    check = TokenCheck::TooManyCerts;
                    return false;
                }
                if matches!(check, TokenCheck::Accepted) {
                    r.bootstrap_tokens[t].used = Some(TokenUse { at: now, agent_id: agent_id.clone() });
                }
                true
            })
            .await
            .map_err(internal)?;
        let name = &record.name;
        let again = format!("run `ferryctl register {name}` again for a new one");
        let refused = match check {
            TokenCheck::Accepted | TokenCheck::Retry => None,
            TokenCheck::Unknown => Some(invalid()),
            TokenCheck::Used(u) => Some(Status::unauthenticated(format!(
                "bootstrap token already used (by agent {} at {}): {again}",
                u.agent_id,
                humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(u.at))
            ))),
            TokenCheck::Expired(at) => Some(Status::unauthenticated(format!(
                "bootstrap token expired at {}: {again}",
                humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(at))
            ))),
            TokenCheck::Superseded => Some(Status::unauthenticated(format!(
                "bootstrap token was replaced by a newer one: use the token from the latest `ferryctl register {name}`"
            ))),
            TokenCheck::TooManyCerts => Some(Status::resource_exhausted(format!(
                "cluster {name:?} holds {MAX_AGENT_CERTS_PER_CLUSTER} valid agent certificates already"
            ))),
        };
        if let Some(status) = refused {
            info!(cluster = %name, %agent_id, reason = %status.message(), "enrollment refused");
            return Err(status);
        }
        info!(cluster = %name, %agent_id, serial = %issued.serial, "agent enrolled");
        if self.state.audit.enabled() {
            let mut event = AuditEvent::new(audit::kind::MANAGEMENT);
            event.action = "agent.enroll".into();
            event.auth_method = "bootstrap-token".into();
            event.cluster = name.clone();
            event.target = format!("agent {agent_id}, certificate {}", issued.serial);
            event.client_address = client.map(|c| c.to_string()).unwrap_or_default();
            self.state.audit.record(event);
        }
        Ok(Response::new(EnrollResponse {
            cluster_name: record.name,
            certificate_pem: issued.cert_pem,
            not_after_unix: issued.not_after,
        }))
    }

    /// The live state of a cluster.
    fn live(&self, record: &ClusterRecord) -> Result<Arc<LiveCluster>, Status> {
        let id = record.cluster_id().ok_or_else(|| Status::internal("corrupt cluster id"))?;
        Ok(self.state.registry.cluster(&record.name, id))
    }
}

fn denied(name: &str) -> Status {
    Status::permission_denied(format!(
        "cluster {name:?} was denied by a hub administrator; agents are refused until `ferryctl approve {name}`"
    ))
}

fn internal(e: StoreError) -> Status {
    warn!(error = %e, "store failure");
    Status::unavailable("hub store unavailable")
}

/// Keeps agent-supplied text printable and short before it is stored,
/// logged or shown.
pub(crate) fn clean(text: &str, max: usize) -> String {
    text.chars().filter(|c| !c.is_control()).take(max).collect()
}

fn clean_permissions(reported: &[String]) -> Vec<String> {
    reported.iter().take(MAX_REPORTED_PERMISSIONS).map(|p| clean(p, MAX_PERMISSION_LEN)).collect()
}

/// An agent's status report as the hub keeps it.
fn report(status: &ferry::proto::v1::ClusterStatus) -> AgentReport {
    use ferry::proto::v1::HealthState;
    let check = |c: &Option<ferry::proto::v1::HealthCheck>| {
        let c = c.clone().unwrap_or_default();
        let state = match HealthState::try_from(c.state).unwrap_or(HealthState::Unknown) {
            HealthState::Ok => CheckState::Ok,
            HealthState::Failed => CheckState::Failed,
            HealthState::Unknown => CheckState::Unknown,
        };
        Check { state, detail: clean(&c.detail, MAX_REPORT_TEXT_LEN) }
    };
    let capacity = |r: &Option<ferry::proto::v1::Resources>| {
        r.as_ref().map(|r| Capacity { cpu_millis: r.cpu_millis, memory_bytes: r.memory_bytes })
    };
    AgentReport {
        kubernetes_version: clean(&status.kubernetes_version, MAX_KUBERNETES_VERSION_LEN),
        platform: clean(&status.platform, MAX_REPORT_TEXT_LEN),
        apiserver_reachable: status.apiserver_reachable,
        apiserver_error: clean(&status.apiserver_error, MAX_REPORT_TEXT_LEN),
        missing_permissions: clean_permissions(&status.missing_permissions),
        readyz: check(&status.readyz),
        livez: check(&status.livez),
        nodes: status.nodes.as_ref().map(|n| NodeCount { ready: n.ready, not_ready: n.not_ready }),
        capacity: capacity(&status.capacity),
        allocatable: capacity(&status.allocatable),
        observed_at_ms: status.observed_at_unix_ms,
        heartbeat_rtt_micros: status.heartbeat_rtt_micros,
    }
}

/// What became of a bootstrap token at enrollment.
enum TokenCheck {
    Accepted,
    Retry,
    Unknown,
    Used(TokenUse),
    Expired(u64),
    Superseded,
    TooManyCerts,
}

/// Issues a certificate for cluster `record` and records its serial; the
/// caller has authenticated the agent (token or current certificate).
fn record_cert(record: &mut ClusterRecord, issued: &IssuedAgentCert, agent_id: &str, now: u64) -> bool {
    let valid = record.agent_certs.iter().filter(|c| c.not_after > now).count();
    if valid >= MAX_AGENT_CERTS_PER_CLUSTER {
        return false;
    }
    record.agent_certs.push(AgentCert {
        serial: issued.serial.clone(),
        issued_at: now,
        not_after: issued.not_after,
        agent_id: agent_id.to_owned(),
    });
    true
}

/// Signs a certificate from `csr` for `record`, and records its serial.
async fn issue_agent_cert(
    state: &HubState,
    record: &ClusterRecord,
    agent_id: &str,
    csr: &[u8],
) -> Result<IssuedAgentCert, Status> {
    let id = record.cluster_id().ok_or_else(|| Status::internal("corrupt cluster id"))?;
    let issued = state
        .ca
        .agent_cert(csr, id, &record.name, state.limits.agent_cert_ttl)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let now = unix_now();
    let mut recorded = false;
    state
        .store
        .update_cluster(&record.name, &mut |r| {
            recorded = r.id == record.id && record_cert(r, &issued, agent_id, now);
            recorded
        })
        .await
        .map_err(internal)?;
    if !recorded {
        return Err(Status::resource_exhausted(format!(
            "cluster {:?} holds {MAX_AGENT_CERTS_PER_CLUSTER} valid agent certificates already",
            record.name
        )));
    }
    Ok(issued)
}

#[tonic::async_trait]
impl Tunnel for TunnelService {
    async fn enroll(&self, request: Request<EnrollRequest>) -> Result<Response<EnrollResponse>, Status> {
        let enrolled = self.enroll_agent(request).await;
        self.state.metrics.certificate(false, enrolled.is_ok());
        enrolled
    }

    type ControlStream = ReceiverStream<Result<HubControl, Status>>;

    async fn control(
        &self,
        request: Request<Streaming<AgentControl>>,
    ) -> Result<Response<Self::ControlStream>, Status> {
        let (peer, record) = self.agent(&request, true).await?;
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
        let agent_id = clean(&hello.agent_id, MAX_AGENT_ID_LEN);
        let agent_version = clean(&hello.agent_version, MAX_AGENT_VERSION_LEN);
        let session = SessionId::new();
        let (tx, rx) = mpsc::channel(CONTROL_CHANNEL_CAPACITY);
        let limits = &self.state.limits;
        let notice = match record.approval {
            Approval::Pending => format!(
                "cluster {:?} awaits approval by a hub administrator (ferryctl approve {}); no traffic is routed until then",
                record.name, record.name
            ),
            _ => String::new(),
        };
        let welcome = HubControl {
            msg: Some(hub_control::Msg::Welcome(Welcome {
                protocol_version: ferry::PROTOCOL_VERSION,
                cluster_name: record.name.clone(),
                session_id: session.to_string(),
                pool_size: limits.pool_size,
                heartbeat_interval_ms: limits.heartbeat_interval.as_millis() as u32,
                notice,
                replica_id: self.state.replicas.as_ref().map(|set| set.me().id.clone()).unwrap_or_default(),
                replicas: self.state.replicas.as_ref().map(|set| set.now().for_agents()).unwrap_or_default(),
            })),
        };
        tx.try_send(Ok(welcome)).map_err(|_| Status::internal("control channel full"))?;
        let revoke = CancellationToken::new();
        live.try_add_session(
            session,
            SessionInfo {
                agent_id: agent_id.clone(),
                agent_version: agent_version.clone(),
                // Agents older than the status in the hello report with
                // their first heartbeat.
                report: hello.status.as_ref().map(report),
                connected_at: unix_now(),
                last_heartbeat_ms: unix_ms(),
                control: tx.clone(),
                revoke: revoke.clone(),
                whole_layout: hello.whole_layout,
            },
            limits.max_agent_sessions as usize,
        )
        .map_err(|_| {
            Status::resource_exhausted(format!(
                "cluster {:?} has {} agent sessions already (--max-agent-sessions-per-cluster)",
                record.name, limits.max_agent_sessions
            ))
        })?;
        let span = info_span!("session", cluster = %record.name, session = %session, agent_id = %agent_id);
        let control = ControlLoop {
            state: self.state.clone(),
            record,
            live,
            session,
            agent_id,
            tx,
            revoke,
            not_after: peer.not_after,
        };
        info!(parent: &span, %agent_version, serial = %peer.serial, "agent connected");
        self.state.metrics.agent_connected(&control.record.name);
        self.state.tasks.spawn(control.run(inbound).instrument(span));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type ProxyStream = ReceiverStream<Result<HubFrame, Status>>;

    async fn proxy(
        &self,
        request: Request<Streaming<AgentFrame>>,
    ) -> Result<Response<Self::ProxyStream>, Status> {
        // The session, not the certificate, decides here: a session outlives
        // the certificate its connection was opened with once it renews.
        let (_peer, record) = self.agent(&request, false).await?;
        let session = request
            .metadata()
            .get(metadata::SESSION)
            .and_then(|v| v.to_str().ok())
            .and_then(SessionId::parse)
            .ok_or_else(|| Status::invalid_argument("missing or malformed ferry-session metadata"))?;
        let live = self.live(&record)?;
        let (tx, rx) = mpsc::channel(FRAME_CHANNEL_CAPACITY);
        if !live.has_session(session) {
            return Err(Status::failed_precondition("unknown session; reconnect the control stream"));
        }
        live.park(Parked { session, tx, rx: request.into_inner(), whole_layout: false }).map_err(|_| {
            Status::resource_exhausted(format!(
                "the session parks {MAX_PARKED_PER_SESSION} streams already; no more until some are used"
            ))
        })?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// One agent session's control stream, from hello to end.
struct ControlLoop {
    state: Arc<HubState>,
    record: ClusterRecord,
    live: Arc<LiveCluster>,
    session: SessionId,
    agent_id: String,
    tx: mpsc::Sender<Result<HubControl, Status>>,
    revoke: CancellationToken,
    /// When the session's current certificate expires (unix seconds).
    not_after: u64,
}

impl ControlLoop {
    async fn run(mut self, mut inbound: Streaming<AgentControl>) {
        let limits = &self.state.limits;
        let dead_after = limits.heartbeat_interval * HEARTBEAT_MISSES;
        let pool_size = limits.pool_size as usize;
        let shutdown = self.state.shutdown.clone();
        let reason = loop {
            let expires = UNIX_EPOCH + Duration::from_secs(self.not_after);
            let until_expiry = expires.duration_since(SystemTime::now()).unwrap_or_default();
            let msg = tokio::select! {
                _ = shutdown.cancelled() => break "hub shutting down",
                _ = self.revoke.cancelled() => {
                    let _ = self.tx.try_send(Err(Status::permission_denied(format!(
                        "cluster {:?} was deleted or denied by a hub administrator", self.record.name
                    ))));
                    break "cluster deleted or denied";
                }
                _ = tokio::time::sleep(until_expiry) => {
                    let _ = self.tx.try_send(Err(Status::unauthenticated(
                        "the agent certificate expired without renewal; enroll again with a fresh bootstrap token",
                    )));
                    break "certificate expired";
                }
                m = tokio::time::timeout(dead_after, inbound.message()) => m,
            };
            match msg {
                Err(_) => break "heartbeats missed",
                Ok(Ok(None)) => break "control stream closed",
                Ok(Err(_)) => break "control stream failed",
                Ok(Ok(Some(AgentControl { msg: Some(agent_control::Msg::Heartbeat(hb)) }))) => {
                    match &hb.status {
                        Some(status) => self.live.report(self.session, report(status)),
                        None => self.live.heartbeat(self.session),
                    }
                    for parked in self.live.trim_idle(pool_size, PARKED_IDLE_TRIM) {
                        self.state.tasks.spawn(close_stream(parked.tx, parked.rx, false));
                    }
                    let echo = Heartbeat {
                        sent_at_unix_ms: unix_ms(),
                        status: None,
                        echo_unix_ms: hb.sent_at_unix_ms,
                    };
                    let _ = self.tx.try_send(Ok(HubControl { msg: Some(hub_control::Msg::Heartbeat(echo)) }));
                }
                Ok(Ok(Some(AgentControl { msg: Some(agent_control::Msg::Renew(renew)) }))) => {
                    self.live.heartbeat(self.session);
                    let answer = self.renew(&renew.csr_der).await;
                    self.state.metrics.certificate(true, answer.error.is_empty());
                    let _ =
                        self.tx.send(Ok(HubControl { msg: Some(hub_control::Msg::Renewed(answer)) })).await;
                }
                Ok(Ok(Some(_))) => break "unexpected control message",
            }
        };
        self.live.remove_session(self.session);
        info!(reason, "agent disconnected");
        self.state.metrics.agent_disconnected(&self.record.name, disconnect_reason(reason));
    }

    /// Signs a fresh certificate for the session's agent, which the current
    /// (still valid) one authenticates; the session lives on under it.
    async fn renew(&mut self, csr: &[u8]) -> RenewResponse {
        let refuse = |error: String| RenewResponse { error, ..Default::default() };
        // At most one renewal per quarter lifetime: an agent renews at two
        // thirds, so this only stops a loop filling the store.
        let ttl = self.state.limits.agent_cert_ttl.as_secs();
        let issued_at = self.not_after.saturating_sub(ttl);
        if unix_now() < issued_at + ttl / 4 {
            return refuse("renewed too recently; renew when two thirds of the lifetime have passed".into());
        }
        let record = match self.state.store.cluster(&self.record.name).await {
            Ok(Some(r)) if r.id == self.record.id => r,
            Ok(_) => return refuse("the cluster was deleted".into()),
            Err(e) => return refuse(internal(e).message().to_owned()),
        };
        match issue_agent_cert(&self.state, &record, &self.agent_id, csr).await {
            Ok(issued) => {
                info!(serial = %issued.serial, not_after = issued.not_after, "agent certificate renewed");
                self.not_after = issued.not_after;
                RenewResponse {
                    certificate_pem: issued.cert_pem,
                    not_after_unix: issued.not_after,
                    error: String::new(),
                }
            }
            Err(status) => {
                warn!(error = %status.message(), "agent certificate renewal refused");
                refuse(status.message().to_owned())
            }
        }
    }
}

/// The metrics label of a session's end, from the reason it logs.
fn disconnect_reason(reason: &str) -> DisconnectReason {
    match reason {
        "hub shutting down" => DisconnectReason::Shutdown,
        "cluster deleted or denied" => DisconnectReason::Revoked,
        "certificate expired" => DisconnectReason::CertificateExpired,
        "heartbeats missed" => DisconnectReason::HeartbeatsMissed,
        "control stream closed" => DisconnectReason::Closed,
        "control stream failed" => DisconnectReason::Failed,
        _ => DisconnectReason::ProtocolError,
    }
}

#[cfg(test)]
mod tests {
    use super::clean;

    #[test]
    fn agent_text_is_made_printable_and_short() {
        assert_eq!(clean("v1.2\u{1b}[31m\r\nfake log line", 64), "v1.2[31mfake log line");
        assert_eq!(clean(&"x".repeat(10_000), 64).len(), 64);
    }
}

//! Forwarding between hub replicas (docs/ha.md): a request that reaches a
//! replica without the cluster's agents goes to a replica that holds them.
//!
//! The forwarding replica has authenticated and authorized the caller and
//! built the request head as for its own agents; it opens one `Forward`
//! call to the holder and uses that call exactly like a parked agent
//! stream (tunnel frames both ways, upgrades included). The holder takes
//! one of its parked agent streams and relays frames one by one through
//! bounded channels, so each forwarded request keeps its own flow control
//! (the HTTP/2 windows of the peer call and of the agent stream) and its own
//! cancellation. Calls are mutually authenticated: the holder serves its
//! usual certificate, and the forwarding replica presents a client
//! certificate from the shared hub CA naming it (`ferry://hubs/ID`); no
//! other credential is accepted, and there is no shared secret.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ferry::limits::{FRAME_CHANNEL_CAPACITY, MAX_FRAME_SIZE};
use ferry::proto::v1::{AgentFrame, HubFrame, agent_frame, hub_frame};
use futures_util::Stream;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug, info, warn};

use std::time::{Duration, SystemTime};

use crate::auth::Peer as Caller;
use crate::pki::{Ca, PkiError};
use crate::registry::Parked;
use crate::state::HubState;

/// Generated `ferry.peer.v1` service (`hub/proto/ferry/peer/v1/peer.proto`).
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("ferry.peer.v1");
}

/// Metadata naming the cluster of a forwarded request.
pub const CLUSTER_METADATA: &str = "ferry-cluster";

/// How long a replica certificate is valid (made at start, renewed two
/// thirds into its lifetime, see [`keep_renewed`]).
pub const REPLICA_CERT_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Agent streams a forwarded request's head may be offered to (a stream
/// may die under it when its session drops).
const HEAD_ATTEMPTS: usize = 3;
/// Pause before trying again when a renewal failed.
pub const REPLICA_RENEW_RETRY: Duration = Duration::from_secs(60);

/// This replica's client identity towards the others, and when to renew it.
struct PeerIdentity {
    tls: ClientTlsConfig,
    /// The certificate (PEM; public).
    cert_pem: String,
    /// Two thirds into the certificate's lifetime.
    renew_at: SystemTime,
    /// Its expiry, seconds since the Unix epoch.
    not_after: u64,
}

impl PeerIdentity {
    /// A fresh certificate for replica `replica_id`, valid for `lifetime`
    /// from `now`, trusting only the hub CA.
    fn issue(ca: &Ca, replica_id: &str, lifetime: Duration, now: SystemTime) -> Result<Self, PkiError> {
        let cert = ca.replica_cert_from(replica_id, now, lifetime)?;
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca.cert_pem()))
            .identity(Identity::from_pem(&cert.cert_pem, cert.key_pem.expose()));
        Ok(PeerIdentity {
            tls,
            cert_pem: cert.cert_pem,
            renew_at: now + lifetime * 2 / 3,
            not_after: cert.not_after,
        })
    }
}

/// The forwarding side: this replica's client identity and one HTTP/2
/// connection per peer replica, made on first use.
pub struct Forwarder {
    replica_id: String,
    lifetime: Duration,
    identity: Mutex<PeerIdentity>,
    channels: Mutex<HashMap<String, Channel>>,
    /// Requests forwarded so far: they start at a different holder each
    /// time, so they spread over every replica holding the cluster's agents.
    turn: AtomicUsize,
}

impl Forwarder {
    /// Forwards as replica `replica_id` with a certificate from the hub CA
    /// valid for `lifetime` (renewed by [`keep_renewed`]), trusting only
    /// that CA.
    pub fn new(ca: &Ca, replica_id: &str, lifetime: Duration) -> Result<Self, PkiError> {
        let identity = PeerIdentity::issue(ca, replica_id, lifetime, SystemTime::now())?;
        Ok(Forwarder {
            replica_id: replica_id.to_owned(),
            lifetime,
            identity: Mutex::new(identity),
            channels: Mutex::new(HashMap::new()),
            turn: AtomicUsize::new(0),
        })
    }

    fn identity(&self) -> std::sync::MutexGuard<'_, PeerIdentity> {
        self.identity.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When the certificate in use should be renewed.
    pub fn renew_at(&self) -> SystemTime {
        self.identity().renew_at
    }

    /// The certificate in use (PEM).
    pub fn certificate_pem(&self) -> String {
        self.identity().cert_pem.clone()
    }

    /// When the certificate in use expires, seconds since the Unix epoch.
    pub fn not_after(&self) -> u64 {
        self.identity().not_after
    }

    /// Issues a fresh certificate when `now` is past the renewal point;
    /// `Ok(true)` when it did. New peer connections present it; the
    /// connections made with the old one are dropped from the cache (calls
    /// in flight on them go on to their end).
    pub fn renew_if_due(&self, ca: &Ca, now: SystemTime) -> Result<bool, PkiError> {
        if now < self.renew_at() {
            return Ok(false);
        }
        let fresh = PeerIdentity::issue(ca, &self.replica_id, self.lifetime, now)?;
        *self.identity() = fresh;
        self.channels.lock().unwrap_or_else(|p| p.into_inner()).clear();
        Ok(true)
    }

    fn channel(&self, url: &str) -> Result<Channel, Status> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = channels.get(url) {
            return Ok(c.clone());
        }
        let tls = self.identity().tls.clone();
        let bad = |e: &dyn std::fmt::Display| Status::internal(format!("peer replica {url}: {e}"));
        let uri: http::Uri = url.parse().map_err(|e| bad(&e))?;
        let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_owned();
        let channel = Endpoint::from(uri)
            .tls_config(tls.domain_name(host))
            .map_err(|e| bad(&e))?
            .tcp_nodelay(true)
            .initial_stream_window_size(ferry::limits::H2_STREAM_WINDOW)
            .initial_connection_window_size(ferry::limits::H2_CONNECTION_WINDOW)
            .connect_lazy();
        channels.insert(url.to_owned(), channel.clone());
        Ok(channel)
    }

    fn forget(&self, url: &str) {
        self.channels.lock().unwrap_or_else(|p| p.into_inner()).remove(url);
    }
}

/// Renews this replica's peer certificate two thirds into its lifetime
/// (and again after [`REPLICA_RENEW_RETRY`] when that fails), until the hub
/// shuts down: a replica runs for longer than [`REPLICA_CERT_TTL`] without
/// a restart.
pub async fn keep_renewed(state: Arc<HubState>) {
    let Some(forwarder) = &state.forwarder else { return };
    let mut retry_at = None;
    loop {
        let at = retry_at.take().unwrap_or_else(|| forwarder.renew_at());
        let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
        tokio::select! {
            () = state.shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        match forwarder.renew_if_due(&state.ca, SystemTime::now()) {
            Ok(true) => info!(not_after = forwarder.not_after(), "renewed this replica's peer certificate"),
            Ok(false) => {}
            Err(e) => {
                warn!(error = %e, "cannot renew this replica's peer certificate; trying again");
                retry_at = Some(SystemTime::now() + REPLICA_RENEW_RETRY);
            }
        }
    }
}

/// Opens `head` on a replica holding cluster `name`'s agents, as a stream
/// the gateway uses like a parked one. `Ok(None)`: no other replica holds
/// them.
///
/// When the holders known fail, it waits for the replica view to change (an
/// agent reconnecting to another replica after a failover) up to the
/// gateway's stream wait, and tries again.
pub(crate) async fn open(state: &HubState, name: &str, head: HubFrame) -> Result<Option<Parked>, Status> {
    let Some(set) = &state.replicas else { return Ok(None) };
    let deadline = tokio::time::Instant::now() + state.limits.stream_wait;
    let mut view = set.view();
    loop {
        view.borrow_and_update();
        let tried = open_once(state, name, &head).await;
        // Forwarded, or no replica holds an agent: nothing to wait for.
        if tried.is_ok() {
            return tried;
        }
        // Routing may follow a failover: wait for the view to change.
        match tokio::time::timeout_at(deadline, view.changed()).await {
            Ok(Ok(())) => continue,
            _ => return tried,
        }
    }
}

async fn open_once(state: &HubState, name: &str, head: &HubFrame) -> Result<Option<Parked>, Status> {
    let (Some(set), Some(forwarder)) = (&state.replicas, &state.forwarder) else { return Ok(None) };
    let view = set.now();
    let mut holders: Vec<_> = view.holders(name).into_iter().filter(|r| r.id != set.me().id).collect();
    if !holders.is_empty() {
        let start = forwarder.turn.fetch_add(1, Ordering::Relaxed) % holders.len();
        holders.rotate_left(start);
    }
    let mut last = None;
    // A holder that fails before its answer's head (dead, or its agent
    // session just dropped) hands the request to the next one.
    for holder in holders {
        let channel = forwarder.channel(&holder.peer_url)?;
        let mut client = proto::peer_client::PeerClient::new(channel)
            .max_decoding_message_size(MAX_FRAME_SIZE)
            .max_encoding_message_size(MAX_FRAME_SIZE);
        let (tx, rx) = mpsc::channel::<Result<HubFrame, Status>>(FRAME_CHANNEL_CAPACITY);
        // A fresh channel has room for the head; the holder answers once it
        // has sent it to an agent.
        let _ = tx.try_send(Ok(head.clone()));
        let outbound = ReceiverStream::new(rx).filter_map(Result::ok);
        let mut request = Request::new(outbound);
        let cluster =
            AsciiMetadataValue::try_from(name).map_err(|_| Status::invalid_argument("cluster name"))?;
        request.metadata_mut().insert(CLUSTER_METADATA, cluster);
        match client.forward(request).await {
            Ok(response) => {
                debug!(replica = %holder.id, "forwarded to the replica holding the agents");
                state.metrics.forwarded(name, "sent");
                return Ok(Some(Parked {
                    session: ferry::ids::SessionId::new(),
                    tx,
                    rx: response.into_inner(),
                    // Forwarded requests keep the frame-by-frame layout.
                    whole_layout: false,
                }));
            }
            Err(status) => {
                debug!(replica = %holder.id, error = %status, "peer replica refused the request");
                if status.code() == tonic::Code::Unavailable {
                    forwarder.forget(&holder.peer_url);
                }
                last = Some(status);
            }
        }
    }
    last.map_or(Ok(None), Err)
}

/// The holding side: the `Peer` service.
pub struct PeerService {
    state: Arc<HubState>,
}

/// The `Peer` service for the hub's gRPC routes.
pub fn server(state: Arc<HubState>) -> proto::peer_server::PeerServer<PeerService> {
    proto::peer_server::PeerServer::new(PeerService { state })
        .max_decoding_message_size(MAX_FRAME_SIZE)
        .max_encoding_message_size(MAX_FRAME_SIZE)
}

type FrameStream = Pin<Box<dyn Stream<Item = Result<AgentFrame, Status>> + Send>>;

#[tonic::async_trait]
impl proto::peer_server::Peer for PeerService {
    type ForwardStream = FrameStream;

    async fn forward(
        &self,
        request: Request<Streaming<HubFrame>>,
    ) -> Result<Response<Self::ForwardStream>, Status> {
        let Some(Caller::Replica(from)) = request.extensions().get::<Caller>().cloned() else {
            return Err(Status::permission_denied(
                "only hub replicas (ferry://hubs/ certificates) may forward",
            ));
        };
        let name = request
            .metadata()
            .get(CLUSTER_METADATA)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Status::invalid_argument("ferry-cluster metadata missing"))?
            .to_owned();
        let state = &self.state;
        let live =
            state.registry.get(&name).filter(|l| l.session_count() > 0).ok_or_else(|| {
                Status::unavailable(format!("no agent of cluster {name:?} on this replica"))
            })?;
        let permit = live
            .try_acquire(state.limits.max_streams_per_cluster, &format!("ferry-hub:{from}"), u32::MAX)
            .map_err(|_| {
                Status::resource_exhausted(format!("cluster {name:?} has too many requests in flight"))
            })?;
        let mut incoming = request.into_inner();
        let head = incoming
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("a forwarded request starts with its head"))?;
        // A stream that died under the head (its session just dropped)
        // hands it back for another, as the gateway does; after that, the
        // forwarding replica tries another holder.
        let mut head = Ok(head);
        let mut attempts = 0;
        let (tx, mut rx) = loop {
            attempts += 1;
            let Parked { tx, rx, .. } = live
                .take_stream(state.limits.stream_wait)
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            match tx.send(head).await {
                Ok(()) => break (tx, rx),
                Err(mpsc::error::SendError(back)) if attempts < HEAD_ATTEMPTS => head = back,
                Err(_) => return Err(Status::unavailable("the agent streams closed")),
            }
        };
        state.metrics.forwarded(&name, "served");

        // Caller to agent, frame by frame, up to the caller's `End` (or
        // error, or the call ending).
        let up_tx = tx.clone();
        let mut up = tokio::spawn(
            async move {
                while let Ok(Some(frame)) = incoming.message().await {
                    let last =
                        matches!(frame.frame, Some(hub_frame::Frame::End(_) | hub_frame::Frame::Error(_)));
                    if up_tx.send(Ok(frame)).await.is_err() || last {
                        break;
                    }
                }
            }
            .in_current_span(),
        );
        // Agent to caller, frame by frame; the agent stream is closed in
        // order once the response ended (or cancelled if the caller left).
        let (out_tx, out_rx) = mpsc::channel(FRAME_CHANNEL_CAPACITY);
        state.tasks.spawn(
            async move {
                let _permit = permit;
                let mut cancelled = true;
                let mut agent_ended = false;
                loop {
                    let next = tokio::select! {
                        r = rx.message() => r,
                        () = out_tx.closed() => break,
                    };
                    match next {
                        Ok(Some(frame)) => {
                            let last = matches!(
                                frame.frame,
                                Some(agent_frame::Frame::End(_) | agent_frame::Frame::Error(_))
                            );
                            let end = matches!(frame.frame, Some(agent_frame::Frame::End(_)));
                            if out_tx.send(Ok(frame)).await.is_err() {
                                break;
                            }
                            if last {
                                (cancelled, agent_ended) = (false, end);
                                break;
                            }
                        }
                        Ok(None) => {
                            cancelled = false;
                            break;
                        }
                        Err(status) => {
                            let _ = out_tx.send(Err(status)).await;
                            cancelled = false;
                            break;
                        }
                    }
                }
                // The agent's `End` is a half-close (an upgraded connection
                // may still carry the caller's bytes): the call stays open
                // until the caller's side ends too, or the caller leaves.
                if agent_ended {
                    tokio::select! {
                        _ = &mut up => {}
                        () = out_tx.closed() => {}
                    }
                }
                drop(out_tx);
                up.abort();
                crate::gateway::close_stream(tx, rx, cancelled).await;
            }
            .in_current_span(),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }
}

#[cfg(test)]
mod tests {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;

    use super::*;

    #[tokio::test]
    async fn the_peer_certificate_is_renewed_two_thirds_into_its_lifetime() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::load_or_create(dir.path()).expect("ca");
        let lifetime = Duration::from_secs(30);
        let start = SystemTime::now();
        let forwarder = Forwarder::new(&ca, "r-1", lifetime).expect("forwarder");
        let first = (forwarder.renew_at(), forwarder.not_after());
        let first_pem = forwarder.certificate_pem();
        assert!(first.0 >= start + lifetime * 2 / 3 && first.0 <= SystemTime::now() + lifetime * 2 / 3);
        // A cached connection, to see it replaced after the renewal.
        forwarder.channel("https://peer.example:8443").expect("channel");
        assert_eq!(forwarder.channels.lock().expect("lock").len(), 1);

        // Not yet due: nothing changes.
        assert!(!forwarder.renew_if_due(&ca, start + lifetime / 2).expect("renew"));
        assert_eq!(forwarder.renew_at(), first.0);

        // Due (time given, not slept): a fresh certificate, expiring later,
        // and the next renewal two thirds into its own lifetime.
        let later = start + lifetime * 3;
        assert!(forwarder.renew_if_due(&ca, later).expect("renew"));
        assert_eq!(forwarder.renew_at(), later + lifetime * 2 / 3);
        assert!(forwarder.not_after() > first.1, "{} > {}", forwarder.not_after(), first.1);
        assert!(
            forwarder.channels.lock().expect("lock").is_empty(),
            "new connections use the new certificate"
        );
        // The renewed certificate is another one, still this replica's.
        let renewed = forwarder.certificate_pem();
        assert_ne!(renewed, first_pem);
        let der = CertificateDer::from_pem_slice(renewed.as_bytes()).expect("pem");
        assert_eq!(crate::pki::parse_peer_cert(&der), Ok(crate::pki::PeerCert::Replica("r-1".into())));
    }
}

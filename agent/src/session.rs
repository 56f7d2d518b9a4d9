//! One agent session: dial the hub, run the control stream (hello, welcome,
//! heartbeats with cluster status, hub signals, certificate renewal) and
//! the pool of request streams, until the session fails or the agent shuts
//! down.
//!
//! Renewal happens on the session's own control stream two thirds into the
//! certificate's lifetime: the hub signs a certificate for a fresh key and
//! the session lives on under it, so no request or watch in flight is
//! dropped; the new certificate is stored and used for the next connection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ferry::ids::AgentId;
use ferry::limits::{CONTROL_CHANNEL_CAPACITY, DEFAULT_POOL_SIZE, HEARTBEAT_INTERVAL, HEARTBEAT_MISSES};
use ferry::proto::v1::{
    AgentControl, ClusterStatus, Heartbeat, Hello, HubControl, HubReplica, RenewRequest, RenewResponse,
    Welcome, agent_control, hub_control,
};
use ferry::secret::Secret;
use ferry::{FERRY_VERSION, PROTOCOL_VERSION};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Streaming};
use tracing::{debug, info, warn};

use crate::agent::AgentState;
use crate::config::AgentConfig;
use crate::credential::{CredentialStore, StoredCredential, new_key_and_request};
use crate::error::report;
use crate::health::Apiserver;
use crate::hub::{self, CallAuth, HubError};
use crate::metrics::AgentMetrics;
use crate::pool::{Pool, SessionShared};
use crate::proxy::ProxyContext;
use crate::status::{self, PROBE_TIMEOUT, StatusProbe, unix_ms};
use crate::upstream::Upstream;

/// How long the hub may take to answer the hello with a welcome.
pub const WELCOME_TIMEOUT: Duration = Duration::from_secs(15);
/// Shortest heartbeat period accepted from the hub.
pub const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);
/// How long a closing control stream waits for the hub to end it.
const CONTROL_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the hub may take to answer a renewal before it is asked again.
pub const RENEW_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause before asking again after a refused or unanswered renewal (never
/// past the certificate's expiry: then the session ends anyway).
pub const RENEW_RETRY: Duration = Duration::from_secs(60);

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Dialling the hub failed.
    #[error(transparent)]
    Hub(#[from] HubError),
    /// The hub refused the credential on the control stream.
    #[error("the hub refused the credential: {0}")]
    Unauthenticated(String),
    /// The hub refused the session for now (the cluster is denied).
    #[error("the hub refused the session: {0}")]
    Refused(String),
    /// The control stream failed.
    #[error("control stream failed ({code:?}): {message}")]
    Control {
        /// gRPC status code.
        code: Code,
        /// Its message.
        message: String,
    },
    /// The hub did not welcome the agent in time, or sent something else.
    #[error("no welcome from the hub: {0}")]
    NoWelcome(&'static str),
    /// The hub speaks another protocol version.
    #[error("protocol version mismatch: the hub speaks {hub}, this agent {agent}")]
    Version {
        /// The hub's version.
        hub: u32,
        /// Ours.
        agent: u32,
    },
    /// The hub ended the control stream.
    #[error("the hub closed the control stream")]
    Closed,
    /// Nothing heard from the hub for too long.
    #[error("no message from the hub for {0:?}")]
    HeartbeatTimeout(Duration),
    /// The hub refused the session's request streams.
    #[error("the hub refused request streams: {0}")]
    ProxyRejected(String),
    /// The replica that welcomed the session holds another of this agent's
    /// sessions already (`--hub-connections`).
    #[error("hub replica {0} holds another session of this agent already")]
    SameReplica(String),
}

impl SessionError {
    /// True when reconnecting with the same credential cannot help.
    pub fn is_refusal(&self) -> bool {
        matches!(self, SessionError::Unauthenticated(_) | SessionError::Refused(_))
    }

    fn from_status(status: tonic::Status) -> Self {
        match status.code() {
            Code::Unauthenticated => SessionError::Unauthenticated(status.message().to_owned()),
            Code::PermissionDenied => SessionError::Refused(status.message().to_owned()),
            code => SessionError::Control { code, message: status.message().to_owned() },
        }
    }
}

/// What a session runs with (the same across reconnects, but for the
/// credential, which renewals replace).
pub(crate) struct SessionParams {
    /// Hub address and CA.
    pub config: AgentConfig,
    /// The current credential.
    pub credential: Arc<Mutex<StoredCredential>>,
    /// Where renewed credentials are kept.
    pub store: CredentialStore,
    /// This agent instance.
    pub agent_id: AgentId,
    /// The apiserver.
    pub upstream: Arc<Upstream>,
    /// The agent's metrics.
    pub metrics: Arc<AgentMetrics>,
    /// Where status probes publish what they found of the apiserver.
    pub apiserver: watch::Sender<Apiserver>,
}

impl SessionParams {
    fn credential(&self) -> StoredCredential {
        self.credential.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The current certificate, PEM.
    pub(crate) fn credential_pem(&self) -> String {
        self.credential.lock().unwrap_or_else(|p| p.into_inner()).cert_pem.clone()
    }
}

/// How a session ended.
pub(crate) struct SessionEnd {
    /// `Ok` when the agent was asked to shut down.
    pub result: Result<(), SessionError>,
    /// How long the session was connected (welcomed), if it was.
    pub connected_for: Option<Duration>,
}

/// Where one session dials, and who hears of the hub's welcome.
pub(crate) struct Dial<'a> {
    /// The hub URL.
    pub url: http::Uri,
    /// Told the welcome; `false` ends the session at once (its replica
    /// holds another session of this agent).
    pub welcomed: &'a (dyn Fn(&Welcome) -> bool + Sync),
    /// Told the live hub replicas when the hub says they changed.
    pub replicas: &'a (dyn Fn(&[HubReplica]) + Sync),
}

/// Runs one session to its end.
pub(crate) async fn run(
    params: &SessionParams,
    dial: &Dial<'_>,
    state: &watch::Sender<AgentState>,
    shutdown: &CancellationToken,
) -> SessionEnd {
    let mut connected_at = None;
    let result = run_inner(params, dial, state, shutdown, &mut connected_at).await;
    SessionEnd { result, connected_for: connected_at.map(|t: Instant| t.elapsed()) }
}

async fn run_inner(
    params: &SessionParams,
    dial: &Dial<'_>,
    state: &watch::Sender<AgentState>,
    shutdown: &CancellationToken,
    connected_at: &mut Option<Instant>,
) -> Result<(), SessionError> {
    state.send_replace(AgentState::Connecting);
    let credential = params.credential();
    let client = tokio::select! {
        r = hub::connect(&params.config, &dial.url, Some(&credential)) => r?,
        () = shutdown.cancelled() => return Ok(()),
    };

    let (control_tx, control_rx) = mpsc::channel(CONTROL_CHANNEL_CAPACITY);
    let mut probe = StatusProbe::new(params.upstream.clone(), params.config.credential_secret.clone())
        .publishing(params.apiserver.clone(), params.metrics.clone());
    let status = tokio::select! {
        s = probe.status(PROBE_TIMEOUT) => s,
        () = shutdown.cancelled() => return Ok(()),
    };
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        agent_id: params.agent_id.to_string(),
        agent_version: FERRY_VERSION.to_owned(),
        status: Some(status),
        whole_layout: true,
    };
    // A fresh channel always has room for the first message.
    let _ = control_tx.try_send(AgentControl { msg: Some(agent_control::Msg::Hello(hello)) });
    let request = tonic::Request::new(ReceiverStream::new(control_rx));
    let mut control_client = client.clone();
    let response = tokio::select! {
        r = control_client.control(request) => r.map_err(SessionError::from_status)?,
        () = shutdown.cancelled() => return Ok(()),
    };
    let mut inbound = response.into_inner();
    let welcome = tokio::select! {
        w = tokio::time::timeout(WELCOME_TIMEOUT, inbound.message()) => match w {
            Err(_) => return Err(SessionError::NoWelcome("timed out")),
            Ok(Ok(Some(HubControl { msg: Some(hub_control::Msg::Welcome(w)) }))) => w,
            Ok(Ok(Some(_))) => return Err(SessionError::NoWelcome("the first message was not a welcome")),
            Ok(Ok(None)) => return Err(SessionError::Closed),
            Ok(Err(status)) => return Err(SessionError::from_status(status)),
        },
        () = shutdown.cancelled() => return Ok(()),
    };
    if welcome.protocol_version != PROTOCOL_VERSION {
        return Err(SessionError::Version { hub: welcome.protocol_version, agent: PROTOCOL_VERSION });
    }
    if !(dial.welcomed)(&welcome) {
        return Err(SessionError::SameReplica(welcome.replica_id));
    }
    *connected_at = Some(Instant::now());
    let interval = heartbeat_interval(&welcome);
    let cluster: Arc<str> = Arc::from(welcome.cluster_name.as_str());

    let session = Arc::new(SessionShared {
        client,
        auth: CallAuth::for_session(&welcome.session_id)?,
        proxy: ProxyContext {
            metrics: params.metrics.clone(),
            upstream: params.upstream.clone(),
            cluster: cluster.clone(),
            system_identities: params.config.system_identities.clone(),
        },
    });
    let mut pool = Pool::new(session, pool_size(&welcome));
    let signals = pool.signals();
    pool.top_up();

    let stop_heartbeats = CancellationToken::new();
    let mut heartbeats = JoinSet::new();
    let renewals = control_tx.clone();
    let (latest, statuses) = watch::channel(ClusterStatus::default());
    let round_trip = Arc::new(RoundTrip::default());
    heartbeats.spawn(status::run(probe, params.config.status_interval, latest, stop_heartbeats.clone()));
    heartbeats.spawn(send_heartbeats(
        control_tx,
        statuses,
        round_trip.clone(),
        interval,
        stop_heartbeats.clone(),
    ));
    let mut renewal = Renewal::new(credential);

    info!(
        %cluster,
        session = %welcome.session_id,
        hub = %dial.url,
        replica = %welcome.replica_id,
        heartbeat_ms = interval.as_millis(),
        "connected to the hub"
    );
    let _connected = params.metrics.session_up();
    params.metrics.certificate_expires(unix_seconds(renewal.not_after));
    if !welcome.notice.is_empty() {
        warn!(hub_says = %welcome.notice, "connected, but the hub routes no traffic yet");
    }
    announce(&cluster, &welcome.session_id, &welcome.replica_id);
    state.send_replace(AgentState::Connected {
        cluster: cluster.to_string(),
        session_id: welcome.session_id.clone(),
    });

    let silence = interval.saturating_mul(HEARTBEAT_MISSES);
    let deadline = tokio::time::sleep(silence);
    tokio::pin!(deadline);
    let result = loop {
        tokio::select! {
            () = shutdown.cancelled() => break Ok(()),
            message = inbound.message() => match message {
                Ok(Some(HubControl { msg: Some(hub_control::Msg::Renewed(answer)) })) => {
                    deadline.as_mut().reset(Instant::now() + silence);
                    renewal.answered(answer, params).await;
                }
                Ok(Some(HubControl { msg: Some(hub_control::Msg::Replicas(list)) })) => {
                    deadline.as_mut().reset(Instant::now() + silence);
                    (dial.replicas)(&list.replicas);
                }
                Ok(Some(HubControl { msg: Some(hub_control::Msg::Heartbeat(echo)) })) => {
                    deadline.as_mut().reset(Instant::now() + silence);
                    if let Some(rtt) = round_trip.answered(echo.echo_unix_ms) {
                        params.metrics.heartbeat_rtt(rtt);
                    }
                }
                Ok(Some(message)) => {
                    deadline.as_mut().reset(Instant::now() + silence);
                    handle(message, &mut pool);
                }
                Ok(None) => break Err(SessionError::Closed),
                Err(status) => break Err(SessionError::from_status(status)),
            },
            () = &mut deadline => break Err(SessionError::HeartbeatTimeout(silence)),
            () = signals.claimed() => pool.top_up(),
            status = signals.rejected() => {
                let message = status.map(|s| s.message().to_owned()).unwrap_or_default();
                break Err(SessionError::ProxyRejected(message));
            }
            () = pool.reap() => {}
            () = renewal.due() => renewal.ask(&renewals).await,
        }
    };

    // Teardown: requests first (they may still use the connection), then
    // heartbeats, then the control stream itself.
    let graceful = result.is_ok();
    pool.shutdown(graceful).await;
    stop_heartbeats.cancel();
    heartbeats.shutdown().await;
    if graceful {
        // All senders are gone: the control stream's request side has ended;
        // give the hub a moment to end its side too.
        let _ = tokio::time::timeout(CONTROL_CLOSE_TIMEOUT, drain(&mut inbound)).await;
    }
    result
}

/// Handles one hub message after the welcome.
fn handle(message: HubControl, pool: &mut Pool) {
    match message.msg {
        Some(hub_control::Msg::Heartbeat(_)) => {}
        Some(hub_control::Msg::OpenStreams(open)) => pool.open_extra(open.count),
        Some(hub_control::Msg::Welcome(_)) => debug!("ignoring a repeated welcome"),
        Some(hub_control::Msg::Renewed(_)) => debug!("ignoring a renewal answer"),
        Some(hub_control::Msg::Replicas(_)) => debug!("ignoring a replica list"),
        None => debug!("ignoring an empty control message"),
    }
}

async fn drain(inbound: &mut Streaming<HubControl>) {
    while let Ok(Some(_)) = inbound.message().await {}
}

/// The session's certificate renewal: when it is due, the request in
/// flight (its new key), and what to do with the answer.
struct Renewal {
    /// When to ask next.
    at: Instant,
    /// The key of the request in flight.
    pending: Option<Secret>,
    /// The session's current certificate's expiry.
    not_after: SystemTime,
    cluster: String,
}

impl Renewal {
    fn new(credential: StoredCredential) -> Self {
        Renewal {
            at: instant_at(credential.renew_at()),
            pending: None,
            not_after: credential.not_after,
            cluster: credential.cluster,
        }
    }

    /// Resolves when a renewal should be asked for.
    async fn due(&self) {
        tokio::time::sleep_until(self.at).await;
    }

    /// Sends a renewal request for a fresh key.
    async fn ask(&mut self, control: &mpsc::Sender<AgentControl>) {
        self.at = Instant::now() + RENEW_TIMEOUT;
        let (key, csr) = match new_key_and_request() {
            Ok(k) => k,
            Err(e) => {
                warn!(error = %e, "cannot make a key for renewal");
                self.retry_later();
                return;
            }
        };
        self.pending = Some(key);
        let ask = AgentControl { msg: Some(agent_control::Msg::Renew(RenewRequest { csr_der: csr.into() })) };
        debug!("asking the hub to renew the agent certificate");
        if control.send(ask).await.is_err() {
            self.pending = None;
        }
    }

    fn retry_later(&mut self) {
        let until_expiry = self.not_after.duration_since(SystemTime::now()).unwrap_or_default();
        self.at = Instant::now() + RENEW_RETRY.min(until_expiry / 2).max(Duration::from_secs(1));
    }

    /// Takes the hub's answer: stores and uses the new certificate, or
    /// retries later.
    async fn answered(&mut self, answer: RenewResponse, params: &SessionParams) {
        let Some(key) = self.pending.take() else {
            debug!("ignoring a renewal answer nobody asked for");
            return;
        };
        if !answer.error.is_empty() {
            warn!(hub_says = %answer.error, "the hub refused to renew the agent certificate; asking again later");
            self.retry_later();
            return;
        }
        let renewed = match StoredCredential::new(self.cluster.clone(), answer.certificate_pem, key) {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "the hub sent an unusable certificate; asking again later");
                self.retry_later();
                return;
            }
        };
        if let Err(e) = params.store.save(&renewed).await {
            // Still good for this process; a restart would load the older
            // one (or another replica's) and renew or enroll again.
            warn!(error = %report(&e), "renewed, but the credential could not be stored");
        }
        *params.credential.lock().unwrap_or_else(|p| p.into_inner()) = renewed.clone();
        self.not_after = renewed.not_after;
        params.metrics.certificate_expires(unix_seconds(renewed.not_after));
        self.at = instant_at(renewed.renew_at());
        let expires = humantime::format_rfc3339_seconds(renewed.not_after);
        info!(%expires, "agent certificate renewed");
        announce_renewal(&renewed.cluster, &expires.to_string());
    }
}

/// Seconds since the Unix epoch.
fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The tokio instant of a wall-clock time (now, if it has passed).
fn instant_at(t: SystemTime) -> Instant {
    Instant::now() + t.duration_since(SystemTime::now()).unwrap_or_default()
}

/// Prints the renewal line (scripts and tests wait for it).
fn announce_renewal(cluster: &str, expires: &str) {
    use std::io::Write;
    println!("ferry-agent renewed: cluster={cluster} expires={expires}");
    let _ = std::io::stdout().flush();
}

/// Prints the connected line: the one line of stdout output, which scripts
/// and tests wait for (again after every reconnect, and once per session
/// with `--hub-connections`); `replica=` names the hub replica, if any.
fn announce(cluster: &str, session_id: &str, replica: &str) {
    use std::io::Write;
    if replica.is_empty() {
        println!("ferry-agent connected: cluster={cluster} session={session_id}");
    } else {
        println!("ferry-agent connected: cluster={cluster} session={session_id} replica={replica}");
    }
    let _ = std::io::stdout().flush();
}

/// The heartbeat period from the welcome (default when unset, with a floor).
fn heartbeat_interval(welcome: &Welcome) -> Duration {
    match welcome.heartbeat_interval_ms {
        0 => HEARTBEAT_INTERVAL,
        ms => Duration::from_millis(u64::from(ms)).max(MIN_HEARTBEAT_INTERVAL),
    }
}

/// The pool size from the welcome (default when unset).
fn pool_size(welcome: &Welcome) -> usize {
    match welcome.pool_size {
        0 => DEFAULT_POOL_SIZE as usize,
        n => n as usize,
    }
}

/// The round trip of heartbeats: the one in flight, and the last answered.
#[derive(Default)]
struct RoundTrip {
    /// `sent_at_unix_ms` of the heartbeat in flight and when it left.
    pending: Mutex<Option<(u64, Instant)>>,
    /// The last measured round trip, microseconds (0: none yet).
    last_micros: AtomicU64,
}

impl RoundTrip {
    fn sent(&self, sent_at_unix_ms: u64) {
        *self.pending.lock().unwrap_or_else(|p| p.into_inner()) = Some((sent_at_unix_ms, Instant::now()));
    }

    /// The hub echoed `echo_unix_ms`; returns the round trip. An echo of
    /// an older heartbeat (or of none) is ignored.
    fn answered(&self, echo_unix_ms: u64) -> Option<Duration> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((sent, at)) = *pending
            && sent == echo_unix_ms
        {
            let elapsed = at.elapsed();
            let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX).max(1);
            self.last_micros.store(micros, Ordering::Relaxed);
            *pending = None;
            return Some(elapsed);
        }
        None
    }

    fn last_micros(&self) -> u64 {
        self.last_micros.load(Ordering::Relaxed)
    }
}

/// Sends a heartbeat every `interval`, and at once when the probe task has
/// a fresh status (each status is sent once; the hello carried the first).
async fn send_heartbeats(
    control: mpsc::Sender<AgentControl>,
    mut statuses: watch::Receiver<ClusterStatus>,
    round_trip: Arc<RoundTrip>,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let status = tokio::select! {
            _ = ticker.tick() => None,
            r = statuses.changed() => match r {
                Ok(()) => {
                    ticker.reset();
                    let mut status = statuses.borrow_and_update().clone();
                    status.heartbeat_rtt_micros = round_trip.last_micros();
                    Some(status)
                }
                // The probe task is gone: the session is ending.
                Err(_) => return,
            },
            () = stop.cancelled() => return,
        };
        let sent_at_unix_ms = unix_ms();
        round_trip.sent(sent_at_unix_ms);
        let heartbeat = Heartbeat { sent_at_unix_ms, status, echo_unix_ms: 0 };
        let message = AgentControl { msg: Some(agent_control::Msg::Heartbeat(heartbeat)) };
        tokio::select! {
            r = control.send(message) => if r.is_err() { return },
            () = stop.cancelled() => return,
        }
    }
}

/// Logs a session's end.
pub(crate) fn log_end(error: &SessionError, retry_in: Duration) {
    warn!(error = %report(error), retry_in_ms = retry_in.as_millis(), "hub session ended; reconnecting");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn welcome_values_have_defaults_and_floors() {
        let mut w = Welcome::default();
        assert_eq!(heartbeat_interval(&w), HEARTBEAT_INTERVAL);
        assert_eq!(pool_size(&w), DEFAULT_POOL_SIZE as usize);
        w.heartbeat_interval_ms = 1;
        assert_eq!(heartbeat_interval(&w), MIN_HEARTBEAT_INTERVAL);
        w.heartbeat_interval_ms = 2500;
        w.pool_size = 3;
        assert_eq!(heartbeat_interval(&w), Duration::from_millis(2500));
        assert_eq!(pool_size(&w), 3);
    }

    #[test]
    fn refusals_are_told_apart_from_failures() {
        assert!(SessionError::from_status(tonic::Status::unauthenticated("revoked")).is_refusal());
        assert!(SessionError::from_status(tonic::Status::permission_denied("denied")).is_refusal());
        assert!(!SessionError::from_status(tonic::Status::unavailable("restart")).is_refusal());
        assert!(!SessionError::HeartbeatTimeout(Duration::from_secs(30)).is_refusal());
    }
}

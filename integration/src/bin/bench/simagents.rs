//! Simulated idle agents for scenario 8: each has its own TLS connection
//! (its own tonic `Channel`) and control stream, says hello, and then only
//! heartbeats. They reconnect like `ferry-agent` does (full-jitter
//! exponential backoff from 500 ms).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use ferry::proto::v1::tunnel_client::TunnelClient;
use ferry::proto::v1::{AgentControl, EnrollRequest, Heartbeat, Hello, agent_control, hub_control};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// First reconnect ceiling, as `ferry-agent`'s `RECONNECT_BASE`.
pub const RECONNECT_BASE: Duration = Duration::from_millis(500);
/// Reconnect ceiling cap, as `ferry-agent`'s `RECONNECT_CAP`.
pub const RECONNECT_CAP: Duration = Duration::from_secs(30);
/// Control messages buffered towards the hub per agent.
const CONTROL_CAPACITY: usize = 4;

/// The gRPC endpoint for a hub URL, trusting only the hub CA, presenting
/// `identity` (the agent certificate) when given.
pub fn endpoint(hub_url: &str, ca_pem: &str, identity: Option<Identity>) -> anyhow::Result<Endpoint> {
    let uri: http::Uri = hub_url.parse()?;
    let host = uri.host().context("hub URL without host")?.trim_matches(['[', ']']).to_string();
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)).domain_name(host);
    if let Some(identity) = identity {
        tls = tls.identity(identity);
    }
    Ok(Endpoint::from_shared(hub_url.to_string())?
        .tls_config(tls)?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10)))
}

/// Trades a bootstrap token and a fresh key's certificate request for the
/// cluster's agent certificate; every simulated agent shares it, as the
/// replicas of one Deployment share their credential Secret.
pub async fn enroll(endpoint: &Endpoint, bootstrap_token: &str) -> anyhow::Result<Identity> {
    let mut client = TunnelClient::new(endpoint.connect().await?);
    let key = rcgen::KeyPair::generate()?;
    let csr = rcgen::CertificateParams::default().serialize_request(&key)?;
    let resp = client
        .enroll(EnrollRequest {
            bootstrap_token: bootstrap_token.to_string(),
            agent_id: uuid::Uuid::new_v4().to_string(),
            csr_der: csr.der().to_vec().into(),
        })
        .await?;
    Ok(Identity::from_pem(resp.into_inner().certificate_pem, key.serialize_pem()))
}

/// A fleet of simulated agents; dropping it stops them.
pub struct Fleet {
    /// Agents currently welcomed by the hub.
    pub connected: Arc<AtomicUsize>,
    /// Successful (re)connects so far.
    pub sessions: Arc<AtomicUsize>,
    stop: CancellationToken,
    tasks: JoinSet<()>,
}

impl Fleet {
    /// Starts `n` agents at once (`endpoint` presents the agent certificate).
    pub fn start(n: usize, endpoint: Endpoint) -> Self {
        let connected = Arc::new(AtomicUsize::new(0));
        let sessions = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        for i in 0..n {
            let agent = SimAgent {
                endpoint: endpoint.clone(),
                connected: connected.clone(),
                sessions: sessions.clone(),
                stop: stop.clone(),
                rng: seed(i),
            };
            tasks.spawn(agent.run());
        }
        Self { connected, sessions, stop, tasks }
    }

    /// Stops every agent and waits for them.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

fn seed(i: usize) -> u64 {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
    (t ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1
}

struct SimAgent {
    endpoint: Endpoint,
    connected: Arc<AtomicUsize>,
    sessions: Arc<AtomicUsize>,
    stop: CancellationToken,
    rng: u64,
}

/// Decrements the connected count when a session ends.
struct Connected(Arc<AtomicUsize>);

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl SimAgent {
    async fn run(mut self) {
        let mut failures = 0u32;
        loop {
            let welcomed = tokio::select! {
                () = self.stop.cancelled() => return,
                r = self.session() => r.unwrap_or(false),
            };
            if welcomed {
                failures = 0;
            }
            let ceiling = RECONNECT_BASE.saturating_mul(1 << failures.min(16)).min(RECONNECT_CAP);
            failures = failures.saturating_add(1);
            let delay = Duration::from_millis(self.next_random() % (ceiling.as_millis() as u64 + 1));
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64: enough for jitter.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// One session; `Ok(true)` if the hub welcomed it before it ended.
    async fn session(&self) -> anyhow::Result<bool> {
        let channel = self.endpoint.connect().await?;
        let mut client = TunnelClient::new(channel);
        let (tx, rx) = mpsc::channel(CONTROL_CAPACITY);
        let hello = Hello {
            protocol_version: ferry::PROTOCOL_VERSION,
            agent_id: uuid::Uuid::new_v4().to_string(),
            agent_version: format!("{}-bench-sim", ferry::FERRY_VERSION),
            status: None,
            // Simulated agents serve no requests.
            whole_layout: false,
        };
        tx.send(AgentControl { msg: Some(agent_control::Msg::Hello(hello)) }).await?;
        let req = tonic::Request::new(ReceiverStream::new(rx));
        let mut inbound = client.control(req).await?.into_inner();
        let interval = match inbound.message().await? {
            Some(m) => match m.msg {
                Some(hub_control::Msg::Welcome(w)) => {
                    Duration::from_millis(u64::from(w.heartbeat_interval_ms.max(1000)))
                }
                _ => anyhow::bail!("the hub's first control message was not a welcome"),
            },
            None => anyhow::bail!("control stream closed before the welcome"),
        };
        self.connected.fetch_add(1, Ordering::Relaxed);
        self.sessions.fetch_add(1, Ordering::Relaxed);
        let _connected = Connected(self.connected.clone());
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        loop {
            tokio::select! {
                m = inbound.message() => match m {
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => return Ok(true),
                },
                _ = tick.tick() => {
                    let sent_at_unix_ms =
                        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
                    let hb = Heartbeat { sent_at_unix_ms, status: None, echo_unix_ms: 0 };
                    if tx.send(AgentControl { msg: Some(agent_control::Msg::Heartbeat(hb)) }).await.is_err() {
                        return Ok(true);
                    }
                }
            }
        }
    }
}

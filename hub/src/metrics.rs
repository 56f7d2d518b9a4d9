//! The hub's Prometheus metrics (`--metrics-listen`, plain HTTP `/metrics`),
//! kept with the `prometheus-client` crate and served as OpenMetrics text
//! (or the Prometheus text format 0.0.4 to scrapers that do not ask for
//! OpenMetrics).
//!
//! Cost on the request path: a request resolves its cluster's handles once
//! (one read lock and a hash of the name, [`HubMetrics::cluster`]); bytes are
//! then counted with one atomic add per frame, and the request counter
//! (cluster, verb, group, code class) is looked up once when the request
//! ends. Gauges of things the registry already knows (agents, requests in
//! flight, parked streams, clusters by phase) cost nothing until a scrape
//! reads them.
//!
//! Label values are bounded: clusters get their own `cluster` value for the
//! first [`MAX_CLUSTER_LABELS`] registered clusters seen, later ones share
//! [`OVERFLOW`]; a request refused before a registered cluster is known is
//! counted under [`UNKNOWN`] (so unauthenticated callers cannot mint label
//! values); API groups are capped the same way ([`MAX_GROUP_LABELS`]); verbs,
//! code classes, reasons and operations come from fixed sets. No user name or
//! path is ever a label. docs/observability.md lists every metric.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tracing::{debug, warn};

use crate::state::HubState;
use crate::store::Phase;

/// Default `--metrics-listen` address.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9090";
/// Clusters that get a `cluster` label value of their own; further ones are
/// counted under [`OVERFLOW`].
pub const MAX_CLUSTER_LABELS: usize = 500;
/// API groups that get a `group` label value of their own; further ones are
/// counted under [`OVERFLOW`].
pub const MAX_GROUP_LABELS: usize = 100;
/// The shared label value past a cap. Cluster names and API groups are DNS
/// names, which never start with `_`.
pub const OVERFLOW: &str = "_other";
/// The `cluster` value of requests refused before a registered cluster was
/// found (no credential, unknown cluster, bad path).
pub const UNKNOWN: &str = "_unknown";
/// The `group` value of requests for paths that are not API resources
/// (discovery, `/version`, `/healthz`, ...).
pub const NON_RESOURCE: &str = "_nonresource";
/// How long a scrape may take to read the store.
const SCRAPE_STORE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a metrics connection may take to send its request.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Buckets of request latencies, seconds (the apiserver's range, finer at
/// the low end where a tunnel's overhead shows).
const LATENCY_BUCKETS: [f64; 16] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];
/// Buckets of store operations, seconds.
const STORE_BUCKETS: [f64; 12] =
    [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5];

type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

fn store_histogram() -> Histogram {
    Histogram::new(STORE_BUCKETS)
}

/// A label value that is one of a fixed set.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct Fixed(pub &'static str);

impl EncodeLabelValue for Fixed {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.0, encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterLabels {
    cluster: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    cluster: Arc<str>,
    verb: Fixed,
    group: Arc<str>,
    code: Fixed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabels {
    cluster: Arc<str>,
    direction: Fixed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    cluster: Arc<str>,
    reason: Fixed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ForwardLabels {
    cluster: Arc<str>,
    role: Fixed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: Fixed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterPhaseLabels {
    cluster: Arc<str>,
    phase: Fixed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    decision: Fixed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertificateLabels {
    kind: Fixed,
    result: Fixed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: Fixed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: Fixed,
}

/// One cluster's pre-resolved metric handles (a request resolves them
/// once, then counts with atomics).
#[derive(Debug)]
pub struct ClusterMetrics {
    /// The `cluster` label value (the name, [`OVERFLOW`] or [`UNKNOWN`]).
    pub label: Arc<str>,
    /// Body bytes from callers to the cluster (upgraded bytes included).
    pub to_cluster: Counter,
    /// Body bytes from the cluster to callers (upgraded bytes included).
    pub to_caller: Counter,
    duration: Histogram,
    head: Histogram,
    upgraded: Gauge,
}

/// A label interner with a cap: the first `cap` values get their own, the
/// rest share the overflow value.
struct Capped<T> {
    cap: usize,
    values: RwLock<HashMap<Box<str>, Arc<T>>>,
    overflow: Arc<T>,
}

impl<T> Capped<T> {
    fn new(cap: usize, overflow: T) -> Self {
        Capped { cap, values: RwLock::default(), overflow: Arc::new(overflow) }
    }

    fn get(&self, key: &str, make: impl FnOnce(Arc<str>) -> T) -> Arc<T> {
        if let Some(v) = self.values.read().unwrap_or_else(|p| p.into_inner()).get(key) {
            return v.clone();
        }
        let mut values = self.values.write().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = values.get(key) {
            return v.clone();
        }
        if values.len() >= self.cap {
            return self.overflow.clone();
        }
        let value = Arc::new(make(Arc::from(key)));
        values.insert(key.into(), value.clone());
        value
    }
}

/// Every metric the hub keeps, and the registry that serves them.
pub struct HubMetrics {
    registry: Registry,
    clusters: Capped<ClusterMetrics>,
    unknown: Arc<ClusterMetrics>,
    groups: Capped<Arc<str>>,
    core_group: Arc<str>,
    non_resource: Arc<str>,
    requests: Family<RequestLabels, Counter>,
    duration: HistogramFamily<ClusterLabels>,
    head: HistogramFamily<ClusterLabels>,
    bytes: Family<BytesLabels, Counter>,
    upgraded: Family<ClusterLabels, Gauge>,
    flow_waits: Counter,
    flow_wait_seconds: Counter<f64, AtomicU64>,
    stream_wait: Histogram,
    agent_connects: Family<ClusterLabels, Counter>,
    forwarded: Family<ForwardLabels, Counter>,
    agent_disconnects: Family<ReasonLabels, Counter>,
    registrations: Counter,
    approvals: Family<DecisionLabels, Counter>,
    certificates: Family<CertificateLabels, Counter>,
    store_seconds: HistogramFamily<OperationLabels>,
    store_errors: Family<OperationLabels, Counter>,
    audit_events: Counter,
    audit_dropped: Counter,
    agents: Family<ClusterLabels, Gauge>,
    in_flight: Family<ClusterLabels, Gauge>,
    parked: Family<ClusterLabels, Gauge>,
    phases: Family<PhaseLabels, Gauge>,
    cluster_phase: Family<ClusterPhaseLabels, Gauge>,
    /// One scrape at a time refreshes the scrape-time gauges and encodes.
    scrape: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for HubMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubMetrics").finish_non_exhaustive()
    }
}

impl Default for HubMetrics {
    fn default() -> Self {
        Self::new(MAX_CLUSTER_LABELS, MAX_GROUP_LABELS)
    }
}

/// Where a request's bytes go, for the `direction` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the caller to the cluster.
    ToCluster,
    /// From the cluster to the caller.
    ToCaller,
}

/// Why an agent session ended, for `ferry_hub_agent_disconnects_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The hub shut down.
    Shutdown,
    /// The cluster was deleted or denied.
    Revoked,
    /// The agent certificate expired unrenewed.
    CertificateExpired,
    /// Three heartbeats were missed.
    HeartbeatsMissed,
    /// The agent closed its control stream.
    Closed,
    /// The control stream failed.
    Failed,
    /// The agent sent something it must not.
    ProtocolError,
}

impl DisconnectReason {
    fn label(self) -> &'static str {
        match self {
            DisconnectReason::Shutdown => "shutdown",
            DisconnectReason::Revoked => "revoked",
            DisconnectReason::CertificateExpired => "certificate_expired",
            DisconnectReason::HeartbeatsMissed => "heartbeats_missed",
            DisconnectReason::Closed => "closed",
            DisconnectReason::Failed => "failed",
            DisconnectReason::ProtocolError => "protocol_error",
        }
    }
}

pub use ferry::request_info::verb_label;

/// The `code` label: the status class (`2xx`...), `0` when no status was
/// sent at all.
pub fn code_class(code: u16) -> &'static str {
    match code {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "0",
    }
}

impl HubMetrics {
    /// Metrics with the given label caps (tests lower them).
    pub fn new(max_clusters: usize, max_groups: usize) -> Self {
        let mut registry = Registry::with_prefix("ferry_hub");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests through the gateway and the gRPC Proxy call, by cluster, verb, API group and status class (code 0: no response head was sent)",
            requests.clone(),
        );
        let duration: HistogramFamily<ClusterLabels> = Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "request_duration",
            "Whole requests at the hub, from arrival to the end of the response body; long-running requests (watch, logs, exec, attach, port-forward, proxy) are left out",
            Unit::Seconds,
            duration.clone(),
        );
        let head: HistogramFamily<ClusterLabels> = Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "response_head",
            "Time from a request's arrival to the cluster's response head (every request answered by a cluster, long-running ones included)",
            Unit::Seconds,
            head.clone(),
        );
        let bytes = Family::<BytesLabels, Counter>::default();
        registry.register_with_unit(
            "tunnel",
            "Body bytes carried between callers and clusters, upgraded connections included (direction to_cluster or to_caller)",
            Unit::Bytes,
            bytes.clone(),
        );
        let upgraded = Family::<ClusterLabels, Gauge>::default();
        registry.register(
            "upgraded_sessions",
            "Upgraded connections (exec, attach, port-forward) open now",
            upgraded.clone(),
        );
        let flow_waits = Counter::default();
        registry.register(
            "flow_control_waits",
            "Times the hub waited for room in a request stream towards an agent (the agent or its apiserver read slower than the caller sent)",
            flow_waits.clone(),
        );
        let flow_wait_seconds = Counter::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "flow_control_wait",
            "Time spent in those waits",
            Unit::Seconds,
            flow_wait_seconds.clone(),
        );
        let stream_wait = Histogram::new(LATENCY_BUCKETS);
        registry.register_with_unit(
            "stream_wait",
            "Time a request waited for a parked request stream of its cluster (0 when one was parked)",
            Unit::Seconds,
            stream_wait.clone(),
        );
        let agent_connects = Family::<ClusterLabels, Counter>::default();
        registry.register("agent_connects", "Agent sessions opened", agent_connects.clone());
        let forwarded = Family::<ForwardLabels, Counter>::default();
        registry.register(
            "forwarded_requests",
            "Requests forwarded between hub replicas, by role (sent: to a replica holding the cluster's agents; served: from another replica, through an agent session here)",
            forwarded.clone(),
        );
        let agent_disconnects = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "agent_disconnects",
            "Agent sessions ended, by reason (shutdown, revoked, certificate_expired, heartbeats_missed, closed, failed, protocol_error)",
            agent_disconnects.clone(),
        );
        let registrations = Counter::default();
        registry.register(
            "registrations",
            "Cluster registrations (each issues a bootstrap token)",
            registrations.clone(),
        );
        let approvals = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "approval_decisions",
            "Approvals and denials of clusters (decision approve or deny)",
            approvals.clone(),
        );
        let certificates = Family::<CertificateLabels, Counter>::default();
        registry.register(
            "agent_certificates",
            "Agent certificates issued or refused, at enrollment (kind enroll) and renewal (kind renew)",
            certificates.clone(),
        );
        let store_seconds: HistogramFamily<OperationLabels> = Family::new_with_constructor(store_histogram);
        registry.register_with_unit(
            "store_operation_duration",
            "Store operations, by operation",
            Unit::Seconds,
            store_seconds.clone(),
        );
        let store_errors = Family::<OperationLabels, Counter>::default();
        registry.register("store_errors", "Store operations that failed, by operation", store_errors.clone());
        let audit_events = Counter::default();
        registry.register("audit_events", "Audit events written", audit_events.clone());
        let audit_dropped = Counter::default();
        registry.register(
            "audit_events_dropped",
            "Audit events dropped because the audit writer fell behind (its queue was full)",
            audit_dropped.clone(),
        );
        let agents = Family::<ClusterLabels, Gauge>::default();
        registry.register("agents", "Connected agent sessions per cluster", agents.clone());
        let in_flight = Family::<ClusterLabels, Gauge>::default();
        registry.register(
            "open_requests",
            "Requests in flight per cluster (each holds a request stream)",
            in_flight.clone(),
        );
        let parked = Family::<ClusterLabels, Gauge>::default();
        registry.register(
            "parked_streams",
            "Idle request streams agents keep parked at the hub, per cluster",
            parked.clone(),
        );
        let phases = Family::<PhaseLabels, Gauge>::default();
        registry.register(
            "clusters",
            "Registered clusters by phase (pending, ready, not_ready, offline, denied)",
            phases.clone(),
        );
        let cluster_phase = Family::<ClusterPhaseLabels, Gauge>::default();
        registry.register(
            "cluster_phase",
            "1 for each registered cluster's current phase, 0 for the others (past the cluster label cap: how many clusters under _other are in that phase)",
            cluster_phase.clone(),
        );
        let build = Family::<VersionLabels, Gauge>::default();
        build.get_or_create(&VersionLabels { version: Fixed(ferry::FERRY_VERSION) }).set(1);
        registry.register("build_info", "The hub's version (value 1)", build);

        let unknown = Arc::new(cluster_handles(&bytes, &duration, &head, &upgraded, Arc::from(UNKNOWN)));
        let overflow = cluster_handles(&bytes, &duration, &head, &upgraded, Arc::from(OVERFLOW));
        let clusters = Capped::new(max_clusters, overflow);
        HubMetrics {
            registry,
            clusters,
            unknown,
            groups: Capped::new(max_groups, Arc::from(OVERFLOW)),
            core_group: Arc::from(""),
            non_resource: Arc::from(NON_RESOURCE),
            requests,
            duration,
            head,
            bytes,
            upgraded,
            flow_waits,
            flow_wait_seconds,
            stream_wait,
            agent_connects,
            forwarded,
            agent_disconnects,
            registrations,
            approvals,
            certificates,
            store_seconds,
            store_errors,
            audit_events,
            audit_dropped,
            agents,
            in_flight,
            parked,
            phases,
            cluster_phase,
            scrape: tokio::sync::Mutex::new(()),
        }
    }

    /// The handles of registered cluster `name` (shared past the cap).
    pub fn cluster(&self, name: &str) -> Arc<ClusterMetrics> {
        self.clusters.get(name, |label| {
            cluster_handles(&self.bytes, &self.duration, &self.head, &self.upgraded, label)
        })
    }

    /// The handles for requests not (yet) tied to a registered cluster.
    pub fn unknown_cluster(&self) -> Arc<ClusterMetrics> {
        self.unknown.clone()
    }

    fn group(&self, resource_request: bool, group: &str) -> Arc<str> {
        match (resource_request, group) {
            (false, _) => self.non_resource.clone(),
            (true, "") => self.core_group.clone(),
            (true, g) => (*self.groups.get(g, |label| label)).clone(),
        }
    }

    /// Counts one finished request.
    #[allow(clippy::too_many_arguments)]
    pub fn request_done(
        &self,
        cluster: &ClusterMetrics,
        verb: &str,
        resource_request: bool,
        group: &str,
        code: u16,
        elapsed: Duration,
        long_running: bool,
    ) {
        let labels = RequestLabels {
            cluster: cluster.label.clone(),
            verb: Fixed(verb_label(verb)),
            group: self.group(resource_request, group),
            code: Fixed(code_class(code)),
        };
        self.requests.get_or_create(&labels).inc();
        if !long_running {
            cluster.duration.observe(elapsed.as_secs_f64());
        }
    }

    /// Counts a request forwarded to (`sent`) or from (`served`) another
    /// hub replica.
    pub fn forwarded(&self, cluster: &str, role: &'static str) {
        let cluster = self.cluster(cluster).label.clone();
        self.forwarded.get_or_create(&ForwardLabels { cluster, role: Fixed(role) }).inc();
    }

    /// Records the time to a cluster's response head.
    pub fn response_head(&self, cluster: &ClusterMetrics, elapsed: Duration) {
        cluster.head.observe(elapsed.as_secs_f64());
    }

    /// An upgraded connection opened; the guard closes it in the gauge.
    pub fn upgraded_open(&self, cluster: &Arc<ClusterMetrics>) -> UpgradedGuard {
        cluster.upgraded.inc();
        UpgradedGuard(cluster.clone())
    }

    /// The handles a request-body pump counts flow-control waits with.
    pub fn flow(&self) -> FlowMeter {
        FlowMeter { waits: self.flow_waits.clone(), seconds: self.flow_wait_seconds.clone() }
    }

    /// Records how long a request waited for a parked stream.
    pub fn stream_wait(&self, waited: Duration) {
        self.stream_wait.observe(waited.as_secs_f64());
    }

    /// An agent session opened for cluster `name`.
    pub fn agent_connected(&self, name: &str) {
        let labels = ClusterLabels { cluster: self.cluster(name).label.clone() };
        self.agent_connects.get_or_create(&labels).inc();
    }

    /// An agent session of cluster `name` ended.
    pub fn agent_disconnected(&self, name: &str, reason: DisconnectReason) {
        let labels =
            ReasonLabels { cluster: self.cluster(name).label.clone(), reason: Fixed(reason.label()) };
        self.agent_disconnects.get_or_create(&labels).inc();
    }

    /// A cluster was registered (a bootstrap token issued).
    pub fn registered(&self) {
        self.registrations.inc();
    }

    /// A cluster was approved (`true`) or denied.
    pub fn decided(&self, approved: bool) {
        let decision = Fixed(if approved { "approve" } else { "deny" });
        self.approvals.get_or_create(&DecisionLabels { decision }).inc();
    }

    /// An agent certificate was issued or refused at enrollment or renewal.
    pub fn certificate(&self, renewal: bool, issued: bool) {
        let labels = CertificateLabels {
            kind: Fixed(if renewal { "renew" } else { "enroll" }),
            result: Fixed(if issued { "issued" } else { "refused" }),
        };
        self.certificates.get_or_create(&labels).inc();
    }

    /// A store operation took `elapsed`, and failed or not.
    pub fn store_op(&self, operation: &'static str, elapsed: Duration, failed: bool) {
        let labels = OperationLabels { operation: Fixed(operation) };
        self.store_seconds.get_or_create(&labels).observe(elapsed.as_secs_f64());
        if failed {
            self.store_errors.get_or_create(&labels).inc();
        }
    }

    /// An audit event was written (`true`) or dropped.
    pub fn audit(&self, written: bool) {
        if written {
            self.audit_events.inc()
        } else {
            self.audit_dropped.inc()
        };
    }

    /// Sets the gauges a scrape reads from live state: agents, requests in
    /// flight and parked streams per cluster, clusters by phase.
    async fn refresh(&self, state: &HubState) {
        let mut per_cluster: HashMap<Arc<str>, (i64, i64, i64)> = HashMap::new();
        for live in state.registry.clusters() {
            let label = self.cluster(&live.name).label.clone();
            let e = per_cluster.entry(label).or_default();
            e.0 += live.session_count() as i64;
            e.1 += live.in_flight() as i64;
            e.2 += live.parked_count() as i64;
        }
        self.agents.clear();
        self.in_flight.clear();
        self.parked.clear();
        for (cluster, (agents, in_flight, parked)) in per_cluster {
            let labels = ClusterLabels { cluster };
            self.agents.get_or_create(&labels).set(agents);
            self.in_flight.get_or_create(&labels).set(in_flight);
            self.parked.get_or_create(&labels).set(parked);
        }
        match tokio::time::timeout(SCRAPE_STORE_TIMEOUT, state.store.clusters()).await {
            Ok(Ok(records)) => {
                let mut counts: HashMap<&'static str, i64> = PHASES.into_iter().map(|p| (p, 0)).collect();
                let mut per_cluster: HashMap<(Arc<str>, &'static str), i64> = HashMap::new();
                for r in &records {
                    let phase = phase_label(r.status.current().map_or(Phase::Offline, |c| c.phase));
                    *counts.entry(phase).or_default() += 1;
                    let label = self.cluster(&r.name).label.clone();
                    for p in PHASES {
                        per_cluster.entry((label.clone(), p)).or_default();
                    }
                    *per_cluster.entry((label, phase)).or_default() += 1;
                }
                for (phase, n) in counts {
                    self.phases.get_or_create(&PhaseLabels { phase: Fixed(phase) }).set(n);
                }
                // Deleted clusters leave the family at the next scrape.
                self.cluster_phase.clear();
                for ((cluster, phase), n) in per_cluster {
                    self.cluster_phase
                        .get_or_create(&ClusterPhaseLabels { cluster, phase: Fixed(phase) })
                        .set(n);
                }
            }
            Ok(Err(e)) => warn!(error = %e, "metrics: cannot read the clusters' phases"),
            Err(_) => warn!("metrics: reading the clusters' phases timed out"),
        }
    }

    /// Encodes every metric: OpenMetrics text, or the Prometheus text
    /// format 0.0.4 when `openmetrics` is false.
    pub fn encode(&self, openmetrics: bool) -> String {
        let mut out = String::new();
        let encoded = if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &self.registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        };
        if let Err(e) = encoded {
            warn!(error = %e, "metrics could not be encoded");
        }
        out
    }
}

/// Resolves one cluster's handles in the families.
fn cluster_handles(
    bytes: &Family<BytesLabels, Counter>,
    duration: &HistogramFamily<ClusterLabels>,
    head: &HistogramFamily<ClusterLabels>,
    upgraded: &Family<ClusterLabels, Gauge>,
    label: Arc<str>,
) -> ClusterMetrics {
    let c = ClusterLabels { cluster: label.clone() };
    let b = |d| BytesLabels { cluster: label.clone(), direction: Fixed(d) };
    ClusterMetrics {
        to_cluster: bytes.get_or_create_owned(&b("to_cluster")),
        to_caller: bytes.get_or_create_owned(&b("to_caller")),
        duration: duration.get_or_create_owned(&c),
        head: head.get_or_create_owned(&c),
        upgraded: upgraded.get_or_create_owned(&c),
        label,
    }
}

/// Every `phase` label value.
const PHASES: [&str; 5] = ["pending", "ready", "not_ready", "offline", "denied"];

fn phase_label(phase: Phase) -> &'static str {
    match phase {
        Phase::Pending => "pending",
        Phase::Ready => "ready",
        Phase::NotReady => "not_ready",
        Phase::Offline => "offline",
        Phase::Denied => "denied",
    }
}

/// Keeps an upgraded connection in `ferry_hub_upgraded_sessions` while it
/// lives.
pub struct UpgradedGuard(Arc<ClusterMetrics>);

impl Drop for UpgradedGuard {
    fn drop(&mut self) {
        self.0.upgraded.dec();
    }
}

/// Counts the waits of a sender whose channel towards an agent is full.
#[derive(Clone, Debug)]
pub struct FlowMeter {
    waits: Counter,
    seconds: Counter<f64, AtomicU64>,
}

impl FlowMeter {
    /// Sends `item`, counting a wait when the channel has no room for it
    /// at once. `Err` when the channel is closed.
    pub async fn send<T>(&self, tx: &mpsc::Sender<T>, item: T) -> Result<(), T> {
        match tx.try_send(item) {
            Ok(()) => Ok(()),
            Err(TrySendError::Closed(item)) => Err(item),
            Err(TrySendError::Full(item)) => {
                self.waits.inc();
                let started = Instant::now();
                let sent = tx.send(item).await.map_err(|e| e.0);
                self.seconds.inc_by(started.elapsed().as_secs_f64());
                sent
            }
        }
    }
}

/// Which format a scraper asked for: OpenMetrics when its `Accept` names
/// it (Prometheus does), else the Prometheus text format.
fn wants_openmetrics(req: &Request<Incoming>) -> bool {
    req.headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"))
}

/// Content type of OpenMetrics text.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the Prometheus text format.
pub const PROMETHEUS_CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Serves `GET /metrics` on `listener` until the hub shuts down.
pub async fn serve(listener: TcpListener, state: Arc<HubState>) {
    let http = Arc::new({
        let mut b = hyper::server::conn::http1::Builder::new();
        b.timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
        b
    });
    loop {
        let (tcp, peer) = tokio::select! {
            () = state.shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "metrics endpoint: accept failed");
                    continue;
                }
            },
        };
        let (http, cancel, state2) = (http.clone(), state.shutdown.clone(), state.clone());
        state.tasks.spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let state = state2.clone();
                async move { Ok::<_, Infallible>(answer(&state, &req).await) }
            });
            let conn = http.serve_connection(TokioIo::new(tcp), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r {
                    debug!(%peer, error = %e, "metrics connection ended with an error");
                },
                () = cancel.cancelled() => conn.as_mut().graceful_shutdown(),
            }
        });
    }
}

async fn answer(
    state: &HubState,
    req: &Request<Incoming>,
) -> Response<http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>> {
    let text = |code: StatusCode, body: String, content_type: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
        *r.status_mut() = code;
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        r
    };
    if req.uri().path() != "/metrics" {
        return text(
            StatusCode::NOT_FOUND,
            "not found: metrics are at /metrics\n".into(),
            "text/plain; charset=utf-8",
        );
    }
    if !matches!(*req.method(), http::Method::GET | http::Method::HEAD) {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into(), "text/plain; charset=utf-8");
    }
    let openmetrics = wants_openmetrics(req);
    let metrics = &state.metrics;
    let body = {
        let _one = metrics.scrape.lock().await;
        metrics.refresh(state).await;
        metrics.encode(openmetrics)
    };
    let content_type = if openmetrics { OPENMETRICS_CONTENT_TYPE } else { PROMETHEUS_CONTENT_TYPE };
    text(StatusCode::OK, body, content_type)
}

/// Binds the metrics address: an explicit one must bind; the default one
/// is skipped with a warning when taken (another hub or a Prometheus on
/// this machine), so a second hub still starts.
pub async fn bind(addr: SocketAddr, explicit: bool) -> Result<Option<TcpListener>, std::io::Error> {
    match TcpListener::bind(addr).await {
        Ok(l) => Ok(Some(l)),
        Err(e) if !explicit && e.kind() == std::io::ErrorKind::AddrInUse => {
            warn!(
                %addr,
                "metrics are off: the default metrics address is in use; pass --metrics-listen ADDR (port 0 picks one) or --metrics-listen off"
            );
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_labels_are_capped_and_refusals_share_one() {
        let m = HubMetrics::new(2, 1);
        assert_eq!(&*m.cluster("a").label, "a");
        assert_eq!(&*m.cluster("b").label, "b");
        assert_eq!(&*m.cluster("c").label, OVERFLOW, "past the cap");
        assert_eq!(&*m.cluster("a").label, "a", "known clusters keep theirs");
        assert!(Arc::ptr_eq(&m.cluster("c"), &m.cluster("d")), "overflow shares one set of handles");
        assert_eq!(&*m.unknown_cluster().label, UNKNOWN);
        assert_eq!(&*m.group(true, "apps"), "apps");
        assert_eq!(&*m.group(true, "batch"), OVERFLOW);
        assert_eq!(&*m.group(true, ""), "");
        assert_eq!(&*m.group(false, "whatever"), NON_RESOURCE);
    }

    #[test]
    fn verbs_and_codes_come_from_fixed_sets() {
        assert_eq!(verb_label("watch"), "watch");
        assert_eq!(verb_label("post"), "post");
        assert_eq!(verb_label("brew"), "other");
        assert_eq!(verb_label(""), "other");
        assert_eq!(code_class(101), "1xx");
        assert_eq!(code_class(404), "4xx");
        assert_eq!(code_class(0), "0");
    }

    #[test]
    fn both_text_formats_encode() {
        let m = HubMetrics::default();
        let c = m.cluster("edge");
        c.to_caller.inc_by(10);
        m.request_done(&c, "list", true, "apps", 200, Duration::from_millis(3), false);
        let om = m.encode(true);
        assert!(om.ends_with("# EOF\n"), "{om}");
        assert!(om.contains("# TYPE ferry_hub_requests counter"), "{om}");
        assert!(
            om.contains(r#"ferry_hub_requests_total{cluster="edge",verb="list",group="apps",code="2xx"} 1"#),
            "{om}"
        );
        let text = m.encode(false);
        assert!(!text.contains("# EOF"), "{text}");
        assert!(text.contains("# TYPE ferry_hub_requests_total counter"), "{text}");
        assert!(
            text.contains(r#"ferry_hub_tunnel_bytes_total{cluster="edge",direction="to_caller"} 10"#),
            "{text}"
        );
        assert!(
            text.contains("ferry_hub_request_duration_seconds_bucket{cluster=\"edge\",le=\"0.005\"} 1"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn flow_waits_are_counted_only_when_the_channel_is_full() {
        use futures_util::FutureExt;
        let m = HubMetrics::default();
        let flow = m.flow();
        let (tx, mut rx) = mpsc::channel(1);
        flow.send(&tx, 1).await.expect("room");
        assert_eq!(m.flow_waits.get(), 0, "no wait while there is room");
        let mut second = Box::pin(flow.send(&tx, 2));
        assert!((&mut second).now_or_never().is_none(), "the channel is full");
        assert_eq!(m.flow_waits.get(), 1);
        assert_eq!(rx.recv().await, Some(1));
        second.await.expect("sent once there is room");
        assert_eq!(rx.recv().await, Some(2));
        assert_eq!(m.flow_waits.get(), 1);
        drop(tx);
        let (closed, receiver) = mpsc::channel::<u8>(1);
        drop(receiver);
        assert!(flow.send(&closed, 3).await.is_err(), "a closed channel");
    }
}

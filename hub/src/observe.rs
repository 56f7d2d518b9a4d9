//! One proxied request as metrics and the audit log see it: a
//! [`RequestRecord`] is made when a request arrives and emits exactly once,
//! when it is dropped: the request counter and latency histogram, and one
//! audit event (`request`, or `session.end` for an upgraded connection,
//! whose `session.start` is emitted when the cluster answers 101).
//!
//! The gateway wraps each response body in an [`ObservedBody`] that counts
//! the bytes sent and notes how the body ended; an upgraded connection's
//! record goes with the relay task instead. Either way the hooks in the
//! data path stay a few lines each.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use ferry::ids::RequestId;
use ferry::request_info::RequestInfo;
use http_body::{Body, Frame, SizeHint};
use prometheus_client::metrics::counter::Counter;

use crate::audit::{self, AuditEvent, AuditLog};
use crate::auth::Authenticated;
use crate::gateway::{BoxError, HubBody};
use crate::metrics::{ClusterMetrics, HubMetrics, UpgradedGuard};
use crate::state::HubState;

/// The caller side the request came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// The HTTPS gateway.
    Gateway,
    /// The gRPC `Proxy` call.
    Grpc,
}

/// How a request ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Still going (a record dropped in this state was cancelled).
    Open,
    /// The whole response went out (or the session ended in order).
    Completed,
    /// Failed, and why (no credentials or bodies in it).
    Failed(String),
}

/// Request-body bytes, counted by the pump that forwards them.
#[derive(Debug)]
pub struct BodyCount {
    total: AtomicU64,
    metric: Counter,
}

impl BodyCount {
    /// Counts `n` bytes sent towards the cluster.
    pub fn add(&self, n: usize) {
        self.total.fetch_add(n as u64, Ordering::Relaxed);
        self.metric.inc_by(n as u64);
    }
}

/// Live counters of an upgraded connection's bytes.
#[derive(Clone, Debug)]
pub struct Meter {
    /// Caller to cluster.
    pub to_cluster: Counter,
    /// Cluster to caller.
    pub to_caller: Counter,
    /// Waits for room towards the agent.
    pub flow: crate::metrics::FlowMeter,
}

/// What an upgraded connection moved, and why it ended if not in order.
#[derive(Clone, Debug, Default)]
pub struct Relayed {
    /// Bytes from the caller forwarded to the cluster.
    pub to_cluster: u64,
    /// Bytes from the cluster written to the caller.
    pub to_caller: u64,
    /// Why it ended early (`None`: both directions ended in order).
    pub failure: Option<String>,
}

/// One request, from arrival to its end.
pub struct RequestRecord {
    metrics: Arc<HubMetrics>,
    audit: Arc<AuditLog>,
    started: Instant,
    arrived: SystemTime,
    request_id: RequestId,
    via: Via,
    method: http::Method,
    path: String,
    query: Option<String>,
    client: Option<IpAddr>,
    caller: Option<(String, Vec<String>, &'static str)>,
    impersonated: String,
    cluster_name: String,
    cluster: Arc<ClusterMetrics>,
    code: u16,
    /// Request-body bytes counted by a pump.
    body: Option<Arc<BodyCount>>,
    /// Other bytes from the caller (upgraded connections).
    bytes_in: u64,
    bytes_out: u64,
    outcome: Outcome,
    /// Set once the cluster answered 101: the record ends a session.
    session: Option<UpgradedGuard>,
}

impl RequestRecord {
    /// A request that just arrived.
    pub fn start(
        state: &HubState,
        request_id: RequestId,
        via: Via,
        method: &http::Method,
        path: &str,
        query: Option<&str>,
        client: Option<IpAddr>,
    ) -> RequestRecord {
        RequestRecord {
            metrics: state.metrics.clone(),
            audit: state.audit.clone(),
            started: Instant::now(),
            arrived: SystemTime::now(),
            request_id,
            via,
            method: method.clone(),
            path: path.to_owned(),
            query: query.map(str::to_owned),
            client,
            caller: None,
            impersonated: String::new(),
            cluster_name: String::new(),
            cluster: state.metrics.unknown_cluster(),
            code: 0,
            body: None,
            bytes_in: 0,
            bytes_out: 0,
            outcome: Outcome::Open,
            session: None,
        }
    }

    /// The path below the cluster prefix, once known (the gateway learns it
    /// after authenticating).
    pub fn set_path(&mut self, path: &str) {
        path.clone_into(&mut self.path);
    }

    /// Who is calling.
    pub fn caller(&mut self, caller: &Authenticated) {
        let groups = if self.audit.enabled() { caller.identity.groups.clone() } else { Vec::new() };
        self.caller = Some((caller.identity.user.clone(), groups, caller.method.as_str()));
    }

    /// The cluster named in the request. Its metrics label is used only if
    /// the hub knows the cluster (a refused caller cannot mint label
    /// values); `admitted` says the request was let through to it.
    pub fn cluster(&mut self, state: &HubState, name: &str, admitted: bool) {
        name.clone_into(&mut self.cluster_name);
        if admitted || state.registry.get(name).is_some() {
            self.cluster = self.metrics.cluster(name);
        }
    }

    /// Whom the caller acts as (`kubectl --as`).
    pub fn impersonating(&mut self, user: &str) {
        user.clone_into(&mut self.impersonated);
    }

    /// The cluster's metric handles (for counting bytes as they flow).
    pub fn cluster_metrics(&self) -> &Arc<ClusterMetrics> {
        &self.cluster
    }

    /// The response head went out with `code`; `from_cluster` when the
    /// cluster answered it (not a hub refusal).
    pub fn head(&mut self, code: u16, from_cluster: bool) {
        self.code = code;
        if from_cluster {
            self.metrics.response_head(&self.cluster, self.started.elapsed());
        }
    }

    /// A counter for the request body's bytes (for the pump that sends it).
    pub fn body_count(&mut self) -> Arc<BodyCount> {
        self.body
            .get_or_insert_with(|| {
                Arc::new(BodyCount { total: AtomicU64::new(0), metric: self.cluster.to_cluster.clone() })
            })
            .clone()
    }

    /// Counts `n` bytes sent to the caller.
    pub fn sent(&mut self, n: usize) {
        self.bytes_out += n as u64;
        self.cluster.to_caller.inc_by(n as u64);
    }

    /// The live byte counters and flow meter of an upgraded connection.
    pub fn meter(&self) -> Meter {
        Meter {
            to_cluster: self.cluster.to_cluster.clone(),
            to_caller: self.cluster.to_caller.clone(),
            flow: self.metrics.flow(),
        }
    }

    /// An upgraded connection ended: its totals (already counted live in
    /// the metrics) and how it ended.
    pub fn relayed(&mut self, relayed: Relayed) {
        self.bytes_in += relayed.to_cluster;
        self.bytes_out += relayed.to_caller;
        self.outcome = match relayed.failure {
            None => Outcome::Completed,
            Some(why) => Outcome::Failed(why),
        };
    }

    /// Notes how the request ended (the last word wins).
    pub fn end(&mut self, outcome: Outcome) {
        self.outcome = outcome;
    }

    /// The cluster answered 101 (after [`RequestRecord::head`]): counts the
    /// request and emits `session.start`; the record now stands for the
    /// session, and dropping it emits `session.end`.
    pub fn session_started(&mut self) {
        self.code = 101;
        self.count();
        self.session = Some(self.metrics.upgraded_open(&self.cluster));
        if self.audit.enabled() {
            let mut e = self.event(audit::kind::SESSION_START);
            e.bytes_in = None;
            e.bytes_out = None;
            e.duration_ms = None;
            e.outcome = String::new();
            self.audit.record(e);
        }
    }

    fn info(&self) -> RequestInfo<'_> {
        RequestInfo::parse(&self.method, &self.path, self.query.as_deref())
    }

    fn count(&self) {
        let info = self.info();
        self.metrics.request_done(
            &self.cluster,
            &info.verb,
            info.is_resource_request,
            &info.api_group,
            self.code,
            self.started.elapsed(),
            info.is_long_running() || self.code == 101,
        );
    }

    fn event(&self, kind: &str) -> AuditEvent {
        let info = self.info();
        let (user, groups, method) = match &self.caller {
            Some((u, g, m)) => (u.clone(), g.clone(), *m),
            None => (String::new(), Vec::new(), "none"),
        };
        let outcome = match &self.outcome {
            Outcome::Open => "cancelled".to_owned(),
            Outcome::Completed => "completed".to_owned(),
            Outcome::Failed(why) => format!("failed: {why}"),
        };
        AuditEvent {
            time: audit::timestamp(if kind == audit::kind::SESSION_END {
                SystemTime::now()
            } else {
                self.arrived
            }),
            kind: kind.to_owned(),
            request_id: self.request_id.to_string(),
            user,
            groups,
            auth_method: method.to_owned(),
            impersonated_user: self.impersonated.clone(),
            client_address: self.client.map(|c| c.to_string()).unwrap_or_default(),
            cluster: self.cluster_name.clone(),
            via: match self.via {
                Via::Gateway => "gateway",
                Via::Grpc => "grpc",
            }
            .to_owned(),
            verb: info.verb.into_owned(),
            api_group: info.api_group.into_owned(),
            api_version: info.api_version.into_owned(),
            resource: info.resource.into_owned(),
            subresource: info.subresource.into_owned(),
            namespace: info.namespace.into_owned(),
            name: info.name.into_owned(),
            path: self.path.clone(),
            code: Some(self.code),
            bytes_in: Some(self.bytes_in + self.body.as_ref().map_or(0, |b| b.total.load(Ordering::Relaxed))),
            bytes_out: Some(self.bytes_out),
            duration_ms: Some(millis(self.started.elapsed())),
            outcome,
            action: String::new(),
            target: String::new(),
        }
    }
}

fn millis(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        let kind = if self.session.is_some() {
            audit::kind::SESSION_END
        } else {
            // Sessions were counted when they started.
            self.count();
            audit::kind::REQUEST
        };
        if self.audit.enabled() {
            self.audit.record(self.event(kind));
        }
    }
}

/// A response body that counts what it sends and ends the request's record
/// with it.
pub struct ObservedBody {
    inner: HubBody,
    record: RequestRecord,
}

impl ObservedBody {
    /// Wraps `inner`; `record` ends when the body does (or is dropped).
    pub fn wrap(inner: HubBody, mut record: RequestRecord, status: http::StatusCode) -> HubBody {
        // Bodies that are never read (HEAD, 204, 304) end with their head.
        if inner.is_end_stream()
            || record.method == http::Method::HEAD
            || status == http::StatusCode::NO_CONTENT
            || status == http::StatusCode::NOT_MODIFIED
        {
            record.end(Outcome::Completed);
        }
        http_body_util::BodyExt::boxed_unsync(ObservedBody { inner, record })
    }
}

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.record.sent(data.len());
                }
                // hyper stops polling a body that says it has ended (a
                // `Full` body, a known length), so its `None` never comes.
                if this.inner.is_end_stream() {
                    this.record.end(Outcome::Completed);
                }
            }
            Poll::Ready(Some(Err(e))) => this.record.end(Outcome::Failed(e.to_string())),
            Poll::Ready(None) => this.record.end(Outcome::Completed),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

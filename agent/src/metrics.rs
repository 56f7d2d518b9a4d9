//! The agent's Prometheus metrics (`--metrics-listen ADDR`, off by
//! default): its apiserver requests (latency to the response head, verb and
//! status class), requests and upgraded connections open, hub sessions and
//! why they ended, the control stream's heartbeat round trip, whether the
//! apiserver answers, and when the agent certificate expires.
//!
//! Every label comes from a fixed set (no user, path or cluster label: an
//! agent serves one cluster), and the request path costs a few atomic
//! operations and one counter lookup per request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::session::SessionError;

/// Buckets of apiserver latencies, seconds.
const LATENCY_BUCKETS: [f64; 15] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0];
/// Buckets of heartbeat round trips, seconds.
const RTT_BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// Content type of OpenMetrics text.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A label value from a fixed set.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct Fixed(&'static str);

impl EncodeLabelValue for Fixed {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.0, encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    verb: Fixed,
    code: Fixed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: Fixed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: Fixed,
}

/// How an apiserver request ended, for the `code` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The apiserver answered with this status (and the response was sent).
    Status(u16),
    /// The apiserver could not be reached, or its response broke off.
    Error,
    /// The hub cancelled the request, or the agent is stopping.
    Cancelled,
}

/// Every metric the agent keeps.
pub struct AgentMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    apiserver_head: Histogram,
    open: Gauge,
    upgraded: Gauge,
    connects: Counter,
    reconnects: Family<ReasonLabels, Counter>,
    connected: Gauge,
    rtt: Histogram,
    apiserver_up: Gauge,
    certificate_expiry: Gauge,
}

impl std::fmt::Debug for AgentMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentMetrics").finish_non_exhaustive()
    }
}

impl Default for AgentMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ferry_agent");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "apiserver_requests",
            "Requests replayed against the apiserver, by verb and outcome (code: 1xx..5xx, error: unreachable or broken off, cancelled: by the hub or a shutdown)",
            requests.clone(),
        );
        let apiserver_head = Histogram::new(LATENCY_BUCKETS);
        registry.register_with_unit(
            "apiserver_response_head",
            "Time from sending a request to the apiserver to its response head",
            Unit::Seconds,
            apiserver_head.clone(),
        );
        let open = Gauge::default();
        registry.register(
            "open_requests",
            "Requests being served now (each holds a request stream)",
            open.clone(),
        );
        let upgraded = Gauge::default();
        registry.register(
            "upgraded_sessions",
            "Upgraded connections (exec, attach, port-forward) open now",
            upgraded.clone(),
        );
        let connects = Counter::default();
        registry.register("sessions", "Hub sessions established", connects.clone());
        let reconnects = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "reconnects",
            "Hub sessions that ended and were retried, by reason (hub_unreachable, refused, unauthenticated, control_failed, no_welcome, protocol_version, closed, heartbeat_timeout, streams_refused, same_replica)",
            reconnects.clone(),
        );
        let connected = Gauge::default();
        registry.register(
            "connected",
            "Hub sessions up now (1 while connected; up to N with --hub-connections N)",
            connected.clone(),
        );
        let rtt = Histogram::new(RTT_BUCKETS);
        registry.register_with_unit(
            "heartbeat_rtt",
            "Round trip of heartbeats on the control stream",
            Unit::Seconds,
            rtt.clone(),
        );
        let apiserver_up = Gauge::default();
        registry.register(
            "apiserver_up",
            "1 when the last status probe reached the apiserver and its /readyz passed",
            apiserver_up.clone(),
        );
        let certificate_expiry = Gauge::default();
        registry.register_with_unit(
            "certificate_expiry_timestamp",
            "When the agent certificate in use expires, seconds since the Unix epoch",
            Unit::Seconds,
            certificate_expiry.clone(),
        );
        let build = Family::<VersionLabels, Gauge>::default();
        build.get_or_create(&VersionLabels { version: Fixed(ferry::FERRY_VERSION) }).set(1);
        registry.register("build_info", "The agent's version (value 1)", build);
        AgentMetrics {
            registry,
            requests,
            apiserver_head,
            open,
            upgraded,
            connects,
            reconnects,
            connected,
            rtt,
            apiserver_up,
            certificate_expiry,
        }
    }
}

/// One request in `ferry_agent_apiserver_requests_total`, counted once:
/// when the apiserver's response head goes to the hub (so the count is in
/// before the caller has its answer), or at the end for a request that
/// never got one.
pub(crate) struct RequestCount<'a> {
    metrics: &'a AgentMetrics,
    verb: &'static str,
    counted: AtomicBool,
}

impl RequestCount<'_> {
    /// The apiserver's head with `status` was sent on.
    pub(crate) fn answered(&self, status: u16) {
        self.ended(Answer::Status(status));
    }

    /// The request ended as `answer` (ignored when already counted).
    pub(crate) fn ended(&self, answer: Answer) {
        if !self.counted.swap(true, Ordering::Relaxed) {
            let labels = RequestLabels { verb: Fixed(self.verb), code: Fixed(answer_label(answer)) };
            self.metrics.requests.get_or_create(&labels).inc();
        }
    }
}

/// Keeps a gauge up while it lives.
pub(crate) struct Up(Gauge);

impl Drop for Up {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn answer_label(answer: Answer) -> &'static str {
    match answer {
        Answer::Status(100..=199) => "1xx",
        Answer::Status(200..=299) => "2xx",
        Answer::Status(300..=399) => "3xx",
        Answer::Status(400..=499) => "4xx",
        Answer::Status(500..=599) => "5xx",
        Answer::Status(_) | Answer::Error => "error",
        Answer::Cancelled => "cancelled",
    }
}

fn reason_label(error: &SessionError) -> &'static str {
    match error {
        SessionError::Hub(_) => "hub_unreachable",
        SessionError::Unauthenticated(_) => "unauthenticated",
        SessionError::Refused(_) => "refused",
        SessionError::Control { .. } => "control_failed",
        SessionError::NoWelcome(_) => "no_welcome",
        SessionError::Version { .. } => "protocol_version",
        SessionError::Closed => "closed",
        SessionError::HeartbeatTimeout(_) => "heartbeat_timeout",
        SessionError::ProxyRejected(_) => "streams_refused",
        SessionError::SameReplica(_) => "same_replica",
    }
}

impl AgentMetrics {
    /// A request started; the guard ends it in `ferry_agent_open_requests`.
    pub(crate) fn request_open(&self) -> Up {
        self.open.inc();
        Up(self.open.clone())
    }

    /// An upgraded connection started.
    pub(crate) fn upgraded_open(&self) -> Up {
        self.upgraded.inc();
        Up(self.upgraded.clone())
    }

    /// The apiserver answered a request's head after `elapsed`.
    pub(crate) fn apiserver_head(&self, elapsed: Duration) {
        self.apiserver_head.observe(elapsed.as_secs_f64());
    }

    /// One request's entry in `ferry_agent_apiserver_requests_total`.
    pub(crate) fn request<'a>(&'a self, verb: &str) -> RequestCount<'a> {
        RequestCount {
            metrics: self,
            verb: ferry::request_info::verb_label(verb),
            counted: AtomicBool::new(false),
        }
    }

    /// A hub session was established; the guard clears `connected`.
    pub(crate) fn session_up(&self) -> Up {
        self.connects.inc();
        self.connected.inc();
        Up(self.connected.clone())
    }

    /// A session ended with `error` and will be retried.
    pub(crate) fn session_failed(&self, error: &SessionError) {
        self.reconnects.get_or_create(&ReasonLabels { reason: Fixed(reason_label(error)) }).inc();
    }

    /// A heartbeat came back after `rtt`.
    pub(crate) fn heartbeat_rtt(&self, rtt: Duration) {
        self.rtt.observe(rtt.as_secs_f64());
    }

    /// What the last status probe found.
    pub(crate) fn apiserver_up(&self, up: bool) {
        self.apiserver_up.set(i64::from(up));
    }

    /// The certificate in use expires at `unix_seconds`.
    pub(crate) fn certificate_expires(&self, unix_seconds: u64) {
        self.certificate_expiry.set(i64::try_from(unix_seconds).unwrap_or(i64::MAX));
    }

    /// Every metric as OpenMetrics text, or the Prometheus text format
    /// 0.0.4 when `openmetrics` is false.
    pub fn encode(&self, openmetrics: bool) -> String {
        let mut out = String::new();
        let _ = if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &self.registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        };
        out
    }
}

/// The answer to a metrics request: (status, content type, body).
pub(crate) fn answer(metrics: &Arc<AgentMetrics>, path: &str, accept: &str) -> (u16, &'static str, String) {
    if path != "/metrics" {
        return (404, "text/plain; charset=utf-8", "not found: metrics are at /metrics\n".into());
    }
    let openmetrics = accept.contains("application/openmetrics-text");
    let content_type = if openmetrics {
        OPENMETRICS_CONTENT_TYPE
    } else {
        prometheus_client::encoding::prometheus_text::CONTENT_TYPE
    };
    (200, content_type, metrics.encode(openmetrics))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_come_from_fixed_sets_and_both_formats_encode() {
        let m = AgentMetrics::default();
        let list = m.request("list");
        list.answered(200);
        list.ended(Answer::Error);
        m.request("brew").ended(Answer::Status(700));
        m.request("watch").ended(Answer::Cancelled);
        m.session_failed(&SessionError::Closed);
        {
            let _open = m.request_open();
            assert!(m.encode(false).contains("ferry_agent_open_requests 1"));
        }
        let text = m.encode(false);
        assert!(text.contains(r#"ferry_agent_apiserver_requests_total{verb="list",code="2xx"} 1"#), "{text}");
        assert!(!text.contains(r#"verb="list",code="error""#), "a request is counted once: {text}");
        assert!(
            text.contains(r#"ferry_agent_apiserver_requests_total{verb="other",code="error"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"ferry_agent_apiserver_requests_total{verb="watch",code="cancelled"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"ferry_agent_reconnects_total{reason="closed"} 1"#), "{text}");
        assert!(text.contains("ferry_agent_open_requests 0"), "{text}");
        assert!(m.encode(true).ends_with("# EOF\n"));
        let metrics = Arc::new(m);
        assert_eq!(answer(&metrics, "/metrics", "application/openmetrics-text").1, OPENMETRICS_CONTENT_TYPE);
        assert_eq!(answer(&metrics, "/other", "").0, 404);
    }
}

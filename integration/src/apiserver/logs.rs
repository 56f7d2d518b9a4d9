//! Pod logs: lines appended by tests, read and followed through
//! `pods/{name}/log`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::stream;
use http::{Response, StatusCode};
use serde_json::Value;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::body::{self, ResponseBody};
use super::clock::rfc3339_nanos;
use super::resources::ResourceKind;
use super::router::Ctx;
use super::status::ApiError;
use super::store::ObjectKey;

/// Lines kept per pod; older ones are dropped.
pub(crate) const MAX_LOG_LINES_PER_POD: usize = 10_000;
/// Lines a following reader may fall behind before its stream ends.
pub(crate) const LOG_FOLLOW_LAG_CAPACITY: usize = 1_024;

/// One log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LogLine {
    pub at: SystemTime,
    /// The container it belongs to; `None` means the pod's default
    /// (first) container.
    pub container: Option<String>,
    /// The text, without its newline.
    pub text: String,
}

impl LogLine {
    /// Whether a reader of `container` (whose pod's first container is
    /// `default`) sees this line.
    pub fn visible_to(&self, container: &str, default: &str) -> bool {
        self.container.as_deref().unwrap_or(default) == container
    }
}

/// Something followers of a pod's log need to know.
#[derive(Clone, Debug)]
pub(crate) enum LogEvent {
    /// A new line.
    Line { namespace: String, pod: String, line: LogLine },
    /// The pod is gone: its log streams end.
    PodGone { namespace: String, pod: String },
}

type PodKey = (String, String);

/// Every pod's log.
#[derive(Debug)]
pub(crate) struct Logs {
    lines: Mutex<HashMap<PodKey, VecDeque<LogLine>>>,
    events: broadcast::Sender<Arc<LogEvent>>,
}

impl Logs {
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(LOG_FOLLOW_LAG_CAPACITY);
        Self { lines: Mutex::new(HashMap::new()), events }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<PodKey, VecDeque<LogLine>>> {
        self.lines.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends lines (split on `\n`) to a pod's log, for one container or
    /// the default one.
    pub fn append(&self, namespace: &str, pod: &str, container: Option<&str>, text: &str) {
        let mut all = self.lock();
        let lines = all.entry((namespace.to_string(), pod.to_string())).or_default();
        let text = text.strip_suffix('\n').unwrap_or(text);
        for t in text.split('\n') {
            let line = LogLine {
                at: SystemTime::now(),
                container: container.map(str::to_string),
                text: t.strip_suffix('\r').unwrap_or(t).to_string(),
            };
            if lines.len() >= MAX_LOG_LINES_PER_POD {
                lines.pop_front();
            }
            lines.push_back(line.clone());
            // No receivers is fine: nobody follows this log.
            let _ = self.events.send(Arc::new(LogEvent::Line {
                namespace: namespace.to_string(),
                pod: pod.to_string(),
                line,
            }));
        }
    }

    /// Forgets a deleted pod's log and ends its followers.
    pub fn pod_gone(&self, namespace: &str, pod: &str) {
        let mut all = self.lock();
        all.remove(&(namespace.to_string(), pod.to_string()));
        let _ = self
            .events
            .send(Arc::new(LogEvent::PodGone { namespace: namespace.to_string(), pod: pod.to_string() }));
    }

    /// Forgets the logs of every pod in a deleted namespace.
    pub fn namespace_gone(&self, namespace: &str) {
        let pods: Vec<String> =
            self.lock().keys().filter(|(ns, _)| ns == namespace).map(|(_, p)| p.clone()).collect();
        for pod in pods {
            self.pod_gone(namespace, &pod);
        }
    }

    /// The pod's current lines and, atomically with them, a subscription to
    /// what comes next.
    pub fn read(&self, namespace: &str, pod: &str) -> (Vec<LogLine>, broadcast::Receiver<Arc<LogEvent>>) {
        let all = self.lock();
        let rx = self.events.subscribe();
        let lines = all.get(&(namespace.to_string(), pod.to_string())).map(|l| l.iter().cloned().collect());
        (lines.unwrap_or_default(), rx)
    }
}

/// What one log request reads.
struct LogRequest {
    namespace: String,
    pod: String,
    container: String,
    default_container: String,
    timestamps: bool,
    since: Option<SystemTime>,
}

impl LogRequest {
    fn wants(&self, line: &LogLine) -> bool {
        line.visible_to(&self.container, &self.default_container) && self.since.is_none_or(|s| line.at >= s)
    }

    fn render(&self, line: &LogLine) -> String {
        if self.timestamps {
            format!("{} {}\n", rfc3339_nanos(line.at), line.text)
        } else {
            format!("{}\n", line.text)
        }
    }
}

fn container_names(pod: &Value, field: &str) -> Vec<String> {
    pod.pointer(&format!("/spec/{field}"))
        .and_then(Value::as_array)
        .map(|cs| cs.iter().filter_map(|c| c.get("name")?.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

fn non_negative(ctx: &Ctx<'_>, key: &str) -> Result<Option<u64>, ApiError> {
    match ctx.query.int(key).map_err(ApiError::bad_request)? {
        Some(v) => u64::try_from(v).map(Some).map_err(|_| {
            ApiError::unprocessable(format!(
                "PodLogOptions \"\" is invalid: {key}: Invalid value: {v}: must be greater than or equal to 0"
            ))
        }),
        None => Ok(None),
    }
}

fn truncate(mut chunk: String, remaining: &mut Option<u64>) -> String {
    if let Some(left) = remaining {
        let len = u64::try_from(chunk.len()).unwrap_or(u64::MAX);
        if len > *left {
            let mut cut = usize::try_from(*left).unwrap_or(usize::MAX);
            while !chunk.is_char_boundary(cut) {
                cut -= 1;
            }
            chunk.truncate(cut);
        }
        *left -= u64::try_from(chunk.len()).unwrap_or(0).min(*left);
    }
    chunk
}

struct Follow {
    req: LogRequest,
    rx: broadcast::Receiver<Arc<LogEvent>>,
    first: Option<Bytes>,
    remaining: Option<u64>,
    shutdown: CancellationToken,
}

async fn next_chunk(mut f: Follow) -> Option<(Bytes, Follow)> {
    if let Some(first) = f.first.take() {
        return Some((first, f));
    }
    loop {
        if f.remaining == Some(0) {
            return None;
        }
        let event = tokio::select! {
            () = f.shutdown.cancelled() => return None,
            event = f.rx.recv() => event,
        };
        match event {
            Ok(e) => match e.as_ref() {
                LogEvent::Line { namespace, pod, line }
                    if *namespace == f.req.namespace && *pod == f.req.pod && f.req.wants(line) =>
                {
                    let chunk = truncate(f.req.render(line), &mut f.remaining);
                    return Some((Bytes::from(chunk), f));
                }
                LogEvent::PodGone { namespace, pod }
                    if *namespace == f.req.namespace && *pod == f.req.pod =>
                {
                    return None;
                }
                _ => {}
            },
            // A reader this slow is cut off, as a kubelet would cut it off.
            Err(RecvError::Lagged(_) | RecvError::Closed) => return None,
        }
    }
}

/// `GET /api/v1/namespaces/{ns}/pods/{name}/log`.
pub(crate) fn serve_log(
    ctx: &Ctx<'_>,
    namespace: &str,
    name: &str,
) -> Result<Response<ResponseBody>, ApiError> {
    let pod = ctx
        .state
        .store
        .get(&ObjectKey::new(ResourceKind::Pod, namespace, name))
        .ok_or_else(|| ApiError::not_found("pods", name))?;
    let containers = container_names(&pod, "containers");
    let init = container_names(&pod, "initContainers");
    let default_container = containers.first().cloned().unwrap_or_default();
    let container = match ctx.query.non_empty("container") {
        Some(c) if containers.iter().chain(&init).any(|n| n == c) => c.to_string(),
        Some(c) => return Err(ApiError::bad_request(format!("container {c} is not valid for pod {name}"))),
        None if containers.len() == 1 => default_container.clone(),
        None => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                init.iter().chain(&containers).cloned().collect::<Vec<_>>().join(" ")
            )));
        }
    };
    if ctx.query.flag("previous") {
        return Err(ApiError::bad_request(format!(
            "previous terminated container \"{container}\" in pod \"{name}\" not found"
        )));
    }
    let tail = non_negative(ctx, "tailLines")?;
    let mut remaining = non_negative(ctx, "limitBytes")?;
    let since = non_negative(ctx, "sinceSeconds")?.map(|s| {
        SystemTime::now().checked_sub(std::time::Duration::from_secs(s)).unwrap_or(SystemTime::UNIX_EPOCH)
    });
    let req = LogRequest {
        namespace: namespace.to_string(),
        pod: name.to_string(),
        container,
        default_container,
        timestamps: ctx.query.flag("timestamps"),
        since,
    };
    let (lines, rx) = ctx.state.logs.read(namespace, name);
    let mut lines: Vec<&LogLine> = lines.iter().filter(|l| req.wants(l)).collect();
    if let Some(tail) = tail.and_then(|t| usize::try_from(t).ok()) {
        lines.drain(..lines.len().saturating_sub(tail));
    }
    let text = truncate(lines.iter().map(|l| req.render(l)).collect(), &mut remaining);
    if !ctx.query.flag("follow") {
        return Ok(body::respond(StatusCode::OK, "text/plain", ResponseBody::full(text)));
    }
    let follow = Follow {
        req,
        rx,
        first: (!text.is_empty()).then(|| Bytes::from(text)),
        remaining,
        shutdown: ctx.state.shutdown.clone(),
    };
    Ok(body::respond(StatusCode::OK, "text/plain", ResponseBody::stream(stream::unfold(follow, next_chunk))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appended_lines_are_read_and_followed() {
        let logs = Logs::new();
        logs.append("ns", "p", None, "one\ntwo\n");
        let (lines, mut rx) = logs.read("ns", "p");
        assert_eq!(lines.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(), ["one", "two"]);
        assert!(lines[0].visible_to("main", "main"));
        assert!(!lines[0].visible_to("side", "main"));
        logs.append("ns", "p", Some("side"), "three");
        match rx.try_recv().expect("event").as_ref() {
            LogEvent::Line { line, .. } => assert!(line.visible_to("side", "main")),
            other => panic!("unexpected {other:?}"),
        }
        logs.pod_gone("ns", "p");
        assert!(matches!(rx.try_recv().expect("gone").as_ref(), LogEvent::PodGone { .. }));
        assert!(logs.read("ns", "p").0.is_empty());
    }
}

//! The audit log (`--audit-log PATH|-|off`): one JSON object per line for
//! every proxied request, the start and end of every upgraded connection
//! (exec, attach, port-forward), and every management change, with who did
//! it. `ferryctl audit` reads it back through `ferry.v1.Audit/Events`.
//!
//! What an event never holds: a credential (token, key, certificate), a
//! header, a query string or a body. Paths are recorded without their
//! query; identities are names only.
//!
//! Events go through a bounded queue ([`QUEUE`]) to one writer thread,
//! which writes them in batches and rotates the file by size
//! (`--audit-log-max-size`, keeping `--audit-log-max-backups` older files as
//! `PATH.1` (newest) to `PATH.N`). A request never waits for the disk: when
//! the queue is full the event is dropped and counted
//! (`ferry_hub_audit_events_dropped_total`), and a warning is logged.
//!
//! Readers get what is on disk (or, with `-`, the last [`MEMORY_EVENTS`]
//! events kept in memory), then new events as the writer publishes them;
//! each event's position in the log tells the two apart, so a follower sees
//! every event once.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};
use tracing::{error, warn};

use crate::metrics::HubMetrics;

/// Default largest size of the audit file before it is rotated.
pub const DEFAULT_MAX_SIZE: u64 = 100 * 1024 * 1024;
/// Default number of rotated audit files kept.
pub const DEFAULT_MAX_BACKUPS: u32 = 5;
/// Smallest `--audit-log-max-size` accepted (one event is at most a few KiB).
pub const MIN_MAX_SIZE: u64 = 64 * 1024;
/// Most rotated files kept.
pub const MAX_BACKUPS: u32 = 1000;
/// Events queued for the writer; more are dropped (and counted).
pub const QUEUE: usize = 8192;
/// Events a writer batch takes from the queue before it flushes.
const BATCH: usize = 512;
/// How long the writer lets events gather after a batch that did not fill
/// up. Waiting in `recv`, the writer thread is woken (a futex call, a
/// context switch) by every event, that is by every proxied request; after
/// a batch it sleeps instead, events queue without waking anyone, and the
/// next batch takes all of them with one write. Events reach the file and
/// followers (`ferryctl audit -f`) at most this much later.
pub const LINGER: std::time::Duration = std::time::Duration::from_millis(10);
/// New events buffered for each follower (`ferryctl audit -f`); one that
/// falls further behind is told so and ended.
pub const FOLLOW_BUFFER: usize = 1024;
/// Events kept in memory for readers when the log goes to stdout.
pub const MEMORY_EVENTS: usize = 1024;
/// Most events one `Events` call returns from the log before following.
pub const MAX_QUERY_EVENTS: usize = 10_000;

/// Where events go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sink {
    /// Nowhere (`--audit-log off`).
    Off,
    /// Standard output (`--audit-log -`), one line per event.
    Stdout,
    /// A file, rotated by size.
    File {
        /// The file.
        path: PathBuf,
        /// Rotate once it would grow past this.
        max_size: u64,
        /// Rotated files kept.
        max_backups: u32,
    },
}

/// What an event is about.
pub mod kind {
    /// A proxied request (not upgraded).
    pub const REQUEST: &str = "request";
    /// An upgraded connection (exec, attach, port-forward) started: the
    /// cluster answered 101.
    pub const SESSION_START: &str = "session.start";
    /// An upgraded connection ended.
    pub const SESSION_END: &str = "session.end";
    /// A change made through the management API (or an agent enrolling).
    pub const MANAGEMENT: &str = "management";
}

/// One audit event, as written (one JSON object per line). Empty fields
/// are left out.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    /// When: RFC 3339, UTC, milliseconds (for requests, when it arrived).
    pub time: String,
    /// [`kind`]: `request`, `session.start`, `session.end`, `management`.
    pub kind: String,
    /// The request id that hub and agent logs carry too.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub request_id: String,
    /// Who: the authenticated user (empty when the caller presented no
    /// valid credential).
    #[serde(default)]
    pub user: String,
    /// The caller's groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// How the caller authenticated: `cert`, `token`, `bootstrap-token`
    /// (agent enrollment), or `none`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub auth_method: String,
    /// Whom the caller acted as (`kubectl --as`), when allowed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub impersonated_user: String,
    /// The caller's IP address as the hub saw it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_address: String,
    /// The cluster (as named in the request, or the one acted on).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster: String,
    /// `gateway` (HTTPS) or `grpc` (the `Proxy` call).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub via: String,
    /// The apiserver's verb (`get`, `list`, `watch`, `create`, ...), or the
    /// lower-case method for non-resource paths.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub verb: String,
    /// API group (empty: core).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_group: String,
    /// API version.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    /// Resource.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource: String,
    /// Subresource (`log`, `exec`, `status`, ...).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subresource: String,
    /// Namespace.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Object name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The path on the cluster's apiserver, without the query.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// The HTTP status answered (0: none was sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    /// Body bytes from the caller to the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_in: Option<u64>,
    /// Body bytes from the cluster to the caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_out: Option<u64>,
    /// Milliseconds from arrival to the end (of the response, or of the
    /// session).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<f64>,
    /// How it ended: `completed`, `cancelled` (the caller went away),
    /// `failed: ...`, `idle timeout`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub outcome: String,
    /// For management events: what was done (`cluster.register`,
    /// `cluster.approve`, `grant.create`, ...).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub action: String,
    /// For management events: what it was done to besides the cluster (a
    /// user or group, a token id, an agent id, labels).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target: String,
}

impl AuditEvent {
    /// An event of `kind` stamped now.
    pub fn new(kind: &str) -> Self {
        AuditEvent { time: timestamp(SystemTime::now()), kind: kind.to_owned(), ..Default::default() }
    }

    /// When it happened (`None` for an unreadable time).
    pub fn at(&self) -> Option<SystemTime> {
        humantime::parse_rfc3339_weak(&self.time).ok()
    }
}

/// RFC 3339 in UTC with milliseconds.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Which events a reader wants.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Only this cluster.
    pub cluster: Option<String>,
    /// Only this user.
    pub user: Option<String>,
    /// Only events at or after this time.
    pub since: Option<SystemTime>,
}

impl Filter {
    /// Whether `event` passes.
    pub fn matches(&self, event: &AuditEvent) -> bool {
        self.cluster.as_ref().is_none_or(|c| *c == event.cluster)
            && self.user.as_ref().is_none_or(|u| *u == event.user)
            && self.since.is_none_or(|since| event.at().is_some_and(|t| t >= since))
    }
}

/// Where an event ends in the log: the file's generation (rotations so
/// far) and the byte offset after its line; with `-`, its sequence number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    generation: u64,
    offset: u64,
}

/// A published event and its place in the log.
pub type Published = (Cursor, Arc<AuditEvent>);

enum Msg {
    Event(Box<AuditEvent>),
    Close,
}

/// What the writer and the readers share.
struct Shared {
    sink: Sink,
    /// The end of what is written and flushed; held by the writer while it
    /// writes a batch (and rotates), so a reader opens files that match it.
    position: Mutex<Cursor>,
    /// With `-`: the last events, for readers.
    memory: Mutex<VecDeque<Published>>,
    live: broadcast::Sender<Published>,
}

/// The audit log: a handle to queue events, and readers.
pub struct AuditLog {
    queue: Option<mpsc::Sender<Msg>>,
    shared: Arc<Shared>,
    metrics: Arc<HubMetrics>,
    /// Set while events are being dropped (one warning per episode).
    dropping: AtomicBool,
    writer: Mutex<Option<Writer>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").field("sink", &self.shared.sink).finish_non_exhaustive()
    }
}

/// The writer before it runs.
struct Writer {
    rx: mpsc::Receiver<Msg>,
    out: Output,
}

enum Output {
    Stdout,
    File { file: BufWriter<File>, size: u64 },
}

impl AuditLog {
    /// Opens the sink (creating the file, 0600) so a bad path fails at
    /// start; nothing is written until [`AuditLog::start`].
    pub fn open(sink: Sink, metrics: Arc<HubMetrics>) -> std::io::Result<AuditLog> {
        let (live, _) = broadcast::channel(FOLLOW_BUFFER);
        let mut position = Cursor::default();
        let (queue, writer) = match &sink {
            Sink::Off => (None, None),
            Sink::Stdout => {
                let (tx, rx) = mpsc::channel(QUEUE);
                (Some(tx), Some(Writer { rx, out: Output::Stdout }))
            }
            Sink::File { path, .. } => {
                let file = open_append(path)?;
                let size = file.metadata()?.len();
                position.offset = size;
                let (tx, rx) = mpsc::channel(QUEUE);
                (Some(tx), Some(Writer { rx, out: Output::File { file: BufWriter::new(file), size } }))
            }
        };
        Ok(AuditLog {
            queue,
            shared: Arc::new(Shared { sink, position: Mutex::new(position), memory: Mutex::default(), live }),
            metrics,
            dropping: AtomicBool::new(false),
            writer: Mutex::new(writer),
            task: Mutex::default(),
        })
    }

    /// A log that records nothing (tests, embedders).
    pub fn off(metrics: Arc<HubMetrics>) -> AuditLog {
        match AuditLog::open(Sink::Off, metrics) {
            Ok(log) => log,
            Err(_) => unreachable!("opening no sink cannot fail"),
        }
    }

    /// Whether events are recorded at all.
    pub fn enabled(&self) -> bool {
        self.queue.is_some()
    }

    /// Where events go.
    pub fn sink(&self) -> &Sink {
        &self.shared.sink
    }

    /// Starts the writer thread; [`AuditLog::close`] stops it.
    pub fn start(&self) {
        let Some(writer) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() else { return };
        let (shared, metrics) = (self.shared.clone(), self.metrics.clone());
        let task = tokio::task::spawn_blocking(move || write_loop(writer, &shared, &metrics));
        *self.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
    }

    /// Writes what is queued, then stops the writer.
    pub async fn close(&self) {
        if let Some(queue) = &self.queue {
            let _ = queue.send(Msg::Close).await;
        }
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// Queues an event; never waits (a full queue drops it, counted).
    pub fn record(&self, event: AuditEvent) {
        let Some(queue) = &self.queue else { return };
        match queue.try_send(Msg::Event(Box::new(event))) {
            Ok(()) => {
                if self.dropping.swap(false, Ordering::Relaxed) {
                    warn!("the audit writer caught up; events are recorded again");
                }
            }
            Err(_) => {
                self.metrics.audit(false);
                if !self.dropping.swap(true, Ordering::Relaxed) {
                    warn!(
                        queue = QUEUE,
                        "audit events are being dropped: the audit writer cannot keep up (see ferry_hub_audit_events_dropped_total)"
                    );
                }
            }
        }
    }

    /// Follows new events from now on (subscribe before reading the
    /// history, then skip what the history had).
    pub fn subscribe(&self) -> broadcast::Receiver<Published> {
        self.shared.live.subscribe()
    }

    /// The logged events that pass `filter`, oldest first, at most `limit`
    /// (the newest ones), and the position they end at. Reads files on a
    /// blocking thread.
    pub async fn history(&self, filter: Filter, limit: usize) -> std::io::Result<(Vec<AuditEvent>, Cursor)> {
        let shared = self.shared.clone();
        match &shared.sink {
            Sink::Off => Ok((Vec::new(), Cursor::default())),
            Sink::Stdout => {
                let memory = shared.memory.lock().unwrap_or_else(|p| p.into_inner());
                let end = memory.back().map(|(c, _)| *c).unwrap_or_default();
                let mut events: VecDeque<AuditEvent> = VecDeque::new();
                for (_, e) in memory.iter().filter(|(_, e)| filter.matches(e)) {
                    events.push_back((**e).clone());
                    if events.len() > limit {
                        events.pop_front();
                    }
                }
                Ok((events.into(), end))
            }
            Sink::File { path, max_backups, .. } => {
                let (path, backups) = (path.clone(), *max_backups);
                tokio::task::spawn_blocking(move || read_files(&shared, &path, backups, &filter, limit))
                    .await
                    .map_err(std::io::Error::other)?
            }
        }
    }
}

/// Opens (or creates, 0600) a file for appending.
fn open_append(path: &Path) -> std::io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// `PATH.n`.
fn backup(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

fn write_loop(mut writer: Writer, shared: &Shared, metrics: &HubMetrics) {
    let mut batch: Vec<Box<AuditEvent>> = Vec::with_capacity(BATCH);
    let mut line = Vec::with_capacity(1024);
    let mut published: Vec<Published> = Vec::with_capacity(BATCH);
    let mut closing = false;
    while !closing {
        let mut full = false;
        match writer.rx.blocking_recv() {
            Some(Msg::Event(e)) => batch.push(e),
            Some(Msg::Close) | None => closing = true,
        }
        while !closing {
            if batch.len() == BATCH {
                full = true;
                break;
            }
            match writer.rx.try_recv() {
                Ok(Msg::Event(e)) => batch.push(e),
                Ok(Msg::Close) => closing = true,
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            continue;
        }
        let mut position = shared.position.lock().unwrap_or_else(|p| p.into_inner());
        for event in batch.drain(..) {
            line.clear();
            if serde_json::to_writer(&mut line, &*event).is_err() {
                continue;
            }
            line.push(b'\n');
            let written = match &mut writer.out {
                Output::Stdout => {
                    let mut out = std::io::stdout().lock();
                    out.write_all(&line).map(|()| {
                        position.offset += 1;
                    })
                }
                Output::File { file, size } => {
                    let rotated = match &shared.sink {
                        Sink::File { path, max_size, max_backups }
                            if *size > 0 && *size + line.len() as u64 > *max_size =>
                        {
                            rotate(file, path, *max_backups).map(|()| {
                                *size = 0;
                                position.generation += 1;
                                position.offset = 0;
                            })
                        }
                        _ => Ok(()),
                    };
                    rotated.and_then(|()| file.write_all(&line)).map(|()| {
                        *size += line.len() as u64;
                        position.offset = *size;
                    })
                }
            };
            match written {
                Ok(()) => {
                    metrics.audit(true);
                    published.push((*position, Arc::from(event)));
                }
                Err(e) => {
                    metrics.audit(false);
                    error!(error = %e, "cannot write the audit log");
                }
            }
        }
        let flushed = match &mut writer.out {
            Output::Stdout => std::io::stdout().lock().flush(),
            Output::File { file, .. } => file.flush(),
        };
        if let Err(e) = flushed {
            error!(error = %e, "cannot write the audit log");
        }
        drop(position);
        if shared.sink == Sink::Stdout {
            let mut memory = shared.memory.lock().unwrap_or_else(|p| p.into_inner());
            for p in &published {
                memory.push_back(p.clone());
                if memory.len() > MEMORY_EVENTS {
                    memory.pop_front();
                }
            }
        }
        for p in published.drain(..) {
            // No follower is fine.
            let _ = shared.live.send(p);
        }
        if !full && !closing {
            std::thread::sleep(LINGER);
        }
    }
}

/// Moves `PATH` to `PATH.1` (and older ones one up, dropping the oldest)
/// and starts a new `PATH`.
fn rotate(file: &mut BufWriter<File>, path: &Path, max_backups: u32) -> std::io::Result<()> {
    file.flush()?;
    if max_backups == 0 {
        *file = BufWriter::new(File::create(path).and_then(|_| open_append(path))?);
        return Ok(());
    }
    let _ = std::fs::remove_file(backup(path, max_backups));
    for n in (1..max_backups).rev() {
        match std::fs::rename(backup(path, n), backup(path, n + 1)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    std::fs::rename(path, backup(path, 1))?;
    *file = BufWriter::new(open_append(path)?);
    Ok(())
}

/// Reads the rotated files (oldest first) and the current one up to the
/// writer's position, keeping the last `limit` events that pass `filter`.
fn read_files(
    shared: &Shared,
    path: &Path,
    max_backups: u32,
    filter: &Filter,
    limit: usize,
) -> std::io::Result<(Vec<AuditEvent>, Cursor)> {
    // Opened under the writer's lock: a rotation cannot slip between the
    // position and the files.
    let (position, files, current) = {
        let position = shared.position.lock().unwrap_or_else(|p| p.into_inner());
        let mut files = Vec::new();
        for n in (1..=max_backups).rev() {
            if let Ok(f) = File::open(backup(path, n)) {
                files.push(f);
            }
        }
        (*position, files, File::open(path)?)
    };
    let mut kept: VecDeque<AuditEvent> = VecDeque::new();
    let mut keep = |line: &str| {
        if let Ok(event) = serde_json::from_str::<AuditEvent>(line)
            && filter.matches(&event)
        {
            kept.push_back(event);
            if kept.len() > limit {
                kept.pop_front();
            }
        }
    };
    for f in files {
        for line in BufReader::new(f).lines() {
            keep(&line?);
        }
    }
    for line in BufReader::new(current.take(position.offset)).lines() {
        keep(&line?);
    }
    Ok((kept.into(), position))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(user: &str, cluster: &str) -> AuditEvent {
        AuditEvent { user: user.into(), cluster: cluster.into(), ..AuditEvent::new(kind::REQUEST) }
    }

    #[tokio::test]
    async fn events_are_written_rotated_and_read_back_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        let sink = Sink::File { path: path.clone(), max_size: 2048, max_backups: 2 };
        let metrics = Arc::new(HubMetrics::default());
        let log = AuditLog::open(sink, metrics).expect("open");
        let mut live = log.subscribe();
        log.start();
        for i in 0..100 {
            log.record(event(&format!("user-{i}"), if i % 2 == 0 { "a" } else { "b" }));
        }
        log.close().await;
        assert!(backup(&path, 1).exists() && backup(&path, 2).exists(), "rotated twice at least");
        assert!(!backup(&path, 3).exists(), "at most 2 backups are kept");
        for p in [path.clone(), backup(&path, 1)] {
            assert!(
                std::fs::metadata(&p).expect("file").len() <= 2048,
                "{} is within the limit",
                p.display()
            );
        }
        let (all, end) = log.history(Filter::default(), usize::MAX).await.expect("read");
        assert!(!all.is_empty() && all.len() < 100, "the oldest rotated away: {}", all.len());
        let users: Vec<usize> =
            all.iter().map(|e| e.user.trim_start_matches("user-").parse().expect("n")).collect();
        assert!(users.windows(2).all(|w| w[1] == w[0] + 1), "in order, none missing: {users:?}");
        assert_eq!(users.last(), Some(&99));
        let mut last = None;
        while let Ok((cursor, e)) = live.try_recv() {
            assert!(last.is_none_or(|l| cursor > l), "cursors grow");
            last = Some(cursor);
            assert!(e.user.starts_with("user-"));
        }
        assert_eq!(last, Some(end), "the history ends where the live events did");
        let only_b = Filter { cluster: Some("b".into()), ..Default::default() };
        let (b, _) = log.history(only_b, 3).await.expect("read");
        assert_eq!(b.iter().map(|e| e.user.as_str()).collect::<Vec<_>>(), ["user-95", "user-97", "user-99"]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("file").permissions().mode();
            assert_eq!(mode & 0o077, 0, "the audit log is private");
        }
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = Sink::File { path: dir.path().join("a.log"), max_size: DEFAULT_MAX_SIZE, max_backups: 1 };
        let metrics = Arc::new(HubMetrics::default());
        let log = AuditLog::open(sink, metrics.clone()).expect("open");
        // Not started: nothing drains the queue.
        for _ in 0..QUEUE + 5 {
            log.record(event("u", "c"));
        }
        let text = metrics.encode(false);
        assert!(text.contains("ferry_hub_audit_events_dropped_total 5"), "{text}");
    }

    #[test]
    fn empty_fields_are_left_out_and_events_read_back() {
        let mut e = event("alice", "edge");
        e.code = Some(200);
        e.bytes_out = Some(0);
        let line = serde_json::to_string(&e).expect("json");
        assert!(!line.contains("namespace") && !line.contains("action"), "{line}");
        assert!(line.contains(r#""bytesOut":0"#) && line.contains(r#""code":200"#), "{line}");
        let back: AuditEvent = serde_json::from_str(&line).expect("parse");
        assert_eq!(back, e);
        assert!(back.at().is_some());
    }
}

//! The eight scenarios of issue 4. Each measures the direct path and the
//! tunnel path in the same run, alternating where it repeats, and returns
//! its rows.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use http::StatusCode;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::task::JoinSet;

use crate::backend::{self, Backend};
use crate::client::{Conn, Proto, Target, ms, percentile, timed};
use crate::procs::{self, ProcStats};
use crate::references::Reference;
use crate::report::{Goal, RefRow, Row};

/// The small GET (1 KiB ConfigMap).
pub const SMALL: &str = "/api/v1/namespaces/default/configmaps/small";
/// The large LIST.
pub const LIST: &str = "/api/v1/configmaps";
/// A watch on the LIST's collection.
pub const WATCH: &str = "/api/v1/configmaps?watch=1";
/// The stalled readers' endless body.
pub const STALL: &str = "/api/v1/secrets";
/// The upgraded echo stream.
pub const ECHO: &str = "/api/v1/namespaces/default/pods/echo/portforward";
/// The upgraded endless source.
pub const SOURCE: &str = "/api/v1/namespaces/default/pods/source/portforward";
/// Responses with a body that must pass through compressed.
pub const GZIPPED: &str = "/api/v1/namespaces/default/configmaps/gzipped";
/// A request slower than this counts as failed (a stalled tunnel).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Watches per client HTTP/2 connection (below the backend's stream limit).
pub const WATCHES_PER_CONN: usize = 500;
/// How long to wait for all watches to open or all events to arrive.
pub const WATCH_TIMEOUT: Duration = Duration::from_secs(120);

/// Sizes and durations of one run.
#[derive(Clone, Debug)]
pub struct Profile {
    /// Requests per path in scenarios 1 (sequential).
    pub sequential: usize,
    /// Alternating rounds in scenarios 1, 2 and 7.
    pub rounds: usize,
    /// Requests per path in scenario 7 (fresh connections).
    pub fresh: usize,
    /// Concurrent clients in scenarios 2 and 6.
    pub clients: usize,
    /// Length of one load round in scenarios 2 and 6.
    pub load_round: Duration,
    /// Large LIST body size.
    pub list_bytes: usize,
    /// LISTs per path and HTTP version.
    pub list_reps: usize,
    /// Bytes each way per upgraded stream.
    pub stream_bytes: u64,
    /// Upgraded streams per path.
    pub stream_reps: usize,
    /// Concurrent watches in scenario 5.
    pub watches: usize,
    /// Simulated agents in scenario 8.
    pub agents: usize,
    /// Runs of scenario 9 (upgraded-stream integrity).
    pub integrity: crate::integrity::Plan,
    /// Sizes of scenario 10 (the forwarded path between hub replicas).
    pub forwarded: crate::forwarded::Plan,
}

impl Profile {
    /// The full run (issue 4's figures).
    pub fn full() -> Self {
        Self {
            sequential: 10_000,
            rounds: 5,
            fresh: 1_000,
            clients: 64,
            load_round: Duration::from_secs(4),
            list_bytes: 50 * 1024 * 1024,
            list_reps: 4,
            stream_bytes: 1024 * 1024 * 1024,
            stream_reps: 2,
            watches: 10_000,
            agents: 10_000,
            integrity: crate::integrity::Plan {
                tunnel_runs: 300,
                direct_runs: 100,
                big_runs: 8,
                stall_runs: 8,
            },
            forwarded: crate::forwarded::Plan {
                sequential: 10_000,
                rounds: 5,
                load_round: Duration::from_secs(4),
                registrations: 50,
            },
        }
    }

    /// `--quick`: a smoke run under two minutes.
    pub fn quick() -> Self {
        Self {
            sequential: 2_000,
            rounds: 4,
            fresh: 200,
            clients: 64,
            load_round: Duration::from_secs(2),
            list_bytes: 8 * 1024 * 1024,
            list_reps: 3,
            stream_bytes: 64 * 1024 * 1024,
            stream_reps: 2,
            watches: 1_000,
            agents: 1_000,
            integrity: crate::integrity::Plan {
                tunnel_runs: 24,
                direct_runs: 12,
                big_runs: 1,
                stall_runs: 1,
            },
            forwarded: crate::forwarded::Plan {
                sequential: 600,
                rounds: 2,
                load_round: Duration::from_millis(500),
                registrations: 20,
            },
        }
    }
}

/// What the scenarios run against.
pub struct Ctx<'a> {
    /// Sizes.
    pub profile: &'a Profile,
    /// Client → backend.
    pub direct: &'a Target,
    /// Client → hub → agent → backend.
    pub tunnel: &'a Target,
    /// The backend (watch trigger and counters).
    pub backend: &'a Backend,
    /// Hub pid.
    pub hub_pid: u32,
    /// Agent pid.
    pub agent_pid: u32,
    /// Reference paths measured beside the tunnel (`--references`).
    pub references: &'a [Reference],
    /// Where scenarios put the reference paths' figures.
    pub reference_rows: &'a std::sync::Mutex<Vec<RefRow>>,
}

impl Ctx<'_> {
    fn reference_row(&self, row: RefRow) {
        self.reference_rows.lock().unwrap_or_else(|p| p.into_inner()).push(row);
    }
}

/// CPU time spent by the bench process (load generators and backend, the
/// same work on every path), the hub and the agent (on a reference path:
/// its proxies, counted as `hub`).
#[derive(Clone, Copy, Default)]
struct Cpu {
    bench: Duration,
    hub: Duration,
    agent: Duration,
}

/// One path the scenarios measure: direct, the tunnel, or a reference.
struct Path<'a> {
    name: &'a str,
    target: &'a Target,
    /// The processes besides the bench process whose CPU the path costs:
    /// none (direct), hub and agent (tunnel), a reference's proxies.
    pids: Vec<u32>,
}

impl Cpu {
    fn of(pids: &[u32]) -> anyhow::Result<Cpu> {
        let mut cpu = Cpu { bench: procs::thread_cpu(std::process::id())?, ..Cpu::default() };
        for (i, pid) in pids.iter().enumerate() {
            let t = procs::thread_cpu(*pid)?;
            // The tunnel's second process is the agent; every other proxy
            // counts as the hub's share.
            if i == 1 && pids.len() == 2 { cpu.agent += t } else { cpu.hub += t }
        }
        Ok(cpu)
    }

    /// Adds the CPU spent since `start`.
    fn add_since(&mut self, pids: &[u32], start: Cpu) -> anyhow::Result<()> {
        let now = Cpu::of(pids)?;
        self.bench += now.bench.saturating_sub(start.bench);
        self.hub += now.hub.saturating_sub(start.hub);
        self.agent += now.agent.saturating_sub(start.agent);
        Ok(())
    }

    /// Runs `f`, adding the CPU it took.
    async fn measure<T>(&mut self, pids: &[u32], f: impl Future<Output = T>) -> anyhow::Result<T> {
        let start = Cpu::of(pids)?;
        let out = f.await;
        self.add_since(pids, start)?;
        Ok(out)
    }

    fn total(&self) -> Duration {
        self.bench + self.hub + self.agent
    }

    /// The proxies' share: hub + agent, or a reference's processes.
    fn proxies(&self) -> Duration {
        self.hub + self.agent
    }
}

/// Direct, tunnel, then the reference paths (those carrying upgrades only,
/// with `upgrades`), in the order every scenario alternates them.
fn paths<'a>(ctx: &'a Ctx<'_>, upgrades: bool) -> Vec<Path<'a>> {
    let mut v = vec![
        Path { name: "direct", target: ctx.direct, pids: vec![] },
        Path { name: "tunnel", target: ctx.tunnel, pids: vec![ctx.hub_pid, ctx.agent_pid] },
    ];
    for r in ctx.references.iter().filter(|r| r.upgrades || !upgrades) {
        v.push(Path { name: r.name, target: &r.target, pids: r.pids() });
    }
    v
}

/// "CPU per unit" row: all processes' CPU per request (or MB) on each path.
/// On a machine whose cores are all busy, throughput through the tunnel
/// cannot exceed direct ÷ this ratio.
fn cpu_row(name: &str, unit: &str, direct: (Cpu, f64), tunnel: (Cpu, f64), scale: f64) -> Row {
    let per = |cpu: Duration, n: f64| cpu.as_secs_f64() * scale / n.max(1e-9);
    let (d, dn) = direct;
    let (t, tn) = tunnel;
    Row::compare(name, unit, per(d.total(), dn), per(t.total(), tn), Goal::Info).note(format!(
        "all processes' CPU; tunnel split: hub {:.1}, agent {:.1}, clients + backend {:.1} {unit}; \
         direct: clients + backend",
        per(t.hub, tn),
        per(t.agent, tn),
        per(t.bench, tn),
    ))
}

/// Waits until a small GET through `target` succeeds (the agent may be
/// reconnecting after the hub dropped its connection); returns the failed
/// attempts.
pub async fn wait_healthy(target: &Target) -> anyhow::Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut failed = 0;
    loop {
        let attempt = async {
            let mut conn = target.connect(Proto::H2).await?;
            fetch_timed(&mut conn, target, SMALL).await
        };
        match attempt.await {
            Ok(_) => return Ok(failed),
            Err(e) if Instant::now() > deadline => {
                return Err(e.context("the tunnel stayed unhealthy for 30 s"));
            }
            Err(_) => failed += 1,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn fetch_timed(conn: &mut Conn, target: &Target, path: &str) -> anyhow::Result<Duration> {
    let start = Instant::now();
    tokio::time::timeout(REQUEST_TIMEOUT, conn.fetch(target.get(path)))
        .await
        .context("request timed out")??;
    Ok(start.elapsed())
}

/// Compression passes through: the gzip body arrives byte for byte.
pub async fn compression(ctx: &Ctx<'_>) -> anyhow::Result<Vec<Row>> {
    let expected = backend::gzipped_body();
    let mut ok = Vec::new();
    for target in [ctx.direct, ctx.tunnel] {
        let mut conn = target.connect(Proto::H2).await?;
        let mut req = target.get(GZIPPED);
        req.headers_mut().insert(http::header::ACCEPT_ENCODING, http::HeaderValue::from_static("gzip"));
        let resp = conn.send(req).await?;
        let encoding = resp.headers().get(http::header::CONTENT_ENCODING).cloned();
        let body = http_body_util::BodyExt::collect(resp.into_body()).await?.to_bytes();
        ok.push(encoding.as_ref().is_some_and(|e| e == "gzip") && body == expected);
    }
    let b = |x: bool| if x { 1.0 } else { 0.0 };
    Ok(vec![Row::value(
        "0. gzip body passes through unchanged",
        "1 = yes",
        Some(b(ok[0])),
        b(ok[1]),
        b(ok[1]),
        Goal::ValueAtLeast(1.0),
    )])
}

/// Scenario 1: small GET, one client, sequential, one connection each.
pub async fn small_sequential(ctx: &Ctx<'_>) -> anyhow::Result<Vec<Row>> {
    let p = ctx.profile;
    let paths = paths(ctx, false);
    let targets: Vec<&Target> = paths.iter().map(|p| p.target).collect();
    let mut conns = Vec::new();
    for target in &targets {
        let mut conn = target.connect(Proto::H2).await?;
        for _ in 0..200 {
            fetch_timed(&mut conn, target, SMALL).await?;
        }
        conns.push(conn);
    }
    let mut samples: Vec<Vec<Duration>> = paths.iter().map(|_| Vec::new()).collect();
    let mut failed: Vec<Load> = paths.iter().map(|_| Load::default()).collect();
    for _ in 0..p.rounds {
        for i in 0..paths.len() {
            for _ in 0..p.sequential / p.rounds {
                match fetch_timed(&mut conns[i], targets[i], SMALL).await {
                    Ok(d) => samples[i].push(d),
                    Err(e) => {
                        failed[i].record(&e);
                        wait_healthy(targets[i]).await?;
                        conns[i] = targets[i].connect(Proto::H2).await?;
                    }
                }
            }
        }
    }
    for (i, path) in paths.iter().enumerate().skip(2) {
        for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
            let [d, t, r] = [0, 1, i].map(|k| ms(percentile(&mut samples[k], q)));
            ctx.reference_row(RefRow::new(
                path.name,
                &format!("1. small GET sequential {name}"),
                "ms",
                Some(d),
                t,
                r,
            ));
        }
    }
    let mut samples = samples.into_iter();
    let (mut d, mut t) = (samples.next().unwrap_or_default(), samples.next().unwrap_or_default());
    Ok(vec![
        Row::compare(
            "1. small GET sequential failed",
            "requests",
            failed[0].failed as f64,
            failed[1].failed as f64,
            Goal::Info,
        )
        .note(failure_note(&failed[0], &failed[1])),
        Row::compare(
            "1. small GET sequential p50",
            "ms",
            ms(percentile(&mut d, 0.5)),
            ms(percentile(&mut t, 0.5)),
            Goal::RatioAtMost(1.3),
        ),
        Row::compare(
            "1. small GET sequential p99",
            "ms",
            ms(percentile(&mut d, 0.99)),
            ms(percentile(&mut t, 0.99)),
            Goal::RatioAtMost(2.0),
        ),
    ])
}

/// Scenario 7: scenario 1 with a new TCP + TLS + HTTP/2 connection per request.
pub async fn fresh_connections(ctx: &Ctx<'_>) -> anyhow::Result<Vec<Row>> {
    let p = ctx.profile;
    let targets = [ctx.direct, ctx.tunnel];
    let mut samples = [Vec::new(), Vec::new()];
    let mut failed = [Load::default(), Load::default()];
    for _ in 0..p.rounds {
        for i in 0..2 {
            for _ in 0..p.fresh / p.rounds {
                let start = Instant::now();
                let attempt = async {
                    let mut conn = targets[i].connect(Proto::H2).await?;
                    fetch_timed(&mut conn, targets[i], SMALL).await
                };
                match attempt.await {
                    Ok(_) => samples[i].push(start.elapsed()),
                    Err(e) => {
                        failed[i].record(&e);
                        wait_healthy(targets[i]).await?;
                    }
                }
            }
        }
    }
    let [mut d, mut t] = samples;
    Ok(vec![
        Row::compare(
            "7. fresh TLS connection per GET failed",
            "requests",
            failed[0].failed as f64,
            failed[1].failed as f64,
            Goal::Info,
        )
        .note(failure_note(&failed[0], &failed[1])),
        Row::compare(
            "7. fresh TLS connection per GET p50",
            "ms",
            ms(percentile(&mut d, 0.5)),
            ms(percentile(&mut t, 0.5)),
            Goal::RatioAtMost(1.5),
        ),
        Row::compare(
            "7. fresh TLS connection per GET p99",
            "ms",
            ms(percentile(&mut d, 0.99)),
            ms(percentile(&mut t, 0.99)),
            Goal::Info,
        ),
    ])
}

/// Outcome of one load round.
#[derive(Default)]
pub struct Load {
    /// Successful requests.
    pub ok: usize,
    /// Failed or timed-out requests.
    pub failed: usize,
    /// Latencies of the successful ones.
    pub latencies: Vec<Duration>,
    /// Round length.
    pub elapsed: Duration,
    /// Failure reasons and their counts.
    pub errors: std::collections::BTreeMap<String, usize>,
}

impl Load {
    pub fn merge(&mut self, other: Load) {
        self.ok += other.ok;
        self.failed += other.failed;
        self.latencies.extend(other.latencies);
        self.elapsed += other.elapsed;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }

    /// The failure reasons, most frequent first.
    fn reasons(&self) -> String {
        let mut v: Vec<_> = self.errors.iter().collect();
        v.sort_by(|a, b| b.1.cmp(a.1));
        v.iter().take(3).map(|(k, n)| format!("{n}x {k}")).collect::<Vec<_>>().join("; ")
    }

    pub fn record(&mut self, e: &anyhow::Error) {
        self.failed += 1;
        let reason: String = format!("{e:#}").chars().take(120).collect();
        *self.errors.entry(reason).or_default() += 1;
    }

    pub fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// `clients` clients, each on its own HTTP/2 connection, GET the small
/// object back to back for `duration`.
pub async fn load(target: &Target, clients: usize, duration: Duration) -> anyhow::Result<Load> {
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(target.connect(Proto::H2).await?);
    }
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = JoinSet::new();
    for mut conn in conns {
        let target = target.clone();
        tasks.spawn(async move {
            let mut out = Load::default();
            while Instant::now() < deadline {
                match fetch_timed(&mut conn, &target, SMALL).await {
                    Ok(d) => {
                        out.ok += 1;
                        out.latencies.push(d);
                    }
                    Err(e) => {
                        out.record(&e);
                        if let Ok(c) = target.connect(Proto::H2).await {
                            conn = c;
                        }
                    }
                }
            }
            out
        });
    }
    let mut total = Load::default();
    while let Some(r) = tasks.join_next().await {
        total.merge(r?);
    }
    total.elapsed = start.elapsed();
    Ok(total)
}

pub fn failure_note(first: &Load, second: &Load) -> String {
    let mut parts = Vec::new();
    if first.failed > 0 {
        parts.push(format!("direct/without: {}", first.reasons()));
    }
    if second.failed > 0 {
        parts.push(format!("tunnel/with: {}", second.reasons()));
    }
    parts.join("; ")
}

/// Scenario 2: 64 concurrent clients.
pub async fn concurrent(ctx: &Ctx<'_>) -> anyhow::Result<Vec<Row>> {
    let p = ctx.profile;
    let paths = paths(ctx, false);
    for path in &paths {
        load(path.target, p.clients, Duration::from_millis(500)).await?;
    }
    let mut loads: Vec<Load> = paths.iter().map(|_| Load::default()).collect();
    let mut cpus = vec![Cpu::default(); paths.len()];
    for _ in 0..p.rounds.min(3) {
        for (i, path) in paths.iter().enumerate() {
            loads[i].merge(cpus[i].measure(&path.pids, load(path.target, p.clients, p.load_round)).await??);
        }
    }
    let name = |s: &str| format!("2. small GET {} clients {s}", p.clients);
    let per = |cpu: Duration, l: &Load| cpu.as_secs_f64() * 1e6 / (l.ok as f64).max(1.0);
    for (i, path) in paths.iter().enumerate().skip(2) {
        let (d, t, r) = (&loads[0], &loads[1], &loads[i]);
        let row = |figure: &str, unit: &str, d: Option<f64>, t: f64, r: f64| {
            RefRow::new(path.name, &name(figure), unit, d, t, r)
        };
        ctx.reference_row(row("req/s", "req/s", Some(d.rps()), t.rps(), r.rps()));
        ctx.reference_row(row(
            "CPU per request",
            "µs",
            Some(per(cpus[0].total(), d)),
            per(cpus[1].total(), t),
            per(cpus[i].total(), r),
        ));
        ctx.reference_row(row(
            "proxies' CPU per request",
            "µs",
            None,
            per(cpus[1].proxies(), t),
            per(cpus[i].proxies(), r),
        ));
        let mut lat = |k: usize| ms(percentile(&mut loads[k].latencies, 0.99));
        let (dp, tp, rp) = (lat(0), lat(1), lat(i));
        ctx.reference_row(row("p99", "ms", Some(dp), tp, rp));
    }
    let mut loads = loads.into_iter();
    let (mut d, mut t) = (loads.next().unwrap_or_default(), loads.next().unwrap_or_default());
    let (dcpu, tcpu) = (cpus[0], cpus[1]);
    Ok(vec![
        Row::compare(&name("req/s"), "req/s", d.rps(), t.rps(), Goal::RatioAtLeast(0.7)),
        cpu_row(&name("CPU per request"), "µs", (dcpu, d.ok as f64), (tcpu, t.ok as f64), 1e6),
        Row::compare(
            &name("p99"),
            "ms",
            ms(percentile(&mut d.latencies, 0.99)),
            ms(percentile(&mut t.latencies, 0.99)),
            Goal::Info,
        ),
        Row::compare(&name("failed"), "requests", d.failed as f64, t.failed as f64, Goal::Info)
            .note(failure_note(&d, &t)),
    ])
}

/// Scenario 3: large LIST throughput, over HTTP/2 and HTTP/1.1.
pub async fn large_list(ctx: &Ctx<'_>) -> anyhow::Result<Vec<Row>> {
    let p = ctx.profile;
    let mut rows = Vec::new();
    let paths = paths(ctx, false);
    for proto in [Proto::H2, Proto::H1] {
        let mut conns = Vec::new();
        for path in &paths {
            conns.push(path.target.connect(proto).await?);
        }
        let targets: Vec<&Target> = paths.iter().map(|p| p.target).collect();
        let mut totals = vec![(0usize, Duration::ZERO); paths.len()];
        let mut cpu = vec![Cpu::default(); paths.len()];
        for rep in 0..=p.list_reps {
            for i in 0..paths.len() {
                let start = Cpu::of(&paths[i].pids)?;
                let (n, dt) = timed(conns[i].fetch(targets[i].get(LIST))).await;
                let n = n?;
                if n != p.list_bytes {
                    bail!("LIST returned {n} bytes, expected {}", p.list_bytes);
                }
                // Rep 0 warms up.
                if rep > 0 {
                    totals[i].0 += n;
                    totals[i].1 += dt;
                    cpu[i].add_since(&paths[i].pids, start)?;
                }
            }
        }
        let mbps = |(n, dt): (usize, Duration)| n as f64 / 1e6 / dt.as_secs_f64();
        let mib = p.list_bytes / (1024 * 1024);
        let v = if proto == Proto::H2 { "HTTP/2" } else { "HTTP/1.1" };
        rows.push(Row::compare(
            &format!("3. LIST {mib} MiB {v}"),
            "MB/s",
            mbps(totals[0]),
            mbps(totals[1]),
            Goal::RatioAtLeast(0.9),
        ));
        let mb = |i: usize| totals[i].0 as f64 / 1e6;
        rows.push(cpu_row(&format!("3. LIST {v} CPU per MB"), "ms", (cpu[0], mb(0)), (cpu[1], mb(1)), 1e3));
        for (i, path) in paths.iter().enumerate().skip(2) {
            let per = |c: Duration, k: usize| c.as_secs_f64() * 1e3 / mb(k).max(1e-9);
            let figure = |f: &str| format!("3. LIST {mib} MiB {v}{}{f}", if f.is_empty() { "" } else { " " });
            let row = |f: &str, unit: &str, d: Option<f64>, t: f64, r: f64| {
                RefRow::new(path.name, &figure(f), unit, d, t, r)
            };
            ctx.reference_row(row("", "MB/s", Some(mbps(totals[0])), mbps(totals[1]), mbps(totals[i])));
            ctx.reference_row(row(
                "CPU per MB",
                "ms",
                Some(per(cpu[0].total(), 0)),
                per(cpu[1].total(), 1),
                per(cpu[i].total(), i),
            ));
            ctx.reference_row(row(
                "proxies' CPU per MB",
                "ms",
                None,
                per(cpu[1].proxies(), 1),
                per(cpu[i].proxies(), i),
            ));
        }
    }
    Ok(rows)
}

async fn open_upgrade(
    target: &Target,
    path: &str,
) -> anyhow::Result<(Conn, TokioIo<hyper::upgrade::Upgraded>)> {
    let mut conn = target.connect(Proto::H1).await?;
    let resp = conn.send(target.upgrade(path)).await?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        bail!("upgrade answered {}", resp.status());
    }
    let io = hyper::upgrade::on(resp).await?;
    Ok((conn, TokioIo::new(io)))
}

/// Sends `bytes` through the echo stream while reading them back.
async fn echo(target: &Target, bytes: u64) -> anyhow::Result<Duration> {
    let (_conn, io) = open_upgrade(target, ECHO).await?;
    let (mut rd, mut wr) = tokio::io::split(io);
    let start = Instant::now();
    let writer = async {
        let buf = vec![0x5au8; 64 * 1024];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            wr.write_all(&buf[..n]).await?;
            left -= n as u64;
        }
        wr.flush().await?;
        anyhow::Ok(())
    };
    let reader = async {
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0u64;
        while got < bytes {
            let n = rd.read(&mut buf).await?;
            if n == 0 {
                bail!("echo ended after {got} of {bytes} bytes");
            }
            got += n as u64;
        }
        anyhow::Ok(())
    };
    tokio::try_join!(writer, reader)?;
    Ok(start.elapsed())
}

/// Scenario 4: upgraded byte stream, the same bytes each way at once.
pub async fn byte_stream(ctx: &Ctx<'_>) -> anyhow::Result<Vec<Row>> {
    let p = ctx.profile;
    let paths = paths(ctx, true);
    wait_healthy(ctx.tunnel).await?;
    for path in &paths {
        echo(path.target, 8 << 20).await?;
    }
    let mut times = vec![Duration::ZERO; paths.len()];
    let mut cpu = vec![Cpu::default(); paths.len()];
    for _ in 0..p.stream_reps {
        wait_healthy(ctx.tunnel).await?;
        for (i, path) in paths.iter().enumerate() {
            times[i] += cpu[i].measure(&path.pids, echo(path.target, p.stream_bytes)).await??;
        }
    }
    let total = p.stream_bytes as f64 * p.stream_reps as f64;
    let mbps = |t: Duration| total / 1e6 / t.as_secs_f64();
    // Both directions' bytes count: the echo carries `total` each way.
    let mb = 2.0 * total / 1e6;
    for (i, path) in paths.iter().enumerate().skip(2) {
        let per = |c: Duration| c.as_secs_f64() * 1e3 / mb;
        let figure = |f: &str| format!("4. upgraded stream {f}");
        let row = |f: &str, unit: &str, d: Option<f64>, t: f64, r: f64| {
            RefRow::new(path.name, &figure(f), unit, d, t, r)
        };
        ctx.reference_row(row("MB/s each way", "MB/s", Some(mbps(times[0])), mbps(times[1]), mbps(times[i])));
        ctx.reference_row(row(
            "CPU per MB",
            "ms",
            Some(per(cpu[0].total())),
            per(cpu[1].total()),
            per(cpu[i].total()),
        ));
        ctx.reference_row(row(
            "proxies' CPU per MB",
            "ms",
            None,
            per(cpu[1].proxies()),
            per(cpu[i].proxies()),
        ));
    }
    Ok(vec![
        Row::compare(
            &format!("4. upgraded stream {} MiB each way", p.stream_bytes >> 20),
            "MB/s each way",
            mbps(times[0]),
            mbps(times[1]),
            Goal::RatioAtLeast(0.9),
        ),
        cpu_row("4. upgraded stream CPU per MB", "ms", (cpu[0], mb), (cpu[1], mb), 1e3),
    ])
}

/// One path's watch run.
struct Watches {
    delivered: usize,
    establish: Duration,
    deliver: Duration,
    hub_kib_per_watch: f64,
    agent_kib_per_watch: f64,
}

async fn watches(ctx: &Ctx<'_>, target: &Target, n: usize) -> anyhow::Result<Watches> {
    let before = (procs::stats(ctx.hub_pid)?, procs::stats(ctx.agent_pid)?);
    let start = Instant::now();
    let open = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    let mut conn: Option<Conn> = None;
    for i in 0..n {
        if i % WATCHES_PER_CONN == 0 {
            conn = Some(target.connect(Proto::H2).await?);
        }
        let Some(mut c) = conn.as_ref().and_then(Conn::h2_clone) else { bail!("no HTTP/2 connection") };
        let req = target.get(WATCH);
        let open = open.clone();
        tasks.spawn(async move {
            let resp = c.send(req).await?;
            if resp.status() != StatusCode::OK {
                bail!("watch answered {}", resp.status());
            }
            open.fetch_add(1, Ordering::Relaxed);
            first_data(resp.into_body()).await
        });
    }
    let all_open = async {
        while open.load(Ordering::Relaxed) < n || ctx.backend.open_watches() < n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    if tokio::time::timeout(WATCH_TIMEOUT, all_open).await.is_err() {
        bail!(
            "only {} of {n} watches opened ({} at the backend) within {WATCH_TIMEOUT:?}",
            open.load(Ordering::Relaxed),
            ctx.backend.open_watches()
        );
    }
    let establish = start.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = (procs::stats(ctx.hub_pid)?, procs::stats(ctx.agent_pid)?);
    let t0 = Instant::now();
    ctx.backend.trigger();
    let mut delivered = 0;
    let mut last = t0;
    let collect = async {
        while let Some(r) = tasks.join_next().await {
            if let Ok(Ok(at)) = r {
                delivered += 1;
                last = last.max(at);
            }
        }
    };
    let _ = tokio::time::timeout(WATCH_TIMEOUT, collect).await;
    let per = |b: ProcStats, a: ProcStats| (a.rss_kib as f64 - b.rss_kib as f64) / n as f64;
    Ok(Watches {
        delivered,
        establish,
        deliver: last - t0,
        hub_kib_per_watch: per(before.0, idle.0),
        agent_kib_per_watch: per(before.1, idle.1),
    })
}

async fn first_data(mut body: Incoming) -> anyhow::Result<Instant> {
    use http_body_util::BodyExt as _;
    while let Some(frame) = body.frame().await {
        if frame?.is_data() {
            return Ok(Instant::now());
        }
    }
    bail!("watch ended without an event")
}

/// Scenario 5: many concurrent watches, then one event each.
pub async fn many_watches(ctx: &Ctx<'_>) -> anyhow::Result<Vec<Row>> {
    let n = ctx.profile.watches;
    let d = watches(ctx, ctx.direct, n).await?;
    let t = watches(ctx, ctx.tunnel, n).await?;
    Ok(vec![
        Row::value(
            &format!("5. {n} watches: events delivered"),
            "watches",
            Some(d.delivered as f64),
            t.delivered as f64,
            t.delivered as f64 / n as f64,
            Goal::ValueAtLeast(1.0),
        )
        .note("ratio = fraction of watches that got their event through the tunnel"),
        Row::compare(
            &format!("5. {n} watches: time to open all"),
            "ms",
            ms(d.establish),
            ms(t.establish),
            Goal::Info,
        ),
        Row::compare(
            &format!("5. {n} watches: time until all events delivered"),
            "ms",
            ms(d.deliver),
            ms(t.deliver),
            Goal::Info,
        ),
        Row::value(
            &format!("5. {n} watches: hub RSS per idle watch"),
            "KiB",
            None,
            t.hub_kib_per_watch,
            t.hub_kib_per_watch,
            Goal::ValueAtMost(20.0),
        ),
        Row::value(
            &format!("5. {n} watches: agent RSS per idle watch"),
            "KiB",
            None,
            t.agent_kib_per_watch,
            t.agent_kib_per_watch,
            Goal::Info,
        ),
    ])
}

/// A stalled reader kept alive for the length of a measurement.
#[allow(dead_code)]
enum Stall {
    Body(Conn, hyper::Response<Incoming>),
    Upgraded(Conn, TokioIo<hyper::upgrade::Upgraded>),
}

/// The three ways of stalling a reader in scenario 6.
#[derive(Clone, Copy, Debug)]
pub enum StallKind {
    /// HTTP/1.1 GET of an endless body, never read.
    H1Body,
    /// HTTP/2 GET of an endless body, never read.
    H2Body,
    /// Upgraded stream whose backend keeps writing, never read.
    Upgraded,
}

impl StallKind {
    fn label(self) -> &'static str {
        match self {
            StallKind::H1Body => "HTTP/1.1 body",
            StallKind::H2Body => "HTTP/2 body",
            StallKind::Upgraded => "upgraded stream",
        }
    }
}

async fn stall(target: &Target, kind: StallKind) -> anyhow::Result<Stall> {
    Ok(match kind {
        StallKind::H1Body | StallKind::H2Body => {
            let proto = if matches!(kind, StallKind::H1Body) { Proto::H1 } else { Proto::H2 };
            let mut conn = target.connect(proto).await?;
            let resp = conn.send(target.get(STALL)).await?;
            if resp.status() != StatusCode::OK {
                bail!("stall GET answered {}", resp.status());
            }
            Stall::Body(conn, resp)
        }
        StallKind::Upgraded => {
            let (conn, io) = open_upgrade(target, SOURCE).await?;
            Stall::Upgraded(conn, io)
        }
    })
}

/// Scenario 6: scenario 2 on the tunnel with and without one stalled reader.
pub async fn head_of_line(ctx: &Ctx<'_>) -> anyhow::Result<Vec<Row>> {
    let p = ctx.profile;
    let mut rows = Vec::new();
    load(ctx.tunnel, p.clients, Duration::from_millis(500)).await?;
    for kind in [StallKind::H1Body, StallKind::H2Body, StallKind::Upgraded] {
        wait_healthy(ctx.tunnel).await?;
        let mut without = load(ctx.tunnel, p.clients, p.load_round).await?;
        wait_healthy(ctx.tunnel).await?;
        let stalled = stall(ctx.tunnel, kind).await?;
        // Let every buffer and window on the stalled path fill up.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut with = load(ctx.tunnel, p.clients, p.load_round).await?;
        drop(stalled);
        let p99 = |l: &mut Load| ms(percentile(&mut l.latencies, 0.99));
        let (a, b) = (p99(&mut without), p99(&mut with));
        rows.push(
            Row::compare(
                &format!("6. stalled {}: p99 without -> with", kind.label()),
                "ms",
                a,
                b,
                Goal::RatioAtMost(1.2),
            )
            .note("direct column = tunnel p99 without the stalled reader; tunnel column = with it"),
        );
        rows.push(
            Row::value(
                &format!("6. stalled {}: failed requests", kind.label()),
                "requests",
                Some(without.failed as f64),
                with.failed as f64,
                with.failed as f64,
                Goal::ValueAtMost(0.0),
            )
            .note(format!(
                "direct column = failures without the stalled reader; {}",
                failure_note(&without, &with)
            )),
        );
        rows.push(Row::compare(
            &format!("6. stalled {}: req/s without -> with", kind.label()),
            "req/s",
            without.rps(),
            with.rps(),
            Goal::Info,
        ));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(rows)
}

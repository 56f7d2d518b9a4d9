//! `bench`: Ferry's benchmark harness (issue 4).
//!
//! `cargo run --release -p ferry-integration --bin bench -- [--quick] [--json FILE]`
//!
//! Starts on loopback a lean canned apiserver ([`backend`]), a real
//! `ferry-hub` and a real `ferry-agent` (release binaries, separate
//! processes), and measures each scenario over the direct path (client →
//! backend) and the tunnel path (client → hub → agent → backend) in the same
//! run. Prints a Markdown table; `--json` writes the same rows.
//!
//! Scenario 9 ([`integrity`]) is of another kind: real `kubectl` exec, cp
//! and port-forward sessions against the test apiserver behind a second
//! agent, under load, counting runs whose bytes came back wrong.
//!
//! Scenario 10 ([`forwarded`]) starts a real etcd and two hub replicas on
//! it: the forwarded path (client → replica A → replica B → agent) beside
//! direct and tunnel, and the etcd-backed hub's registration and watch
//! latencies; skipped with a note when etcd is not installed.

mod backend;
mod client;
mod forwarded;
mod integrity;
mod procs;
mod references;
mod report;
mod scenarios;
mod simagents;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use ferry_client_sdk::HubConfig;

use crate::backend::Backend;
use crate::client::Target;
use crate::procs::{Binaries, Proc};
use crate::references::Reference;
use crate::report::{Goal, Machine, RefRow, Report, Row, Usage};
use crate::scenarios::{Ctx, Profile};

/// How long the simulated agents get to connect, or to reconnect after the
/// hub restarts, before the bench gives up waiting.
const FLEET_TIMEOUT: Duration = Duration::from_secs(120);
/// File descriptors kept free for everything but the simulated agents.
const FD_RESERVE: u64 = 1_000;

/// Ferry benchmark: direct vs. through hub + agent, on loopback.
#[derive(Debug, Parser)]
#[command(about)]
struct Args {
    /// Smaller sizes; finishes in under two minutes.
    #[arg(long)]
    quick: bool,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Where ferry-hub, ferry-agent and ferryctl are (default: next to this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Run only these scenarios (comma-separated numbers, 0 = gzip check).
    #[arg(long, value_delimiter = ',')]
    only: Vec<u32>,
    /// Keep the working directory (logs, data dirs) after the run (it is
    /// kept anyway when an integrity run failed).
    #[arg(long)]
    keep: bool,
    /// Seed of scenario 9's random plan (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Also measure the reference paths (two chained HAProxy instances, a
    /// rathole tunnel) in scenarios 1 to 4, each skipped with a note when
    /// its binary is not on PATH.
    #[arg(long)]
    references: bool,
}

/// The processes and clients of one run.
struct Env {
    profile: Profile,
    bins: Binaries,
    dir: PathBuf,
    data_dir: PathBuf,
    hub: Option<Proc>,
    hub_url: String,
    agent: Proc,
    backend: Backend,
    direct: Target,
    tunnel: Target,
    /// CPU and peak RSS of hub processes already stopped (scenario 8 restarts it).
    retired_hub: procs::ProcStats,
    /// Seed of scenario 9's plan.
    seed: u64,
    /// An integrity run failed: its evidence is in the working directory.
    integrity_failed: bool,
    /// Reference paths started with `--references`.
    references: Vec<Reference>,
    /// Their figures, filled in by the scenarios.
    reference_rows: std::sync::Mutex<Vec<RefRow>>,
}

impl Env {
    fn hub_pid(&self) -> u32 {
        self.hub.as_ref().map_or(0, |h| h.pid)
    }

    fn hub_stats(&self) -> procs::ProcStats {
        let cur = procs::stats(self.hub_pid()).unwrap_or_default();
        procs::ProcStats {
            rss_kib: cur.rss_kib,
            hwm_kib: cur.hwm_kib.max(self.retired_hub.hwm_kib),
            cpu: cur.cpu + self.retired_hub.cpu,
        }
    }

    fn ctx(&self) -> Ctx<'_> {
        Ctx {
            profile: &self.profile,
            direct: &self.direct,
            tunnel: &self.tunnel,
            backend: &self.backend,
            hub_pid: self.hub_pid(),
            agent_pid: self.agent.pid,
            references: &self.references,
            reference_rows: &self.reference_rows,
        }
    }
}

async fn setup(profile: Profile, bins: Binaries, dir: PathBuf, seed: u64) -> anyhow::Result<Env> {
    let backend = Backend::start(profile.list_bytes).await?;
    let backend_kubeconfig = dir.join("backend.kubeconfig");
    std::fs::write(&backend_kubeconfig, backend.kubeconfig())?;

    let data_dir = dir.join("hub");
    let (hub, hub_url) = procs::start_hub(&bins, &data_dir, "127.0.0.1:0", &dir.join("hub.log")).await?;
    let admin = data_dir.join("admin.kubeconfig");
    let token = procs::ferryctl(&bins, &admin, &["register", "bench", "-o", "token"]).await?;
    let agent = procs::start_agent(
        &bins,
        &hub_url,
        &data_dir.join("ca.crt"),
        token.trim(),
        &backend_kubeconfig,
        &dir.join("agent-state"),
        &dir.join("agent.log"),
    )
    .await?;
    // Callers reach a cluster only with a grant (issue 10's access checks).
    procs::ferryctl(&bins, &admin, &["grant", "--cluster", "bench", "--user", "bench"]).await?;
    let kubeconfig =
        procs::ferryctl(&bins, &admin, &["kubeconfig", "bench", "--user", "bench", "--group", "bench"])
            .await?;
    let user_kubeconfig = dir.join("bench.kubeconfig");
    std::fs::write(&user_kubeconfig, kubeconfig)?;
    let hub_config = HubConfig::load(&user_kubeconfig)?;
    let direct = Target::direct(backend.addr, &backend.ca_pem, &backend.token)?;
    let tunnel = Target::tunnel(&hub_config)?;
    Ok(Env {
        profile,
        bins,
        dir,
        data_dir,
        hub: Some(hub),
        hub_url,
        agent,
        backend,
        direct,
        tunnel,
        retired_hub: procs::ProcStats::default(),
        seed,
        integrity_failed: false,
        references: Vec::new(),
        reference_rows: Default::default(),
    })
}

/// Scenario 9: upgraded-stream integrity, against a test apiserver behind a
/// second agent of the same hub.
async fn integrity(env: &mut Env) -> anyhow::Result<Vec<Row>> {
    let setup = integrity::Setup {
        bins: &env.bins,
        admin: env.data_dir.join("admin.kubeconfig"),
        hub_url: &env.hub_url,
        hub_ca: env.data_dir.join("ca.crt"),
        dir: &env.dir,
        plan: env.profile.integrity,
        seed: env.seed,
    };
    let (rows, failed) = integrity::run(setup).await?;
    env.integrity_failed |= failed;
    Ok(rows)
}

/// The soft limit on open files (`/proc/self/limits`).
fn fd_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(1024)
}

/// Scenario 8: many simulated idle agents, then a hub restart.
async fn many_agents(env: &mut Env) -> anyhow::Result<Vec<Row>> {
    let wanted = env.profile.agents;
    let limit = fd_limit();
    let n = wanted.min(limit.saturating_sub(FD_RESERVE) as usize);
    let mut note = String::new();
    if n < wanted {
        note = format!(
            "only {n} of {wanted} agents: open-file soft limit is {limit} (the bench does not raise it; run `ulimit -n` higher)"
        );
    }
    let admin = env.data_dir.join("admin.kubeconfig");
    let token = procs::ferryctl(&env.bins, &admin, &["register", "bench-sim", "-o", "token"]).await?;
    let ca = std::fs::read_to_string(env.data_dir.join("ca.crt"))?;
    let identity = simagents::enroll(&simagents::endpoint(&env.hub_url, &ca, None)?, token.trim()).await?;
    let endpoint = simagents::endpoint(&env.hub_url, &ca, Some(identity))?;

    let before = procs::stats(env.hub_pid())?;
    let start = Instant::now();
    let fleet = simagents::Fleet::start(n, endpoint);
    let wait_all = |want_sessions: usize| {
        let connected = fleet.connected.clone();
        let sessions = fleet.sessions.clone();
        async move {
            while connected.load(Ordering::Relaxed) < n || sessions.load(Ordering::Relaxed) < want_sessions {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    if tokio::time::timeout(FLEET_TIMEOUT, wait_all(n)).await.is_err() {
        let c = fleet.connected.load(Ordering::Relaxed);
        fleet.shutdown().await;
        anyhow::bail!("only {c} of {n} simulated agents connected within {FLEET_TIMEOUT:?}");
    }
    let connect_time = start.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = procs::stats(env.hub_pid())?;
    let per_agent = (idle.rss_kib as f64 - before.rss_kib as f64) / n as f64;

    // Restart the hub on the same port with the same data dir.
    let listen = env.hub_url.trim_start_matches("https://").trim_end_matches('/').to_string();
    let agent_connects = *env.agent.ready.borrow();
    if let Some(hub) = env.hub.take() {
        let last = procs::stats(hub.pid).unwrap_or_default();
        env.retired_hub.cpu += last.cpu;
        env.retired_hub.hwm_kib = env.retired_hub.hwm_kib.max(last.hwm_kib);
        hub.stop().await?;
    }
    let killed = Instant::now();
    let (hub, _) =
        procs::start_hub(&env.bins, &env.data_dir, &listen, &env.dir.join("hub-restarted.log")).await?;
    env.hub = Some(hub);
    let ready = Instant::now();
    let reconnected = tokio::time::timeout(FLEET_TIMEOUT, wait_all(2 * n)).await.is_ok();
    let reconnect_time = ready.elapsed();
    let down_time = ready - killed;
    let back = fleet.connected.load(Ordering::Relaxed);
    fleet.shutdown().await;
    // The real agent reconnects too; later runs need it.
    env.agent
        .wait_ready(agent_connects)
        .await
        .context("the real agent did not reconnect after the hub restart")?;

    let restart_note = format!(
        "measured from the restarted hub's ready line; the hub was down {:.0} ms; {back} of {n} back{}",
        down_time.as_secs_f64() * 1e3,
        if reconnected { "" } else { " (timed out)" }
    );
    let mut rows = vec![
        Row::value(
            &format!("8. {n} idle agents: hub RSS per agent"),
            "KiB",
            None,
            per_agent,
            per_agent,
            Goal::ValueAtMost(100.0),
        ),
        Row::value(
            &format!("8. {n} idle agents: time for all to connect"),
            "s",
            None,
            connect_time.as_secs_f64(),
            connect_time.as_secs_f64(),
            Goal::Info,
        ),
        Row::value(
            &format!("8. {n} idle agents: time for all to reconnect after hub restart"),
            "s",
            None,
            if reconnected { reconnect_time.as_secs_f64() } else { f64::INFINITY },
            if reconnected { reconnect_time.as_secs_f64() } else { f64::INFINITY },
            Goal::ValueAtMost(30.0),
        )
        .note(restart_note),
    ];
    if !note.is_empty() {
        rows[0] = rows[0].clone().note(note);
    }
    Ok(rows)
}

/// Scenario titles, for rows of scenarios that failed.
fn title(n: u32) -> (&'static str, Goal) {
    match n {
        0 => ("0. gzip body passes through unchanged", Goal::ValueAtLeast(1.0)),
        1 => ("1. small GET sequential", Goal::RatioAtMost(1.3)),
        2 => ("2. small GET concurrent clients", Goal::RatioAtLeast(0.7)),
        3 => ("3. LIST", Goal::RatioAtLeast(0.9)),
        4 => ("4. upgraded stream", Goal::RatioAtLeast(0.9)),
        5 => ("5. watches", Goal::ValueAtLeast(1.0)),
        6 => ("6. stalled reader", Goal::RatioAtMost(1.2)),
        7 => ("7. fresh TLS connection per GET", Goal::RatioAtMost(1.5)),
        9 => ("9. upgraded-stream integrity", Goal::ValueAtMost(0.0)),
        10 => (forwarded::TITLE, Goal::Info),
        _ => ("8. idle agents", Goal::ValueAtMost(100.0)),
    }
}

async fn run_scenario(env: &mut Env, n: u32) -> anyhow::Result<Vec<Row>> {
    let ctx = env.ctx();
    match n {
        0 => scenarios::compression(&ctx).await,
        1 => scenarios::small_sequential(&ctx).await,
        2 => scenarios::concurrent(&ctx).await,
        3 => scenarios::large_list(&ctx).await,
        4 => scenarios::byte_stream(&ctx).await,
        5 => scenarios::many_watches(&ctx).await,
        6 => scenarios::head_of_line(&ctx).await,
        7 => scenarios::fresh_connections(&ctx).await,
        9 => integrity(env).await,
        10 => {
            forwarded::run(forwarded::Setup {
                bins: &env.bins,
                dir: &env.dir,
                backend_kubeconfig: env.dir.join("backend.kubeconfig"),
                direct: &env.direct,
                tunnel: &env.tunnel,
                clients: env.profile.clients,
                plan: env.profile.forwarded,
            })
            .await
        }
        _ => many_agents(env).await,
    }
}

async fn run(args: &Args, started: Instant) -> anyhow::Result<Report> {
    let profile = if args.quick { Profile::quick() } else { Profile::full() };
    let bins = Binaries::locate(args.bin_dir.clone())?;
    let dir = std::env::temp_dir().join(format!("ferry-bench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    eprintln!("bench: working directory {}", dir.display());
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_secs())
    });
    let mut env = setup(profile, bins, dir.clone(), seed)
        .await
        .with_context(|| format!("setting up (logs in {})", dir.display()))?;
    let mut reference_notes = Vec::new();
    if args.references {
        let (started, notes) = references::start(&dir, &env.backend).await;
        for r in &started {
            eprintln!("bench: reference path {} at {:?} (pids {:?})", r.name, r.target_addr(), r.pids());
        }
        for n in &notes {
            eprintln!("bench: reference path {n}");
        }
        env.references = started;
        reference_notes = notes;
    }
    eprintln!(
        "bench: hub {} (pid {}), agent pid {}, backend {}",
        env.hub_url,
        env.hub_pid(),
        env.agent.pid,
        env.backend.addr
    );

    let order = [0, 1, 7, 2, 3, 6, 4, 5, 10, 9, 8];
    let mut rows = Vec::new();
    let mut usage = Vec::new();
    for n in order {
        if !args.only.is_empty() && !args.only.contains(&n) {
            continue;
        }
        let (hub0, agent0) = (env.hub_stats(), procs::stats(env.agent.pid).unwrap_or_default());
        let connects0 = *env.agent.ready.borrow();
        let t0 = Instant::now();
        let (name, goal) = title(n);
        eprintln!("bench: scenario {n} ({name}) ...");
        let result = match scenarios::wait_healthy(&env.tunnel).await {
            Ok(_) => run_scenario(&mut env, n).await,
            Err(e) => Err(e),
        };
        let got = match result {
            Ok(r) => r,
            Err(e) => {
                eprintln!("bench: scenario {n} failed: {e:#}");
                vec![Row::not_measured(name, goal, format!("{e:#}"))]
            }
        };
        for r in &got {
            eprintln!("  {}", r.progress_line());
        }
        rows.extend(got);
        let (hub1, agent1) = (env.hub_stats(), procs::stats(env.agent.pid).unwrap_or_default());
        usage.push(Usage {
            scenario: name.split(':').next().unwrap_or(name).to_string(),
            hub_cpu_s: hub1.cpu.saturating_sub(hub0.cpu).as_secs_f64(),
            agent_cpu_s: agent1.cpu.saturating_sub(agent0.cpu).as_secs_f64(),
            hub_rss_kib: hub1.rss_kib,
            agent_rss_kib: agent1.rss_kib,
            wall_s: t0.elapsed().as_secs_f64(),
            agent_reconnects: env.agent.ready.borrow().saturating_sub(connects0),
        });
    }
    let hub = env.hub_stats();
    let agent = procs::stats(env.agent.pid).unwrap_or_default();
    let Env { hub: hub_proc, agent: agent_proc, integrity_failed, references, reference_rows, .. } = env;
    for r in references {
        r.stop().await;
    }
    let _ = agent_proc.stop().await;
    if let Some(h) = hub_proc {
        let _ = h.stop().await;
    }
    if integrity_failed {
        eprintln!("bench: integrity runs failed; kept {} (see integrity-failures/)", dir.display());
    } else if !args.keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(Report {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine: Machine::detect(),
        quick: args.quick,
        duration_s: started.elapsed().as_secs_f64(),
        scenarios: rows,
        usage,
        hub_peak_rss_kib: hub.hwm_kib,
        agent_peak_rss_kib: agent.hwm_kib,
        hub_cpu_s: hub.cpu.as_secs_f64(),
        agent_cpu_s: agent.cpu.as_secs_f64(),
        reference: reference_rows.into_inner().unwrap_or_else(|p| p.into_inner()),
        reference_notes,
    })
}

fn write_json(path: &Path, report: &Report) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(report)?;
    std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = runtime.block_on(run(&args, started))?;
    runtime.shutdown_timeout(Duration::from_secs(2));
    let m = &report.machine;
    println!(
        "machine: {} cores, {:.1} GiB, {}, Linux {}\ncommand: {}\n",
        m.cores,
        m.memory_bytes as f64 / (1u64 << 30) as f64,
        m.cpu_model,
        m.kernel,
        report.command
    );
    println!("{}", report.table());
    if let Some(path) = &args.json {
        write_json(path, &report)?;
    }
    Ok(())
}

//! Scenario 10: the forwarded path between hub replicas (issue 13).
//!
//! A real etcd (the `etcd` binary, started as the tests start it:
//! [`ferry_integration::etcd`]), two `ferry-hub` replicas on it sharing one
//! hub CA, and a second `ferry-agent` of the same backend connected to
//! replica B only. Requests sent to replica A, which holds no agent of the
//! cluster, are forwarded to B over the peer channel: client → A → B →
//! agent → backend. Measured in the same alternation as the direct path
//! and the one-hub tunnel: small GET latency (sequential) and requests/s
//! (concurrent clients).
//!
//! Then the etcd-backed hub's management latencies: a cluster registered
//! on A (the `Register` call's latency), and the time until a
//! `Clusters.Watch` open on B sees it.
//!
//! Skipped with a note when etcd is not installed (`apt-get install
//! etcd-server`, or `FERRY_ETCD` naming the binary).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ferry_client_sdk::{ClusterEvent, Hub, HubConfig, WatchOptions};
use ferry_integration::etcd::{Etcd, etcd_bin};
use futures_util::StreamExt as _;

use crate::client::{Proto, Target, ms, percentile};
use crate::procs::{self, Binaries, Proc};
use crate::report::{Goal, Row};
use crate::scenarios::{Load, SMALL, failure_note, fetch_timed, load, wait_healthy};

/// The scenario's title (for the row of a run that failed or was skipped).
pub const TITLE: &str = "10. forwarded path (client → replica A → replica B → agent)";

/// How long a registration may take to show in the other replica's watch.
const WATCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Small GETs per path on a fresh connection before measuring.
const WARMUP: usize = 100;

/// Sizes of one run.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Sequential small GETs per path.
    pub sequential: usize,
    /// Alternating rounds (sequential and concurrent).
    pub rounds: usize,
    /// Length of one concurrent load round per path.
    pub load_round: Duration,
    /// Registrations timed on A and watched on B.
    pub registrations: usize,
}

/// What the scenario runs beside.
pub struct Setup<'a> {
    /// The release binaries.
    pub bins: &'a Binaries,
    /// The run's working directory.
    pub dir: &'a Path,
    /// The backend's kubeconfig (the second agent serves the same backend).
    pub backend_kubeconfig: PathBuf,
    /// Client → backend.
    pub direct: &'a Target,
    /// Client → the one-hub tunnel.
    pub tunnel: &'a Target,
    /// Concurrent clients (scenario 2's).
    pub clients: usize,
    /// Sizes.
    pub plan: Plan,
}

/// The etcd binary, if installed.
fn etcd_installed() -> Option<PathBuf> {
    let bin = PathBuf::from(etcd_bin());
    if bin.components().count() > 1 {
        bin.is_file().then_some(bin)
    } else {
        crate::references::on_path(&etcd_bin())
    }
}

/// The one row of a run without etcd.
fn skipped(etcd: &str) -> Row {
    Row::not_measured(
        TITLE,
        Goal::Info,
        format!("{etcd:?} not found, skipped (apt-get install etcd-server, or set FERRY_ETCD)"),
    )
}

/// The forwarded figure beside the one-hub tunnel's, for a row's note.
fn vs_tunnel(unit: &str, tunnel: f64, forwarded: f64) -> String {
    format!("one-hub tunnel {tunnel:.3} {unit}; forwarded ÷ one-hub tunnel {:.2}", forwarded / tunnel)
}

/// Runs the scenario; one "not measured" row when etcd is missing.
pub async fn run(setup: Setup<'_>) -> anyhow::Result<Vec<Row>> {
    if etcd_installed().is_none() {
        return Ok(vec![skipped(&etcd_bin())]);
    }
    // Etcd::start blocks (and panics when etcd will not start).
    let etcd = tokio::task::spawn_blocking(Etcd::start).await.context("etcd did not start")?;
    let world = World::start(&setup, &etcd).await;
    let result = match world {
        Ok(w) => {
            let rows = measure(&setup, &w).await;
            w.stop().await;
            rows
        }
        Err(e) => Err(e),
    };
    tokio::task::spawn_blocking(move || drop(etcd)).await?;
    result
}

/// Two replicas on one etcd, an agent on B, and the forwarded target (A).
struct World {
    procs: Vec<Proc>,
    a_data: PathBuf,
    b_data: PathBuf,
    forwarded: Target,
}

impl World {
    async fn start(setup: &Setup<'_>, etcd: &Etcd) -> anyhow::Result<World> {
        let dir = setup.dir.join("forwarded");
        let (a_data, b_data) = (dir.join("hub-a"), dir.join("hub-b"));
        std::fs::create_dir_all(&dir)?;
        let store = etcd.store_url();
        let extra = ["--store", store.as_str()];
        let mut procs = Vec::new();
        let (a, _a_url) =
            procs::start_hub_with(setup.bins, &a_data, "127.0.0.1:0", &dir.join("hub-a.log"), &extra).await?;
        procs.push(a);
        // Replicas share one hub CA: B gets a copy of A's, as an operator would do.
        std::fs::create_dir_all(&b_data)?;
        for f in ["ca.crt", "ca.key"] {
            std::fs::copy(a_data.join(f), b_data.join(f)).context("copying the hub CA")?;
        }
        let (b, b_url) =
            procs::start_hub_with(setup.bins, &b_data, "127.0.0.1:0", &dir.join("hub-b.log"), &extra).await?;
        procs.push(b);
        let mut world = World { procs, a_data, b_data, forwarded: setup.direct.clone() };

        let admin_a = world.a_data.join("admin.kubeconfig");
        let token = procs::ferryctl(setup.bins, &admin_a, &["register", "fwd", "-o", "token"]).await?;
        // The agent knows only B, so A holds no agent of the cluster.
        let agent = procs::start_agent(
            setup.bins,
            &b_url,
            &world.a_data.join("ca.crt"),
            token.trim(),
            &setup.backend_kubeconfig,
            &dir.join("agent-state"),
            &dir.join("agent.log"),
        )
        .await?;
        world.procs.push(agent);
        procs::ferryctl(setup.bins, &admin_a, &["grant", "--cluster", "fwd", "--user", "bench"]).await?;
        let kubeconfig = procs::ferryctl(
            setup.bins,
            &admin_a,
            &["kubeconfig", "fwd", "--user", "bench", "--group", "bench"],
        )
        .await?;
        let path = dir.join("forwarded.kubeconfig");
        std::fs::write(&path, kubeconfig)?;
        world.forwarded = Target::tunnel(&HubConfig::load(&path)?)?;
        // A learns from etcd which replica holds the agent; wait until it routes.
        wait_healthy(&world.forwarded).await.context("replica A did not forward to B")?;
        Ok(world)
    }

    async fn stop(self) {
        for p in self.procs.into_iter().rev() {
            let _ = p.stop().await;
        }
    }
}

/// Sequential latencies and concurrent rates on direct, tunnel and
/// forwarded paths, then the registration and watch latencies.
async fn measure(setup: &Setup<'_>, w: &World) -> anyhow::Result<Vec<Row>> {
    let plan = setup.plan;
    let targets = [setup.direct, setup.tunnel, &w.forwarded];

    // Sequential small GETs, one connection per path, paths alternating.
    let mut conns = Vec::new();
    for t in targets {
        let mut conn = t.connect(Proto::H2).await?;
        for _ in 0..WARMUP {
            fetch_timed(&mut conn, t, SMALL).await?;
        }
        conns.push(conn);
    }
    let mut samples: [Vec<Duration>; 3] = Default::default();
    let mut failed: [Load; 3] = Default::default();
    for _ in 0..plan.rounds {
        for (i, t) in targets.iter().enumerate() {
            for _ in 0..plan.sequential / plan.rounds {
                match fetch_timed(&mut conns[i], t, SMALL).await {
                    Ok(d) => samples[i].push(d),
                    Err(e) => {
                        failed[i].record(&e);
                        wait_healthy(t).await?;
                        conns[i] = t.connect(Proto::H2).await?;
                    }
                }
            }
        }
    }
    let p = |s: &mut Vec<Duration>, q| ms(percentile(s, q));
    let [mut d, mut t, mut f] = samples;
    let (d50, t50, f50) = (p(&mut d, 0.5), p(&mut t, 0.5), p(&mut f, 0.5));
    let (d99, t99, f99) = (p(&mut d, 0.99), p(&mut t, 0.99), p(&mut f, 0.99));

    // Concurrent clients, paths alternating round by round.
    let mut loads: [Load; 3] = Default::default();
    for _ in 0..plan.rounds {
        for (i, t) in targets.iter().enumerate() {
            loads[i].merge(load(t, setup.clients, plan.load_round).await?);
        }
    }
    let [dl, tl, fl] = loads;
    let (direct_rps, tunnel_rps, forwarded_rps) = (dl.rps(), tl.rps(), fl.rps());

    let (mut reg, mut seen) = registration_latencies(w, plan.registrations).await?;

    let [mut direct_failed, _, mut forwarded_failed] = failed;
    direct_failed.merge(dl);
    forwarded_failed.merge(fl);
    Ok(vec![
        Row::compare(
            "10. forwarded small GET failed",
            "requests",
            direct_failed.failed as f64,
            forwarded_failed.failed as f64,
            Goal::Info,
        )
        .note(failure_note(&direct_failed, &forwarded_failed)),
        Row::compare("10. forwarded small GET sequential p50", "ms", d50, f50, Goal::Info)
            .note(vs_tunnel("ms", t50, f50)),
        Row::compare("10. forwarded small GET sequential p99", "ms", d99, f99, Goal::Info)
            .note(vs_tunnel("ms", t99, f99)),
        Row::compare(
            &format!("10. forwarded small GET {} concurrent clients req/s", setup.clients),
            "req/s",
            direct_rps,
            forwarded_rps,
            Goal::Info,
        )
        .note(format!(
            "{}; tunnel column: client → A → B → agent",
            vs_tunnel("req/s", tunnel_rps, forwarded_rps)
        )),
        latency_row("10. etcd hub: registration latency p50", &mut reg, 0.5),
        latency_row("10. etcd hub: registration latency p99", &mut reg, 0.99),
        latency_row("10. etcd hub: registered on A, seen by a watch on B, p50", &mut seen, 0.5)
            .note("from the Register call's start on A to the Added event of a Clusters.Watch open on B"),
        latency_row("10. etcd hub: registered on A, seen by a watch on B, p99", &mut seen, 0.99),
    ])
}

/// A latency of its own (no direct figure).
fn latency_row(name: &str, samples: &mut [Duration], q: f64) -> Row {
    let v = ms(percentile(samples, q));
    Row::value(name, "ms", None, v, v, Goal::Info)
}

/// Registers `n` clusters on A, one after another; returns each `Register`
/// call's latency and the time from its start until a watch on B saw the
/// cluster added.
async fn registration_latencies(w: &World, n: usize) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let hub_a = Hub::connect(&HubConfig::load(w.a_data.join("admin.kubeconfig"))?).await?;
    let hub_b = Hub::connect(&HubConfig::load(w.b_data.join("admin.kubeconfig"))?).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let watcher = tokio::spawn(async move {
        let mut events = std::pin::pin!(hub_b.watch_clusters(WatchOptions::default()));
        while let Some(event) = events.next().await {
            let now = Instant::now();
            let names = match event {
                Ok(ClusterEvent::Added { cluster, .. }) => vec![cluster.name],
                Ok(ClusterEvent::Relisted { clusters, .. }) => clusters.into_iter().map(|c| c.name).collect(),
                Ok(_) => continue,
                Err(e) => {
                    let _ = tx.send(Err(anyhow::anyhow!("the watch on B failed: {e}")));
                    return;
                }
            };
            for name in names {
                if tx.send(Ok((name, now))).is_err() {
                    return;
                }
            }
        }
    });
    // The watch is live once it shows the cluster that exists already.
    let result = async {
        wait_for(&mut rx, "fwd").await?;
        let (mut reg, mut seen) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for i in 0..n {
            let name = format!("lat-{i}");
            let start = Instant::now();
            hub_a.register_cluster(&name, None).await?;
            reg.push(start.elapsed());
            seen.push(wait_for(&mut rx, &name).await?.saturating_duration_since(start));
        }
        Ok((reg, seen))
    }
    .await;
    watcher.abort();
    result
}

/// Names the watch saw added, with when; or how it failed.
type Seen = tokio::sync::mpsc::UnboundedReceiver<anyhow::Result<(String, Instant)>>;

/// When the watch saw `name` added (skipping other names).
async fn wait_for(rx: &mut Seen, name: &str) -> anyhow::Result<Instant> {
    let deadline = tokio::time::Instant::now() + WATCH_TIMEOUT;
    loop {
        let (seen, at) = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .with_context(|| format!("the watch on B did not see {name} within {WATCH_TIMEOUT:?}"))?
            .context("the watch on B ended")??;
        if seen == name {
            return Ok(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_without_etcd_is_one_row_that_ci_does_not_count_as_failed() {
        let row = skipped("etcd");
        assert!(row.note.starts_with("not measured: \"etcd\" not found"), "{}", row.note);
        // .ci/run fails on rows named failed/mismatch with nonzero figures.
        assert!(!row.name.contains("failed") && !row.name.contains("mismatch"));
        assert_eq!((row.direct, row.tunnel), (None, None));
    }

    #[test]
    fn latencies_are_figures_of_their_own_and_ratios_to_the_tunnel_are_in_the_note() {
        let mut samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let p50 = latency_row("10. etcd hub: registration latency p50", &mut samples, 0.5);
        assert_eq!(p50.direct, None);
        assert_eq!(p50.tunnel, p50.ratio);
        assert!(p50.met && p50.target == "info");
        let p99 = latency_row("p99", &mut samples, 0.99);
        assert!(p99.ratio > p50.ratio, "{:?} {:?}", p99.ratio, p50.ratio);
        assert_eq!(vs_tunnel("ms", 0.5, 0.75), "one-hub tunnel 0.500 ms; forwarded ÷ one-hub tunnel 1.50");
    }
}

//! Scenario 9: upgraded-stream integrity (issue 14).
//!
//! Runs the real `kubectl` many times against the test apiserver, through
//! the hub and (as a control) directly: `exec -i POD -- cat` with random
//! stdin, `cp` to the pod and back, and connections through a
//! `port-forward` to the pod's echo service. Each over WebSocket (the
//! kubectl on `PATH`) or SPDY (`kubectl.1.27` beside it; without it, the
//! same kubectl with WebSockets switched off). Sizes are random, with the
//! edges always in the mix: 0 B, 1 B, around 4 KiB, 64 KiB, 1 MiB and
//! 50 MiB. While it runs, CPU burners (one thread per core) and a disk
//! writer load the machine; some runs read their output slowly, and some
//! stall for longer than a server's close linger before reading the rest.
//!
//! Every run compares the size and SHA-256 of what came back with what
//! went in, and counts as a mismatch when they differ or kubectl failed. A
//! failing run keeps what it takes to find the cause, in
//! `integrity-failures/` in the working directory (kept after the run):
//! its description, kubectl's stderr, and the hub, agent and apiserver log
//! lines written while it ran (with per-session byte counts at each hop).
//! The plan is drawn from a seed, printed in the row's note, so a failing
//! plan can be run again with `--seed`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use crate::procs::{self, Binaries, Proc};
use crate::report::{Goal, Row};

/// The pod every run talks to.
const POD: &str = "box";
/// Where `cp` runs put their file in the pod (one file, overwritten, so the
/// test apiserver's memory stays bounded).
const POD_FILE: &str = "/tmp/integrity.bin";
/// The port forwarded to the pod (its built-in echo service).
const POD_PORT: u16 = 8080;
/// The sizes always in the mix (bytes).
const EDGE_SIZES: [u64; 7] = [0, 1, 4095, 4096, 4097, 64 * 1024, 1024 * 1024];
/// Random sizes go up to this (bytes).
const RANDOM_SIZE_MAX: u64 = 3 * 1024 * 1024;
/// The large transfer.
const BIG: u64 = 50 * 1024 * 1024;
/// Stalling runs move this much (enough that the server can finish
/// writing while the reader stalls).
const STALL_SIZE: u64 = 40 * 1024 * 1024;
/// How long a stalling reader stops: longer than the 5 s a server used to
/// wait for the client's close before dropping the connection.
const STALL: Duration = Duration::from_secs(6);
/// A slow reader reads this much at a time ...
const SLOW_CHUNK: usize = 16 * 1024;
/// ... and waits this long after each read.
const SLOW_PAUSE: Duration = Duration::from_millis(1);
/// The share of runs (in percent) that read slowly.
const SLOW_PERCENT: u64 = 30;
/// A fast reader's buffer.
const FAST_CHUNK: usize = 64 * 1024;
/// Bound on one run (a 50 MiB slow read on a loaded machine takes seconds).
const RUN_TIMEOUT: Duration = Duration::from_secs(180);
/// Bound on starting the test apiserver, its agent, or a port-forward.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// What the disk writer writes at a time, and how often it syncs.
const DISK_CHUNK: usize = 1024 * 1024;
/// The disk writer starts over after this much (bounded disk use).
const DISK_FILE_MAX: u64 = 64 * 1024 * 1024;
/// The cluster the scenario registers at the hub.
const CLUSTER: &str = "integrity";

/// How many runs of each kind.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Runs through the hub.
    pub tunnel_runs: usize,
    /// Runs directly against the test apiserver.
    pub direct_runs: usize,
    /// Of those, per path: runs of [`BIG`] bytes.
    pub big_runs: usize,
    /// Of those, per path: runs whose reader stalls for [`STALL`].
    pub stall_runs: usize,
}

/// What the scenario needs from the bench.
pub struct Setup<'a> {
    /// Where the binaries are.
    pub bins: &'a Binaries,
    /// The hub's admin kubeconfig.
    pub admin: PathBuf,
    /// The hub's URL.
    pub hub_url: &'a str,
    /// The hub's CA.
    pub hub_ca: PathBuf,
    /// The bench's working directory.
    pub dir: &'a Path,
    /// The plan.
    pub plan: Plan,
    /// Seed of the random plan.
    pub seed: u64,
}

/// SplitMix64: a small, seedable generator for the plan and the data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Tunnel,
    Direct,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    WebSocket,
    Spdy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    /// `kubectl exec -i POD -- cat`, stdin in, stdout compared.
    ExecCat,
    /// `kubectl cp` to the pod and back.
    Cp,
    /// A TCP connection through `kubectl port-forward` to the pod's echo.
    PortForward,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reader {
    Fast,
    Slow,
    /// Stops once, after `at` bytes, for [`STALL`].
    Stall {
        at: u64,
    },
}

#[derive(Clone, Copy, Debug)]
struct Spec {
    route: Route,
    transport: Transport,
    op: Op,
    size: u64,
    reader: Reader,
}

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} {:?} {:?} {} B, {:?} reader",
            self.route, self.transport, self.op, self.size, self.reader
        )
    }
}

/// Draws the runs of one route.
fn plan_route(rng: &mut Rng, route: Route, runs: usize, big: usize, stalls: usize) -> Vec<Spec> {
    let mut specs = Vec::with_capacity(runs);
    for i in 0..runs {
        let transport = if rng.below(2) == 0 { Transport::WebSocket } else { Transport::Spdy };
        let op = match rng.below(4) {
            0 | 1 => Op::ExecCat,
            2 => Op::Cp,
            _ => Op::PortForward,
        };
        let pick = rng.below(EDGE_SIZES.len() as u64 + 2) as usize;
        let mut size = EDGE_SIZES.get(pick).copied().unwrap_or_else(|| rng.below(RANDOM_SIZE_MAX + 1));
        let mut reader = if rng.below(100) < SLOW_PERCENT { Reader::Slow } else { Reader::Fast };
        if i < big {
            size = BIG;
        } else if i < big + stalls {
            // An exec session ends while its reader stalls: the server closes
            // its side with the rest of the output still on its way.
            let at = STALL_SIZE / 2 + rng.below(STALL_SIZE * 2 / 5);
            specs.push(Spec {
                route,
                transport,
                op: Op::ExecCat,
                size: STALL_SIZE,
                reader: Reader::Stall { at },
            });
            continue;
        }
        if op == Op::Cp {
            // kubectl writes cp output to a file: the bench cannot slow it.
            reader = Reader::Fast;
        }
        specs.push(Spec { route, transport, op, size, reader });
    }
    specs
}

/// CPU burners (one thread per core) and a disk writer; stopped and joined
/// when dropped.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(dir: &Path) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        let mut threads = Vec::new();
        for _ in 0..cores {
            let stop = Arc::clone(&stop);
            threads.push(std::thread::spawn(move || {
                let mut x = 1u64;
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..100_000 {
                        x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
                    }
                }
            }));
        }
        let path = dir.join("disk-load.bin");
        let disk_stop = Arc::clone(&stop);
        threads.push(std::thread::spawn(move || {
            let chunk = vec![0x5au8; DISK_CHUNK];
            let mut written = 0u64;
            let Ok(mut file) = std::fs::File::create(&path) else { return };
            while !disk_stop.load(Ordering::Relaxed) {
                use std::io::{Seek, Write};
                if written >= DISK_FILE_MAX {
                    if file.seek(std::io::SeekFrom::Start(0)).is_err() {
                        return;
                    }
                    written = 0;
                }
                if file.write_all(&chunk).is_err() || file.sync_data().is_err() {
                    return;
                }
                written += DISK_CHUNK as u64;
            }
            drop(file);
            let _ = std::fs::remove_file(&path);
        }));
        Self { stop, threads }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The kubectl binaries for each transport.
struct Kubectls {
    websocket: PathBuf,
    /// `kubectl.1.27` (SPDY only), if installed.
    spdy_only: Option<PathBuf>,
}

impl Kubectls {
    fn find() -> anyhow::Result<Self> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let kubectl = std::env::split_paths(&path)
            .map(|d| d.join("kubectl"))
            .find(|p| p.is_file())
            .context("kubectl is not on PATH")?;
        let real = std::fs::canonicalize(&kubectl).unwrap_or_else(|_| kubectl.clone());
        let spdy_only = real.parent().map(|d| d.join("kubectl.1.27")).filter(|p| p.is_file());
        Ok(Self { websocket: kubectl, spdy_only })
    }

    fn command(&self, transport: Transport, kubeconfig: &Path, args: &[&str]) -> Command {
        let (bin, websockets) = match transport {
            Transport::WebSocket => (&self.websocket, "true"),
            Transport::Spdy => (self.spdy_only.as_ref().unwrap_or(&self.websocket), "false"),
        };
        let mut cmd = Command::new(bin);
        cmd.arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .env_remove("KUBECONFIG")
            .env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", websockets)
            .env("KUBECTL_PORT_FORWARD_WEBSOCKETS", websockets)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    fn spdy_name(&self) -> &'static str {
        if self.spdy_only.is_some() { "kubectl.1.27" } else { "kubectl with WebSockets off" }
    }
}

/// What a run saw: bytes and their digest, kubectl's stderr, and whether
/// kubectl (or the connection) failed.
struct Seen {
    bytes: u64,
    sha256: [u8; 32],
    failure: Option<String>,
    stderr: Vec<u8>,
}

/// Reads to EOF as `reader` says, hashing as it goes.
async fn read_all<R: AsyncRead + Unpin>(mut r: R, reader: Reader) -> std::io::Result<(u64, [u8; 32])> {
    let mut hash = Sha256::new();
    let mut total = 0u64;
    let mut stalled = false;
    let mut buf = vec![0u8; FAST_CHUNK];
    loop {
        let want = if reader == Reader::Slow { SLOW_CHUNK } else { FAST_CHUNK };
        let n = r.read(&mut buf[..want]).await?;
        if n == 0 {
            return Ok((total, hash.finalize().into()));
        }
        hash.update(&buf[..n]);
        total += n as u64;
        match reader {
            Reader::Slow => tokio::time::sleep(SLOW_PAUSE).await,
            Reader::Stall { at } if !stalled && total >= at => {
                stalled = true;
                tokio::time::sleep(STALL).await;
            }
            _ => {}
        }
    }
}

async fn collect_stderr(child: &mut Child) -> Vec<u8> {
    let mut err = Vec::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_end(&mut err).await;
    }
    err
}

fn exit_failure(status: std::io::Result<std::process::ExitStatus>) -> Option<String> {
    match status {
        Ok(s) if s.success() => None,
        Ok(s) => Some(format!("kubectl exited with {s}")),
        Err(e) => Some(format!("waiting for kubectl: {e}")),
    }
}

/// The hub-or-direct target of a run.
struct Target {
    kubeconfig: PathBuf,
}

/// A long-running `kubectl port-forward` for one route and transport.
struct Forward {
    child: Child,
    port: u16,
    stderr: Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Forward {
    async fn start(kubectls: &Kubectls, transport: Transport, kubeconfig: &Path) -> anyhow::Result<Self> {
        let target = format!("pod/{POD}");
        let ports = format!(":{POD_PORT}");
        let mut cmd = kubectls.command(transport, kubeconfig, &["port-forward", &target, &ports]);
        cmd.stdout(Stdio::piped());
        let mut child = cmd.spawn().context("starting kubectl port-forward")?;
        let stdout = child.stdout.take().context("port-forward stdout")?;
        let stderr = Arc::new(std::sync::Mutex::new(Vec::new()));
        if let Some(mut e) = child.stderr.take() {
            let sink = Arc::clone(&stderr);
            // Ends with the child (EOF on its stderr).
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = e.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    sink.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .extend_from_slice(&buf[..n]);
                }
            });
        }
        let mut lines = BufReader::new(stdout).lines();
        let port = tokio::time::timeout(START_TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
                    return rest.split_whitespace().next().and_then(|p| p.parse::<u16>().ok());
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .context("kubectl port-forward printed no local port")?;
        // Keep draining stdout (it prints a line per connection).
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self { child, port, stderr })
    }

    fn stderr(&self) -> Vec<u8> {
        self.stderr.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

/// Everything the runs use.
struct World {
    kubectls: Kubectls,
    tunnel: Target,
    direct: Target,
    forwards: Vec<((Route, Transport), Forward)>,
    /// Log files, by name, whose lines a failing run keeps.
    logs: Vec<(&'static str, PathBuf)>,
    dir: PathBuf,
    _apiserver: Proc,
    _agent: Proc,
}

impl World {
    fn target(&self, route: Route) -> &Path {
        match route {
            Route::Tunnel => &self.tunnel.kubeconfig,
            Route::Direct => &self.direct.kubeconfig,
        }
    }

    async fn forward(&mut self, route: Route, transport: Transport) -> anyhow::Result<&Forward> {
        let key = (route, transport);
        let alive = match self.forwards.iter_mut().find(|(k, _)| *k == key) {
            Some((_, f)) => matches!(f.child.try_wait(), Ok(None)),
            None => false,
        };
        if !alive {
            self.forwards.retain(|(k, _)| *k != key);
            let f = Forward::start(&self.kubectls, transport, self.target(route)).await?;
            self.forwards.push((key, f));
        }
        self.forwards.iter().find(|(k, _)| *k == key).map(|(_, f)| f).context("forward just started")
    }

    async fn run(&mut self, spec: Spec, data: &[u8]) -> Seen {
        let kubeconfig = self.target(spec.route).to_path_buf();
        let run = async {
            match spec.op {
                Op::ExecCat => self.exec_cat(spec, &kubeconfig, data).await,
                Op::Cp => self.cp(spec, &kubeconfig, data).await,
                Op::PortForward => self.port_forward(spec, data).await,
            }
        };
        match tokio::time::timeout(RUN_TIMEOUT, run).await {
            Ok(seen) => seen,
            Err(_) => Seen {
                bytes: 0,
                sha256: [0; 32],
                failure: Some(format!("no result within {RUN_TIMEOUT:?}")),
                stderr: Vec::new(),
            },
        }
    }

    async fn exec_cat(&self, spec: Spec, kubeconfig: &Path, data: &[u8]) -> Seen {
        let mut cmd = self.kubectls.command(spec.transport, kubeconfig, &["exec", "-i", POD, "--", "cat"]);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return Seen::failed(format!("starting kubectl: {e}")),
        };
        let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Seen::failed("kubectl without pipes".into());
        };
        let mut stderr_pipe = child.stderr.take();
        let write = async move {
            // kubectl may end early (that is what is being checked).
            let _ = stdin.write_all(data).await;
            drop(stdin);
        };
        let stderr = async {
            let mut err = Vec::new();
            if let Some(e) = stderr_pipe.as_mut() {
                let _ = e.read_to_end(&mut err).await;
            }
            err
        };
        let ((), read, stderr) = tokio::join!(write, read_all(stdout, spec.reader), stderr);
        let status = child.wait().await;
        let mut seen = match read {
            Ok((bytes, sha256)) => Seen { bytes, sha256, failure: None, stderr },
            Err(e) => {
                Seen { bytes: 0, sha256: [0; 32], failure: Some(format!("reading stdout: {e}")), stderr }
            }
        };
        seen.failure = seen.failure.or_else(|| exit_failure(status));
        seen
    }

    async fn cp(&self, spec: Spec, kubeconfig: &Path, data: &[u8]) -> Seen {
        let src = self.dir.join("cp-src.bin");
        let dst = self.dir.join("cp-dst.bin");
        let _ = std::fs::remove_file(&dst);
        if let Err(e) = tokio::fs::write(&src, data).await {
            return Seen::failed(format!("writing {}: {e}", src.display()));
        }
        let remote = format!("{POD}:{POD_FILE}");
        let mut stderr = Vec::new();
        for (from, to) in [
            (src.to_string_lossy().into_owned(), remote.clone()),
            (remote, dst.to_string_lossy().into_owned()),
        ] {
            let mut child =
                match self.kubectls.command(spec.transport, kubeconfig, &["cp", &from, &to]).spawn() {
                    Ok(c) => c,
                    Err(e) => return Seen::failed(format!("starting kubectl cp: {e}")),
                };
            stderr.extend(collect_stderr(&mut child).await);
            if let Some(f) = exit_failure(child.wait().await) {
                return Seen {
                    bytes: 0,
                    sha256: [0; 32],
                    failure: Some(format!("cp {from} {to}: {f}")),
                    stderr,
                };
            }
        }
        match tokio::fs::File::open(&dst).await {
            Ok(file) => match read_all(file, Reader::Fast).await {
                Ok((bytes, sha256)) => Seen { bytes, sha256, failure: None, stderr },
                Err(e) => Seen {
                    bytes: 0,
                    sha256: [0; 32],
                    failure: Some(format!("reading the copy: {e}")),
                    stderr,
                },
            },
            Err(e) => {
                Seen { bytes: 0, sha256: [0; 32], failure: Some(format!("no copy came back: {e}")), stderr }
            }
        }
    }

    async fn port_forward(&mut self, spec: Spec, data: &[u8]) -> Seen {
        let forward = match self.forward(spec.route, spec.transport).await {
            Ok(f) => f,
            Err(e) => return Seen::failed(format!("{e:#}")),
        };
        let (port, before) = (forward.port, forward.stderr().len());
        let conn = match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            Ok(c) => c,
            Err(e) => return Seen::failed(format!("connecting to the forwarded port: {e}")),
        };
        let _ = conn.set_nodelay(true);
        let (rd, mut wr) = conn.into_split();
        let write = async move {
            let r = wr.write_all(data).await;
            // Half-close: the echo sends the rest, then closes.
            let _ = wr.shutdown().await;
            r
        };
        let (written, read) = tokio::join!(write, read_all(rd, spec.reader));
        let stderr = self
            .forwards
            .iter()
            .find(|(k, _)| *k == (spec.route, spec.transport))
            .map_or_else(Vec::new, |(_, f)| f.stderr().get(before..).map(<[u8]>::to_vec).unwrap_or_default());
        match (written, read) {
            (Ok(()), Ok((bytes, sha256))) => Seen { bytes, sha256, failure: None, stderr },
            (Err(e), _) => Seen { bytes: 0, sha256: [0; 32], failure: Some(format!("sending: {e}")), stderr },
            (_, Err(e)) => {
                Seen { bytes: 0, sha256: [0; 32], failure: Some(format!("receiving: {e}")), stderr }
            }
        }
    }
}

impl Seen {
    fn failed(why: String) -> Self {
        Self { bytes: 0, sha256: [0; 32], failure: Some(why), stderr: Vec::new() }
    }
}

/// Starts the test apiserver, its agent (cluster [`CLUSTER`] at the hub),
/// the pod, and the kubeconfigs of both routes.
async fn start_world(setup: &Setup<'_>, kubectls: Kubectls) -> anyhow::Result<World> {
    let dir = setup.dir.to_path_buf();
    let api_kubeconfig = dir.join("integrity-apiserver.kubeconfig");
    let api_log = dir.join("integrity-apiserver.log");
    let apiserver = procs::start_test_apiserver(setup.bins, &api_kubeconfig, &api_log).await?;
    let token = procs::ferryctl(setup.bins, &setup.admin, &["register", CLUSTER, "-o", "token"]).await?;
    let agent_log = dir.join("integrity-agent.log");
    let agent = procs::start_agent(
        setup.bins,
        setup.hub_url,
        &setup.hub_ca,
        token.trim(),
        &api_kubeconfig,
        &dir.join("integrity-agent-state"),
        &agent_log,
    )
    .await?;
    procs::ferryctl(setup.bins, &setup.admin, &["grant", "--cluster", CLUSTER, "--user", "integrity"])
        .await?;
    let user = procs::ferryctl(
        setup.bins,
        &setup.admin,
        &["kubeconfig", CLUSTER, "--user", "integrity", "--group", "integrity"],
    )
    .await?;
    let tunnel_kubeconfig = dir.join("integrity-user.kubeconfig");
    std::fs::write(&tunnel_kubeconfig, user)?;
    let mut create = kubectls.command(
        Transport::WebSocket,
        &api_kubeconfig,
        &["run", POD, "--image=busybox", "--restart=Never"],
    );
    let out =
        tokio::time::timeout(START_TIMEOUT, create.output()).await.context("kubectl run timed out")??;
    if !out.status.success() {
        bail!("kubectl run {POD}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(World {
        kubectls,
        tunnel: Target { kubeconfig: tunnel_kubeconfig },
        direct: Target { kubeconfig: api_kubeconfig },
        forwards: Vec::new(),
        logs: vec![("hub", dir.join("hub.log")), ("agent", agent_log), ("apiserver", api_log)],
        dir,
        _apiserver: apiserver,
        _agent: agent,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn log_lengths(world: &World) -> Vec<u64> {
    world.logs.iter().map(|(_, p)| std::fs::metadata(p).map_or(0, |m| m.len())).collect()
}

/// Keeps a failing run's evidence: its description, kubectl's stderr and
/// the log lines each process wrote while it ran.
fn keep_failure(world: &World, n: usize, spec: Spec, report: &str, stderr: &[u8], before: &[u64]) -> PathBuf {
    let dir = world.dir.join("integrity-failures").join(format!("run-{n:04}"));
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join("run.txt"), format!("{spec}\n{report}\n"));
    let _ = std::fs::write(dir.join("kubectl.stderr"), stderr);
    for ((name, path), start) in world.logs.iter().zip(before) {
        if let Ok(all) = std::fs::read(path) {
            let from = usize::try_from(*start).unwrap_or(0).min(all.len());
            let _ = std::fs::write(dir.join(format!("{name}.log")), &all[from..]);
        }
    }
    dir
}

/// Tallies per route.
#[derive(Default)]
struct Tally {
    runs: usize,
    mismatches: usize,
    bytes: u64,
}

/// Runs the scenario.
pub async fn run(setup: Setup<'_>) -> anyhow::Result<(Vec<Row>, bool)> {
    let started = Instant::now();
    let kubectls = Kubectls::find()?;
    let spdy = kubectls.spdy_name();
    let mut world = start_world(&setup, kubectls).await?;
    let mut rng = Rng(setup.seed);
    let p = setup.plan;
    let mut specs = plan_route(&mut rng, Route::Tunnel, p.tunnel_runs, p.big_runs, p.stall_runs);
    specs.extend(plan_route(&mut rng, Route::Direct, p.direct_runs, p.big_runs, p.stall_runs));
    let bigs = specs.iter().filter(|s| s.size == BIG).count();
    let stalls = specs.iter().filter(|s| matches!(s.reader, Reader::Stall { .. })).count();
    // Interleave routes and kinds.
    for i in (1..specs.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        specs.swap(i, j);
    }

    let load = Load::start(setup.dir);
    let (mut tunnel, mut direct) = (Tally::default(), Tally::default());
    let mut ops = [0usize; 3];
    let mut transports = [0usize; 2];
    let mut failures = Vec::new();
    let total = specs.len();
    for (n, spec) in specs.into_iter().enumerate() {
        let mut data = vec![0u8; usize::try_from(spec.size).unwrap_or(0)];
        rng.fill(&mut data);
        let want: [u8; 32] = Sha256::digest(&data).into();
        let before = log_lengths(&world);
        let t0 = Instant::now();
        let seen = world.run(spec, &data).await;
        let took = t0.elapsed();
        let ok = seen.failure.is_none() && seen.bytes == spec.size && seen.sha256 == want;
        let tally = if spec.route == Route::Tunnel { &mut tunnel } else { &mut direct };
        tally.runs += 1;
        tally.bytes += spec.size;
        ops[spec.op as usize] += 1;
        transports[spec.transport as usize] += 1;
        if !ok {
            tally.mismatches += 1;
            let report = format!(
                "sent {} B sha256 {}; got {} B sha256 {}; {}; {:.1} s",
                spec.size,
                hex(&want),
                seen.bytes,
                hex(&seen.sha256),
                seen.failure.as_deref().unwrap_or("kubectl succeeded"),
                took.as_secs_f64()
            );
            let kept = keep_failure(&world, n, spec, &report, &seen.stderr, &before);
            eprintln!(
                "  integrity run {n}/{total} FAILED ({spec}): {report}; evidence in {}",
                kept.display()
            );
            failures.push(kept);
        } else if (n + 1) % 25 == 0 {
            eprintln!(
                "  integrity: {}/{total} runs done, {} mismatches",
                n + 1,
                tunnel.mismatches + direct.mismatches
            );
        }
    }
    drop(load);
    let wall = started.elapsed();
    for (_, f) in &mut world.forwards {
        let _ = f.child.kill().await;
    }

    let note = format!(
        "{} runs through the hub and {} direct (exec -i cat {}, cp there and back {}, port-forward echo {}; \
         WebSocket {}, SPDY {} ({spdy})); sizes 0 B to 50 MiB ({bigs} of 50 MiB), {stalls} stalls of \
         {:?} before the end of a {} MiB output, {}% slow readers; {} CPU burners and a disk writer; \
         seed {}; {:.0} s{}",
        tunnel.runs,
        direct.runs,
        ops[Op::ExecCat as usize],
        ops[Op::Cp as usize],
        ops[Op::PortForward as usize],
        transports[Transport::WebSocket as usize],
        transports[Transport::Spdy as usize],
        STALL,
        STALL_SIZE >> 20,
        SLOW_PERCENT,
        std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get),
        setup.seed,
        wall.as_secs_f64(),
        if failures.is_empty() {
            String::new()
        } else {
            format!("; evidence of failing runs in {}", setup.dir.join("integrity-failures").display())
        }
    );
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let rows = vec![
        Row::value(
            "9. upgraded-stream integrity: mismatches",
            "runs",
            Some(direct.mismatches as f64),
            tunnel.mismatches as f64,
            tunnel.mismatches as f64,
            Goal::ValueAtMost(0.0),
        )
        .note(note),
        Row::value(
            "9. upgraded-stream integrity: bytes compared",
            "MiB",
            Some(mib(direct.bytes)),
            mib(tunnel.bytes),
            mib(tunnel.bytes),
            Goal::Info,
        ),
    ];
    Ok((rows, !failures.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_cover_the_edges_and_the_big_and_stalling_runs() {
        let mut rng = Rng(7);
        let specs = plan_route(&mut rng, Route::Tunnel, 200, 3, 2);
        assert_eq!(specs.len(), 200);
        assert_eq!(specs.iter().filter(|s| s.size == BIG).count(), 3);
        assert_eq!(specs.iter().filter(|s| matches!(s.reader, Reader::Stall { .. })).count(), 2);
        assert!(
            specs.iter().filter(|s| matches!(s.reader, Reader::Stall { .. })).all(|s| s.op == Op::ExecCat)
        );
        assert!(specs.iter().any(|s| s.size == 0) && specs.iter().any(|s| s.size == 4097));
        assert!(specs.iter().all(|s| s.op != Op::Cp || s.reader == Reader::Fast));
    }

    #[test]
    fn the_generator_is_seeded() {
        let (mut a, mut b) = (Rng(1), Rng(1));
        let (mut x, mut y) = ([0u8; 13], [0u8; 13]);
        a.fill(&mut x);
        b.fill(&mut y);
        assert_eq!(x, y);
        assert_ne!(Rng(2).next(), Rng(1).next());
    }
}

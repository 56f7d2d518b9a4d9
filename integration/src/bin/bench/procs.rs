//! The real hub and agent as child processes, `ferryctl`, and their resource
//! use read from `/proc`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

/// How long a hub or agent may take to print its ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a stopped process gets to exit after SIGTERM before SIGKILL
/// (generous: under valgrind, exiting and writing the profile takes a while).
pub const STOP_GRACE: Duration = Duration::from_secs(30);

/// Paths of the release binaries.
#[derive(Clone, Debug)]
pub struct Binaries {
    /// `ferry-hub`.
    pub hub: PathBuf,
    /// `ferry-agent`.
    pub agent: PathBuf,
    /// `ferryctl`.
    pub ferryctl: PathBuf,
    /// `test-apiserver` (scenario 9), from the same directory or else next
    /// to this executable.
    pub test_apiserver: PathBuf,
}

impl Binaries {
    /// Looks in `dir`, else next to this executable (`target/release`).
    pub fn locate(dir: Option<PathBuf>) -> anyhow::Result<Self> {
        let own = std::env::current_exe()?.parent().context("executable without a directory")?.to_path_buf();
        let dir = dir.unwrap_or_else(|| own.clone());
        let test_apiserver = Some(dir.join("test-apiserver")).filter(|p| p.is_file());
        let bins = Self {
            hub: dir.join("ferry-hub"),
            agent: dir.join("ferry-agent"),
            ferryctl: dir.join("ferryctl"),
            test_apiserver: test_apiserver.unwrap_or_else(|| own.join("test-apiserver")),
        };
        for b in [&bins.hub, &bins.agent, &bins.ferryctl] {
            if !b.is_file() {
                bail!(
                    "{} not found; build the binaries first: cargo build --release --workspace (or pass --bin-dir)",
                    b.display()
                );
            }
        }
        Ok(bins)
    }
}

/// A child process; killed when dropped.
pub struct Proc {
    /// Its pid.
    pub pid: u32,
    child: Child,
    /// Counts the ready lines it printed (the agent prints one per connect).
    pub ready: watch::Receiver<u64>,
}

impl Proc {
    fn spawn(
        mut cmd: Command,
        log: &Path,
        marker: &'static str,
    ) -> anyhow::Result<(Self, tokio::sync::mpsc::Receiver<String>)> {
        let log = std::fs::File::create(log)?;
        cmd.stdout(Stdio::piped()).stderr(Stdio::from(log)).stdin(Stdio::null()).kill_on_drop(true);
        let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
        let pid = child.id().context("child without pid")?;
        let stdout = child.stdout.take().context("child stdout")?;
        let (count_tx, count_rx) = watch::channel(0u64);
        let (line_tx, line_rx) = tokio::sync::mpsc::channel(4);
        // Drains stdout so the child never blocks on a full pipe; ends with it.
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains(marker) {
                    count_tx.send_modify(|n| *n += 1);
                    let _ = line_tx.try_send(line);
                }
            }
        });
        Ok((Self { pid, child, ready: count_rx }, line_rx))
    }

    /// Starts a process whose stdout and stderr go to `log`; it prints no
    /// ready line (the caller checks readiness its own way).
    pub fn spawn_quiet(mut cmd: Command, log: &Path) -> anyhow::Result<Self> {
        let out = std::fs::File::create(log)?;
        cmd.stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
        let pid = child.id().context("child without pid")?;
        Ok(Self { pid, child, ready: watch::channel(0u64).1 })
    }

    /// Waits until the ready-line count exceeds `seen`.
    pub async fn wait_ready(&mut self, seen: u64) -> anyhow::Result<()> {
        tokio::time::timeout(READY_TIMEOUT, self.ready.wait_for(|n| *n > seen))
            .await
            .context("timed out waiting for the ready line")?
            .context("process exited")?;
        Ok(())
    }

    /// Stops the process with SIGTERM (then SIGKILL after [`STOP_GRACE`]) and reaps it.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let _ = Command::new("kill").arg("-TERM").arg(self.pid.to_string()).status().await;
        if tokio::time::timeout(STOP_GRACE, self.child.wait()).await.is_err() {
            self.child.kill().await?;
        }
        Ok(())
    }
}

/// Starts `ferry-hub serve`; returns it and its URL.
pub async fn start_hub(
    bins: &Binaries,
    data_dir: &Path,
    listen: &str,
    log: &Path,
) -> anyhow::Result<(Proc, String)> {
    start_hub_with(bins, data_dir, listen, log, &[]).await
}

/// [`start_hub`] with more `serve` arguments (`--store etcd://...`).
pub async fn start_hub_with(
    bins: &Binaries,
    data_dir: &Path,
    listen: &str,
    log: &Path,
    extra: &[&str],
) -> anyhow::Result<(Proc, String)> {
    let mut cmd = Command::new(&bins.hub);
    cmd.arg("serve").arg("--listen").arg(listen).arg("--data-dir").arg(data_dir).args(extra);
    // The bench plays one caller with 10,000 watches (scenario 5) and 10,000
    // agents of one cluster (scenario 8): lift the per-caller and
    // per-cluster-session bounds, which guard against one identity taking
    // everything, not against load.
    cmd.args(["--max-streams-per-caller", "20000", "--max-agent-sessions-per-cluster", "20000"]);
    let (proc, mut lines) = Proc::spawn(cmd, log, "ferry-hub ready at ")?;
    let line = tokio::time::timeout(READY_TIMEOUT, lines.recv())
        .await
        .context("hub did not print its ready line")?
        .with_context(|| format!("hub exited; see {}", log.display()))?;
    let url = line
        .split("ready at ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .context("unparsable hub ready line")?
        .to_string();
    Ok((proc, url))
}

/// Starts `ferry-agent` and waits for its first connect.
pub async fn start_agent(
    bins: &Binaries,
    hub_url: &str,
    hub_ca: &Path,
    token: &str,
    kubeconfig: &Path,
    state_dir: &Path,
    log: &Path,
) -> anyhow::Result<Proc> {
    let mut cmd = Command::new(&bins.agent);
    cmd.arg("--hub")
        .arg(hub_url)
        .arg("--hub-ca")
        .arg(hub_ca)
        .arg("--token")
        .arg(token)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--state-dir")
        .arg(state_dir);
    let (mut proc, _lines) = Proc::spawn(cmd, log, "ferry-agent connected")?;
    proc.wait_ready(0).await.with_context(|| format!("agent did not connect; see {}", log.display()))?;
    Ok(proc)
}

/// Starts `test-apiserver` (writing its kubeconfig to `kubeconfig_out`) and
/// waits for its ready line.
pub async fn start_test_apiserver(
    bins: &Binaries,
    kubeconfig_out: &Path,
    log: &Path,
) -> anyhow::Result<Proc> {
    let mut cmd = Command::new(&bins.test_apiserver);
    cmd.arg("--listen").arg("127.0.0.1:0").arg("--kubeconfig-out").arg(kubeconfig_out).env("NO_COLOR", "1");
    let (mut proc, _lines) = Proc::spawn(cmd, log, "test-apiserver ready: ")?;
    proc.wait_ready(0)
        .await
        .with_context(|| format!("test-apiserver did not start; see {}", log.display()))?;
    Ok(proc)
}

/// Runs `ferryctl --kubeconfig ADMIN ARGS...` and returns its stdout.
pub async fn ferryctl(bins: &Binaries, admin: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(&bins.ferryctl).arg("--kubeconfig").arg(admin).args(args).output().await?;
    if !out.status.success() {
        bail!("ferryctl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Memory and CPU of a process.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcStats {
    /// Current resident set, KiB (`VmRSS`).
    pub rss_kib: u64,
    /// Peak resident set, KiB (`VmHWM`).
    pub hwm_kib: u64,
    /// User + system CPU time.
    pub cpu: Duration,
}

/// Reads `/proc/PID/status` and `/proc/PID/stat`.
pub fn stats(pid: u32) -> anyhow::Result<ProcStats> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the command name: state is field 3, utime 14, stime 15 (1-based).
    let ticks = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let total = ticks(14) + ticks(15);
    Ok(ProcStats {
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
        cpu: Duration::from_millis(total * 1000 / clock_ticks()),
    })
}

/// CPU time of a process's live threads, in nanoseconds precision (the sum
/// of `/proc/PID/task/*/schedstat`; `/proc/PID/stat` counts 10 ms ticks,
/// too coarse for one LIST). Threads that exited are not counted, so use it
/// for short intervals over long-lived threads (tokio workers).
pub fn thread_cpu(pid: u32) -> anyhow::Result<Duration> {
    let mut total = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = task?.path().join("schedstat");
        // A thread may exit between listing and reading.
        let Ok(text) = std::fs::read_to_string(path) else { continue };
        total += text.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    }
    Ok(Duration::from_nanos(total))
}

/// `sysconf(_SC_CLK_TCK)`; 100 on every Linux we run on.
fn clock_ticks() -> u64 {
    100
}

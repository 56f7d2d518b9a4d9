//! Test harness: real processes (test-apiserver, ferry-hub, ferry-agent) on
//! loopback, each started on port 0 and waited on through the one line it
//! prints when ready; the real `kubectl` and `ferryctl` drive them.

#![allow(dead_code)]

pub mod manifest;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long any readiness wait may take before the test fails.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Directory holding the workspace's built binaries (`target/debug`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/e2e-HASH -> target/debug
    exe.parent().and_then(Path::parent).expect("target dir").to_path_buf()
}

/// Path of a workspace binary; the suite runs after `cargo build --workspace`.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(p.exists(), "{} is missing: run `cargo build --workspace --all-targets` first", p.display());
    p
}

/// A child process whose stdout lines are collected; killed on drop.
pub struct Proc {
    pub name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Proc {
    /// Starts `cmd` with piped stdout (stderr inherited, so failures show in
    /// the test log).
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdout(Stdio::piped()).stdin(Stdio::null());
        if std::env::var_os("FERRY_TEST_QUIET").is_some() {
            cmd.stderr(Stdio::null());
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc { name: name.to_owned(), child, lines: rx, seen: Vec::new() }
    }

    /// Waits for a stdout line containing `needle`, returns it.
    pub fn wait_line(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "{}: no line containing {needle:?} within {timeout:?}; saw {:?}; exit status {:?}",
                    self.name,
                    self.seen,
                    self.child.try_wait()
                ),
            }
        }
    }

    /// Waits for the `n`-th (1-based) stdout line containing `needle`,
    /// counting lines already seen.
    pub fn wait_nth_line(&mut self, needle: &str, n: usize, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let matching: Vec<&String> = self.seen.iter().filter(|l| l.contains(needle)).collect();
            if matching.len() >= n {
                return matching[n - 1].clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => {
                    panic!("{}: fewer than {n} lines containing {needle:?}; saw {:?}", self.name, self.seen)
                }
            }
        }
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// OS process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The URL (first `https://` word) in a ready line.
pub fn url_in(line: &str) -> String {
    line.split_whitespace()
        .find(|w| w.starts_with("https://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .trim_end_matches([',', ')'])
        .to_owned()
}

/// One test's world: a test apiserver, a hub and an agent, in a temp dir.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub apiserver: Proc,
    pub apiserver_url: String,
    pub hub: Proc,
    pub hub_url: String,
    /// Extra `ferry-hub serve` flags, kept for restarts.
    pub hub_args: Vec<String>,
    pub agent: Option<Proc>,
    pub cluster: String,
}

/// One RBAC rule: subjects, verbs, resources, namespaces.
pub type Rule<'a> = (&'a [&'a str], &'a [&'a str], &'a [&'a str], &'a [&'a str]);

/// Starts `ferry-hub serve` on `listen` with its data in `data_dir`; returns
/// it and the URL from its ready line.
pub fn start_hub(data_dir: &Path, listen: &str, extra: &[String]) -> (Proc, String) {
    let mut cmd = Command::new(bin("ferry-hub"));
    cmd.args(["serve", "--listen", listen, "--data-dir"]).arg(data_dir).args(extra);
    let mut hub = Proc::spawn("ferry-hub", cmd);
    let url = url_in(&hub.wait_line("ferry-hub ready", READY_TIMEOUT));
    (hub, url)
}

/// RBAC rules for the test apiserver, as its `--rbac-file` JSON.
pub fn rbac_json(rules: &[Rule<'_>]) -> String {
    let rules: Vec<serde_json::Value> = rules
        .iter()
        .map(|(subjects, verbs, resources, namespaces)| {
            serde_json::json!({"subjects": subjects, "verbs": verbs, "resources": resources, "namespaces": namespaces})
        })
        .collect();
    serde_json::to_string(&rules).expect("json")
}

impl Env {
    /// Starts apiserver (with `rbac` rules when given), hub, and an agent for
    /// cluster `edge`, and waits until the agent is connected.
    pub fn start(rbac: Option<String>) -> Env {
        Self::start_with(rbac, &[])
    }

    /// Like [`Env::start`], with extra `ferry-hub serve` flags.
    pub fn start_with(rbac: Option<String>, hub_args: &[&str]) -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new(bin("test-apiserver"));
        cmd.args(["--listen", "127.0.0.1:0", "--kubeconfig-out"])
            .arg(dir.path().join("apiserver.kubeconfig"))
            .arg("--cert-kubeconfig-out")
            .arg(dir.path().join("apiserver-cert.kubeconfig"));
        if let Some(rules) = rbac {
            let f = dir.path().join("rbac.json");
            std::fs::write(&f, rules).expect("write rbac");
            cmd.arg("--rbac-file").arg(f);
        }
        let mut apiserver = Proc::spawn("test-apiserver", cmd);
        let apiserver_url = url_in(&apiserver.wait_line("test-apiserver ready", READY_TIMEOUT));

        let hub_args: Vec<String> = hub_args.iter().map(|a| (*a).to_owned()).collect();
        let (hub, hub_url) = start_hub(&dir.path().join("hub"), "127.0.0.1:0", &hub_args);

        let mut env = Env {
            dir,
            apiserver,
            apiserver_url,
            hub,
            hub_url,
            hub_args,
            agent: None,
            cluster: "edge".into(),
        };
        let token = env.ferryctl_ok(&["register", "edge", "-o", "token"]);
        env.start_agent(Some(token.trim()));
        env
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.path("hub/admin.kubeconfig")
    }

    pub fn apiserver_kubeconfig(&self) -> PathBuf {
        self.path("apiserver.kubeconfig")
    }

    /// Starts (or restarts) the agent; with `None` it reuses the credential
    /// in its state dir.
    pub fn start_agent(&mut self, token: Option<&str>) {
        let mut cmd = self.agent_command("agent-state");
        if let Some(t) = token {
            cmd.env("FERRY_TOKEN", t);
        }
        let mut agent = Proc::spawn("ferry-agent", cmd);
        agent.wait_line("ferry-agent connected:", READY_TIMEOUT);
        self.agent = Some(agent);
    }

    /// Stops the hub (SIGKILL) and starts it again on the same address with
    /// the same data dir and flags, as after a crash.
    pub fn restart_hub(&mut self) {
        self.hub.kill();
        let addr = self.hub_url.trim_start_matches("https://").trim_end_matches('/').to_owned();
        let (hub, url) = start_hub(&self.path("hub"), &addr, &self.hub_args);
        assert_eq!(url, self.hub_url, "the hub came back at the same URL");
        self.hub = hub;
    }

    /// An agent command for this env's hub and apiserver, with `state_dir`
    /// (in the temp dir); the caller adds a token or not.
    pub fn agent_command(&self, state_dir: &str) -> Command {
        let mut cmd = Command::new(bin("ferry-agent"));
        cmd.arg("--hub")
            .arg(&self.hub_url)
            .arg("--hub-ca")
            .arg(self.path("hub/ca.crt"))
            .arg("--kubeconfig")
            .arg(self.apiserver_kubeconfig())
            .arg("--state-dir")
            .arg(self.path(state_dir))
            .env_remove("FERRY_TOKEN")
            .env_remove("FERRY_TOKEN_FILE");
        cmd
    }

    /// Kills the agent and waits until the hub has noticed.
    pub fn stop_agent(&mut self) {
        if let Some(mut a) = self.agent.take() {
            a.kill();
        }
        self.ferryctl_ok(&["wait", &self.cluster.clone(), "--for", "disconnected", "--timeout", "60s"]);
    }

    /// Runs ferryctl with the admin kubeconfig.
    pub fn ferryctl(&self, args: &[&str]) -> Output {
        Command::new(bin("ferryctl"))
            .arg("--kubeconfig")
            .arg(self.admin_kubeconfig())
            .args(args)
            .output()
            .expect("run ferryctl")
    }

    /// Runs ferryctl and returns stdout, failing the test on a non-zero exit.
    pub fn ferryctl_ok(&self, args: &[&str]) -> String {
        let out = self.ferryctl(args);
        assert!(out.status.success(), "ferryctl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf8")
    }

    /// Grants `user` access to the cluster and issues a kubeconfig for
    /// `user` in `groups` through ferryctl, written to the temp dir.
    pub fn user_kubeconfig(&self, user: &str, groups: &[&str]) -> PathBuf {
        self.ferryctl_ok(&["grant", "--cluster", "edge", "--user", user]);
        let mut args = vec!["kubeconfig", "edge", "--user", user];
        for g in groups {
            args.push("--group");
            args.push(g);
        }
        let yaml = self.ferryctl_ok(&args);
        let path = self.path(&format!("{user}.kubeconfig"));
        std::fs::write(&path, yaml).expect("write kubeconfig");
        path
    }

    /// What the test apiserver recorded, read through its admin credential.
    pub fn recorded(&self) -> Vec<serde_json::Value> {
        let out = kubectl(&self.apiserver_kubeconfig(), &["get", "--raw", "/_test/requests"]);
        assert!(out.status.success(), "read recorded requests: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("recorded requests are JSON")
    }

    /// Appends a line to a pod's log in the test apiserver.
    pub fn append_log(&self, ns: &str, pod: &str, line: &str) {
        let f = self.path("logline.txt");
        std::fs::write(&f, line).expect("write");
        let out = kubectl(
            &self.apiserver_kubeconfig(),
            &["create", "--raw", &format!("/_test/logs/{ns}/{pod}"), "-f", f.to_str().expect("utf8 path")],
        );
        assert!(out.status.success(), "append log: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// The kubectl binary under test (`FERRY_KUBECTL` overrides `kubectl`).
pub fn kubectl_bin() -> String {
    std::env::var("FERRY_KUBECTL").unwrap_or_else(|_| "kubectl".into())
}

/// Runs kubectl with `kubeconfig`.
pub fn kubectl(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new(kubectl_bin())
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .expect("run kubectl")
}

/// Runs kubectl, failing the test on a non-zero exit; returns stdout.
pub fn kubectl_ok(kubeconfig: &Path, args: &[&str]) -> String {
    let out = kubectl(kubeconfig, args);
    assert!(
        out.status.success(),
        "kubectl {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8")
}

/// Runs kubectl with `stdin` piped in.
pub fn kubectl_stdin(kubeconfig: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(kubectl_bin())
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .env_remove("KUBECONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl");
    child.stdin.take().expect("stdin").write_all(stdin).expect("write stdin");
    child.wait_with_output().expect("kubectl output")
}

/// Starts a long-running kubectl (watch, logs -f) as a [`Proc`].
pub fn kubectl_spawn(kubeconfig: &Path, args: &[&str]) -> Proc {
    let mut cmd = Command::new(kubectl_bin());
    cmd.arg("--kubeconfig").arg(kubeconfig).args(args).env_remove("KUBECONFIG");
    Proc::spawn("kubectl", cmd)
}

/// An older kubectl shipped beside the real file of `kubectl` on `PATH`
/// (`kubectl.1.27`, ...), if this machine has it.
pub fn versioned_kubectl(version: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    let found = std::env::split_paths(&path).map(|d| d.join("kubectl")).find(|p| p.is_file())?;
    let real = std::fs::canonicalize(found).ok()?;
    let versioned = real.parent()?.join(format!("kubectl.{version}"));
    versioned.is_file().then_some(versioned)
}

/// A kubectl binary with the environment that picks its streaming
/// transport.
#[derive(Clone, Debug)]
pub struct Flavor {
    /// Short name for messages.
    pub name: &'static str,
    /// The binary.
    pub bin: PathBuf,
    /// `KUBECTL_*_WEBSOCKETS` settings.
    pub envs: Vec<(&'static str, &'static str)>,
    /// The `upgrade` the test apiserver should record (`SPDY/3.1` or
    /// `websocket`) for exec and for port-forward.
    pub exec_upgrade: &'static str,
    /// The same for port-forward.
    pub port_forward_upgrade: &'static str,
}

impl Flavor {
    /// The default kubectl forced onto SPDY.
    pub fn spdy() -> Flavor {
        Flavor {
            name: "spdy",
            bin: PathBuf::from(kubectl_bin()),
            envs: vec![
                ("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false"),
                ("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false"),
            ],
            exec_upgrade: "SPDY/3.1",
            port_forward_upgrade: "SPDY/3.1",
        }
    }

    /// The default kubectl on WebSockets.
    pub fn websocket() -> Flavor {
        Flavor {
            name: "websocket",
            bin: PathBuf::from(kubectl_bin()),
            envs: vec![
                ("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "true"),
                ("KUBECTL_PORT_FORWARD_WEBSOCKETS", "true"),
            ],
            exec_upgrade: "websocket",
            port_forward_upgrade: "websocket",
        }
    }

    /// kubectl 1.27 (SPDY only), when installed.
    pub fn kubectl_1_27() -> Option<Flavor> {
        Some(Flavor {
            name: "kubectl-1.27",
            bin: versioned_kubectl("1.27")?,
            envs: Vec::new(),
            exec_upgrade: "SPDY/3.1",
            port_forward_upgrade: "SPDY/3.1",
        })
    }

    /// The three flavors the streaming tests cover (1.27 when installed).
    pub fn all() -> Vec<Flavor> {
        let mut all = vec![Flavor::spdy(), Flavor::websocket()];
        match Flavor::kubectl_1_27() {
            Some(f) => all.push(f),
            None => eprintln!("kubectl.1.27 not found beside kubectl: skipping it"),
        }
        all
    }

    /// A kubectl command with `kubeconfig` and this flavor's environment.
    pub fn command(&self, kubeconfig: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--kubeconfig").arg(kubeconfig).args(args).env_remove("KUBECONFIG");
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs kubectl to completion.
    pub fn run(&self, kubeconfig: &Path, args: &[&str]) -> Output {
        self.command(kubeconfig, args).stdin(Stdio::null()).output().expect("run kubectl")
    }

    /// Runs kubectl; it must succeed. Returns stdout.
    pub fn ok(&self, kubeconfig: &Path, args: &[&str]) -> String {
        let out = self.run(kubeconfig, args);
        assert!(
            out.status.success(),
            "[{}] kubectl {args:?} failed ({}): {}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf8")
    }

    /// Runs kubectl with stdin from one file and stdout into another (for
    /// large transfers); returns the exit status and stderr.
    pub fn run_files(
        &self,
        kubeconfig: &Path,
        args: &[&str],
        stdin: &Path,
        stdout: &Path,
    ) -> (std::process::ExitStatus, String) {
        let out = self
            .command(kubeconfig, args)
            .stdin(std::fs::File::open(stdin).expect("open stdin file"))
            .stdout(std::fs::File::create(stdout).expect("create stdout file"))
            .stderr(Stdio::piped())
            .output()
            .expect("run kubectl");
        (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// Starts a long-running kubectl whose stdout lines are collected.
    pub fn spawn(&self, kubeconfig: &Path, args: &[&str]) -> Proc {
        Proc::spawn(&format!("kubectl ({})", self.name), self.command(kubeconfig, args))
    }
}

/// Writes `size` random bytes (from the kernel, fast even in debug builds)
/// to `path`; returns their SHA-256 (hex).
pub fn write_random_file(path: &Path, size: u64) -> String {
    use std::io::Read;
    let mut random = std::fs::File::open("/dev/urandom").expect("open /dev/urandom").take(size);
    let mut f = std::fs::File::create(path).expect("create");
    let copied = std::io::copy(&mut random, &mut f).expect("write random data");
    assert_eq!(copied, size);
    sha256_file(path).0
}

/// SHA-256 (hex) of a file and its length (with coreutils' `sha256sum`,
/// as a debug build of a hash crate would be slow on 50 MiB).
pub fn sha256_file(path: &Path) -> (String, u64) {
    let len = std::fs::metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display())).len();
    let out = Command::new("sha256sum").arg(path).output().expect("run sha256sum");
    assert!(out.status.success(), "sha256sum {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("utf8");
    (text.split_whitespace().next().expect("a digest").to_owned(), len)
}

/// A TCP echo server on 127.0.0.1:0 that keeps half-closes: on EOF from
/// the client it finishes echoing, then shuts its write side. Stopped (and
/// its threads joined) on drop.
pub struct TcpEcho {
    pub addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    accept: Option<std::thread::JoinHandle<Vec<std::thread::JoinHandle<u64>>>>,
}

/// How long an echo connection may sit idle before it is dropped (so
/// threads always end).
const ECHO_IDLE: Duration = Duration::from_secs(60);

impl TcpEcho {
    pub fn start() -> TcpEcho {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind echo server");
        let addr = listener.local_addr().expect("addr");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let accept = std::thread::spawn(move || {
            let mut conns = Vec::new();
            for conn in listener.incoming() {
                if flag.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                conns.push(std::thread::spawn(move || {
                    use std::io::Read;
                    let _ = conn.set_read_timeout(Some(ECHO_IDLE));
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut total = 0u64;
                    loop {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                total += n as u64;
                                if conn.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = conn.shutdown(std::net::Shutdown::Write);
                    total
                }));
            }
            conns
        });
        TcpEcho { addr, stop, accept: Some(accept) }
    }
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = std::net::TcpStream::connect(self.addr);
        if let Some(accept) = self.accept.take()
            && let Ok(conns) = accept.join()
        {
            for c in conns {
                let _ = c.join();
            }
        }
    }
}

/// Sends the file `input` to `addr` while reading everything back (on
/// another thread) into the file `output`, half-closing after the last
/// byte; returns the number of bytes received.
pub fn tcp_round_trip(addr: &str, input: &Path, output: &Path) -> u64 {
    let conn = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    conn.set_read_timeout(Some(READY_TIMEOUT)).expect("timeout");
    let mut writer = conn.try_clone().expect("clone");
    let mut source = std::fs::File::open(input).expect("open input");
    let sender = std::thread::spawn(move || {
        let sent = std::io::copy(&mut source, &mut writer).expect("send");
        writer.shutdown(std::net::Shutdown::Write).expect("half-close");
        sent
    });
    let mut reader = conn;
    let mut sink = std::fs::File::create(output).expect("create output");
    let got = std::io::copy(&mut reader, &mut sink).unwrap_or_else(|e| panic!("reading the echo: {e}"));
    sender.join().expect("sender thread");
    got
}

/// The local port in kubectl port-forward's `Forwarding from
/// 127.0.0.1:PORT -> ...` line.
pub fn forwarded_port(line: &str) -> u16 {
    line.split("127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no local port in {line:?}"))
}

impl Env {
    /// Waits (server side, up to `timeout`) for a recorded request whose
    /// path contains `path_part` and that ended with `outcome`
    /// (`inProgress`, `completed`, `cancelled`) and came after request
    /// `after`; returns it, or `None` on timeout.
    pub fn wait_recorded(
        &self,
        path_part: &str,
        outcome: &str,
        after: u64,
        timeout: Duration,
    ) -> Option<serde_json::Value> {
        let path = format!(
            "/_test/requests/wait?pathContains={}&outcome={outcome}&afterId={after}&timeoutSeconds={}",
            path_part.replace('/', "%2F"),
            timeout.as_secs().max(1)
        );
        let out = kubectl(&self.apiserver_kubeconfig(), &["get", "--raw", &path, "--request-timeout", "0"]);
        assert!(
            out.status.success(),
            "wait for a recorded request: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        (v["found"] == true).then(|| v["request"].clone())
    }

    /// The id of the latest recorded request (0 if none).
    pub fn last_recorded_id(&self) -> u64 {
        self.recorded().iter().filter_map(|r| r["id"].as_u64()).max().unwrap_or(0)
    }
}

impl Proc {
    /// Like [`Proc::spawn`], but stderr lines are collected too (prefixed
    /// `stderr: `), so a test can wait for what the process logs.
    pub fn spawn_logging(name: &str, mut cmd: Command) -> Proc {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(Stdio::null()).env("NO_COLOR", "1");
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        let err_tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if err_tx.send(format!("stderr: {line}")).is_err() {
                    break;
                }
            }
        });
        Proc { name: name.to_owned(), child, lines: rx, seen: Vec::new() }
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Stdout lines seen so far that contain `needle`, after taking in what
    /// has arrived.
    pub fn count_lines(&mut self, needle: &str) -> usize {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        self.seen.iter().filter(|l| l.contains(needle) && !l.starts_with("stderr: ")).count()
    }

    /// Like [`Proc::spawn`], with stdin piped; returns its write end too.
    pub fn spawn_with_stdin(name: &str, mut cmd: Command) -> (Proc, std::process::ChildStdin) {
        cmd.stdout(Stdio::piped()).stdin(Stdio::piped());
        if std::env::var_os("FERRY_TEST_QUIET").is_some() {
            cmd.stderr(Stdio::null());
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        (Proc { name: name.to_owned(), child, lines: rx, seen: Vec::new() }, stdin)
    }

    /// Waits for the process to exit (at most `timeout`, else it is killed
    /// and the test fails), collecting its remaining stdout lines.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                // stdout closed: the exit is imminent.
                Err(mpsc::RecvTimeoutError::Disconnected) => return self.child.wait().expect("wait"),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.kill();
                    panic!("{} did not exit within {timeout:?}; saw {:?}", self.name, self.seen);
                }
            }
        }
    }
}

impl Proc {
    /// Every line received so far (stdout, and stderr prefixed `stderr: `
    /// for [`Proc::spawn_logging`]).
    pub fn lines_so_far(&mut self) -> Vec<String> {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        self.seen.clone()
    }
}

impl Env {
    /// Like [`Env::start_with`], but the hub and the agent log to the test
    /// ([`Proc::spawn_logging`], `RUST_LOG` = `log_filter`), and the agent
    /// gets `agent_args` too.
    pub fn start_logging(hub_args: &[&str], agent_args: &[&str], log_filter: &str) -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new(bin("test-apiserver"));
        cmd.args(["--listen", "127.0.0.1:0", "--kubeconfig-out"])
            .arg(dir.path().join("apiserver.kubeconfig"));
        let mut apiserver = Proc::spawn("test-apiserver", cmd);
        let apiserver_url = url_in(&apiserver.wait_line("test-apiserver ready", READY_TIMEOUT));
        let hub_args: Vec<String> = hub_args.iter().map(|a| (*a).to_owned()).collect();
        let mut cmd = Command::new(bin("ferry-hub"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("hub"))
            .args(&hub_args)
            .env("RUST_LOG", log_filter);
        let mut hub = Proc::spawn_logging("ferry-hub", cmd);
        let hub_url = url_in(&hub.wait_line("ferry-hub ready", READY_TIMEOUT));
        let mut env = Env {
            dir,
            apiserver,
            apiserver_url,
            hub,
            hub_url,
            hub_args,
            agent: None,
            cluster: "edge".into(),
        };
        let token = env.ferryctl_ok(&["register", "edge", "-o", "token"]);
        let mut cmd = env.agent_command("agent-state");
        cmd.args(agent_args).env("FERRY_TOKEN", token.trim()).env("RUST_LOG", log_filter);
        let mut agent = Proc::spawn_logging("ferry-agent", cmd);
        agent.wait_line("ferry-agent connected:", READY_TIMEOUT);
        env.agent = Some(agent);
        env
    }
}

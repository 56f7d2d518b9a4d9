//! Test harness: real processes (test-apiserver, ferry-hub, ferry-agent) on
//! loopback, each started on port 0 and waited on through the one line it
//! prints when ready; the real `kubectl` and `ferryctl` drive them.

#![allow(dead_code)]

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
    pub agent: Option<Proc>,
    pub cluster: String,
}

/// One RBAC rule: subjects, verbs, resources, namespaces.
pub type Rule<'a> = (&'a [&'a str], &'a [&'a str], &'a [&'a str], &'a [&'a str]);

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
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new(bin("test-apiserver"));
        cmd.args(["--listen", "127.0.0.1:0", "--kubeconfig-out"])
            .arg(dir.path().join("apiserver.kubeconfig"));
        if let Some(rules) = rbac {
            let f = dir.path().join("rbac.json");
            std::fs::write(&f, rules).expect("write rbac");
            cmd.arg("--rbac-file").arg(f);
        }
        let mut apiserver = Proc::spawn("test-apiserver", cmd);
        let apiserver_url = url_in(&apiserver.wait_line("test-apiserver ready", READY_TIMEOUT));

        let mut cmd = Command::new(bin("ferry-hub"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"]).arg(dir.path().join("hub"));
        let mut hub = Proc::spawn("ferry-hub", cmd);
        let hub_url = url_in(&hub.wait_line("ferry-hub ready", READY_TIMEOUT));

        let mut env =
            Env { dir, apiserver, apiserver_url, hub, hub_url, agent: None, cluster: "edge".into() };
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
        let mut cmd = Command::new(bin("ferry-agent"));
        cmd.arg("--hub")
            .arg(&self.hub_url)
            .arg("--hub-ca")
            .arg(self.path("hub/ca.crt"))
            .arg("--kubeconfig")
            .arg(self.apiserver_kubeconfig())
            .arg("--state-dir")
            .arg(self.path("agent-state"));
        if let Some(t) = token {
            cmd.arg("--token").arg(t);
        }
        let mut agent = Proc::spawn("ferry-agent", cmd);
        agent.wait_line("ferry-agent connected:", READY_TIMEOUT);
        self.agent = Some(agent);
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

    /// Issues a kubeconfig for `user` in `groups` through ferryctl and
    /// writes it to the temp dir.
    pub fn user_kubeconfig(&self, user: &str, groups: &[&str]) -> PathBuf {
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

//! A throwaway etcd for tests and the benchmark: the `etcd` binary on
//! `PATH` (Debian's `etcd-server`; `FERRY_ETCD` names another), one member,
//! its data in a temp dir, on two free loopback ports.
//!
//! etcd cannot listen on port 0 (`--listen-client-urls
//! http://127.0.0.1:0` makes it advertise port 0), so this is the one place
//! where tests pick ports themselves: bind `127.0.0.1:0`, note the port,
//! release it, and start etcd on it. Another process may take the port in
//! between; etcd then exits at once and is started again on fresh ports.
//! Readiness is etcd's own log line saying it serves clients (no polling).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long etcd may take to elect itself and serve.
pub const ETCD_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Attempts at finding two free ports etcd can bind.
const PORT_ATTEMPTS: usize = 5;

/// What etcd logs once it serves clients.
const READY_LINE: &str = "serving client traffic";

/// TLS material for an etcd serving (and requiring) TLS.
#[derive(Clone, Debug)]
pub struct EtcdTls {
    /// CA that signed both certificates (PEM file).
    pub ca: PathBuf,
    /// Server certificate and key (PEM files).
    pub server_cert: PathBuf,
    /// Server key.
    pub server_key: PathBuf,
}

/// A running etcd member; killed on drop.
pub struct Etcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    tls: Option<EtcdTls>,
}

/// The etcd binary: `FERRY_ETCD`, else `etcd` on `PATH`.
pub fn etcd_bin() -> String {
    std::env::var("FERRY_ETCD").unwrap_or_else(|_| "etcd".into())
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

impl Etcd {
    /// Starts a fresh member (plain HTTP).
    pub fn start() -> Etcd {
        Self::start_with(None)
    }

    /// Starts a fresh member serving TLS with `tls` (client certificates
    /// required, signed by its CA).
    pub fn start_with(tls: Option<EtcdTls>) -> Etcd {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut etcd = Etcd { child: None, dir, client_port: 0, peer_port: 0, tls };
        for attempt in 1..=PORT_ATTEMPTS {
            etcd.client_port = free_port();
            etcd.peer_port = free_port();
            match etcd.launch() {
                Ok(()) => return etcd,
                Err(e) if attempt < PORT_ATTEMPTS => {
                    eprintln!("etcd did not start ({e}); trying other ports")
                }
                Err(e) => panic!("etcd did not start: {e}"),
            }
        }
        unreachable!("the last attempt panics")
    }

    /// `host:port` of the client endpoint.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// The hub's `--store` value for this member.
    pub fn store_url(&self) -> String {
        format!("etcd://{}", self.endpoint())
    }

    /// Kills the member (SIGKILL); its data stays for [`Etcd::restart`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the member again on the same ports and data.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(e) = self.launch() {
            panic!("etcd did not restart: {e}");
        }
    }

    fn launch(&mut self) -> Result<(), String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = Command::new(etcd_bin());
        cmd.args(["--name", "ferry-test", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("ferry-test={peer}")])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(tls) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&tls.server_cert)
                .arg("--key-file")
                .arg(&tls.server_key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        let mut child = cmd.spawn().map_err(|e| {
            format!("cannot run {:?} ({e}): install Debian's etcd-server or set FERRY_ETCD", etcd_bin())
        })?;
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        // Reads etcd's log to its end (etcd would block on a full pipe);
        // the first line saying it serves clients is the readiness signal.
        std::thread::spawn(move || {
            let quiet = std::env::var_os("FERRY_TEST_QUIET").is_some();
            let mut ready = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if !quiet && line.contains("\"level\":\"error\"") {
                    eprintln!("etcd: {line}");
                }
                if line.contains(READY_LINE)
                    && let Some(tx) = ready.take()
                {
                    let _ = tx.send(());
                }
            }
        });
        let deadline = Instant::now() + ETCD_READY_TIMEOUT;
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(()) => {
                self.child = Some(child);
                Ok(())
            }
            Err(_) => {
                let status = child.try_wait().ok().flatten();
                let _ = child.kill();
                let _ = child.wait();
                Err(format!("no {READY_LINE:?} line from etcd (exit status {status:?})"))
            }
        }
    }

    /// etcd's `/health` answer (plain-HTTP members only), for tests that
    /// check the member itself.
    pub fn health(&self) -> String {
        let mut conn =
            std::net::TcpStream::connect(self.endpoint()).unwrap_or_else(|e| panic!("connect to etcd: {e}"));
        conn.set_read_timeout(Some(ETCD_READY_TIMEOUT)).expect("timeout");
        conn.write_all(b"GET /health HTTP/1.0\r\nHost: etcd\r\n\r\n").expect("write");
        let mut answer = String::new();
        conn.read_to_string(&mut answer).expect("read");
        answer
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

//! Reference paths (issue 12): mature proxies in front of the same backend,
//! measured in the same alternation as the direct and tunnel paths, so
//! Ferry's figures can be read against them from one run.
//!
//! - `haproxy`: two HAProxy instances chained, each terminating TLS and
//!   speaking HTTP/2 on both sides; the second adds the backend's bearer
//!   token, as the agent adds its credential. The L7 reference of the same
//!   shape as hub + agent.
//! - `rathole`: a rathole server and client as a plain TCP tunnel in front
//!   of the backend (TCP_NODELAY on every socket). The client's TLS goes
//!   end to end to the backend: the L4 reference, with per-client-connection
//!   flow control only because it opens a TCP connection per client
//!   connection.
//!
//! Each is started only with `--references` and skipped with a note when
//! its binary is not on `PATH` (`apt-get install haproxy`,
//! `cargo install rathole`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use tokio::process::Command;

use crate::backend::Backend;
use crate::client::{Proto, Target};
use crate::procs::Proc;
use crate::scenarios::SMALL;

/// How long a reference path may take to answer its first request.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// HTTP/2 window HAProxy advertises per stream (its default is 64 KiB): the
/// same per-stream window as Ferry's tunnel connection
/// (`ferry::limits::H2_STREAM_WINDOW`), so a LIST is not window-bound
/// through HAProxy where it is not through Ferry.
const HAPROXY_H2_WINDOW: u32 = 1024 * 1024;

/// A started reference path.
pub struct Reference {
    /// `haproxy` or `rathole`.
    pub name: &'static str,
    /// Where clients send requests.
    pub target: Target,
    /// Its processes (their CPU counts as the path's proxy CPU).
    pub procs: Vec<Proc>,
    /// Whether it carries HTTP/1.1 upgrades (scenario 4).
    pub upgrades: bool,
}

impl Reference {
    /// Pids of its processes.
    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(|p| p.pid).collect()
    }

    /// Where its clients connect.
    pub fn target_addr(&self) -> std::net::SocketAddr {
        self.target.addr()
    }

    /// Stops its processes.
    pub async fn stop(self) {
        for p in self.procs {
            let _ = p.stop().await;
        }
    }
}

/// Whether `name` is an executable on `PATH`.
pub fn on_path(name: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths).map(|d| d.join(name)).find(|p| p.is_file())
}

/// A port free right now on loopback (the reference proxies take their
/// addresses from config files, not from a port-0 bind they report back).
async fn free_port() -> anyhow::Result<SocketAddr> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    Ok(l.local_addr()?)
}

/// Starts every reference path whose binary is present; returns them and a
/// note for each one skipped or failed.
pub async fn start(dir: &Path, backend: &Backend) -> (Vec<Reference>, Vec<String>) {
    let mut started = Vec::new();
    let mut notes = Vec::new();
    type Starter = for<'a> fn(
        &'a Path,
        &'a Backend,
        PathBuf,
    ) -> std::pin::Pin<Box<dyn Future<Output = anyhow::Result<Reference>> + 'a>>;
    let all: [(&str, &str, Starter); 2] = [
        ("haproxy", "apt-get install haproxy", |d, b, bin| Box::pin(haproxy(d, b, bin))),
        ("rathole", "cargo install rathole", |d, b, bin| Box::pin(rathole(d, b, bin))),
    ];
    for (name, install, start) in all {
        let Some(bin) = on_path(name) else {
            notes.push(format!("{name}: not on PATH, skipped ({install})"));
            continue;
        };
        match start(dir, backend, bin).await {
            Ok(r) => started.push(r),
            Err(e) => notes.push(format!("{name}: failed to start, skipped: {e:#}")),
        }
    }
    (started, notes)
}

/// Waits until a small GET through `target` succeeds.
async fn wait_ready(target: &Target, procs: &[Proc]) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let attempt = async {
            let mut conn = target.connect(Proto::H2).await?;
            conn.fetch(target.get(SMALL)).await
        };
        match attempt.await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                let pids: Vec<u32> = procs.iter().map(|p| p.pid).collect();
                return Err(e.context(format!("not answering within {START_TIMEOUT:?} (pids {pids:?})")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A CA and a serving certificate for `localhost` and `127.0.0.1`, PEM:
/// (CA certificate, leaf certificate, leaf key).
fn pki(name: &str) -> anyhow::Result<(String, String, String)> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name.push(DnType::CommonName, format!("ferry-bench-{name}-ca"));
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    leaf.distinguished_name.push(DnType::CommonName, format!("ferry-bench-{name}"));
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = leaf.signed_by(&key, &ca)?;
    Ok((ca.pem(), cert.pem(), key.serialize_pem()))
}

/// Two chained HAProxy instances: `front` (like the hub) terminates the
/// client's TLS and forwards over TLS + HTTP/2 to `back` (like the agent),
/// which adds the backend's token and forwards over TLS + HTTP/2.
async fn haproxy(dir: &Path, backend: &Backend, bin: PathBuf) -> anyhow::Result<Reference> {
    let dir = dir.join("haproxy");
    std::fs::create_dir_all(&dir)?;
    let (front_ca, front_cert, front_key) = pki("haproxy-front")?;
    let (back_ca, back_cert, back_key) = pki("haproxy-back")?;
    std::fs::write(dir.join("front.pem"), format!("{front_cert}{front_key}"))?;
    std::fs::write(dir.join("back.pem"), format!("{back_cert}{back_key}"))?;
    std::fs::write(dir.join("back-ca.pem"), &back_ca)?;
    std::fs::write(dir.join("backend-ca.pem"), &backend.ca_pem)?;
    let (front_addr, back_addr) = (free_port().await?, free_port().await?);
    let global = format!(
        "global\n  maxconn 4096\n  tune.h2.initial-window-size {HAPROXY_H2_WINDOW}\n\
         defaults\n  mode http\n  timeout connect 5s\n  timeout client 120s\n  timeout server 120s\n"
    );
    let d = dir.display();
    let front = format!(
        "{global}frontend front\n  bind {front_addr} ssl crt {d}/front.pem alpn h2,http/1.1\n  default_backend back\n\
         backend back\n  server back {back_addr} ssl verify required ca-file {d}/back-ca.pem sni str(localhost) alpn h2\n"
    );
    let back = format!(
        "{global}frontend front\n  bind {back_addr} ssl crt {d}/back.pem alpn h2\n\
           http-request set-header Authorization \"Bearer {}\"\n  default_backend apiserver\n\
         backend apiserver\n  server apiserver {} ssl verify required ca-file {d}/backend-ca.pem alpn h2\n",
        backend.token, backend.addr
    );
    let mut procs = Vec::new();
    for (name, config) in [("back", back), ("front", front)] {
        let file = dir.join(format!("{name}.cfg"));
        std::fs::write(&file, config)?;
        let mut cmd = Command::new(&bin);
        // -db: stay in the foreground, so the pid is the one doing the work.
        cmd.arg("-db").arg("-f").arg(&file);
        procs.push(Proc::spawn_quiet(cmd, &dir.join(format!("{name}.log")))?);
    }
    let target = Target::via(front_addr, &front_ca, None)?;
    wait_ready(&target, &procs).await?;
    Ok(Reference { name: "haproxy", target, procs, upgrades: false })
}

/// A rathole server and client: clients connect to the server's service
/// port, the client dials the backend; TLS is the client's, end to end.
async fn rathole(dir: &Path, backend: &Backend, bin: PathBuf) -> anyhow::Result<Reference> {
    let dir = dir.join("rathole");
    std::fs::create_dir_all(&dir)?;
    let (control, service) = (free_port().await?, free_port().await?);
    let token = uuid::Uuid::new_v4().simple().to_string();
    let server = format!(
        "[server]\nbind_addr = \"{control}\"\n[server.transport]\ntype = \"tcp\"\n[server.transport.tcp]\nnodelay = true\n\
         [server.services.bench]\ntoken = \"{token}\"\nbind_addr = \"{service}\"\nnodelay = true\n"
    );
    let client = format!(
        "[client]\nremote_addr = \"{control}\"\n[client.transport]\ntype = \"tcp\"\n[client.transport.tcp]\nnodelay = true\n\
         [client.services.bench]\ntoken = \"{token}\"\nlocal_addr = \"{}\"\nnodelay = true\n",
        backend.addr
    );
    let mut procs = Vec::new();
    for (name, flag, config) in [("server", "--server", server), ("client", "--client", client)] {
        let file = dir.join(format!("{name}.toml"));
        std::fs::write(&file, config)?;
        let mut cmd = Command::new(&bin);
        cmd.arg(flag).arg(&file).env("RUST_LOG", "warn");
        procs.push(Proc::spawn_quiet(cmd, &dir.join(format!("{name}.log")))?);
    }
    let target = Target::via(service, &backend.ca_pem, Some(&backend.token))?;
    wait_ready(&target, &procs).await?;
    Ok(Reference { name: "rathole", target, procs, upgrades: true })
}

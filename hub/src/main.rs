//! `ferry-hub`: runs the hub.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ferry::identity::IdentityPolicy;
use ferry::secret::Secret;
use ferry_hub::audit::{MAX_BACKUPS, MIN_MAX_SIZE, Sink};
use ferry_hub::config::MetricsListen;
use ferry_hub::config::StoreConfig;
use ferry_hub::config::{
    DEFAULT_AGENT_IMAGE, DEFAULT_DATA_DIR, DEFAULT_LISTEN, DEFAULT_MAX_AGENT_SESSIONS,
    DEFAULT_MAX_STREAMS_PER_CALLER, MAX_HEARTBEAT_INTERVAL, MIN_AGENT_CERT_TTL, MIN_HEARTBEAT_INTERVAL,
};
use ferry_hub::etcd::{EtcdConfig, EtcdTls};
use ferry_hub::metrics::DEFAULT_METRICS_LISTEN;
use ferry_hub::{Hub, HubConfig};

/// mimalloc instead of the system allocator: a proxy allocates and frees
/// small objects for every request and frame (h2 streams, frames, headers,
/// tasks); glibc's malloc spent 10-17% of the hub's and the agent's
/// instructions there and returned large buffers to the kernel only to
/// fault them back in (docs/benchmarks.md, "Data-plane efficiency").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "ferry-hub", version, about = "Ferry hub: reach clusters behind NAT through one endpoint")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub (gRPC for agents and management, HTTPS for kubectl).
    Serve(Box<ServeArgs>),
    /// Copy an embedded store (a stopped hub's data dir) into etcd, for
    /// running several replicas.
    Migrate(MigrateArgs),
}

#[derive(clap::Args)]
struct MigrateArgs {
    /// The data dir of the hub to migrate (stop that hub first).
    #[arg(long, value_name = "DIR")]
    from: PathBuf,
    /// The etcd to copy into: `etcd://host:port[,host:port...]`.
    #[arg(long, value_name = "URL")]
    to: String,
    #[command(flatten)]
    etcd: EtcdArgs,
}

async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let to = args.etcd.config(&args.to)?;
    let done = ferry_hub::migrate::migrate(&args.from, &to).await.context("migrating")?;
    println!(
        "migrated {} clusters, {} tokens and {} grants from {} to {} (prefix {})",
        done.clusters,
        done.tokens,
        done.grants,
        args.from.display(),
        args.to,
        to.prefix
    );
    println!(
        "next: copy {0}/ca.crt and {0}/ca.key into every replica's --data-dir, then start the replicas with --store {1}",
        args.from.display(),
        args.to
    );
    Ok(())
}

/// Where etcd is (`--store etcd://...`) and how to reach it.
#[derive(clap::Args)]
struct EtcdArgs {
    /// Key prefix in etcd (hubs sharing one etcd keep apart by prefix).
    #[arg(long, env = "FERRY_ETCD_PREFIX", default_value = ferry_hub::etcd::DEFAULT_PREFIX)]
    etcd_prefix: String,
    /// CA bundle (PEM) trusted for etcd's certificates; etcd is then
    /// reached over TLS.
    #[arg(long, env = "FERRY_ETCD_CA", value_name = "FILE")]
    etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd, with --etcd-key.
    #[arg(long, env = "FERRY_ETCD_CERT", value_name = "FILE", requires = "etcd_key")]
    etcd_cert: Option<PathBuf>,
    /// Client key (PEM) for etcd.
    #[arg(long, env = "FERRY_ETCD_KEY", value_name = "FILE", requires = "etcd_cert")]
    etcd_key: Option<PathBuf>,
}

impl EtcdArgs {
    /// The etcd configuration for store URL `url` (`etcd://host:port,...`).
    fn config(&self, url: &str) -> anyhow::Result<EtcdConfig> {
        let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        let tls = match (&self.etcd_ca, &self.etcd_cert, &self.etcd_key) {
            (None, None, None) => None,
            (None, _, _) => anyhow::bail!("--etcd-cert and --etcd-key need --etcd-ca (TLS towards etcd)"),
            (Some(ca), cert, key) => {
                let client = match (cert, key) {
                    (Some(c), Some(k)) => {
                        let cert = String::from_utf8(read(c)?).context("--etcd-cert is not PEM text")?;
                        let key = String::from_utf8(read(k)?).context("--etcd-key is not PEM text")?;
                        Some((cert, Secret::new(key)))
                    }
                    _ => None,
                };
                Some(EtcdTls { ca_pem: read(ca)?, client })
            }
        };
        Ok(EtcdConfig::from_url(url, &self.etcd_prefix, tls)?)
    }
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Directory for the CA, the embedded store and admin.kubeconfig.
    #[arg(long, env = "FERRY_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// Where durable state lives: the data dir (default), or
    /// `etcd://host:port[,host:port...]` for several hub replicas.
    #[arg(long, env = "FERRY_STORE", value_name = "URL")]
    store: Option<String>,
    #[command(flatten)]
    etcd: EtcdArgs,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "FERRY_LISTEN", default_value = DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Base URL agents and kubectl use (default: https:// + bound address).
    #[arg(long, env = "FERRY_ADVERTISE_URL")]
    advertise_url: Option<String>,
    /// With --store etcd://: where the other replicas reach this one
    /// (default: the advertise URL; set it when replicas share one
    /// load-balancer URL).
    #[arg(long, env = "FERRY_PEER_URL", value_name = "URL")]
    peer_url: Option<String>,
    /// Largest request body forwarded to a cluster, in bytes.
    #[arg(long, default_value_t = ferry::limits::DEFAULT_MAX_REQUEST_BODY)]
    max_request_body: u64,
    /// Concurrent proxied requests per cluster.
    #[arg(long, default_value_t = ferry::limits::DEFAULT_MAX_STREAMS_PER_AGENT)]
    max_streams_per_cluster: u32,
    /// Largest total size of a request's headers, in bytes (at most 65536).
    #[arg(long, default_value_t = ferry::limits::MAX_HEADER_BYTES)]
    max_header_bytes: usize,
    /// Concurrent proxied requests per caller (user) per cluster.
    #[arg(long, default_value_t = DEFAULT_MAX_STREAMS_PER_CALLER)]
    max_streams_per_caller: u32,
    /// Agent sessions one cluster may hold at once.
    #[arg(long, default_value_t = DEFAULT_MAX_AGENT_SESSIONS)]
    max_agent_sessions_per_cluster: u32,
    /// Close exec/attach/port-forward connections idle this long; `0s`
    /// never does. WebSocket pings count as traffic.
    #[arg(long, default_value = "4h", value_parser = humantime::parse_duration)]
    upgrade_idle_timeout: std::time::Duration,
    /// Also serve `grpc.health.v1` and `/healthz` in plain text on this
    /// address, for Kubernetes probes (the kubelet's gRPC probe has no TLS).
    #[arg(long, env = "FERRY_HEALTH_LISTEN", value_name = "ADDR")]
    health_listen: Option<SocketAddr>,
    /// Heartbeat period agents are told to keep; a cluster whose agents
    /// miss 3 is Offline (e.g. 10s, or 1s for tests).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    heartbeat_interval: std::time::Duration,
    /// Agent image that `ferryctl register` manifests run (mirror it and
    /// point this at your registry).
    #[arg(long, env = "FERRY_AGENT_IMAGE", default_value = DEFAULT_AGENT_IMAGE)]
    agent_image: String,
    /// Lifetime of agent client certificates; agents renew them when two
    /// thirds have passed (e.g. 24h, or 30s for tests).
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    agent_cert_ttl: std::time::Duration,
    /// Prefix added to every user name the child clusters see (e.g. `ferry:`).
    #[arg(long, default_value = "")]
    user_prefix: String,
    /// Prefix added to every group name the child clusters see.
    #[arg(long, default_value = "")]
    group_prefix: String,
    /// A group never forwarded to child clusters; repeat for several
    /// (`system:masters` always is).
    #[arg(long = "deny-group", value_name = "GROUP")]
    deny_groups: Vec<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics (plain HTTP; port 0
    /// picks one), or `off`. Default 127.0.0.1:9090, skipped with a warning
    /// when that port is taken; an address given here must bind.
    #[arg(long, env = "FERRY_METRICS_LISTEN", value_name = "ADDR|off")]
    metrics_listen: Option<String>,
    /// Audit log: a file (rotated by size), `-` for stdout, or `off`.
    /// Default: DATA_DIR/audit.log.
    #[arg(long, env = "FERRY_AUDIT_LOG", value_name = "PATH|-|off")]
    audit_log: Option<String>,
    /// Rotate the audit file when it would grow past this many bytes.
    #[arg(long, default_value_t = ferry_hub::audit::DEFAULT_MAX_SIZE, value_name = "BYTES")]
    audit_log_max_size: u64,
    /// Rotated audit files kept (AUDIT.1 newest, ...).
    #[arg(long, default_value_t = ferry_hub::audit::DEFAULT_MAX_BACKUPS, value_name = "N")]
    audit_log_max_backups: u32,
    /// Log format on stderr: `text` or `json` (one object per line).
    #[arg(long, env = "FERRY_LOG_FORMAT", value_enum, default_value_t = ferry::logging::LogFormat::Text)]
    log_format: ferry::logging::LogFormat,
    #[command(flatten)]
    export: ferry::logging::ExportArgs,
}

/// `--metrics-listen`: an address, `off`, or the default.
fn metrics_listen(value: Option<&str>) -> anyhow::Result<MetricsListen> {
    Ok(match value.map(str::trim) {
        None => MetricsListen::Default(DEFAULT_METRICS_LISTEN.parse()?),
        Some("off") => MetricsListen::Off,
        Some(addr) => MetricsListen::At(
            addr.parse().with_context(|| format!("--metrics-listen {addr:?}: not an address or `off`"))?,
        ),
    })
}

/// `--audit-log`: a file, `-`, `off`, or DATA_DIR/audit.log.
fn audit_sink(args: &ServeArgs) -> anyhow::Result<Sink> {
    if args.audit_log_max_size < MIN_MAX_SIZE {
        anyhow::bail!("--audit-log-max-size must be at least {MIN_MAX_SIZE} bytes");
    }
    if args.audit_log_max_backups > MAX_BACKUPS {
        anyhow::bail!("--audit-log-max-backups must be at most {MAX_BACKUPS}");
    }
    let file = |path: PathBuf| Sink::File {
        path,
        max_size: args.audit_log_max_size,
        max_backups: args.audit_log_max_backups,
    };
    Ok(match args.audit_log.as_deref().map(str::trim) {
        None => file(args.data_dir.join("audit.log")),
        Some("off") => Sink::Off,
        Some("-") => Sink::Stdout,
        Some("") => anyhow::bail!("--audit-log needs a path, `-` or `off`"),
        Some(path) => file(PathBuf::from(path)),
    })
}

/// `service.name` of the exported spans.
const SERVICE: &str = "ferry-hub";

fn main() -> anyhow::Result<()> {
    // Before anything else (no other thread exists yet): may restart this
    // process (see ferry::copy_tuning).
    ferry::copy_tuning::reexec_if_useful();
    ferry::runtime::build(ferry::runtime::Threads::PerCore)?.block_on(serve())
}

async fn serve() -> anyhow::Result<()> {
    let args = match Cli::parse().command {
        Command::Serve(args) => args,
        Command::Migrate(args) => {
            let logging =
                ferry::logging::init(ferry::logging::LogFormat::Text, &Default::default(), SERVICE)?;
            let result = migrate(args).await;
            logging.shutdown();
            return result;
        }
    };
    let logging = ferry::logging::init(args.log_format, &args.export, SERVICE)?;
    let mut config = HubConfig::new(args.data_dir.clone(), args.listen);
    if let Some(url) = &args.store {
        config.store = StoreConfig::Etcd(args.etcd.config(url)?);
    }
    config.metrics_listen = metrics_listen(args.metrics_listen.as_deref())?;
    config.audit = audit_sink(&args)?;
    config.advertise_url = args.advertise_url;
    config.peer_url = args.peer_url;
    config.health_listen = args.health_listen;
    config.limits.max_request_body = args.max_request_body;
    config.limits.max_streams_per_cluster = args.max_streams_per_cluster;
    config.limits.max_header_bytes = args.max_header_bytes;
    config.limits.upgrade_idle_timeout =
        (!args.upgrade_idle_timeout.is_zero()).then_some(args.upgrade_idle_timeout);
    config.limits.max_streams_per_caller = args.max_streams_per_caller;
    config.limits.max_agent_sessions = args.max_agent_sessions_per_cluster;
    if args.agent_cert_ttl < MIN_AGENT_CERT_TTL {
        anyhow::bail!("--agent-cert-ttl must be at least {MIN_AGENT_CERT_TTL:?}");
    }
    config.limits.agent_cert_ttl = args.agent_cert_ttl;
    if args.heartbeat_interval < MIN_HEARTBEAT_INTERVAL || args.heartbeat_interval > MAX_HEARTBEAT_INTERVAL {
        anyhow::bail!(
            "--heartbeat-interval must be between {MIN_HEARTBEAT_INTERVAL:?} and {MAX_HEARTBEAT_INTERVAL:?}"
        );
    }
    config.limits.heartbeat_interval = args.heartbeat_interval;
    config.agent_image = args.agent_image;
    let mut policy = IdentityPolicy {
        user_prefix: args.user_prefix,
        group_prefix: args.group_prefix,
        ..IdentityPolicy::default()
    };
    policy.denied_groups.extend(args.deny_groups);
    config.identity_policy = policy;
    let hub = Hub::bind(config).await.context("starting the hub")?;
    println!(
        "ferry-hub ready at {} (listening on {}, admin kubeconfig {})",
        hub.url(),
        hub.local_addr(),
        hub.admin_kubeconfig().display()
    );
    if let Some(addr) = hub.health_addr() {
        println!("ferry-hub health: http://{addr} (grpc.health.v1 and /healthz, plain text)");
    }
    if let Some(addr) = hub.metrics_addr() {
        println!("ferry-hub metrics: http://{addr}/metrics");
    }
    match hub.audit_sink() {
        Sink::File { path, .. } => println!("ferry-hub audit log: {}", path.display()),
        Sink::Stdout => eprintln!("ferry-hub audit log: stdout"),
        Sink::Off => {}
    }
    hub.serve(shutdown_signal()).await;
    // Flushing spans blocks on the exporter, which runs on this runtime.
    tokio::task::spawn_blocking(move || logging.shutdown()).await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

//! `ferryctl`: register clusters with a Ferry hub, approve, deny, label and
//! delete them, issue kubeconfigs and tokens, grant access, list, describe,
//! watch and wait for clusters. Results go to stdout, logs (`RUST_LOG`) and
//! errors to stderr; any failure exits 1 with `error: <message>`.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail};
use base64::Engine as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use ferry_client_sdk::duration::parse_duration;
use ferry_client_sdk::output::Columns;
use ferry_client_sdk::{
    ApprovalMode, AuditQuery, Cluster, ClusterEvent, ClusterPhase, CredentialKind, GrantSubject, Hub,
    HubConfig, HubConfigError, KubeconfigRequest, RegisterOptions, WatchOptions, output,
};
use futures_util::StreamExt as _;
use tracing_subscriber::EnvFilter;

/// Command-line client for a Ferry hub: register clusters, approve them,
/// issue kubeconfigs and tokens, grant access, list clusters and wait for
/// their agents.
#[derive(Parser)]
#[command(name = "ferryctl", version)]
struct Cli {
    /// Kubeconfig with the hub URL, the hub CA and your credential (a client
    /// certificate, or a token from `ferryctl token create -o kubeconfig`);
    /// the hub writes one for admins at DATA_DIR/admin.kubeconfig.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "FERRY_KUBECONFIG",
        default_value = "./ferry-data/admin.kubeconfig"
    )]
    kubeconfig: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Register a cluster (if new) and print its agent manifest (agent.yaml)
    /// with a fresh single-use bootstrap token.
    Register {
        /// Cluster name (a DNS label).
        name: String,
        /// What to print: the manifest, only the token, or everything as JSON.
        #[arg(short, long, value_enum, default_value_t = RegisterOutput::Yaml)]
        output: RegisterOutput,
        /// How long the token stays usable, e.g. 30m, 24h (default: the hub's, 24h).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        token_ttl: Option<Duration>,
        /// `manual`: the cluster stays Pending (no traffic) until `ferryctl approve`.
        #[arg(long, value_enum)]
        approval: Option<Approval>,
        /// Labels, e.g. env=prod,region=eu.
        #[arg(long, value_name = "K=V,...", value_parser = parse_labels)]
        labels: Option<BTreeMap<String, String>>,
        /// Bind this hub group to cluster-admin in the child cluster (for
        /// import into a management plane).
        #[arg(long, value_name = "GROUP")]
        admin_group: Option<String>,
    },
    /// Let traffic reach a cluster registered with --approval manual (or a denied one).
    Approve {
        /// Cluster name.
        name: String,
    },
    /// Refuse a cluster: disconnect and refuse its agents, route nothing to it.
    Deny {
        /// Cluster name.
        name: String,
    },
    /// Delete a cluster and its grants; its agents are disconnected at once.
    Delete {
        /// Cluster name.
        name: String,
    },
    /// Print a kubeconfig for a cluster, for you or (admins) another user.
    Kubeconfig {
        /// Cluster name.
        name: String,
        /// User to issue it for (admins only; default: yourself).
        #[arg(long, value_name = "U")]
        user: Option<String>,
        /// Group for that user; repeat for several.
        #[arg(long = "group", value_name = "G")]
        groups: Vec<String>,
        /// Credential in the kubeconfig: a client certificate or a bearer token.
        #[arg(long, value_enum, default_value_t = Auth::Cert)]
        auth: Auth,
        /// How long the credential stays valid, e.g. 12h, 30d (default: the hub's, 30d).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        ttl: Option<Duration>,
    },
    /// List registered clusters (those you hold a grant for, unless you are
    /// an admin): NAME PHASE VERSION NODES AGENTS AGE LAST-SEEN.
    Clusters {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = ClusterOutput::Table)]
        output: ClusterOutput,
        /// Only clusters matching this label selector, e.g. env=prod,tier in (a,b).
        #[arg(short = 'l', long = "selector", value_name = "SELECTOR")]
        selector: Option<String>,
        /// After listing, print every change as it happens (until interrupted).
        #[arg(short, long)]
        watch: bool,
    },
    /// Show one cluster.
    Get {
        /// Cluster name.
        name: String,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = ClusterOutput::Table)]
        output: ClusterOutput,
    },
    /// Show a cluster in detail: status, agents, labels, phase history, grants.
    #[command(subcommand)]
    Describe(DescribeCommand),
    /// Set or remove labels of a cluster: KEY=VALUE sets, KEY- removes.
    Label {
        /// Cluster name.
        name: String,
        /// KEY=VALUE or KEY-, one or more.
        #[arg(required = true, value_name = "KEY=VALUE|KEY-")]
        changes: Vec<String>,
    },
    /// Send one HTTP request to a cluster's apiserver over the hub's gRPC
    /// Proxy call and print the response body as it arrives (a watch
    /// streams until interrupted).
    Request {
        /// Cluster name.
        cluster: String,
        /// Path and query on the apiserver, e.g. /api/v1/namespaces.
        path: String,
        /// HTTP method.
        #[arg(short = 'X', long, default_value = "GET")]
        method: String,
        /// A request header, 'Name: value'; repeat for several.
        #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
        headers: Vec<String>,
        /// The request body: text, @FILE, or @- for stdin.
        #[arg(short = 'd', long, value_name = "DATA")]
        data: Option<String>,
        /// Print the status line and headers before the body.
        #[arg(short = 'i', long)]
        include: bool,
    },
    /// Print a shell completion script, e.g. `source <(ferryctl completion bash)`.
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Wait until a cluster's agent is connected or disconnected, or the
    /// cluster is in a phase (ready, not-ready, pending, offline, denied).
    Wait {
        /// Cluster name.
        name: String,
        /// The state to wait for.
        #[arg(long = "for", value_enum, value_name = "STATE")]
        state: WaitFor,
        /// Give up after this long, e.g. 30s, 5m.
        #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Bearer tokens for callers (admins).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Let a user or group reach a cluster (or every cluster: --cluster '*').
    Grant(GrantArgs),
    /// Remove a grant.
    Revoke(RevokeArgs),
    /// List grants (admins: all; users: their own).
    Grants {
        /// Only grants that apply to this cluster.
        #[arg(long, value_name = "NAME")]
        cluster: Option<String>,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = ListOutput::Table)]
        output: ListOutput,
    },
    /// Show who the hub thinks you are.
    Whoami,
    /// Show the hub's audit log (admins): proxied requests, exec/attach/
    /// port-forward sessions and management changes, oldest first.
    Audit {
        /// Only events of this cluster.
        #[arg(long, value_name = "NAME")]
        cluster: Option<String>,
        /// Only events of this user.
        #[arg(long, value_name = "U")]
        user: Option<String>,
        /// Only events newer than this, e.g. 10m, 1h, 7d.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        since: Option<Duration>,
        /// Then print new events as they happen (until interrupted).
        #[arg(short, long)]
        follow: bool,
        /// At most this many logged events, the newest (default: the hub's
        /// maximum, 10000).
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
        /// Output format: aligned columns, or the log's JSON, one event per line.
        #[arg(short, long, value_enum, default_value_t = AuditOutput::Table)]
        output: AuditOutput,
    },
}

/// `audit` output formats.
#[derive(Clone, Copy, ValueEnum)]
enum AuditOutput {
    /// TIME USER CLUSTER WHAT CODE DURATION REQUEST-ID.
    Table,
    /// One JSON object per line, as in the hub's audit log.
    Json,
}

#[derive(Subcommand)]
enum DescribeCommand {
    /// A cluster.
    Cluster {
        /// Cluster name.
        name: String,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token for a user; prints it once (the hub keeps only a hash).
    Create {
        /// The user the token authenticates.
        #[arg(long, value_name = "U")]
        user: String,
        /// A group of that user; repeat for several.
        #[arg(long = "group", value_name = "G")]
        groups: Vec<String>,
        /// Lifetime, e.g. 12h, 90d (default: the hub's, 30d).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        ttl: Option<Duration>,
        /// Bind the token to one cluster (it then cannot use the management API).
        #[arg(long, value_name = "NAME")]
        cluster: Option<String>,
        /// Print the token, a kubeconfig for ferryctl (hub-wide tokens) or
        /// the cluster (bound tokens), or JSON.
        #[arg(short, long, value_enum, default_value_t = TokenOutput::Token)]
        output: TokenOutput,
    },
    /// List tokens (never their secrets).
    List {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = ListOutput::Table)]
        output: ListOutput,
    },
    /// Revoke a token: refused from the next request on.
    Revoke {
        /// The token id (from `ferryctl token list`).
        id: String,
    },
}

#[derive(Args)]
struct GrantArgs {
    /// The cluster, or '*' for every cluster.
    #[arg(long, value_name = "NAME|*")]
    cluster: String,
    #[command(flatten)]
    subject: SubjectArgs,
    /// Also allow acting as someone else (kubectl --as), as far as the
    /// child cluster's RBAC lets the user impersonate.
    #[arg(long)]
    allow_impersonate: bool,
}

#[derive(Args)]
struct RevokeArgs {
    /// The cluster, or '*'.
    #[arg(long, value_name = "NAME|*")]
    cluster: String,
    #[command(flatten)]
    subject: SubjectArgs,
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct SubjectArgs {
    /// A user.
    #[arg(long, value_name = "U")]
    user: Option<String>,
    /// A group.
    #[arg(long, value_name = "G")]
    group: Option<String>,
}

impl SubjectArgs {
    fn subject(&self) -> GrantSubject {
        match (&self.user, &self.group) {
            (Some(u), _) => GrantSubject::User(u.clone()),
            (None, Some(g)) => GrantSubject::Group(g.clone()),
            (None, None) => GrantSubject::User(String::new()),
        }
    }
}

/// `register` output formats.
#[derive(Clone, Copy, ValueEnum)]
enum RegisterOutput {
    /// The agent manifest (agent.yaml), for `kubectl apply -f`.
    Yaml,
    /// Only the bootstrap token and a newline.
    Token,
    /// Cluster, token, hub URL, hub CA and manifest as JSON.
    Json,
}

/// `token create` output formats.
#[derive(Clone, Copy, ValueEnum)]
enum TokenOutput {
    /// Only the token and a newline.
    Token,
    /// A kubeconfig using the token.
    Kubeconfig,
    /// The token and its details as JSON.
    Json,
}

/// Output formats of lists.
#[derive(Clone, Copy, ValueEnum)]
enum ListOutput {
    /// Aligned columns.
    Table,
    /// A JSON array.
    Json,
    /// YAML.
    Yaml,
}

/// Output formats of clusters.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ClusterOutput {
    /// NAME PHASE VERSION NODES AGENTS AGE LAST-SEEN.
    Table,
    /// The table plus PLATFORM, CPU, MEMORY (allocatable), LABELS, REASON.
    Wide,
    /// JSON (an array; with --watch one event object per line).
    Json,
    /// YAML documents.
    Yaml,
    /// `cluster/NAME` per line.
    Name,
}

#[derive(Clone, Copy, ValueEnum)]
enum Approval {
    Auto,
    Manual,
}

#[derive(Clone, Copy, ValueEnum)]
enum Auth {
    Cert,
    Token,
}

/// States `wait` can wait for.
#[derive(Clone, Copy, ValueEnum)]
enum WaitFor {
    /// An agent is connected.
    Connected,
    /// No agent is connected.
    Disconnected,
    /// Phase Ready: an agent is connected and its apiserver answers.
    Ready,
    /// Phase NotReady.
    NotReady,
    /// Phase Pending (awaits approval).
    Pending,
    /// Phase Offline.
    Offline,
    /// Phase Denied.
    Denied,
}

fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for pair in s.split(',').filter(|p| !p.trim().is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(|| format!("{pair:?} is not KEY=VALUE"))?;
        out.insert(k.trim().to_owned(), v.trim().to_owned());
    }
    Ok(out)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")))
        .init();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn unix(t: Option<SystemTime>) -> Option<u64> {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_secs())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Completion { shell } = cli.command {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut <Cli as clap::CommandFactory>::command(), "ferryctl", &mut out);
        return emit(&String::from_utf8_lossy(&out));
    }
    let hub = HubConfig::load(&cli.kubeconfig).map_err(|e| match e {
        HubConfigError::Read { .. } => anyhow!(
            "{:#}; pass --kubeconfig FILE or set FERRY_KUBECONFIG (the hub writes one for admins at DATA_DIR/admin.kubeconfig)",
            anyhow::Error::from(e)
        ),
        e => e.into(),
    })?;
    let client = Hub::connect(&hub).await?;
    let now = SystemTime::now();
    match cli.command {
        Command::Completion { .. } => Ok(()),
        Command::Register { name, output, token_ttl, approval, labels, admin_group } => {
            let options = RegisterOptions {
                token_ttl,
                approval: approval.map(|a| match a {
                    Approval::Auto => ApprovalMode::Auto,
                    Approval::Manual => ApprovalMode::Manual,
                }),
                labels: labels.unwrap_or_default(),
                admin_group,
            };
            let r = client.register_cluster_with(&name, &options).await?;
            match output {
                RegisterOutput::Yaml => emit(r.manifest.expose()),
                RegisterOutput::Token => emit(&format!("{}\n", r.bootstrap_token.expose())),
                RegisterOutput::Json => emit_json(&serde_json::json!({
                    "cluster": r.cluster.name,
                    "id": r.cluster.id.to_string(),
                    "token": r.bootstrap_token.expose(),
                    "tokenExpiresAtUnix": unix(r.token_expires_at),
                    "hubUrl": r.hub_url,
                    "hubCaPem": r.hub_ca_pem,
                    "manifest": r.manifest.expose(),
                })),
            }
        }
        Command::Approve { name } => {
            let c = client.approve_cluster(&name).await?;
            emit(&format!("cluster/{} approved (phase {})\n", c.name, c.phase))
        }
        Command::Deny { name } => {
            let c = client.deny_cluster(&name).await?;
            emit(&format!("cluster/{} denied\n", c.name))
        }
        Command::Delete { name } => {
            let (c, agents) = client.delete_cluster(&name).await?;
            emit(&format!("cluster/{} deleted ({agents} agent session(s) disconnected)\n", c.name))
        }
        Command::Kubeconfig { name, user, groups, auth, ttl } => {
            let request = KubeconfigRequest {
                cluster: name,
                user,
                groups,
                kind: match auth {
                    Auth::Cert => CredentialKind::Cert,
                    Auth::Token => CredentialKind::Token,
                },
                ttl,
            };
            let issued = client.issue_kubeconfig_with(&request).await?;
            let mut text = issued.yaml.expose().to_owned();
            if !text.ends_with('\n') {
                text.push('\n');
            }
            emit(&text)
        }
        Command::Clusters { output, selector, watch } if watch => {
            watch_clusters(&client, output, selector).await
        }
        Command::Clusters { output, selector, .. } => {
            let clusters = client.list_all_clusters(selector.as_deref()).await?.clusters;
            if clusters.is_empty() && matches!(output, ClusterOutput::Table | ClusterOutput::Wide) {
                eprintln!(
                    "No clusters registered (or none you hold a grant for, or none matching the selector)."
                );
                return Ok(());
            }
            print_clusters(&clusters, output, now)
        }
        Command::Get { name, output } => {
            let cluster = client.get_cluster(&name).await?;
            print_clusters(&[cluster], output, now)
        }
        Command::Describe(DescribeCommand::Cluster { name }) => {
            let cluster = client.get_cluster(&name).await?;
            let grants = client.list_grants(Some(&name)).await?;
            emit(&output::describe_cluster(&cluster, &grants, now))
        }
        Command::Request { cluster, path, method, headers, data, include } => {
            let body = match data.as_deref() {
                None => Vec::new(),
                Some("@-") => {
                    let mut all = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut all)?;
                    all
                }
                Some(d) => match d.strip_prefix('@') {
                    Some(file) => std::fs::read(file).map_err(|e| anyhow!("reading {file}: {e}"))?,
                    None => d.as_bytes().to_vec(),
                },
            };
            let mut request = http::Request::builder().method(method.as_str()).uri(path.as_str());
            for h in &headers {
                let (name, value) =
                    h.split_once(':').ok_or_else(|| anyhow!("header {h:?} is not 'Name: value'"))?;
                request = request.header(name.trim(), value.trim());
            }
            let request =
                request.body(bytes::Bytes::from(body)).map_err(|e| anyhow!("invalid request: {e}"))?;
            let mut response = client.proxy(&cluster, request).await?;
            if include {
                let mut head = format!("HTTP {}\n", response.status);
                for (name, value) in &response.headers {
                    head.push_str(&format!("{name}: {}\n", String::from_utf8_lossy(value.as_bytes())));
                }
                head.push('\n');
                emit(&head)?;
            }
            let mut out = std::io::stdout().lock();
            while let Some(chunk) = response.chunk().await? {
                match out.write_all(&chunk).and_then(|()| out.flush()) {
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                    r => r?,
                }
            }
            if !response.status.is_success() {
                bail!("the apiserver of cluster {cluster} answered {}", response.status);
            }
            Ok(())
        }
        Command::Label { name, changes } => {
            let (set, remove) = parse_label_changes(&changes)?;
            let c = client.update_labels(&name, &set, &remove).await?;
            let labels: Vec<String> = c.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            emit(&format!(
                "cluster/{} labeled ({})\n",
                c.name,
                if labels.is_empty() { "no labels".to_owned() } else { labels.join(",") }
            ))
        }
        Command::Wait { name, state, timeout } => {
            let phase = match state {
                WaitFor::Connected | WaitFor::Disconnected => None,
                WaitFor::Ready => Some(ClusterPhase::Ready),
                WaitFor::NotReady => Some(ClusterPhase::NotReady),
                WaitFor::Pending => Some(ClusterPhase::Pending),
                WaitFor::Offline => Some(ClusterPhase::Offline),
                WaitFor::Denied => Some(ClusterPhase::Denied),
            };
            match phase {
                Some(phase) => {
                    let c = client.wait_cluster_phase(&name, phase, timeout).await?;
                    let reason = if c.reason.is_empty() { String::new() } else { format!(" ({})", c.reason) };
                    emit(&format!("cluster/{} {}{reason}\n", c.name, c.phase))
                }
                None => {
                    let connected = matches!(state, WaitFor::Connected);
                    let cluster = client.wait_cluster(&name, connected, timeout).await?;
                    let word = if connected { "connected" } else { "disconnected" };
                    emit(&format!("cluster/{} {word}\n", cluster.name))
                }
            }
        }
        Command::Token(TokenCommand::Create { user, groups, ttl, cluster, output }) => {
            let token = client.create_token(&user, &groups, ttl, cluster.as_deref()).await?;
            match output {
                TokenOutput::Token => emit(&format!("{}\n", token.secret.expose())),
                TokenOutput::Json => emit_json(&serde_json::json!({
                    "id": token.info.id,
                    "user": token.info.user,
                    "groups": token.info.groups,
                    "cluster": token.info.cluster,
                    "expiresAtUnix": unix(token.info.expires_at),
                    "token": token.secret.expose(),
                })),
                TokenOutput::Kubeconfig => {
                    let base = hub_base(&hub)?;
                    let (name, server) = match &token.info.cluster {
                        Some(c) => (c.clone(), format!("{base}/clusters/{c}")),
                        None => ("ferry-hub".to_owned(), base),
                    };
                    emit(&token_kubeconfig(&name, &server, &hub.ca_pem, &user, token.secret.expose())?)
                }
            }
        }
        Command::Token(TokenCommand::List { output }) => {
            let tokens = client.list_tokens().await?;
            match output {
                ListOutput::Table => emit(&output::tokens_table(&tokens, now)),
                ListOutput::Json => emit(&output::tokens_json(&tokens)),
                ListOutput::Yaml => emit(&json_to_yaml(&output::tokens_json(&tokens))?),
            }
        }
        Command::Token(TokenCommand::Revoke { id }) => {
            let t = client.revoke_token(&id).await?;
            emit(&format!("token/{} (user {}) revoked\n", t.id, t.user))
        }
        Command::Grant(args) => {
            let g = client.grant(&args.cluster, &args.subject.subject(), args.allow_impersonate).await?;
            let extra = if g.allow_impersonate { " (may impersonate)" } else { "" };
            emit(&format!("{} may reach cluster {}{extra}\n", g.subject, g.cluster))
        }
        Command::Revoke(args) => {
            let g = client.revoke_grant(&args.cluster, &args.subject.subject()).await?;
            emit(&format!("grant for {} on cluster {} revoked\n", g.subject, g.cluster))
        }
        Command::Grants { cluster, output } => {
            let grants = client.list_grants(cluster.as_deref()).await?;
            match output {
                ListOutput::Table => emit(&output::grants_table(&grants, now)),
                ListOutput::Json => emit(&output::grants_json(&grants)),
                ListOutput::Yaml => emit(&json_to_yaml(&output::grants_json(&grants))?),
            }
        }
        Command::Audit { cluster, user, since, follow, limit, output } => {
            let query = AuditQuery { cluster, user, since: since.map(|d| now - d), follow, limit };
            let mut events = std::pin::pin!(client.audit_events(&query).await?);
            if matches!(output, AuditOutput::Table) {
                emit(&output::audit_header())?;
            }
            while let Some(event) = events.next().await {
                let event = event?;
                match output {
                    AuditOutput::Table => emit(&output::audit_line(&event))?,
                    AuditOutput::Json => emit(&format!("{}\n", output::audit_json(&event)))?,
                }
            }
            Ok(())
        }
        Command::Whoami => {
            let me = client.who_am_i().await?;
            emit(&format!(
                "user: {}\ngroups: [{}]\nadmin: {}\nauth: {}\n",
                me.user,
                me.groups.join(", "),
                me.admin,
                me.auth_method
            ))
        }
    }
}

/// Prints clusters in `format`.
fn print_clusters(clusters: &[Cluster], format: ClusterOutput, now: SystemTime) -> anyhow::Result<()> {
    match format {
        ClusterOutput::Table => emit(&output::clusters_table(clusters, now)),
        ClusterOutput::Wide => emit(&output::clusters_wide(clusters, now)),
        ClusterOutput::Json => emit(&output::clusters_json(clusters)),
        ClusterOutput::Yaml => emit(&output::clusters_yaml(clusters)),
        ClusterOutput::Name => {
            emit(&clusters.iter().map(|c| format!("cluster/{}\n", c.name)).collect::<String>())
        }
    }
}

/// `ferryctl clusters -w`: the clusters, then one line (row, JSON object
/// or YAML document) per change, until interrupted. Reconnects and resumes
/// by itself when the hub restarts.
async fn watch_clusters(hub: &Hub, format: ClusterOutput, selector: Option<String>) -> anyhow::Result<()> {
    let options = WatchOptions { label_selector: selector, ..Default::default() };
    let mut events = std::pin::pin!(hub.watch_clusters(options));
    let mut initial: Vec<Cluster> = Vec::new();
    let mut columns: Option<Columns<7>> = None;
    let mut wide: Option<Columns<12>> = None;
    let mut synced = false;
    while let Some(event) = events.next().await {
        let event = event?;
        let now = SystemTime::now();
        let (kind, clusters) = match &event {
            ClusterEvent::Bookmark { .. } if !synced => {
                synced = true;
                match format {
                    ClusterOutput::Table => {
                        let mut rows = vec![output::CLUSTER_COLUMNS.map(str::to_owned)];
                        rows.extend(initial.iter().map(|c| output::cluster_row(c, now)));
                        let mut c = Columns::fit(&rows);
                        emit(&rows.iter().map(|r| c.line(r)).collect::<String>())?;
                        columns = Some(c);
                    }
                    ClusterOutput::Wide => {
                        let mut rows = vec![output::WIDE_CLUSTER_COLUMNS.map(str::to_owned)];
                        rows.extend(initial.iter().map(|c| output::wide_cluster_row(c, now)));
                        let mut c = Columns::fit(&rows);
                        emit(&rows.iter().map(|r| c.line(r)).collect::<String>())?;
                        wide = Some(c);
                    }
                    _ => {}
                }
                continue;
            }
            ClusterEvent::Added { cluster, .. }
                if !synced && matches!(format, ClusterOutput::Table | ClusterOutput::Wide) =>
            {
                initial.push(cluster.clone());
                continue;
            }
            ClusterEvent::Added { cluster, .. } => ("ADDED", vec![cluster.clone()]),
            ClusterEvent::Modified { cluster, .. } => ("MODIFIED", vec![cluster.clone()]),
            ClusterEvent::Deleted { cluster, .. } => ("DELETED", vec![cluster.clone()]),
            ClusterEvent::Relisted { clusters, .. } => ("RELISTED", clusters.clone()),
            _ => continue,
        };
        for c in &clusters {
            let text = match format {
                ClusterOutput::Table => match columns.as_mut() {
                    Some(cols) => cols.line(&output::cluster_row(c, now)),
                    None => output::clusters_table(std::slice::from_ref(c), now),
                },
                ClusterOutput::Wide => match wide.as_mut() {
                    Some(cols) => cols.line(&output::wide_cluster_row(c, now)),
                    None => output::clusters_wide(std::slice::from_ref(c), now),
                },
                ClusterOutput::Json => {
                    let line = serde_json::json!({
                        "type": kind, "revision": event.revision(), "cluster": output::cluster_value(c),
                    });
                    format!("{line}\n")
                }
                ClusterOutput::Yaml => {
                    let doc = serde_json::json!({
                        "type": kind, "revision": event.revision(), "cluster": output::cluster_value(c),
                    });
                    format!("---\n{}", serde_yaml::to_string(&doc)?)
                }
                ClusterOutput::Name => format!("cluster/{}\n", c.name),
            };
            emit(&text)?;
        }
    }
    Ok(())
}

/// `KEY=VALUE` (set) and `KEY-` (remove), as `kubectl label` takes them.
fn parse_label_changes(changes: &[String]) -> anyhow::Result<(BTreeMap<String, String>, Vec<String>)> {
    let mut set = BTreeMap::new();
    let mut remove = Vec::new();
    for change in changes {
        if let Some((k, v)) = change.split_once('=') {
            set.insert(k.to_owned(), v.to_owned());
        } else if let Some(k) = change.strip_suffix('-') {
            remove.push(k.to_owned());
        } else {
            bail!("{change:?} is neither KEY=VALUE nor KEY-");
        }
    }
    Ok((set, remove))
}

fn json_to_yaml(json: &str) -> anyhow::Result<String> {
    let value: serde_json::Value = serde_json::from_str(json)?;
    Ok(serde_yaml::to_string(&value)?)
}

/// `https://host:port` of the hub.
fn hub_base(hub: &HubConfig) -> anyhow::Result<String> {
    let authority = hub.server.authority().ok_or_else(|| anyhow!("the kubeconfig's hub URL has no host"))?;
    Ok(format!("https://{authority}"))
}

/// A kubeconfig with a bearer token.
fn token_kubeconfig(
    name: &str,
    server: &str,
    ca_pem: &str,
    user: &str,
    token: &str,
) -> anyhow::Result<String> {
    if name.is_empty() || user.is_empty() {
        bail!("empty name");
    }
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": server, "certificate-authority-data": ca}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": user}}],
        "current-context": name,
    });
    Ok(serde_yaml::to_string(&doc)?)
}

fn emit_json(value: &serde_json::Value) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    emit(&text)
}

/// Writes results to stdout; a closed pipe (`ferryctl clusters | head -1`)
/// is not an error.
fn emit(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

//! Long-running streams through Ferry: `kubectl exec`, `attach`, `cp` and
//! `port-forward` against the test apiserver behind ferry-hub and
//! ferry-agent (real processes), over SPDY and WebSocket, and with kubectl
//! 1.27 (SPDY only), moving 50 MiB each way and comparing SHA-256 sums.

mod common;

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use common::*;

/// Bytes moved by each large transfer.
const BIG: u64 = 50 * 1024 * 1024;
/// How long the apiserver may take to see a killed client's connection end.
const CANCEL_DEADLINE: Duration = Duration::from_secs(20);

/// A world with a pod `box` (and alice's kubeconfig through the hub).
fn world(pods: &[&[&str]]) -> (Env, std::path::PathBuf) {
    let env = Env::start(None);
    let kc = env.user_kubeconfig("alice", &["dev"]);
    kubectl_ok(&kc, &["run", "box", "--image=busybox", "--restart=Never"]);
    for extra in pods {
        kubectl_ok(&kc, extra);
    }
    (env, kc)
}

/// The recorded streaming request after `after` to `*suffix`, once it ended
/// as `outcome`.
fn ended(env: &Env, suffix: &str, outcome: &str, after: u64) -> serde_json::Value {
    env.wait_recorded(suffix, outcome, after, READY_TIMEOUT)
        .unwrap_or_else(|| panic!("no {outcome} request to {suffix} after #{after}: {:?}", env.recorded()))
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn exec_runs_commands_and_returns_exit_codes() {
    let (env, kc) = world(&[]);
    for f in Flavor::all() {
        let after = env.last_recorded_id();
        assert_eq!(
            f.ok(&kc, &["exec", "box", "--", "echo", "through", "ferry"]),
            "through ferry\n",
            "[{}]",
            f.name
        );
        let r = ended(&env, "/pods/box/exec", "completed", after);
        assert_eq!(r["upgrade"], f.exec_upgrade, "[{}] {r}", f.name);
        assert_eq!(r["exitCode"], 0);
        assert_eq!(r["user"], "alice", "the agent impersonates the caller: {r}");
        assert!(r["groups"].as_array().expect("groups").iter().any(|g| g == "dev"), "{r}");

        let out = f.run(&kc, &["exec", "box", "--", "sh", "-c", "exit 3"]);
        assert_eq!(out.status.code(), Some(3), "[{}] {}", f.name, stderr(&out));
        assert!(stderr(&out).contains("command terminated with exit code 3"), "{}", stderr(&out));
        let out = f.run(&kc, &["exec", "box", "--", "sh", "-c", "echo to-stderr >&2; exit 1"]);
        assert_eq!(
            (out.status.code(), stderr(&out).lines().next()),
            (Some(1), Some("to-stderr")),
            "[{}]",
            f.name
        );
        let out = f.run(&kc, &["exec", "box", "--", "no-such-command"]);
        assert_eq!(out.status.code(), Some(127), "[{}] {}", f.name, stderr(&out));
    }
}

#[test]
fn exec_pipes_50_mib_through_cat() {
    let (env, kc) = world(&[]);
    let input = env.path("input.bin");
    let sum = write_random_file(&input, BIG);
    for f in Flavor::all() {
        let output = env.path(&format!("cat-{}.bin", f.name));
        let (status, err) = f.run_files(&kc, &["exec", "-i", "box", "--", "cat"], &input, &output);
        assert!(status.success(), "[{}] {status}: {err}", f.name);
        assert_eq!(sha256_file(&output), (sum.clone(), BIG), "[{}] 50 MiB through cat", f.name);
        eprintln!("[{}] exec -i cat: {BIG} bytes in and out, sha256 {sum}", f.name);
    }
}

#[test]
fn cp_copies_50_mib_both_ways() {
    let (env, kc) = world(&[]);
    let input = env.path("up.bin");
    let sum = write_random_file(&input, BIG);
    let local = input.to_str().expect("utf8");
    for f in Flavor::all() {
        let remote = format!("box:/tmp/{}.bin", f.name);
        f.ok(&kc, &["cp", local, &remote]);
        let in_pod = f.ok(&kc, &["exec", "box", "--", "sha256sum", &format!("/tmp/{}.bin", f.name)]);
        assert!(in_pod.starts_with(&sum), "[{}] the pod got the file: {in_pod}", f.name);
        let back = env.path(&format!("down-{}.bin", f.name));
        f.ok(&kc, &["cp", &remote, back.to_str().expect("utf8")]);
        assert_eq!(sha256_file(&back), (sum.clone(), BIG), "[{}] 50 MiB back from the pod", f.name);
        eprintln!("[{}] cp: {BIG} bytes to and from the pod, sha256 {sum}", f.name);
    }
}

#[test]
fn attach_echoes_stdin_and_shows_log_lines() {
    let (env, kc) = world(&[]);
    for f in Flavor::all() {
        let after = env.last_recorded_id();
        let (mut attach, mut stdin) =
            Proc::spawn_with_stdin("kubectl attach", f.command(&kc, &["attach", "-i", "box"]));
        // The echo proves the session (and its log subscription) is up.
        writeln!(stdin, "typed by {}", f.name).expect("type");
        stdin.flush().expect("flush");
        attach.wait_line(&format!("typed by {}", f.name), READY_TIMEOUT);
        env.append_log("default", "box", &format!("log line for {}", f.name));
        attach.wait_line(&format!("log line for {}", f.name), READY_TIMEOUT);
        drop(stdin);
        let status = attach.wait_exit(READY_TIMEOUT);
        assert!(status.success(), "[{}] stdin EOF ends the attach: {status}", f.name);
        let r = ended(&env, "/pods/box/attach", "completed", after);
        assert_eq!(r["upgrade"], f.exec_upgrade, "[{}] {r}", f.name);
    }
}

#[test]
fn port_forward_carries_50_mib_each_way() {
    let echo = TcpEcho::start();
    let annotation =
        format!("--annotations={}={}", ferry_integration::apiserver::FORWARD_TO_ANNOTATION, echo.addr);
    let (env, kc) = world(&[&["run", "fwd", "--image=nginx", "--restart=Never", &annotation]]);
    let input = env.path("forward.bin");
    let sum = write_random_file(&input, BIG);
    for f in Flavor::all() {
        let after = env.last_recorded_id();
        let mut pf = f.spawn(&kc, &["port-forward", "pod/fwd", ":8080"]);
        let line = pf.wait_line("Forwarding from 127.0.0.1:", READY_TIMEOUT);
        let addr = format!("127.0.0.1:{}", forwarded_port(&line));
        let output = env.path(&format!("echoed-{}.bin", f.name));
        let got = tcp_round_trip(&addr, &input, &output);
        assert_eq!(got, BIG, "[{}] every byte came back through the echo server", f.name);
        assert_eq!(sha256_file(&output).0, sum, "[{}] unchanged", f.name);
        eprintln!("[{}] port-forward: {got} bytes each way, sha256 {sum}", f.name);
        let r =
            env.wait_recorded("/pods/fwd/portforward", "inProgress", after, READY_TIMEOUT).expect("recorded");
        assert_eq!(r["upgrade"], f.port_forward_upgrade, "[{}] {r}", f.name);
        pf.kill();
    }
    drop(echo);
}

/// Waits (with a deadline, no sleeps) for the test apiserver to record that
/// the streaming connection `running` ended because the client went away.
fn expect_cancelled(env: &Env, f: &Flavor, suffix: &str, after: u64, running: &serde_json::Value) {
    let cancelled = env.wait_recorded(suffix, "cancelled", after, CANCEL_DEADLINE);
    let now = env.recorded().into_iter().find(|r| r["id"] == running["id"]).unwrap_or_default();
    let r = cancelled.unwrap_or_else(|| {
        panic!(
            "[{}] kubectl was killed, but within {CANCEL_DEADLINE:?} the apiserver did not see its {suffix} \
             connection end: request #{} ({} {}) is still {} (finishedAt {})",
            f.name, now["id"], now["upgrade"], now["streamProtocol"], now["outcome"], now["finishedAt"]
        )
    });
    assert_eq!(r["id"], running["id"], "[{}]", f.name);
    assert!(!r["finishedAt"].is_null() && r["exitCode"].is_null(), "[{}] {r}", f.name);
}

/// Kills kubectl in the middle of a `cat`: the apiserver must see the exec
/// connection end (the hub and agent pass the client's going away on).
fn kill_mid_exec(env: &Env, kc: &Path, f: &Flavor) {
    let after = env.last_recorded_id();
    let (mut exec, mut stdin) =
        Proc::spawn_with_stdin("kubectl exec", f.command(kc, &["exec", "-i", "box", "--", "cat"]));
    writeln!(stdin, "ping").expect("type");
    stdin.flush().expect("flush");
    exec.wait_line("ping", READY_TIMEOUT);
    let running =
        env.wait_recorded("/pods/box/exec", "inProgress", after, READY_TIMEOUT).expect("the exec is open");
    exec.kill();
    expect_cancelled(env, f, "/pods/box/exec", after, &running);
}

/// Kills kubectl port-forward while a forwarded connection is open.
fn kill_mid_port_forward(env: &Env, kc: &Path, f: &Flavor) {
    let after = env.last_recorded_id();
    let mut pf = f.spawn(kc, &["port-forward", "pod/box", ":8080"]);
    let line = pf.wait_line("Forwarding from 127.0.0.1:", READY_TIMEOUT);
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", forwarded_port(&line))).expect("connect");
    conn.set_read_timeout(Some(READY_TIMEOUT)).expect("timeout");
    conn.write_all(b"ping").expect("send");
    let mut echoed = [0u8; 4];
    std::io::Read::read_exact(&mut conn, &mut echoed).expect("the built-in echo answers");
    assert_eq!(&echoed, b"ping");
    let running =
        env.wait_recorded("/pods/box/portforward", "inProgress", after, READY_TIMEOUT).expect("open");
    pf.kill();
    expect_cancelled(env, f, "/pods/box/portforward", after, &running);
}

#[test]
fn killing_kubectl_ends_its_connection_at_the_apiserver() {
    let (env, kc) = world(&[]);
    for f in [Flavor::spdy(), Flavor::websocket()] {
        kill_mid_exec(&env, &kc, &f);
        kill_mid_port_forward(&env, &kc, &f);
    }
}

/// Bytes the abrupt upstream sends after its `101`.
const ABRUPT_BYTES: usize = 2 * 1024 * 1024;

/// The caller of the abrupt upstream sends a few bytes after reading this
/// many.
const PING_EVERY: usize = 128 * 1024;

/// The byte at `i` of what the abrupt upstream sends.
fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

/// A TLS "apiserver" whose upgraded connections end abruptly: it answers
/// `101`, writes [`ABRUPT_BYTES`] and ends its side with a TCP FIN but no
/// TLS `close_notify` (what a server that drops its connection does).
/// `/version` answers so the agent can report status; anything else is a
/// 404.
struct AbruptUpstream {
    kubeconfig: String,
    /// Fires when an upgraded connection has been written and ended.
    dropped: tokio::sync::mpsc::Receiver<()>,
    task: tokio::task::JoinHandle<()>,
}

impl AbruptUpstream {
    async fn start() -> AbruptUpstream {
        use base64::Engine as _;
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca, ca_key).expect("ca");
        let leaf_key = KeyPair::generate().expect("leaf key");
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("leaf params");
        let cert = leaf.signed_by(&leaf_key, &ca).expect("leaf");
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
        let mut config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)
        .expect("server config");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: abrupt\n  cluster:\n    server: https://{addr}\n    \
             certificate-authority-data: {}\nusers:\n- name: admin\n  user:\n    token: abrupt-token\n\
             contexts:\n- name: abrupt\n  context:\n    cluster: abrupt\n    user: admin\ncurrent-context: abrupt\n",
            base64::engine::general_purpose::STANDARD.encode(ca.pem())
        );
        let (dropped_tx, dropped) = tokio::sync::mpsc::channel(4);
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, dropped_tx) = (acceptor.clone(), dropped_tx.clone());
                conns.spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match tls.read(&mut byte).await {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                    if head.contains("\r\nupgrade:") {
                        let switching =
                            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\n";
                        let body: Vec<u8> = (0..ABRUPT_BYTES).map(pattern).collect();
                        if tls.write_all(switching.as_bytes()).await.is_ok()
                            && tls.write_all(&body).await.is_ok()
                            && tls.flush().await.is_ok()
                            // FIN under TLS, without close_notify.
                            && tls.get_mut().0.shutdown().await.is_ok()
                        {
                            let _ = dropped_tx.send(()).await;
                            // Reading on (to EOF) keeps what the caller still
                            // sends from resetting the connection, which would
                            // lose bytes here rather than in the tunnel.
                            let mut sink = vec![0u8; 16 * 1024];
                            while matches!(tls.read(&mut sink).await, Ok(n) if n > 0) {}
                        }
                        return;
                    }
                    let (status, body) = if head.starts_with("get /version ") {
                        ("200 OK", r#"{"major":"1","minor":"33","gitVersion":"v1.33.0"}"#)
                    } else {
                        ("404 Not Found", "{}")
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                         Connection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(resp.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        AbruptUpstream { kubeconfig, dropped, task }
    }
}

impl Drop for AbruptUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Issue 14: an apiserver that ends an upgraded connection without TLS
/// `close_notify` while the caller is behind in reading. The agent reports
/// the broken connection after the bytes it read; the hub must still hand
/// every one of them to the caller before it closes the caller's side. The
/// caller reads through a small socket buffer, so the hub's own buffers are
/// full when the agent's error arrives (before the fix, the hub dropped
/// the connection with its unsent tail).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apiserver_dropping_an_upgraded_connection_loses_no_bytes() {
    use base64::Engine as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut upstream = AbruptUpstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let api_kc = dir.path().join("abrupt.kubeconfig");
    std::fs::write(&api_kc, &upstream.kubeconfig).expect("write kubeconfig");
    let data = dir.path().join("hub");
    let (hub, hub_url, agent, alice) = tokio::task::spawn_blocking(move || {
        let mut cmd = std::process::Command::new(bin("ferry-hub"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"]).arg(&data);
        let mut hub = Proc::spawn("ferry-hub", cmd);
        let hub_url = url_in(&hub.wait_line("ferry-hub ready", READY_TIMEOUT));
        let ferryctl = |args: &[&str]| {
            let out = std::process::Command::new(bin("ferryctl"))
                .arg("--kubeconfig")
                .arg(data.join("admin.kubeconfig"))
                .args(args)
                .output()
                .expect("ferryctl");
            assert!(out.status.success(), "ferryctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8(out.stdout).expect("utf8")
        };
        let token = ferryctl(&["register", "edge", "-o", "token"]);
        let mut cmd = std::process::Command::new(bin("ferry-agent"));
        cmd.arg("--hub").arg(&hub_url).arg("--hub-ca").arg(data.join("ca.crt"));
        cmd.arg("--kubeconfig").arg(&api_kc).arg("--state-dir").arg(data.join("agent-state"));
        cmd.arg("--token").arg(token.trim());
        let mut agent = Proc::spawn("ferry-agent", cmd);
        agent.wait_line("ferry-agent connected:", READY_TIMEOUT);
        ferryctl(&["grant", "--cluster", "edge", "--user", "alice"]);
        let alice = ferryctl(&["kubeconfig", "edge", "--user", "alice", "--group", "dev"]);
        (hub, hub_url, agent, alice)
    })
    .await
    .expect("start hub and agent");

    // alice's credential and the hub CA, from her kubeconfig.
    let kc: serde_yaml::Value = serde_yaml::from_str(&alice).expect("kubeconfig yaml");
    let pem = |v: &serde_yaml::Value| {
        base64::engine::general_purpose::STANDARD.decode(v.as_str().expect("base64 field")).expect("base64")
    };
    let ca = pem(&kc["clusters"][0]["cluster"]["certificate-authority-data"]);
    let cert = pem(&kc["users"][0]["user"]["client-certificate-data"]);
    let key = pem(&kc["users"][0]["user"]["client-key-data"]);
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(&ca) {
        roots.add(c.expect("ca pem")).expect("root");
    }
    let certs =
        rustls_pki_types::CertificateDer::pem_slice_iter(&cert).map(|c| c.expect("cert pem")).collect();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(&key).expect("key pem");
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_client_auth_cert(certs, key)
    .expect("client config");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];

    // A small receive buffer makes the caller the slow end of the chain.
    let hub_addr: std::net::SocketAddr =
        hub_url.trim_start_matches("https://").trim_end_matches('/').parse().expect("hub address");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let tcp = socket.connect(hub_addr).await.expect("connect to the hub");
    let server_name = rustls_pki_types::ServerName::IpAddress(hub_addr.ip().into());
    let mut conn = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(server_name, tcp)
        .await
        .expect("TLS to the hub");
    let request = format!(
        "GET /clusters/edge/api/v1/namespaces/default/pods/p/exec?command=cat&stdout=true HTTP/1.1\r\n\
         Host: {hub_addr}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
         X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n"
    );
    conn.write_all(request.as_bytes()).await.expect("send the upgrade request");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(conn.read(&mut byte).await.expect("read the response head"), 1, "{head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");

    // Nothing read until the apiserver has written everything and dropped
    // the connection: the bytes now sit in the agent's and the hub's buffers.
    tokio::time::timeout(READY_TIMEOUT, upstream.dropped.recv())
        .await
        .expect("the upstream wrote everything within the timeout")
        .expect("the upstream is running");
    // The caller keeps talking while it reads, as kubectl's WebSocket pings
    // do: input that arrives after the hub stopped reading would make the
    // kernel reset the connection and drop what is still queued for it.
    let mut got = Vec::with_capacity(ABRUPT_BYTES);
    let mut buf = vec![0u8; 64 * 1024];
    let mut next_ping = 0;
    let read = async {
        loop {
            if got.len() >= next_ping {
                next_ping += PING_EVERY;
                conn.write_all(b"ping").await?;
            }
            match conn.read(&mut buf).await? {
                0 => return Ok::<(), std::io::Error>(()),
                n => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    let ended =
        tokio::time::timeout(READY_TIMEOUT, read).await.expect("the caller's side ends within the timeout");
    assert_eq!(got.len(), ABRUPT_BYTES, "every byte the apiserver sent reaches the caller (then {ended:?})");
    let first_wrong = got.iter().enumerate().position(|(i, b)| *b != pattern(i));
    assert_eq!(first_wrong, None, "the bytes arrive unchanged and in order");
    // The hub flushed and shut its side down (close_notify, FIN) instead
    // of dropping the connection.
    ended.expect("the hub closes the caller's side in order");
    drop((conn, hub, agent));
}

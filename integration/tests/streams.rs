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

//! The `ferry-agent` binary: its command line, its one line of stdout, its
//! exit codes.

mod support;

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use support::*;

fn agent_command(
    hub: &FakeHub,
    ca: &std::path::Path,
    kubeconfig: &std::path::Path,
    state: &std::path::Path,
) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry-agent"));
    cmd.arg("--hub")
        .arg(&hub.url)
        .arg("--hub-ca")
        .arg(ca)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--state-dir")
        .arg(state)
        .env_remove("FERRY_TOKEN")
        .env_remove("FERRY_TOKEN_FILE")
        .env_remove("FERRY_HUB")
        .env_remove("FERRY_HUB_CA")
        .kill_on_drop(true);
    cmd
}

#[tokio::test]
async fn prints_the_connected_line_and_stops_cleanly_on_sigterm() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = pki.write_ca(dir.path());
    let api = FakeApiserver::start(&pki).await;
    let mut hub = FakeHub::start(&pki, 1).await;
    let kubeconfig = api.kubeconfig(dir.path(), &ca);

    let mut child = agent_command(&hub, &ca, &kubeconfig, &dir.path().join("state"))
        .env("FERRY_TOKEN", BOOTSTRAP_TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ferry-agent");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let line = within("the connected line", lines.next_line()).await.expect("read").expect("a line");
    let session = line
        .strip_prefix(&format!("ferry-agent connected: cluster={CLUSTER} session="))
        .unwrap_or_else(|| panic!("unexpected line {line:?}"));
    assert!(uuid::Uuid::parse_str(session).is_ok(), "{line:?}");
    let parked = hub.next_parked().await;
    assert_eq!(parked.session, session);
    drop(parked);

    let pid = child.id().expect("running").to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().await.expect("kill");
    assert!(killed.success());
    let status = within("the agent to exit", child.wait()).await.expect("wait");
    assert!(status.success(), "SIGTERM is a clean stop: {status:?}");
    assert_eq!(lines.next_line().await.expect("read"), None, "nothing else on stdout");

    hub.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn a_refused_token_is_logged_without_echoing_it_and_retried() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = pki.write_ca(dir.path());
    let api = FakeApiserver::start(&pki).await;
    let mut hub = FakeHub::start(&pki, 1).await;
    let kubeconfig = api.kubeconfig(dir.path(), &ca);
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "ferryboot.wrong-secret\n").expect("token file");

    let mut child = agent_command(&hub, &ca, &kubeconfig, &dir.path().join("state"))
        .arg("--token-file")
        .arg(&token_file)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ferry-agent");
    hub.next_refusal().await;
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut seen = Vec::new();
    let said = within("the refusal in the log", async {
        while let Some(line) = stderr.next_line().await.expect("read") {
            let done = line.contains("refused the bootstrap token") && line.contains("ferryctl register");
            seen.push(line);
            if done {
                return true;
            }
        }
        false
    })
    .await;
    assert!(said, "{seen:?}");
    assert!(!seen.iter().any(|l| l.contains("wrong-secret")), "the token is never logged: {seen:?}");
    assert!(child.try_wait().expect("status").is_none(), "a refused token does not stop the agent");

    let pid = child.id().expect("running").to_string();
    Command::new("kill").args(["-TERM", &pid]).status().await.expect("kill");
    let status = within("the agent to exit", child.wait()).await.expect("wait");
    assert!(status.success(), "{status:?}");

    hub.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn no_credential_and_no_token_is_a_clear_error() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = pki.write_ca(dir.path());
    let api = FakeApiserver::start(&pki).await;
    let hub = FakeHub::start(&pki, 1).await;
    let kubeconfig = api.kubeconfig(dir.path(), &ca);

    let output = agent_command(&hub, &ca, &kubeconfig, &dir.path().join("state"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output();
    let output = within("the agent to exit", output).await.expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--token-file"), "{stderr}");
    assert_eq!(hub.enrolls(), 0);

    hub.stop().await;
    api.stop().await;
}

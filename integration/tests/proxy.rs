//! The gRPC `Proxy` call, for callers that cannot use the HTTPS gateway:
//! requests, streamed responses (a watch), an upgraded exec over WebSocket,
//! `ferryctl request`, and the gateway's authorization, with real processes.

mod common;

use std::process::Command;

use bytes::Bytes;
use common::*;
use ferry_client_sdk::{Hub, HubConfig, ManagementError};
use futures_util::StreamExt;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

fn get(path: &str) -> http::Request<Bytes> {
    http::Request::get(path).header("accept", "application/json").body(Bytes::new()).expect("request")
}

async fn connect(kubeconfig: &std::path::Path) -> Hub {
    Hub::connect(&HubConfig::load(kubeconfig).expect("kubeconfig")).await.expect("connect")
}

#[test]
fn requests_and_streamed_responses_over_grpc() {
    let env = Env::start(None);
    let kc = env.user_kubeconfig("alice", &["dev"]);
    let rt = runtime();
    let hub = rt.block_on(connect(&env.admin_kubeconfig()));

    rt.block_on(async {
        let r = hub.proxy("edge", get("/api/v1/namespaces")).await.expect("proxy");
        assert_eq!(r.status, http::StatusCode::OK);
        assert_eq!(r.headers["content-type"], "application/json");
        let body = r.bytes().await.expect("body");
        assert!(String::from_utf8_lossy(&body).contains("\"name\":\"default\""));

        let cm = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "first"}});
        let post = http::Request::post("/api/v1/namespaces/default/configmaps")
            .header("content-type", "application/json")
            .body(Bytes::from(cm.to_string()))
            .expect("request");
        let r = hub.proxy("edge", post).await.expect("proxy");
        assert_eq!(r.status, http::StatusCode::CREATED);

        // The apiserver's own errors are answers, not failures of the call.
        let r = hub.proxy("edge", get("/api/v1/namespaces/default/configmaps/missing")).await.expect("proxy");
        assert_eq!(r.status, http::StatusCode::NOT_FOUND);
        assert!(String::from_utf8_lossy(&r.bytes().await.expect("body")).contains("\"reason\":\"NotFound\""));
    });

    // A watch streams: an object created after the first chunk arrives.
    let mut watch = rt
        .block_on(hub.proxy("edge", get("/api/v1/namespaces/default/configmaps?watch=true")))
        .expect("watch");
    let mut seen = String::new();
    while !seen.contains("\"first\"") {
        let chunk = rt.block_on(watch.chunk()).expect("chunk").expect("still open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    kubectl_ok(&kc, &["create", "configmap", "second"]);
    while !seen.contains("\"second\"") {
        let chunk = rt.block_on(watch.chunk()).expect("chunk").expect("still open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(watch);

    // ferryctl request, as curl through the hub.
    let out = env.ferryctl_ok(&["request", "edge", "/api/v1/namespaces/default/configmaps/second"]);
    assert!(out.contains("\"name\":\"second\""), "{out}");
    let out = env.ferryctl(&["request", "edge", "/api/v1/namespaces/default/configmaps/nope", "-i"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("HTTP 404 Not Found\n"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("answered 404 Not Found"));
}

#[test]
fn exec_upgrades_over_grpc() {
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::Role;

    let env = Env::start(None);
    let kc = env.user_kubeconfig("alice", &["dev"]);
    kubectl_ok(&kc, &["run", "box", "--image=busybox", "--restart=Never"]);
    let rt = runtime();
    rt.block_on(async {
        let hub = connect(&env.admin_kubeconfig()).await;
        let request = http::Request::get(
            "/api/v1/namespaces/default/pods/box/exec?command=echo&command=over&command=grpc&stdout=true",
        )
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-protocol", "v5.channel.k8s.io")
        .body(())
        .expect("request");
        let upgrade = hub.proxy_upgrade("edge", request).await.expect("proxy");
        assert_eq!(upgrade.status, http::StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(upgrade.headers["sec-websocket-protocol"], "v5.channel.k8s.io");
        let io = upgrade.connection.expect("upgraded");
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(io, Role::Client, None).await;
        let (mut stdout, mut status) = (Vec::new(), Vec::new());
        while let Some(msg) = tokio::time::timeout(READY_TIMEOUT, ws.next()).await.expect("in time") {
            match msg.expect("message") {
                Message::Binary(b) if b.first() == Some(&1) => stdout.extend_from_slice(&b[1..]),
                Message::Binary(b) if b.first() == Some(&3) => status.extend_from_slice(&b[1..]),
                Message::Close(_) => break,
                _ => {}
            }
        }
        assert_eq!(String::from_utf8_lossy(&stdout), "over grpc\n");
        let status: serde_json::Value = serde_json::from_slice(&status).expect("status");
        assert_eq!(status["status"], "Success", "{status}");
    });
    let exec = env
        .recorded()
        .into_iter()
        .find(|r| r["path"].as_str().is_some_and(|p| p.ends_with("/pods/box/exec")))
        .expect("exec recorded");
    assert_eq!((exec["user"].as_str(), exec["upgrade"].as_str()), (Some("ferry-admin"), Some("websocket")));
}

#[test]
fn the_gateway_rules_apply() {
    let mut env = Env::start(None);
    env.ferryctl_ok(&["register", "other"]);
    // A token kubeconfig for alice, bound to edge (as issued kubeconfigs are).
    env.ferryctl_ok(&["grant", "--cluster", "edge", "--user", "alice"]);
    let bound = env.path("alice-edge.kubeconfig");
    std::fs::write(&bound, env.ferryctl_ok(&["kubeconfig", "edge", "--user", "alice", "--auth", "token"]))
        .expect("write");
    // A hub-wide token for bob, with no grant.
    let bob = env.path("bob.kubeconfig");
    let out = env.ferryctl_ok(&["token", "create", "--user", "bob", "-o", "kubeconfig"]);
    std::fs::write(&bob, out).expect("write");

    let rt = runtime();
    rt.block_on(async {
        let alice = connect(&bound).await;
        let r = alice.proxy("edge", get("/api/v1/namespaces")).await.expect("alice reaches edge");
        assert_eq!(r.status, http::StatusCode::OK);
        let e = alice.proxy("other", get("/api/v1/namespaces")).await.expect_err("bound to edge");
        assert!(matches!(&e, ManagementError::PermissionDenied(m) if m.contains("valid for cluster \"edge\" only")), "{e:?}");
        // Impersonation needs a grant that allows it, as on the gateway.
        let as_admin = http::Request::get("/api/v1/namespaces")
            .header("impersonate-user", "admin")
            .body(Bytes::new())
            .expect("request");
        let e = alice.proxy("edge", as_admin).await.expect_err("no --as");
        assert!(matches!(&e, ManagementError::PermissionDenied(m) if m.contains("--allow-impersonate")), "{e:?}");

        let bob = connect(&bob).await;
        let e = bob.proxy("edge", get("/api/v1/namespaces")).await.expect_err("no grant");
        assert!(matches!(&e, ManagementError::PermissionDenied(m) if m.contains("may not reach cluster \"edge\"")), "{e:?}");
        let e = bob.proxy("nope", get("/")).await.expect_err("unknown");
        assert!(matches!(e, ManagementError::NotFound(_)), "{e:?}");
    });
    let recorded = env.recorded();
    let namespaces: Vec<&serde_json::Value> =
        recorded.iter().filter(|r| r["path"] == "/api/v1/namespaces").collect();
    assert!(!namespaces.is_empty() && namespaces.iter().all(|r| r["user"] == "alice"), "{namespaces:?}");

    env.stop_agent();
    rt.block_on(async {
        let admin = connect(&env.admin_kubeconfig()).await;
        let e = admin.proxy("edge", get("/api/v1/namespaces")).await.expect_err("no agent");
        assert!(
            matches!(&e, ManagementError::Unavailable(m) if m.contains("has no connected agent") && m.contains("ferryctl describe cluster edge")),
            "{e:?}"
        );
    });
    // ferryctl says the same.
    let out = Command::new(bin("ferryctl"))
        .arg("--kubeconfig")
        .arg(env.admin_kubeconfig())
        .args(["request", "edge", "/api/v1/namespaces"])
        .output()
        .expect("ferryctl");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no connected agent"));
}

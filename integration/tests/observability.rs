//! Observability end to end (issue 10), with real processes and the real
//! kubectl: the hub's and the agent's `/metrics` after a scripted set of
//! kubectl calls (parsed with a Prometheus text-format parser), the audit
//! log against those calls one for one (an exec session included), no
//! secret in any log line or audit event, and readiness that follows the
//! hub's store and the agent's apiserver.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;

use common::*;

/// One request kubectl made, from its `-v=6` log: method, path (without
/// the `/clusters/NAME` prefix and the query), status.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Call {
    method: String,
    path: String,
    code: u16,
}

/// The requests in kubectl's `-v=6` log, in both of its formats
/// (`GET https://... 200 OK in 3 milliseconds`, and the structured
/// `"Response" verb="GET" url="https://..." status="200 OK"`).
fn calls_in(stderr: &str, cluster: &str) -> Vec<Call> {
    let prefix = format!("/clusters/{cluster}");
    let mut calls = Vec::new();
    for line in stderr.lines().filter(|l| l.contains("round_trippers.go")) {
        let (method, url, status) = if let Some(i) = line.find("verb=\"") {
            let field = |name: &str| {
                let start = line.find(&format!("{name}=\""))? + name.len() + 2;
                let end = line[start..].find('"')? + start;
                Some(line[start..end].to_owned())
            };
            let (Some(m), Some(u), Some(s)) = (field("verb"), field("url"), field("status")) else {
                continue;
            };
            let _ = i;
            (m, u, s)
        } else {
            let Some(rest) = line.split("] ").nth(1) else { continue };
            let words: Vec<&str> = rest.split_whitespace().collect();
            if words.len() < 3 || !words[1].starts_with("https://") {
                continue;
            }
            (words[0].to_owned(), words[1].to_owned(), words[2].to_owned())
        };
        let Ok(code) = status.split_whitespace().next().unwrap_or("").parse::<u16>() else { continue };
        let after_host = url.splitn(4, '/').nth(3).map(|p| format!("/{p}")).unwrap_or_default();
        let path = after_host.split('?').next().unwrap_or_default();
        let path = path.strip_prefix(&prefix).unwrap_or(path);
        calls.push(Call { method, path: path.to_owned(), code });
    }
    calls
}

/// Runs kubectl with `-v=6` and a cache dir of its own (so discovery goes
/// through the hub every time); returns its output and the requests it made.
fn kubectl_logged(kc: &Path, cache: &Path, args: &[&str]) -> (std::process::Output, Vec<Call>) {
    let out = Command::new(kubectl_bin())
        .arg("--kubeconfig")
        .arg(kc)
        .arg("--cache-dir")
        .arg(cache)
        .arg("-v=6")
        .args(args)
        .env_remove("KUBECONFIG")
        .env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false")
        .output()
        .expect("run kubectl");
    let calls = calls_in(&String::from_utf8_lossy(&out.stderr), "edge");
    (out, calls)
}

/// The `http://ADDR/metrics` URL of a process's `... metrics: URL` line.
fn metrics_url(proc: &mut Proc, needle: &str) -> String {
    let line = proc.wait_line(needle, READY_TIMEOUT);
    line.split_whitespace().find(|w| w.starts_with("http://")).expect("a URL").to_owned()
}

/// A plain HTTP/1.1 request; returns the status and body.
fn http(method: &str, url: &str, accept: &str) -> (u16, String) {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (addr, path) = rest.split_once('/').map(|(a, p)| (a, format!("/{p}"))).unwrap_or((rest, "/".into()));
    let mut tcp = std::net::TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(READY_TIMEOUT)).expect("timeout");
    write!(tcp, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut text = String::new();
    tcp.read_to_string(&mut text).expect("read");
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (code, body)
}

/// A scrape in the Prometheus text format, parsed by `prometheus-parse`,
/// which must understand every line.
fn scrape(url: &str) -> prometheus_parse::Scrape {
    let (code, body) = http("GET", url, "text/plain");
    assert_eq!(code, 200, "{url}: {body}");
    for line in body.lines() {
        assert_ne!(
            prometheus_parse::LineInfo::parse(line),
            prometheus_parse::LineInfo::Ignored,
            "a line the exposition parser does not understand: {line:?}"
        );
    }
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines).expect("a valid exposition")
}

/// The value of a counter or gauge sample with exactly these labels.
fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .find(|s| s.labels.len() == labels.len() && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => panic!("{name} is not a counter or gauge"),
        })
}

/// The sum of a metric's samples whose labels include `labels`.
fn sum(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
            _ => panic!("{name} is not a counter or gauge"),
        })
        .sum()
}

/// The count of a histogram with these labels.
fn histogram_count(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Histogram(buckets) => {
                buckets.iter().find(|b| b.less_than.is_infinite()).map_or(0.0, |b| b.count)
            }
            _ => panic!("{name} is not a histogram"),
        })
        .sum()
}

/// Follows the audit log of user `user` through `ferryctl audit -f -o
/// json` and waits until it has shown `n` events.
fn audit_events(env: &Env, user: &str, n: usize) -> Vec<serde_json::Value> {
    let mut cmd = Command::new(bin("ferryctl"));
    cmd.arg("--kubeconfig").arg(env.admin_kubeconfig()).args(["audit", "-f", "-o", "json", "--user", user]);
    let mut follow = Proc::spawn("ferryctl audit -f", cmd);
    follow.wait_nth_line("\"kind\"", n, READY_TIMEOUT);
    let events: Vec<serde_json::Value> = follow
        .lines_so_far()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    follow.kill();
    events
}

#[test]
fn kubectl_calls_show_in_metrics_and_the_audit_log_one_for_one() {
    let mut env = Env::start_logging(
        &["--metrics-listen", "127.0.0.1:0"],
        &["--metrics-listen", "127.0.0.1:0"],
        "info",
    );
    let hub_metrics = metrics_url(&mut env.hub, "ferry-hub metrics: ");
    let agent_metrics = metrics_url(env.agent.as_mut().expect("agent"), "ferry-agent metrics: ");
    let kc = env.user_kubeconfig("alice", &["dev"]);
    let cache = env.path("kube-cache");

    // The script: discovery, list, create, get, a watch that ends, a 404,
    // a refusal by the hub (--as without a grant that allows it), a pod
    // and an exec session, a delete.
    let mut calls = Vec::new();
    let mut run = |args: &[&str], ok: bool| {
        let (out, made) = kubectl_logged(&kc, &cache, args);
        assert_eq!(
            out.status.success(),
            ok,
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .filter(|l| !l.contains("round_trippers"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        assert!(!made.is_empty(), "kubectl {args:?} logged no request (-v=6)");
        calls.extend(made);
        out
    };
    run(&["get", "namespaces"], true);
    run(&["create", "configmap", "obs", "--from-literal=a=b"], true);
    run(&["get", "configmap", "obs", "-o", "name"], true);
    run(&["get", "--raw", "/api/v1/namespaces/default/configmaps?watch=1&timeoutSeconds=1"], true);
    run(&["get", "configmap", "nope"], false);
    run(&["get", "pods", "--as", "bob"], false);
    run(&["run", "box", "--image=busybox", "--restart=Never"], true);
    let exec = run(&["exec", "box", "--", "echo", "hello", "audit"], true);
    assert_eq!(String::from_utf8_lossy(&exec.stdout).trim(), "hello audit");
    run(&["delete", "configmap", "obs"], true);

    // What went through: every request the child's apiserver saw as alice
    // (kubectl's -v=6 log misses a few, such as the version check before an
    // exec), plus the hub's own refusal, which never left the hub.
    let refusal = Call { method: "GET".into(), path: "/api/v1/namespaces/default/pods".into(), code: 403 };
    let mut through: Vec<Call> = env
        .recorded()
        .iter()
        .filter(|r| r["user"] == "alice")
        .map(|r| Call {
            method: r["method"].as_str().expect("method").to_owned(),
            path: r["path"].as_str().expect("path").to_owned(),
            code: r["status"].as_u64().expect("status") as u16,
        })
        .collect();
    for call in &calls {
        assert!(through.contains(call) || *call == refusal, "kubectl's {call:?} is not in {through:#?}");
    }
    through.push(refusal);
    let calls = through;
    // An exec is a session in the audit log: a start and an end.
    let sessions = calls.iter().filter(|c| c.code == 101).count();
    assert_eq!(sessions, 1, "one exec session: {calls:?}");
    let expected_events = calls.len() + sessions;
    let events = audit_events(&env, "alice", expected_events);
    assert_eq!(events.len(), expected_events, "one event per request, two per session: {events:#?}");

    // One for one: the same requests (path and status), kind by kind.
    let mut logged: Vec<(String, u16)> = Vec::new();
    for e in &events {
        let kind = e["kind"].as_str().expect("kind");
        assert_eq!(e["user"], "alice", "{e}");
        assert_eq!(e["cluster"], "edge", "{e}");
        assert_eq!(e["groups"], serde_json::json!(["dev"]), "{e}");
        assert_eq!(e["authMethod"], "cert", "{e}");
        assert_eq!(e["clientAddress"], "127.0.0.1", "{e}");
        assert_eq!(e["via"], "gateway", "{e}");
        assert!(e["requestId"].as_str().is_some_and(|id| id.len() == 36), "{e}");
        assert!(e["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{e}");
        match kind {
            "request" | "session.end" => {
                assert!(e["durationMs"].as_f64().is_some(), "{e}");
                assert!(e["bytesIn"].as_u64().is_some() && e["bytesOut"].as_u64().is_some(), "{e}");
                assert_eq!(e["outcome"], "completed", "{e}");
            }
            "session.start" => assert!(e.get("durationMs").is_none(), "{e}"),
            other => panic!("unexpected kind {other}: {e}"),
        }
        if kind != "session.end" {
            let path = e["path"].as_str().expect("path").to_owned();
            logged.push((path, e["code"].as_u64().expect("code") as u16));
        }
    }
    let mut made: Vec<(String, u16)> = calls.iter().map(|c| (c.path.clone(), c.code)).collect();
    made.sort();
    logged.sort();
    assert_eq!(logged, made, "the audit log has exactly the requests kubectl made");

    // What the apiserver's RequestInfo would say, for a few of them.
    let find = |verb: &str, resource: &str, code: u64| {
        events
            .iter()
            .find(|e| e["verb"] == verb && e["resource"] == resource && e["code"] == code)
            .unwrap_or_else(|| panic!("no {verb} {resource} {code} in {events:#?}"))
            .clone()
    };
    let created = find("create", "configmaps", 201);
    assert_eq!(
        (created["namespace"].as_str(), created["apiVersion"].as_str()),
        (Some("default"), Some("v1"))
    );
    assert!(created["bytesIn"].as_u64().expect("bytes") > 0, "the body went in: {created}");
    let got = find("get", "configmaps", 200);
    assert_eq!(got["name"], "obs");
    assert!(got["bytesOut"].as_u64().expect("bytes") > 0, "{got}");
    let mut missing: Vec<&str> = events
        .iter()
        .filter(|e| e["verb"] == "get" && e["code"] == 404)
        .filter_map(|e| e["name"].as_str())
        .collect();
    missing.sort_unstable();
    assert_eq!(missing, ["nope", "obs"], "kubectl get nope, and kubectl delete waiting for obs to go");
    let watch = find("watch", "configmaps", 200);
    assert!(watch.get("name").is_none(), "{watch}");
    let refused = find("list", "pods", 403);
    assert_eq!(refused["bytesIn"], 0, "{refused}");
    find("list", "namespaces", 200);
    find("delete", "configmaps", 200);
    let start = events.iter().find(|e| e["kind"] == "session.start").expect("session start");
    let end = events.iter().find(|e| e["kind"] == "session.end").expect("session end");
    assert_eq!(start["requestId"], end["requestId"]);
    for e in [start, end] {
        assert_eq!(
            (e["verb"].as_str(), e["subresource"].as_str(), e["name"].as_str()),
            (Some("create"), Some("exec"), Some("box")),
            "{e}"
        );
        assert_eq!(e["code"], 101);
    }
    assert!(end["bytesOut"].as_u64().expect("bytes") >= "hello audit".len() as u64, "{end}");
    let discovery = events.iter().filter(|e| e["verb"] == "get" && e.get("resource").is_none()).count();
    assert!(discovery > 0, "discovery requests are non-resource gets");

    // The hub's metrics say the same.
    let hub = scrape(&hub_metrics);
    let edge = [("cluster", "edge")];
    let total = sum(&hub, "ferry_hub_requests_total", &edge);
    assert_eq!(total as usize, calls.len(), "every request counted once (sessions at their start)");
    let by = |verb: &str, group: &str, code: &str| {
        value(
            &hub,
            "ferry_hub_requests_total",
            &[("cluster", "edge"), ("verb", verb), ("group", group), ("code", code)],
        )
        .unwrap_or(0.0) as usize
    };
    let audited = |verb: &str, resource_request: bool, code: std::ops::RangeInclusive<u64>| {
        events
            .iter()
            .filter(|e| e["kind"] != "session.end")
            .filter(|e| e["verb"] == verb && e.get("resource").is_some() == resource_request)
            .filter(|e| code.contains(&e["code"].as_u64().unwrap_or(0)))
            .count()
    };
    assert_eq!(by("create", "", "2xx"), audited("create", true, 200..=299));
    assert_eq!(by("create", "", "1xx"), 1, "the exec");
    assert_eq!(by("get", "", "4xx"), 2, "the missing configmap, and the deleted one once gone");
    assert_eq!(by("list", "", "4xx"), 1, "the refused --as");
    assert_eq!(by("watch", "", "2xx"), 1);
    assert_eq!(by("get", "_nonresource", "2xx"), audited("get", false, 200..=299));
    let bytes = |field: &str| events.iter().map(|e| e[field].as_u64().unwrap_or(0)).sum::<u64>() as f64;
    let tunnel = |direction: &str| {
        value(&hub, "ferry_hub_tunnel_bytes_total", &[("cluster", "edge"), ("direction", direction)])
            .expect("bytes")
    };
    assert_eq!(tunnel("to_caller"), bytes("bytesOut"), "bytes to callers, metric and audit agree");
    assert_eq!(tunnel("to_cluster"), bytes("bytesIn"), "bytes to the cluster, metric and audit agree");
    let answered = calls.iter().filter(|c| !(c.code == 403 && c.path.ends_with("/pods"))).count();
    assert_eq!(histogram_count(&hub, "ferry_hub_response_head_seconds", &edge) as usize, answered);
    let timed = events.iter().filter(|e| e["kind"] == "request" && e["verb"] != "watch").count();
    assert_eq!(histogram_count(&hub, "ferry_hub_request_duration_seconds", &edge) as usize, timed);
    assert_eq!(value(&hub, "ferry_hub_agents", &edge), Some(1.0));
    assert_eq!(value(&hub, "ferry_hub_clusters", &[("phase", "ready")]), Some(1.0));
    assert_eq!(value(&hub, "ferry_hub_clusters", &[("phase", "offline")]), Some(0.0));
    let phase = |p: &str| value(&hub, "ferry_hub_cluster_phase", &[("cluster", "edge"), ("phase", p)]);
    assert_eq!((phase("ready"), phase("offline"), phase("pending")), (Some(1.0), Some(0.0), Some(0.0)));
    assert_eq!(value(&hub, "ferry_hub_open_requests", &edge), Some(0.0));
    assert!(value(&hub, "ferry_hub_parked_streams", &edge).expect("parked") >= 1.0);
    assert_eq!(value(&hub, "ferry_hub_upgraded_sessions", &edge), Some(0.0), "the exec ended");
    assert_eq!(value(&hub, "ferry_hub_agent_connects_total", &edge), Some(1.0));
    assert_eq!(value(&hub, "ferry_hub_registrations_total", &[]), Some(1.0));
    assert_eq!(
        value(&hub, "ferry_hub_agent_certificates_total", &[("kind", "enroll"), ("result", "issued")]),
        Some(1.0)
    );
    assert!(
        histogram_count(&hub, "ferry_hub_store_operation_duration_seconds", &[("operation", "cluster")])
            > 0.0
    );
    assert_eq!(value(&hub, "ferry_hub_audit_events_dropped_total", &[]), Some(0.0));
    assert!(hub.samples.iter().all(|s| s.labels.get("user").is_none() && s.labels.get("path").is_none()));

    // The agent counted what reached its apiserver: everything but the
    // hub's refusal.
    let agent = scrape(&agent_metrics);
    let agent_total = sum(&agent, "ferry_agent_apiserver_requests_total", &[]);
    assert_eq!(agent_total as usize, calls.len() - 1, "{:?}", agent.samples);
    assert_eq!(
        value(&agent, "ferry_agent_apiserver_requests_total", &[("verb", "create"), ("code", "1xx")]),
        Some(1.0)
    );
    assert_eq!(
        value(&agent, "ferry_agent_apiserver_requests_total", &[("verb", "get"), ("code", "4xx")]),
        Some(2.0)
    );
    assert_eq!(value(&agent, "ferry_agent_connected", &[]), Some(1.0));
    assert_eq!(value(&agent, "ferry_agent_apiserver_up", &[]), Some(1.0));
    assert_eq!(value(&agent, "ferry_agent_open_requests", &[]), Some(0.0));
    assert!(value(&agent, "ferry_agent_certificate_expiry_timestamp_seconds", &[]).expect("expiry") > 1.7e9);

    // OpenMetrics for scrapers that ask for it.
    let (code, om) = http("GET", &hub_metrics, "application/openmetrics-text;version=1.0.0");
    assert_eq!(code, 200);
    assert!(om.ends_with("# EOF\n") && om.contains("# TYPE ferry_hub_requests counter"), "{om}");
    assert_eq!(http("GET", &hub_metrics.replace("/metrics", "/other"), "*/*").0, 404);
}

/// Every occurrence of a secret worth looking for in `text`: the whole
/// thing, and for PEM keys each base64 line of their body.
fn needles(secret: &str) -> Vec<String> {
    if secret.contains("-----BEGIN") {
        secret.lines().filter(|l| !l.starts_with("-----") && l.len() >= 16).map(str::to_owned).collect()
    } else {
        vec![secret.to_owned()]
    }
}

/// The base64 `field` of a kubeconfig, decoded.
fn kubeconfig_field(path: &Path, field: &str) -> String {
    use base64::Engine as _;
    let yaml = std::fs::read_to_string(path).expect("kubeconfig");
    let value = yaml
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{field}: ")))
        .unwrap_or_else(|| panic!("no {field} in {}", path.display()));
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(value.trim()).expect("base64"))
        .expect("utf8")
}

#[test]
fn no_secret_reaches_a_log_or_an_audit_event() {
    let filter = "info,ferry=debug,ferry_hub=debug,ferry_agent=debug";
    let mut env = Env::start_logging(&["--log-format", "json"], &["--log-format", "json"], filter);
    let mut secrets: BTreeMap<&str, String> = BTreeMap::new();

    // A second bootstrap token, used by a second agent.
    let bootstrap = env.ferryctl_ok(&["register", "edge", "-o", "token"]).trim().to_owned();
    let mut cmd = env.agent_command("agent-2");
    cmd.env("FERRY_TOKEN", &bootstrap).env("RUST_LOG", filter).args(["--log-format", "json"]);
    let mut second = Proc::spawn_logging("ferry-agent 2", cmd);
    second.wait_line("ferry-agent connected:", READY_TIMEOUT);
    secrets.insert("bootstrap token", bootstrap);

    // A certificate kubeconfig and a token kubeconfig, both used.
    let cert_kc = env.user_kubeconfig("alice", &["dev"]);
    secrets.insert("alice's key", kubeconfig_field(&cert_kc, "client-key-data"));
    let token_kc = env.path("carol.kubeconfig");
    env.ferryctl_ok(&["grant", "--cluster", "edge", "--user", "carol"]);
    std::fs::write(&token_kc, env.ferryctl_ok(&["kubeconfig", "edge", "--user", "carol", "--auth", "token"]))
        .expect("write");
    let carol_token = std::fs::read_to_string(&token_kc)
        .expect("kubeconfig")
        .lines()
        .find_map(|l| l.trim().strip_prefix("token: ").map(str::to_owned))
        .expect("a token");
    secrets.insert("carol's token", carol_token);
    // A hub-wide bearer token, used by ferryctl.
    let token =
        env.ferryctl_ok(&["token", "create", "--user", "dave", "--group", "ferry:admins"]).trim().to_owned();
    let dave = env.path("dave.kubeconfig");
    std::fs::write(
        &dave,
        env.ferryctl_ok(&[
            "token",
            "create",
            "--user",
            "dave",
            "--group",
            "ferry:admins",
            "-o",
            "kubeconfig",
        ]),
    )
    .expect("write");
    secrets.insert("dave's token", token);
    let daves_second = std::fs::read_to_string(&dave)
        .expect("kubeconfig")
        .lines()
        .find_map(|l| l.trim().strip_prefix("token: ").map(str::to_owned))
        .expect("a token");
    secrets.insert("dave's second token", daves_second);

    for kc in [&cert_kc, &token_kc] {
        kubectl_ok(kc, &["get", "namespaces"]);
        kubectl_ok(
            kc,
            &[
                "create",
                "configmap",
                &format!("c{}", kc.file_stem().and_then(|s| s.to_str()).unwrap_or("x")),
                "--from-literal=k=v",
            ],
        );
        // Credentials a caller sends on its own are stripped, never logged.
        let out = kubectl(kc, &["get", "pods", "--as", "bob"]);
        assert!(!out.status.success());
    }
    let out = Command::new(bin("ferryctl"))
        .arg("--kubeconfig")
        .arg(&dave)
        .args(["audit", "-o", "json"])
        .output()
        .expect("ferryctl audit");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let audit_api = String::from_utf8(out.stdout).expect("utf8");
    assert!(audit_api.contains("\"action\":\"token.create\""), "{audit_api}");
    assert!(audit_api.contains("\"action\":\"kubeconfig.issue\""), "{audit_api}");
    assert!(audit_api.contains("\"action\":\"agent.enroll\""), "{audit_api}");
    assert!(audit_api.contains("\"user\":\"carol\""), "{audit_api}");

    // Key material on disk.
    secrets.insert("hub CA key", std::fs::read_to_string(env.path("hub/ca.key")).expect("ca.key"));
    secrets.insert("agent key", std::fs::read_to_string(env.path("agent-state/tls.key")).expect("tls.key"));
    secrets
        .insert("second agent key", std::fs::read_to_string(env.path("agent-2/tls.key")).expect("tls.key"));
    secrets.insert("admin key", kubeconfig_field(&env.admin_kubeconfig(), "client-key-data"));

    let audit_file = std::fs::read_to_string(env.path("hub/audit.log")).expect("the audit log");
    let mut logs: Vec<(String, String)> = Vec::new();
    for (name, proc) in
        [("hub", &mut env.hub), ("agent", env.agent.as_mut().expect("agent")), ("second agent", &mut second)]
    {
        for line in proc.lines_so_far() {
            logs.push((name.to_owned(), line));
        }
    }
    assert!(logs.len() > 20, "the processes logged: {}", logs.len());
    let mut json_lines = 0;
    for (name, line) in &logs {
        if let Some(json) = line.strip_prefix("stderr: ") {
            let v: serde_json::Value = serde_json::from_str(json)
                .unwrap_or_else(|e| panic!("{name}: not a JSON log line ({e}): {json}"));
            assert!(v["level"].is_string() && v["timestamp"].is_string(), "{v}");
            json_lines += 1;
        }
    }
    assert!(json_lines > 10);
    assert!(
        logs.iter().any(|(n, l)| n == "hub" && l.contains("\"request_id\"")),
        "request ids are in the hub's JSON logs"
    );
    let texts = logs
        .iter()
        .map(|(n, l)| (n.as_str(), l.as_str()))
        .chain(audit_file.lines().map(|l| ("audit log", l)))
        .chain(audit_api.lines().map(|l| ("ferryctl audit", l)));
    let texts: Vec<(&str, &str)> = texts.collect();
    for (what, secret) in &secrets {
        for needle in needles(secret) {
            assert!(needle.len() >= 16, "{what}: too short to look for");
            for (source, line) in &texts {
                assert!(!line.contains(&needle), "{what} appears in the {source}: {line}");
            }
        }
    }
}

#[test]
fn readiness_follows_the_store_and_the_agents_apiserver() {
    let mut env = Env::start_logging(
        &["--health-listen", "127.0.0.1:0"],
        &["--health-listen", "127.0.0.1:0", "--status-interval", "200ms"],
        "info",
    );
    let hub_health = env.hub.wait_line("ferry-hub health: ", READY_TIMEOUT);
    let hub_health =
        hub_health.split_whitespace().find(|w| w.starts_with("http://")).expect("URL").to_owned();
    let agent = env.agent.as_mut().expect("agent");
    let agent_health = metrics_url(agent, "ferry-agent health: ");

    // The hub: ready while its store is there. The whole data dir moves
    // away (the store alone would be written anew by the next status
    // report).
    assert_eq!(http("GET", &format!("{hub_health}/readyz"), "*/*"), (200, "ok".into()));
    let store = env.path("hub");
    let aside = env.path("hub.aside");
    std::fs::rename(&store, &aside).expect("move the store away");
    let (code, text) = http("GET", &format!("{hub_health}/readyz"), "*/*");
    assert_eq!(code, 503, "{text}");
    assert!(text.contains("store"), "{text}");
    assert_eq!(http("GET", &format!("{hub_health}/healthz"), "*/*").0, 200, "alive all the same");
    let raw = kubectl(&aside.join("admin.kubeconfig"), &["get", "--raw", "/readyz"]);
    assert!(!raw.status.success(), "the HTTPS address says the same");
    std::fs::rename(&aside, &store).expect("put it back");
    assert_eq!(http("GET", &format!("{hub_health}/readyz"), "*/*").0, 200);
    assert_eq!(kubectl_ok(&env.admin_kubeconfig(), &["get", "--raw", "/readyz"]), "ok");

    // The agent: ready while connected and its apiserver is ready.
    let agent = env.agent.as_mut().expect("agent");
    agent.wait_line("agent ready", READY_TIMEOUT);
    let readyz = format!("{agent_health}/readyz");
    assert_eq!(http("GET", &readyz, "*/*").0, 200);
    set_readyz(&env, false);
    let agent = env.agent.as_mut().expect("agent");
    agent.wait_line("agent not ready", READY_TIMEOUT);
    let (code, text) = http("GET", &readyz, "*/*");
    assert_eq!(code, 503, "{text}");
    assert!(text.contains("/readyz fails"), "{text}");
    assert_eq!(http("GET", &format!("{agent_health}/healthz"), "*/*").0, 200);
    set_readyz(&env, true);
    let agent = env.agent.as_mut().expect("agent");
    agent.wait_nth_line("agent ready", 2, READY_TIMEOUT);
    assert_eq!(http("GET", &readyz, "*/*").0, 200);

    // The apiserver gone altogether.
    env.apiserver.kill();
    let agent = env.agent.as_mut().expect("agent");
    agent.wait_nth_line("agent not ready", 2, READY_TIMEOUT);
    let (code, text) = http("GET", &readyz, "*/*");
    assert_eq!(code, 503, "{text}");
    assert!(text.contains("unreachable"), "{text}");
}

/// Turns the test apiserver's `/readyz` on or off.
fn set_readyz(env: &Env, ok: bool) {
    let body = env.path("health.json");
    std::fs::write(&body, format!("{{\"readyz\": {ok}}}")).expect("write");
    kubectl_ok(
        &env.apiserver_kubeconfig(),
        &["replace", "--raw", "/_test/health", "-f", body.to_str().expect("utf8")],
    );
}

/// `ferryctl audit -o json` with `args` (as the admin); one event per line.
fn audit_json(env: &Env, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["audit", "-o", "json"];
    all.extend_from_slice(args);
    env.ferryctl_ok(&all)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn management_changes_are_audited_and_ferryctl_audit_filters_and_follows() {
    let mut env = Env::start_logging(&["--metrics-listen", "127.0.0.1:0"], &[], "info");
    let hub_metrics = metrics_url(&mut env.hub, "ferry-hub metrics: ");

    // A follower of cluster `lab` from now on, started before the changes.
    let mut cmd = Command::new(bin("ferryctl"));
    cmd.arg("--kubeconfig").arg(env.admin_kubeconfig()).args([
        "audit",
        "-f",
        "-o",
        "json",
        "--cluster",
        "lab",
        "--since",
        "0s",
    ]);
    let mut follower = Proc::spawn("ferryctl audit -f --cluster lab", cmd);

    let bootstrap =
        env.ferryctl_ok(&["register", "lab", "--approval", "manual", "-o", "token"]).trim().to_owned();
    env.ferryctl_ok(&["label", "lab", "env=test"]);
    env.ferryctl_ok(&["approve", "lab"]);
    env.ferryctl_ok(&["grant", "--cluster", "lab", "--user", "erin"]);
    env.ferryctl_ok(&["grant", "--cluster", "edge", "--group", "sre"]);
    env.ferryctl_ok(&["revoke", "--cluster", "lab", "--user", "erin"]);
    let created: serde_json::Value = serde_json::from_str(&env.ferryctl_ok(&[
        "token",
        "create",
        "--user",
        "frank",
        "--group",
        "ops",
        "--cluster",
        "lab",
        "-o",
        "json",
    ]))
    .expect("token JSON");
    let token_id = created["id"].as_str().expect("id").to_owned();
    let token = created["token"].as_str().expect("token").to_owned();
    env.ferryctl_ok(&["token", "revoke", &token_id]);
    let kubeconfig = env.ferryctl_ok(&["kubeconfig", "lab", "--user", "gina", "--auth", "token"]);
    let issued =
        kubeconfig.lines().find_map(|l| l.trim().strip_prefix("token: ")).expect("a token").to_owned();
    env.ferryctl_ok(&["deny", "lab"]);
    env.ferryctl_ok(&["delete", "lab"]);

    // Who did what, in order, with the fields an operator needs.
    let expected: [(&str, &str, &str); 11] = [
        ("cluster.register", "lab", "bootstrap token expiring"),
        ("cluster.labels", "lab", "env=test"),
        ("cluster.approve", "lab", ""),
        ("grant.create", "lab", "user erin"),
        ("grant.create", "edge", "group sre"),
        ("grant.revoke", "lab", "user erin"),
        ("token.create", "lab", "for user frank groups [ops]"),
        ("token.revoke", "lab", "of user frank"),
        ("kubeconfig.issue", "lab", "user gina groups [] (token"),
        ("cluster.deny", "lab", ""),
        ("cluster.delete", "lab", "agent session(s) disconnected"),
    ];
    let all = audit_json(&env, &[]);
    let changes: Vec<&serde_json::Value> = all
        .iter()
        .filter(|e| e["kind"] == "management" && e["user"] == "ferry-admin")
        .filter(|e| e["cluster"] != "edge" || e["action"] != "cluster.register") // the test's setup
        .collect();
    assert_eq!(changes.len(), expected.len(), "{changes:#?}");
    for (e, (action, cluster, target)) in changes.iter().zip(expected) {
        assert_eq!((e["action"].as_str(), e["cluster"].as_str()), (Some(action), Some(cluster)), "{e}");
        assert!(e["target"].as_str().unwrap_or("").contains(target), "{action}: target {target:?} in {e}");
        assert_eq!(e["authMethod"], "cert", "{e}");
        assert_eq!(e["groups"], serde_json::json!(["ferry:admins"]), "{e}");
        assert_eq!(e["via"], "grpc", "{e}");
        assert_eq!(e["code"], 200, "{e}");
        assert_eq!(e["outcome"], "completed", "{e}");
        assert!(e["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{e}");
        assert!(e.get("requestId").is_none() && e.get("path").is_none(), "{e}");
    }
    assert!(changes.iter().any(|e| e["target"].as_str().is_some_and(|t| t.contains(&token_id))));
    // The agent's enrollment at the start, with the credential it used.
    let enrolled = all.iter().find(|e| e["action"] == "agent.enroll").expect("agent.enroll");
    assert_eq!(
        (enrolled["cluster"].as_str(), enrolled["authMethod"].as_str()),
        (Some("edge"), Some("bootstrap-token"))
    );
    assert!(
        all.iter().position(|e| e["action"] == "agent.enroll")
            < all.iter().position(|e| e["action"] == "cluster.register" && e["cluster"] == "lab")
    );

    // Never the secrets those changes made.
    let text = env.ferryctl_ok(&["audit", "-o", "json"])
        + &std::fs::read_to_string(env.path("hub/audit.log")).expect("audit.log");
    for (what, secret) in [("bootstrap token", &bootstrap), ("token", &token), ("kubeconfig token", &issued)]
    {
        assert!(!text.contains(secret.as_str()), "the {what} is in the audit log");
    }

    // The metrics count the same changes.
    let hub = scrape(&hub_metrics);
    assert_eq!(value(&hub, "ferry_hub_registrations_total", &[]), Some(2.0), "edge and lab");
    let decided = |d: &str| value(&hub, "ferry_hub_approval_decisions_total", &[("decision", d)]);
    assert_eq!((decided("approve"), decided("deny")), (Some(1.0), Some(1.0)));
    assert_eq!(
        value(&hub, "ferry_hub_cluster_phase", &[("cluster", "lab"), ("phase", "denied")]),
        None,
        "deleted"
    );
    assert_eq!(value(&hub, "ferry_hub_clusters", &[("phase", "denied")]), Some(0.0));

    // The follower saw lab's changes as they happened, and nothing else.
    follower.wait_nth_line("\"kind\"", expected.len() - 1, READY_TIMEOUT);
    let followed: Vec<serde_json::Value> =
        follower.lines_so_far().iter().map(|l| serde_json::from_str(l).expect("JSON")).collect();
    follower.kill();
    let actions: Vec<&str> = followed.iter().filter_map(|e| e["action"].as_str()).collect();
    let lab: Vec<&str> = expected.iter().filter(|(_, c, _)| *c == "lab").map(|(a, _, _)| *a).collect();
    assert_eq!(actions, lab, "{followed:#?}");

    // Filters.
    let by_cluster = audit_json(&env, &["--cluster", "edge"]);
    assert!(!by_cluster.is_empty() && by_cluster.iter().all(|e| e["cluster"] == "edge"), "{by_cluster:#?}");
    assert!(by_cluster.iter().any(|e| e["action"] == "grant.create"));
    let by_user = audit_json(&env, &["--user", "ferry-admin"]);
    assert!(by_user.iter().all(|e| e["user"] == "ferry-admin"));
    assert!(
        by_user.len() >= expected.len() && by_user.len() < all.len(),
        "the agent's enrollment is not the admin's"
    );
    assert!(audit_json(&env, &["--user", "nobody"]).is_empty());
    assert_eq!(audit_json(&env, &["--since", "1h"]).len(), all.len());
    assert!(audit_json(&env, &["--since", "0s"]).is_empty(), "nothing happened since now");
    let last = audit_json(&env, &["--limit", "2"]);
    assert_eq!(last.as_slice(), &all[all.len() - 2..], "--limit keeps the newest");
    let table = env.ferryctl_ok(&["audit", "--cluster", "lab"]);
    let mut lines = table.lines();
    assert!(lines.next().is_some_and(|h| h.starts_with("TIME")), "{table}");
    assert_eq!(lines.count(), lab.len(), "{table}");

    // Only admins read it.
    let mallory = env.path("mallory.kubeconfig");
    std::fs::write(&mallory, env.ferryctl_ok(&["token", "create", "--user", "mallory", "-o", "kubeconfig"]))
        .expect("write");
    let out = Command::new(bin("ferryctl"))
        .arg("--kubeconfig")
        .arg(&mallory)
        .arg("audit")
        .output()
        .expect("ferryctl audit");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: ") && err.contains("admin"), "{err}");
}

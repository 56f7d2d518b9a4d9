//! OTLP span export end to end (issue 10): the real `ferry-hub`, built with
//! the `otlp` feature and pointed at an in-process collector, exports the
//! span of one request, with `service.name` and the request id the audit
//! log has, and flushes it when it stops. Needs `kubectl` on PATH.
#![cfg(feature = "otlp")]

use std::process::Stdio;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;

/// How long any step may take before the test fails.
const TIMEOUT: Duration = Duration::from_secs(60);
/// Export calls the collector holds until the test reads them.
const EXPORTS: usize = 64;

/// A collector that hands every export call to the test.
struct Collector(mpsc::Sender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.send(request.into_inner()).await.map_err(|_| tonic::Status::unavailable("test is over"))?;
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// The string value of attribute `key`.
fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.as_str()),
        _ => None,
    })
}

#[tokio::test]
async fn hub_exports_request_span_with_request_id() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind collector");
    let collector = listener.local_addr().expect("collector address");
    let (tx, mut exports) = mpsc::channel(EXPORTS);
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(tx)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let mut hub = Command::new(env!("CARGO_BIN_EXE_ferry-hub"));
    hub.args(["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "off", "--data-dir"])
        .arg(dir.path())
        .arg("--otlp-endpoint")
        .arg(format!("http://{collector}"))
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    if std::env::var_os("FERRY_TEST_QUIET").is_some() {
        hub.stderr(Stdio::null());
    }
    let mut hub = hub.spawn().expect("spawn ferry-hub");
    let mut lines = BufReader::new(hub.stdout.take().expect("piped stdout")).lines();
    let ready = tokio::time::timeout(TIMEOUT, async {
        while let Some(line) = lines.next_line().await.expect("hub stdout") {
            if line.contains("ferry-hub ready") {
                return line;
            }
        }
        panic!("ferry-hub exited before its ready line");
    })
    .await
    .expect("ferry-hub ready in time");
    let kubeconfig = ready
        .split("admin kubeconfig ")
        .nth(1)
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("no admin kubeconfig in {ready:?}"));

    // A cluster the hub does not know: refused, but still a request span.
    let out = tokio::time::timeout(
        TIMEOUT,
        Command::new("kubectl")
            .args(["--kubeconfig", kubeconfig, "get", "--raw", "/clusters/nosuch/api"])
            .output(),
    )
    .await
    .expect("kubectl in time")
    .expect("run kubectl");
    assert!(!out.status.success(), "kubectl: {}", String::from_utf8_lossy(&out.stdout));

    // The default batch delay is 5 s: what arrives now, the hub flushed on
    // the way out.
    let pid = hub.id().expect("hub pid").to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().await.expect("kill").success());
    let status = tokio::time::timeout(TIMEOUT, hub.wait()).await.expect("hub exits").expect("wait");
    assert!(status.success(), "ferry-hub: {status}");

    let audit = std::fs::read_to_string(dir.path().join("audit.log")).expect("audit log");
    let request_id = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["cluster"] == "nosuch")
        .and_then(|e| e["requestId"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("no audit event for the request in {audit:?}"));

    let span = tokio::time::timeout(TIMEOUT, async {
        loop {
            let export = exports.recv().await.expect("collector running");
            for resource_spans in export.resource_spans {
                let resource = resource_spans.resource.unwrap_or_default();
                assert_eq!(attr(&resource.attributes, "service.name"), Some("ferry-hub"));
                for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                    if span.name == "request" {
                        return span;
                    }
                }
            }
        }
    })
    .await
    .expect("the request span exported in time");
    assert_eq!(attr(&span.attributes, "request_id"), Some(request_id.as_str()));
    assert_eq!(attr(&span.attributes, "cluster"), Some("nosuch"));
    server.abort();
}

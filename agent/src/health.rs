//! The agent's health endpoint (`--health-listen`), plain HTTP for
//! Kubernetes probes: `/healthz` answers while the process runs, `/readyz`
//! only while a hub session is up and the last status probe found the
//! apiserver reachable with its `/readyz` passing (what the agent manifest's
//! readiness probe asks). The same small server serves `/metrics` on
//! `--metrics-listen`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::agent::AgentState;
use crate::error::AgentError;

/// How long a probe connection may take to send its request.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Probe connections served at once; more wait in the accept queue.
const MAX_CONNECTIONS: usize = 16;

/// The running endpoint; [`HealthServer::stop`] ends it.
pub(crate) struct HealthServer {
    /// The bound address.
    pub(crate) addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl HealthServer {
    /// Stops accepting and waits for the server task.
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// What the last status probe found of the apiserver.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) enum Apiserver {
    /// Not probed yet.
    #[default]
    Unknown,
    /// Reachable, and its `/readyz` passes.
    Ready,
    /// Unreachable or not ready, and why.
    Failing(String),
}

/// Binds `addr` and serves the health paths until `stop`.
pub(crate) async fn serve(
    addr: SocketAddr,
    state: watch::Receiver<AgentState>,
    apiserver: watch::Receiver<Apiserver>,
    stop: CancellationToken,
) -> Result<HealthServer, AgentError> {
    listen(addr, stop, move |req| {
        let (code, text) = answer(req, &state.borrow(), &apiserver.borrow());
        (code, "text/plain; charset=utf-8", text)
    })
    .await
    .map_err(|source| AgentError::Health { addr, source })
}

/// An answer: status, content type, body.
pub(crate) type Answer = (StatusCode, &'static str, String);

/// Binds `addr` and answers every request with `handler` until `stop`.
pub(crate) async fn listen<F>(
    addr: SocketAddr,
    stop: CancellationToken,
    handler: F,
) -> std::io::Result<HealthServer>
where
    F: Fn(&Request<Incoming>) -> Answer + Clone + Send + Sync + 'static,
{
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let token = stop.clone();
    let task = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            let accepted = tokio::select! {
                () = token.cancelled() => break,
                a = listener.accept(), if connections.len() < MAX_CONNECTIONS => a,
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            };
            let Ok((tcp, _)) = accepted else { continue };
            let handler = handler.clone();
            connections.spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let (code, content_type, text) = handler(&req);
                    let mut resp = Response::new(Full::new(Bytes::from(text)));
                    *resp.status_mut() = code;
                    resp.headers_mut()
                        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
                    async move { Ok::<_, Infallible>(resp) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(tcp), svc);
                if let Err(e) = conn.await {
                    debug!(error = %e, "health connection failed");
                }
            });
        }
        connections.shutdown().await;
    });
    Ok(HealthServer { addr: bound, stop, task })
}

fn answer(req: &Request<Incoming>, state: &AgentState, apiserver: &Apiserver) -> (StatusCode, String) {
    let (status, text) = match req.uri().path() {
        "/healthz" | "/livez" => match state {
            AgentState::Stopped => (StatusCode::SERVICE_UNAVAILABLE, "stopped".to_owned()),
            _ => (StatusCode::OK, "ok".to_owned()),
        },
        "/readyz" => match (state, apiserver) {
            (AgentState::Connected { cluster, .. }, Apiserver::Ready) => {
                (StatusCode::OK, format!("ok: connected for cluster {cluster}"))
            }
            (AgentState::Connected { .. }, Apiserver::Failing(why)) => {
                (StatusCode::SERVICE_UNAVAILABLE, format!("the apiserver is not ready: {why}"))
            }
            (AgentState::Connected { .. }, Apiserver::Unknown) => {
                (StatusCode::SERVICE_UNAVAILABLE, "the apiserver was not probed yet".to_owned())
            }
            (other, _) => {
                (StatusCode::SERVICE_UNAVAILABLE, format!("not connected to the hub: {}", describe(other)))
            }
        },
        _ => (StatusCode::NOT_FOUND, "not found".to_owned()),
    };
    (status, format!("{text}\n"))
}

fn describe(state: &AgentState) -> String {
    match state {
        AgentState::Starting => "starting".into(),
        AgentState::Enrolling => "getting a credential".into(),
        AgentState::Connecting => "connecting".into(),
        AgentState::Connected { .. } => "connected".into(),
        AgentState::Disconnected => "reconnecting".into(),
        AgentState::Refused { reason } => format!("refused by the hub: {reason}"),
        AgentState::Stopped => "stopped".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let mut text = String::new();
        tcp.read_to_string(&mut text).await.expect("read");
        let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        (code, text)
    }

    #[tokio::test]
    async fn ready_only_while_connected_and_the_apiserver_is_ready() {
        let (tx, rx) = watch::channel(AgentState::Connecting);
        let (apiserver, apiserver_rx) = watch::channel(Apiserver::Ready);
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let server = serve(any, rx, apiserver_rx, CancellationToken::new()).await.expect("serve");
        let addr = server.addr;
        assert_eq!(get(addr, "/healthz").await.0, 200);
        let (code, text) = get(addr, "/readyz").await;
        assert_eq!(code, 503);
        assert!(text.contains("connecting"), "{text}");
        tx.send_replace(AgentState::Connected { cluster: "edge".into(), session_id: "s".into() });
        assert_eq!(get(addr, "/readyz").await.0, 200);
        apiserver.send_replace(Apiserver::Failing("connection refused".into()));
        let (code, text) = get(addr, "/readyz").await;
        assert_eq!(code, 503);
        assert!(text.contains("connection refused"), "{text}");
        assert_eq!(get(addr, "/healthz").await.0, 200, "alive all the same");
        apiserver.send_replace(Apiserver::Ready);
        assert_eq!(get(addr, "/readyz").await.0, 200);
        tx.send_replace(AgentState::Refused { reason: "cluster denied".into() });
        let (code, text) = get(addr, "/readyz").await;
        assert_eq!(code, 503);
        assert!(text.contains("cluster denied"), "{text}");
        assert_eq!(get(addr, "/nope").await.0, 404);
        server.stop().await;
    }
}

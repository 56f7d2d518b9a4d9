//! The agent's health endpoint (`--health-listen`), plain HTTP for
//! Kubernetes probes: `/healthz` answers while the process runs, `/readyz`
//! only while a hub session is up.

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

/// Binds `addr` and serves until `stop`.
pub(crate) async fn serve(
    addr: SocketAddr,
    state: watch::Receiver<AgentState>,
    stop: CancellationToken,
) -> Result<HealthServer, AgentError> {
    let listener = TcpListener::bind(addr).await.map_err(|source| AgentError::Health { addr, source })?;
    let bound = listener.local_addr().map_err(|source| AgentError::Health { addr, source })?;
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
            let state = state.clone();
            connections.spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(answer(&req, &state.borrow())) }
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

fn answer(req: &Request<Incoming>, state: &AgentState) -> Response<Full<Bytes>> {
    let (status, text) = match req.uri().path() {
        "/healthz" | "/livez" => match state {
            AgentState::Stopped => (StatusCode::SERVICE_UNAVAILABLE, "stopped".to_owned()),
            _ => (StatusCode::OK, "ok".to_owned()),
        },
        "/readyz" => match state {
            AgentState::Connected { cluster, .. } => {
                (StatusCode::OK, format!("ok: connected for cluster {cluster}"))
            }
            other => {
                (StatusCode::SERVICE_UNAVAILABLE, format!("not connected to the hub: {}", describe(other)))
            }
        },
        _ => (StatusCode::NOT_FOUND, "not found".to_owned()),
    };
    let mut resp = Response::new(Full::new(Bytes::from(format!("{text}\n"))));
    *resp.status_mut() = status;
    resp
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
    async fn ready_only_while_connected() {
        let (tx, rx) = watch::channel(AgentState::Connecting);
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let server = serve(any, rx, CancellationToken::new()).await.expect("serve");
        let addr = server.addr;
        assert_eq!(get(addr, "/healthz").await.0, 200);
        let (code, text) = get(addr, "/readyz").await;
        assert_eq!(code, 503);
        assert!(text.contains("connecting"), "{text}");
        tx.send_replace(AgentState::Connected { cluster: "edge".into(), session_id: "s".into() });
        assert_eq!(get(addr, "/readyz").await.0, 200);
        tx.send_replace(AgentState::Refused { reason: "cluster denied".into() });
        let (code, text) = get(addr, "/readyz").await;
        assert_eq!(code, 503);
        assert!(text.contains("cluster denied"), "{text}");
        assert_eq!(get(addr, "/nope").await.0, 404);
        server.stop().await;
    }
}

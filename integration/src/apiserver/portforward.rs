//! `pods/portforward` (`portforward.k8s.io`), as the kubelet serves it: for
//! each forwarded connection the client opens an error stream and a data
//! stream with the same `port` and `requestid` headers; the data stream is
//! joined to a TCP connection to the pod's target.
//!
//! The target is the pod annotation `test-apiserver/forward-to:
//! HOST:PORT` (tests point it at their own TCP server), or else a built-in
//! echo service. Half-close is kept: when the client finishes its data
//! stream, the TCP write half is shut down while reading goes on; when the
//! target closes, the data and error streams are finished.

use std::collections::HashMap;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use super::spdy::{SpdyConn, SpdyStream};

/// The pod annotation naming where forwarded connections go.
pub const FORWARD_TO_ANNOTATION: &str = "test-apiserver/forward-to";
/// Bytes read from the target per DATA frame.
const READ_CHUNK: usize = 32 * 1024;

/// Where a pod's forwarded ports lead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// A TCP address (`HOST:PORT`), for every port.
    Tcp(String),
    /// The built-in echo service.
    Echo,
}

impl Target {
    /// The target for a pod object.
    pub fn of_pod(pod: &serde_json::Value) -> Self {
        pod.pointer("/metadata/annotations")
            .and_then(|a| a.get(FORWARD_TO_ANNOTATION))
            .and_then(serde_json::Value::as_str)
            .map_or(Self::Echo, |addr| Self::Tcp(addr.to_string()))
    }
}

#[derive(Default)]
struct Pair {
    error: Option<SpdyStream>,
    data: Option<SpdyStream>,
}

/// Serves forwarded connections until the client closes the connection.
pub(crate) async fn serve(conn: &mut SpdyConn, pod: &str, target: &Target) {
    let mut pending: HashMap<String, Pair> = HashMap::new();
    // Dropped with this future: ends every forward still running.
    let mut forwards = JoinSet::new();
    loop {
        tokio::select! {
            stream = conn.accept() => {
                let Some(stream) = stream else { break };
                let kind = stream.header("streamtype").unwrap_or_default().to_string();
                // Old clients send no request id: the kubelet pairs a data
                // stream with the error stream opened just before it.
                let key = match stream.header("requestid") {
                    Some(id) => id.to_string(),
                    None if kind == "data" => stream.id().0.saturating_sub(2).to_string(),
                    None => stream.id().0.to_string(),
                };
                let pair = pending.entry(key.clone()).or_default();
                let slot = match kind.as_str() {
                    "error" => &mut pair.error,
                    "data" => &mut pair.data,
                    _ => {
                        let mut s = stream;
                        s.send.reset().await;
                        continue;
                    }
                };
                if slot.is_some() {
                    let mut s = stream;
                    s.send.reset().await;
                    continue;
                }
                *slot = Some(stream);
                if pending.get(&key).is_some_and(|p| p.error.is_some() && p.data.is_some())
                    && let Some(Pair { error: Some(error), data: Some(data) }) = pending.remove(&key)
                {
                    forwards.spawn(forward(error, data, pod.to_string(), target.clone()));
                }
            }
            Some(_) = forwards.join_next(), if !forwards.is_empty() => {}
        }
    }
}

async fn forward(error: SpdyStream, data: SpdyStream, pod: String, target: Target) {
    let port = data.header("port").unwrap_or_default().to_string();
    let (_, mut err_send) = error.split();
    let (mut up, mut down) = data.split();
    if port.parse::<u16>().map_or(true, |p| p == 0) {
        let _ = err_send.send(Bytes::from(format!("invalid port: {port:?}"))).await;
        let _ = down.finish().await;
        let _ = err_send.finish().await;
        return;
    }
    match target {
        Target::Echo => {
            while let Some(chunk) = up.recv().await {
                if down.send(chunk).await.is_err() {
                    break;
                }
            }
            let _ = down.finish().await;
            let _ = err_send.finish().await;
        }
        Target::Tcp(addr) => {
            let tcp = match TcpStream::connect(&addr).await {
                Ok(t) => t,
                Err(e) => {
                    let msg = format!(
                        "error forwarding port {port} to pod {pod}, uid : failed to connect to {addr}: {e}"
                    );
                    let _ = err_send.send(Bytes::from(msg)).await;
                    let _ = down.finish().await;
                    let _ = err_send.finish().await;
                    return;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (mut rd, mut wr) = tcp.into_split();
            let client_to_target = async {
                while let Some(chunk) = up.recv().await {
                    if wr.write_all(&chunk).await.is_err() {
                        break;
                    }
                }
                // Half-close: the target sees EOF but may go on answering.
                let _ = wr.shutdown().await;
            };
            let target_to_client = async {
                let mut buf = vec![0u8; READ_CHUNK];
                loop {
                    match rd.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if down.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                // The target is done: so is this forwarded connection.
                let _ = down.finish().await;
                let _ = err_send.finish().await;
            };
            tokio::join!(client_to_target, target_to_client);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_annotation_picks_the_target() {
        let pod = json!({"metadata": {"annotations": {FORWARD_TO_ANNOTATION: "127.0.0.1:9"}}});
        assert_eq!(Target::of_pod(&pod), Target::Tcp("127.0.0.1:9".into()));
        assert_eq!(Target::of_pod(&json!({"metadata": {}})), Target::Echo);
    }
}

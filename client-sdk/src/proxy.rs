//! HTTP requests to a child cluster over the hub's gRPC `Proxy` call, for
//! programs that cannot use the HTTPS gateway (or want one connection for
//! everything): [`Hub::proxy`] for ordinary requests with a streamed
//! response, [`Hub::proxy_upgrade`] for upgraded connections (exec,
//! attach, port-forward).
//!
//! Most programs want [`Hub::kube_client`] instead, which speaks the
//! gateway and gives typed APIs.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use ferry::proto::v1 as pb;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use pb::proxy_client::ProxyClient;
use pb::{proxy_request, proxy_response};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, DuplexStream, ReadBuf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use crate::error::ManagementError;
use crate::management::Hub;

/// Request-body chunk size on the wire (the hub re-chunks for the tunnel).
pub const PROXY_CHUNK: usize = 64 * 1024;
/// Messages buffered towards the hub on an upgraded connection.
pub const UPGRADE_BUFFER: usize = 16;
/// Bytes buffered between an [`Upgraded`] connection and its pump, each way.
pub const UPGRADE_PIPE: usize = 64 * 1024;

/// A response to a proxied request: its head, and its body as it arrives.
#[derive(Debug)]
pub struct ProxiedResponse {
    /// The apiserver's status (errors included: they are answers, not
    /// failures of the call).
    pub status: StatusCode,
    /// The response headers.
    pub headers: HeaderMap,
    body: Streaming<pb::ProxyResponse>,
    hub: String,
}

impl ProxiedResponse {
    /// The next body chunk as the apiserver wrote it; `None` at the end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, ManagementError> {
        match self.body.message().await {
            Ok(Some(pb::ProxyResponse { msg: Some(proxy_response::Msg::Body(b)) })) => Ok(Some(b)),
            Ok(Some(pb::ProxyResponse { msg: Some(proxy_response::Msg::End(_)) })) | Ok(None) => Ok(None),
            Ok(Some(_)) => Err(ManagementError::InvalidResponse("a second response head".into())),
            Err(status) => Err(ManagementError::from_status(&status, &self.hub)),
        }
    }

    /// The whole body (for responses known to be small).
    pub async fn bytes(mut self) -> Result<Bytes, ManagementError> {
        let mut all = Vec::new();
        while let Some(chunk) = self.chunk().await? {
            all.extend_from_slice(&chunk);
        }
        Ok(all.into())
    }
}

/// An upgraded connection through the hub (after a 101): raw bytes both
/// ways, with half-closes (`shutdown` ends the write side). Dropping it
/// closes the connection.
#[derive(Debug)]
pub struct Upgraded {
    io: DuplexStream,
    pump: JoinHandle<()>,
}

impl Drop for Upgraded {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

impl AsyncRead for Upgraded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The answer to an upgrade request: the response head, and the
/// connection when the apiserver switched protocols (101).
#[derive(Debug)]
pub struct ProxiedUpgrade {
    /// The apiserver's status.
    pub status: StatusCode,
    /// The response headers.
    pub headers: HeaderMap,
    /// The upgraded connection (`None` unless `status` is 101; then read
    /// the refusal with [`ProxiedUpgrade::refusal`]).
    pub connection: Option<Upgraded>,
    refusal: Option<ProxiedResponse>,
}

impl ProxiedUpgrade {
    /// The apiserver's answer when it did not switch protocols.
    pub fn refusal(self) -> Option<ProxiedResponse> {
        self.refusal
    }
}

fn head(cluster: &str, request: &http::Request<impl Sized>) -> pb::ProxyRequest {
    let headers = request
        .headers()
        .iter()
        .map(|(n, v)| pb::Header { name: n.as_str().to_owned(), value: Bytes::copy_from_slice(v.as_bytes()) })
        .collect();
    let path = request.uri().path_and_query().map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned());
    pb::ProxyRequest {
        msg: Some(proxy_request::Msg::Head(pb::ProxyRequestHead {
            cluster: cluster.to_owned(),
            method: request.method().as_str().to_owned(),
            path,
            headers,
        })),
    }
}

fn decode_head(head: pb::ResponseHead) -> Result<(StatusCode, HeaderMap), ManagementError> {
    let bad = |what: String| ManagementError::InvalidResponse(format!("the response head: {what}"));
    let status = u16::try_from(head.status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or_else(|| bad(format!("status {}", head.status)))?;
    let mut headers = HeaderMap::new();
    for h in head.headers {
        let name =
            HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| bad(format!("header {:?}", h.name)))?;
        let value = HeaderValue::from_bytes(&h.value).map_err(|_| bad(format!("header {:?}", h.name)))?;
        headers.append(name, value);
    }
    Ok((status, headers))
}

impl Hub {
    fn proxy_client(&self) -> ProxyClient<crate::management::Transport> {
        ProxyClient::new(self.transport())
            .max_decoding_message_size(ferry::limits::MAX_FRAME_SIZE)
            .max_encoding_message_size(ferry::limits::MAX_FRAME_SIZE)
    }

    async fn open_proxy(
        &self,
        requests: mpsc::Receiver<pb::ProxyRequest>,
    ) -> Result<(StatusCode, HeaderMap, Streaming<pb::ProxyResponse>), ManagementError> {
        let response = match self.proxy_client().request(ReceiverStream::new(requests)).await {
            Ok(r) => r,
            Err(status) => return Err(self.error(&status).await),
        };
        let mut body = response.into_inner();
        match body.message().await {
            Ok(Some(pb::ProxyResponse { msg: Some(proxy_response::Msg::Head(h)) })) => {
                let (status, headers) = decode_head(h)?;
                Ok((status, headers, body))
            }
            Ok(_) => Err(ManagementError::InvalidResponse("no response head".into())),
            Err(status) => Err(self.error(&status).await),
        }
    }

    /// Sends one HTTP request to cluster `cluster`'s apiserver over the
    /// hub's gRPC `Proxy` call; `request`'s URI is the path and query on
    /// the apiserver (`/api/v1/namespaces`). The response body streams
    /// (watches, `follow` logs). The hub's refusals are errors; the
    /// apiserver's error answers are responses.
    pub async fn proxy(
        &self,
        cluster: &str,
        request: http::Request<Bytes>,
    ) -> Result<ProxiedResponse, ManagementError> {
        let body = request.body().clone();
        let chunks = body.len().div_ceil(PROXY_CHUNK);
        let (tx, rx) = mpsc::channel(chunks + 2);
        let mut messages = vec![head(cluster, &request)];
        messages.extend((0..chunks).map(|i| pb::ProxyRequest {
            msg: Some(proxy_request::Msg::Body(
                body.slice(i * PROXY_CHUNK..((i + 1) * PROXY_CHUNK).min(body.len())),
            )),
        }));
        messages.push(pb::ProxyRequest { msg: Some(proxy_request::Msg::End(pb::ProxyEnd {})) });
        for m in messages {
            // The channel has room for every message.
            let _ = tx.try_send(m);
        }
        drop(tx);
        let (status, headers, body) = self.open_proxy(rx).await?;
        Ok(ProxiedResponse { status, headers, body, hub: self.url().to_owned() })
    }

    /// Sends an upgrade request (with `Connection: Upgrade` and `Upgrade`
    /// headers: exec, attach, port-forward) to cluster `cluster` over the
    /// hub's gRPC `Proxy` call. When the apiserver switches protocols the
    /// answer carries the connection; speak the upgraded protocol (SPDY,
    /// WebSocket) over it.
    pub async fn proxy_upgrade(
        &self,
        cluster: &str,
        request: http::Request<()>,
    ) -> Result<ProxiedUpgrade, ManagementError> {
        let (tx, rx) = mpsc::channel(UPGRADE_BUFFER);
        // A fresh channel has room for the head.
        let _ = tx.try_send(head(cluster, &request));
        let (status, headers, body) = self.open_proxy(rx).await?;
        let hub = self.url().to_owned();
        if status != StatusCode::SWITCHING_PROTOCOLS {
            let refusal = ProxiedResponse { status, headers: headers.clone(), body, hub };
            return Ok(ProxiedUpgrade { status, headers, connection: None, refusal: Some(refusal) });
        }
        let (ours, theirs) = tokio::io::duplex(UPGRADE_PIPE);
        let pump = tokio::spawn(pump_upgraded(ours, tx, body));
        Ok(ProxiedUpgrade { status, headers, connection: Some(Upgraded { io: theirs, pump }), refusal: None })
    }
}

/// Copies bytes between the caller's end of an upgraded connection and the
/// gRPC stream, half-closes included.
async fn pump_upgraded(
    io: DuplexStream,
    tx: mpsc::Sender<pb::ProxyRequest>,
    mut body: Streaming<pb::ProxyResponse>,
) {
    let (mut read, mut write) = tokio::io::split(io);
    let up = async {
        let mut buf = vec![0u8; PROXY_CHUNK];
        loop {
            let n = match read.read(&mut buf).await {
                Ok(0) | Err(_) => 0,
                Ok(n) => n,
            };
            let msg = if n == 0 {
                proxy_request::Msg::End(pb::ProxyEnd {})
            } else {
                proxy_request::Msg::Body(Bytes::copy_from_slice(&buf[..n]))
            };
            if tx.send(pb::ProxyRequest { msg: Some(msg) }).await.is_err() || n == 0 {
                return;
            }
        }
    };
    let down = async {
        while let Ok(Some(pb::ProxyResponse { msg: Some(proxy_response::Msg::Body(b)) })) =
            body.message().await
        {
            if write.write_all(&b).await.is_err() {
                break;
            }
        }
        let _ = write.shutdown().await;
    };
    tokio::join!(up, down);
}

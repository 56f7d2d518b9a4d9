//! A small etcd v3 client over the generated gRPC API: the calls the store
//! and the replica registry make, over one lazily connected HTTP/2 channel
//! per endpoint.
//!
//! Reads go to the current endpoint and move on to the next when it is
//! unavailable; writes are tried once (a write whose answer was lost may
//! have been applied, and the callers' compare-and-swap loops re-read
//! before trying again), and a failed one moves the current endpoint on so
//! the next call tries another member.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ferry::secret::Secret;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status, Streaming};

use super::proto::etcdserverpb::kv_client::KvClient;
use super::proto::etcdserverpb::lease_client::LeaseClient;
use super::proto::etcdserverpb::watch_client::WatchClient;
use super::proto::etcdserverpb::{
    CompactionRequest, DeleteRangeRequest, DeleteRangeResponse, LeaseGrantRequest, LeaseKeepAliveRequest,
    LeaseKeepAliveResponse, LeaseRevokeRequest, PutRequest, PutResponse, RangeRequest, RangeResponse,
    TxnRequest, TxnResponse, WatchCreateRequest, WatchRequest, WatchResponse, watch_request,
};

/// How long one unary call may take (a quorum write on a healthy cluster
/// takes milliseconds; etcd's own election timeout is a second).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long connecting to a member may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 PING period, so a member that died silently is noticed.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Largest etcd answer accepted (a page of records, a watch batch): etcd's
/// own request limit is 1.5 MiB per write, and ranges are paged.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
/// Requests queued on one watch or keep-alive stream.
const STREAM_REQUESTS: usize = 4;

/// Where etcd is and how to reach it.
#[derive(Clone, Debug)]
pub struct EtcdConfig {
    /// Members, `host:port`.
    pub endpoints: Vec<String>,
    /// TLS (`None`: plain HTTP/2).
    pub tls: Option<EtcdTls>,
    /// Prefix of every key the hub writes (several hubs or other programs
    /// may share one etcd under different prefixes).
    pub prefix: String,
}

/// TLS towards etcd.
#[derive(Clone)]
pub struct EtcdTls {
    /// CA bundle trusted for the members' certificates, PEM.
    pub ca_pem: Vec<u8>,
    /// Client certificate and key, PEM, when etcd requires one.
    pub client: Option<(String, Secret)>,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls").field("client_cert", &self.client.is_some()).finish_non_exhaustive()
    }
}

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "/ferry";

/// etcd failures.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// The configuration is unusable.
    #[error("etcd configuration: {0}")]
    Config(String),
    /// A call failed.
    #[error("etcd {call}: {code:?}: {message}")]
    Call {
        /// Which call.
        call: &'static str,
        /// gRPC code.
        code: Code,
        /// etcd's message.
        message: String,
    },
    /// A watch or history read asked for a revision etcd compacted away.
    #[error("etcd revision {requested} was compacted")]
    Compacted {
        /// The revision asked for.
        requested: i64,
    },
    /// A watch or keep-alive stream ended.
    #[error("etcd {0} stream ended")]
    StreamEnded(&'static str),
}

impl EtcdError {
    fn call(call: &'static str, status: Status) -> Self {
        EtcdError::Call { call, code: status.code(), message: status.message().to_owned() }
    }

    /// Whether trying another member (or again later) may help.
    fn retryable(&self) -> bool {
        matches!(
            self,
            EtcdError::Call { code: Code::Unavailable | Code::DeadlineExceeded | Code::Unknown, .. }
        )
    }
}

impl EtcdConfig {
    /// Parses `etcd://host:port[,host:port...]` (a trailing `/` is
    /// allowed; the key prefix is separate).
    pub fn from_url(url: &str, prefix: &str, tls: Option<EtcdTls>) -> Result<Self, EtcdError> {
        let bad = |why: &str| EtcdError::Config(format!("store URL {url:?}: {why}"));
        let rest = url.strip_prefix("etcd://").ok_or_else(|| bad("must start with etcd://"))?;
        let rest = rest.trim_end_matches('/');
        let endpoints: Vec<String> = rest.split(',').map(|e| e.trim().to_owned()).collect();
        for e in &endpoints {
            let ok = e
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !ok {
                return Err(bad("each member must be host:port"));
            }
        }
        let prefix = prefix.trim_end_matches('/');
        if !prefix.starts_with('/') || prefix.len() < 2 {
            return Err(EtcdError::Config(format!(
                "key prefix {prefix:?} must start with / and name something"
            )));
        }
        Ok(EtcdConfig { endpoints, tls, prefix: prefix.to_owned() })
    }
}

/// A client for one etcd cluster; cheap to clone.
#[derive(Clone)]
pub struct EtcdClient {
    inner: Arc<Inner>,
}

struct Inner {
    channels: Vec<(String, Channel)>,
    current: AtomicUsize,
}

impl EtcdClient {
    /// A client for `config`'s members; connects on first use.
    pub fn new(config: &EtcdConfig) -> Result<Self, EtcdError> {
        if config.endpoints.is_empty() {
            return Err(EtcdError::Config("no etcd member given".into()));
        }
        let mut channels = Vec::new();
        for member in &config.endpoints {
            let scheme = if config.tls.is_some() { "https" } else { "http" };
            let mut endpoint = Endpoint::from_shared(format!("{scheme}://{member}"))
                .map_err(|e| EtcdError::Config(format!("member {member:?}: {e}")))?
                .connect_timeout(CONNECT_TIMEOUT)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                .keep_alive_timeout(KEEPALIVE_INTERVAL * 2)
                .keep_alive_while_idle(true);
            if let Some(tls) = &config.tls {
                let host = member.rsplit_once(':').map_or(member.as_str(), |(h, _)| h);
                let mut t = ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&tls.ca_pem))
                    .domain_name(host.trim_start_matches('[').trim_end_matches(']'));
                if let Some((cert, key)) = &tls.client {
                    t = t.identity(Identity::from_pem(cert, key.expose()));
                }
                endpoint = endpoint
                    .tls_config(t)
                    .map_err(|e| EtcdError::Config(format!("TLS for {member:?}: {e}")))?;
            }
            channels.push((member.clone(), endpoint.connect_lazy()));
        }
        Ok(EtcdClient { inner: Arc::new(Inner { channels, current: AtomicUsize::new(0) }) })
    }

    fn pick(&self) -> (usize, Channel) {
        let i = self.inner.current.load(Ordering::Relaxed) % self.inner.channels.len();
        (i, self.inner.channels[i].1.clone())
    }

    /// Moves on from member `i` (unless another call did already).
    fn failed(&self, i: usize) {
        let next = (i + 1) % self.inner.channels.len();
        let _ = self.inner.current.compare_exchange(i, next, Ordering::Relaxed, Ordering::Relaxed);
    }

    fn kv(channel: Channel) -> KvClient<Channel> {
        KvClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES)
    }

    fn request<T>(message: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        r.set_timeout(REQUEST_TIMEOUT);
        r
    }

    /// A read, tried on each member in turn while they are unavailable.
    pub async fn range(&self, req: RangeRequest) -> Result<RangeResponse, EtcdError> {
        let mut last = None;
        for _ in 0..self.inner.channels.len() {
            let (i, channel) = self.pick();
            match Self::kv(channel).range(Self::request(req.clone())).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(status) => {
                    let e = EtcdError::call("range", status);
                    if !e.retryable() {
                        return Err(e);
                    }
                    self.failed(i);
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(EtcdError::StreamEnded("range")))
    }

    async fn write<T, F, Fut>(&self, call: &'static str, f: F) -> Result<T, EtcdError>
    where
        F: FnOnce(KvClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let (i, channel) = self.pick();
        match f(Self::kv(channel)).await {
            Ok(r) => Ok(r.into_inner()),
            Err(status) => {
                let e = EtcdError::call(call, status);
                if e.retryable() {
                    self.failed(i);
                }
                Err(e)
            }
        }
    }

    /// One put.
    pub async fn put(&self, req: PutRequest) -> Result<PutResponse, EtcdError> {
        self.write("put", |mut kv| async move { kv.put(Self::request(req)).await }).await
    }

    /// One delete (of a key or a range).
    pub async fn delete(&self, req: DeleteRangeRequest) -> Result<DeleteRangeResponse, EtcdError> {
        self.write("delete", |mut kv| async move { kv.delete_range(Self::request(req)).await }).await
    }

    /// One transaction.
    pub async fn txn(&self, req: TxnRequest) -> Result<TxnResponse, EtcdError> {
        self.write("txn", |mut kv| async move { kv.txn(Self::request(req)).await }).await
    }

    /// Discards history before `revision` (tests, operators' tooling).
    pub async fn compact(&self, revision: i64) -> Result<(), EtcdError> {
        let req = CompactionRequest { revision, physical: true };
        self.write("compact", |mut kv| async move { kv.compact(Self::request(req)).await }).await.map(|_| ())
    }

    /// Opens a watch and waits for etcd to confirm it.
    pub async fn watch(&self, create: WatchCreateRequest) -> Result<Watcher, EtcdError> {
        let (i, channel) = self.pick();
        let (tx, rx) = mpsc::channel(STREAM_REQUESTS);
        let first = WatchRequest { request_union: Some(watch_request::RequestUnion::CreateRequest(create)) };
        // A fresh channel always has room.
        let _ = tx.try_send(first);
        let mut client = WatchClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES);
        let opened = tokio::time::timeout(REQUEST_TIMEOUT, async {
            let mut stream = client.watch(ReceiverStream::new(rx)).await?.into_inner();
            let created = stream.message().await?;
            Ok::<_, Status>((stream, created))
        })
        .await
        .map_err(|_| Status::deadline_exceeded("etcd did not confirm the watch in time"));
        let (stream, created) = match opened.and_then(|r| r) {
            Ok(s) => s,
            Err(status) => {
                let e = EtcdError::call("watch", status);
                if e.retryable() {
                    self.failed(i);
                }
                return Err(e);
            }
        };
        match created {
            Some(r) if r.created && !r.canceled => Ok(Watcher { _requests: tx, stream }),
            Some(r) if r.compact_revision > 0 => Err(EtcdError::Compacted { requested: r.compact_revision }),
            Some(r) => Err(EtcdError::Call { call: "watch", code: Code::Aborted, message: r.cancel_reason }),
            None => Err(EtcdError::StreamEnded("watch")),
        }
    }

    /// Grants a lease of `ttl`; returns its id.
    pub async fn lease_grant(&self, ttl: Duration) -> Result<i64, EtcdError> {
        let (i, channel) = self.pick();
        let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX).max(1);
        match LeaseClient::new(channel).lease_grant(Self::request(LeaseGrantRequest { ttl, id: 0 })).await {
            Ok(r) if r.get_ref().error.is_empty() => Ok(r.into_inner().id),
            Ok(r) => Err(EtcdError::Call {
                call: "lease grant",
                code: Code::Unknown,
                message: r.into_inner().error,
            }),
            Err(status) => {
                self.failed(i);
                Err(EtcdError::call("lease grant", status))
            }
        }
    }

    /// Revokes a lease (its keys go at once).
    pub async fn lease_revoke(&self, id: i64) -> Result<(), EtcdError> {
        let (i, channel) = self.pick();
        match LeaseClient::new(channel).lease_revoke(Self::request(LeaseRevokeRequest { id })).await {
            Ok(_) => Ok(()),
            Err(status) => {
                self.failed(i);
                Err(EtcdError::call("lease revoke", status))
            }
        }
    }

    /// Opens a keep-alive stream for lease `id`.
    pub async fn lease_keep_alive(&self, id: i64) -> Result<KeepAlive, EtcdError> {
        let (i, channel) = self.pick();
        let (tx, rx) = mpsc::channel(STREAM_REQUESTS);
        // etcd answers (headers included) only once it has a request: send
        // the first renewal with the call, and take its answer here.
        let _ = tx.try_send(LeaseKeepAliveRequest { id });
        let opened = tokio::time::timeout(REQUEST_TIMEOUT, async {
            let mut stream =
                LeaseClient::new(channel).lease_keep_alive(ReceiverStream::new(rx)).await?.into_inner();
            stream.message().await?;
            Ok::<_, Status>(stream)
        })
        .await
        .map_err(|_| Status::deadline_exceeded("etcd did not open the keep-alive in time"));
        match opened.and_then(|r| r) {
            Ok(stream) => Ok(KeepAlive { id, requests: tx, stream }),
            Err(status) => {
                self.failed(i);
                Err(EtcdError::call("lease keep-alive", status))
            }
        }
    }
}

/// An open watch; dropping it cancels the watch.
pub struct Watcher {
    _requests: mpsc::Sender<WatchRequest>,
    stream: Streaming<WatchResponse>,
}

impl Watcher {
    /// The next response; `Err` when the stream failed, ended, or etcd
    /// canceled the watch (compaction: [`EtcdError::Compacted`]).
    pub async fn next(&mut self) -> Result<WatchResponse, EtcdError> {
        match self.stream.message().await {
            Ok(Some(r)) if r.canceled && r.compact_revision > 0 => {
                Err(EtcdError::Compacted { requested: r.compact_revision })
            }
            Ok(Some(r)) if r.canceled => {
                Err(EtcdError::Call { call: "watch", code: Code::Aborted, message: r.cancel_reason })
            }
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err(EtcdError::StreamEnded("watch")),
            Err(status) => Err(EtcdError::call("watch", status)),
        }
    }
}

/// A lease's keep-alive stream.
pub struct KeepAlive {
    id: i64,
    requests: mpsc::Sender<LeaseKeepAliveRequest>,
    stream: Streaming<LeaseKeepAliveResponse>,
}

impl KeepAlive {
    /// Renews the lease once; returns its remaining time to live (`None`:
    /// the lease is gone, expired or revoked).
    pub async fn renew(&mut self) -> Result<Option<Duration>, EtcdError> {
        self.requests
            .send(LeaseKeepAliveRequest { id: self.id })
            .await
            .map_err(|_| EtcdError::StreamEnded("keep-alive"))?;
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, self.stream.message())
            .await
            .map_err(|_| EtcdError::Call {
                call: "lease keep-alive",
                code: Code::DeadlineExceeded,
                message: "no answer in time".into(),
            })?
            .map_err(|s| EtcdError::call("lease keep-alive", s))?
            .ok_or(EtcdError::StreamEnded("keep-alive"))?;
        Ok((answer.ttl > 0).then(|| Duration::from_secs(answer.ttl as u64)))
    }
}

/// The end of the key range starting with `prefix` (its last byte
/// incremented, as etcd expects for prefix ranges).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xff: the range runs to the end of the keyspace.
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls() {
        let c = EtcdConfig::from_url("etcd://10.0.0.1:2379,etcd-b:2379/", "/ferry/", None).expect("valid");
        assert_eq!(c.endpoints, ["10.0.0.1:2379", "etcd-b:2379"]);
        assert_eq!(c.prefix, "/ferry");
        assert!(EtcdConfig::from_url("http://a:1", "/ferry", None).is_err());
        assert!(EtcdConfig::from_url("etcd://a", "/ferry", None).is_err());
        assert!(EtcdConfig::from_url("etcd://a:1,", "/ferry", None).is_err());
        assert!(EtcdConfig::from_url("etcd://a:1", "ferry", None).is_err());
        assert!(EtcdConfig::from_url("etcd://a:1", "/", None).is_err());
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/ferry/"), b"/ferry0");
        assert_eq!(prefix_end(&[b'a', 0xff]), b"b");
        assert_eq!(prefix_end(&[0xff]), [0]);
    }
}

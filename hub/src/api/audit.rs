//! `ferry.v1.Audit`: reading the audit log (admins), what `ferryctl audit`
//! calls. Events come from the log itself (the files on disk, or the last
//! events kept in memory when it goes to stdout), then, when following, as
//! the writer publishes them; each is sent once.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use ferry::proto::v1::audit_server::Audit;
use ferry::proto::v1::{AuditEvent as PbEvent, AuditEventsRequest};
use tokio::sync::{Semaphore, broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::admin;
use crate::audit::{AuditEvent, Filter, MAX_QUERY_EVENTS};
use crate::state::HubState;

/// Events buffered towards one reader.
pub const STREAM_BUFFER: usize = 64;
/// Readers following the log at once.
pub const MAX_FOLLOWERS: usize = 64;

/// The `Audit` service.
#[derive(Clone)]
pub struct AuditService {
    state: Arc<HubState>,
    followers: Arc<Semaphore>,
}

impl AuditService {
    /// A service over the hub's shared state.
    pub fn new(state: Arc<HubState>) -> Self {
        AuditService { state, followers: Arc::new(Semaphore::new(MAX_FOLLOWERS)) }
    }
}

/// An event as the API sends it.
pub fn to_proto(e: &AuditEvent) -> PbEvent {
    PbEvent {
        time: e.time.clone(),
        kind: e.kind.clone(),
        request_id: e.request_id.clone(),
        user: e.user.clone(),
        groups: e.groups.clone(),
        auth_method: e.auth_method.clone(),
        impersonated_user: e.impersonated_user.clone(),
        client_address: e.client_address.clone(),
        cluster: e.cluster.clone(),
        via: e.via.clone(),
        verb: e.verb.clone(),
        api_group: e.api_group.clone(),
        api_version: e.api_version.clone(),
        resource: e.resource.clone(),
        subresource: e.subresource.clone(),
        namespace: e.namespace.clone(),
        name: e.name.clone(),
        path: e.path.clone(),
        code: e.code.map_or(0, u32::from),
        bytes_in: e.bytes_in.unwrap_or_default(),
        bytes_out: e.bytes_out.unwrap_or_default(),
        duration_ms: e.duration_ms.unwrap_or_default(),
        outcome: e.outcome.clone(),
        action: e.action.clone(),
        target: e.target.clone(),
    }
}

#[tonic::async_trait]
impl Audit for AuditService {
    type EventsStream = ReceiverStream<Result<PbEvent, Status>>;

    async fn events(
        &self,
        request: Request<AuditEventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        admin(&self.state, &request).await?;
        let req = request.into_inner();
        let audit = self.state.audit.clone();
        if !audit.enabled() {
            return Err(Status::failed_precondition(
                "this hub keeps no audit log (it runs with --audit-log off)",
            ));
        }
        let filter = Filter {
            cluster: Some(req.cluster).filter(|c| !c.is_empty()),
            user: Some(req.user).filter(|u| !u.is_empty()),
            since: (req.since_unix_ms > 0).then(|| UNIX_EPOCH + Duration::from_millis(req.since_unix_ms)),
        };
        let limit = match req.limit as usize {
            0 => MAX_QUERY_EVENTS,
            n => n.min(MAX_QUERY_EVENTS),
        };
        let permit = if req.follow {
            Some(self.followers.clone().try_acquire_owned().map_err(|_| {
                Status::resource_exhausted(format!("{MAX_FOLLOWERS} readers follow the audit log already"))
            })?)
        } else {
            None
        };
        // Subscribed before the log is read: nothing written in between is
        // missed, and what the log had is skipped by its position.
        let mut live = req.follow.then(|| audit.subscribe());
        let (history, end) = audit
            .history(filter.clone(), limit)
            .await
            .map_err(|e| Status::unavailable(format!("cannot read the audit log: {e}")))?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let shutdown = self.state.shutdown.clone();
        self.state.tasks.spawn(async move {
            let _permit = permit;
            for e in &history {
                if tx.send(Ok(to_proto(e))).await.is_err() {
                    return;
                }
            }
            let Some(live) = live.as_mut() else { return };
            loop {
                let next = tokio::select! {
                    n = live.recv() => n,
                    () = tx.closed() => return,
                    () = shutdown.cancelled() => return,
                };
                match next {
                    Ok((cursor, e)) if cursor > end && filter.matches(&e) => {
                        if tx.send(Ok(to_proto(&e))).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let _ = tx
                            .send(Err(Status::resource_exhausted(format!(
                                "this reader fell behind the audit log by {n} events; read again with a --since"
                            ))))
                            .await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

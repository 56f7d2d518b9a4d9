//! Reading the hub's audit log: [`Hub::audit_events`] (admins), over
//! `ferry.v1.Audit/Events`.

use std::time::{SystemTime, UNIX_EPOCH};

use ferry::proto::v1 as pb;
use futures_util::{Stream, StreamExt};
use pb::audit_client::AuditClient;

pub use pb::AuditEvent;

use crate::error::ManagementError;
use crate::management::Hub;

/// Which audit events to read.
#[derive(Clone, Debug, Default)]
pub struct AuditQuery {
    /// Only this cluster's.
    pub cluster: Option<String>,
    /// Only this user's.
    pub user: Option<String>,
    /// Only events at or after this time.
    pub since: Option<SystemTime>,
    /// After the logged events, go on with new ones as they are written.
    pub follow: bool,
    /// At most this many logged events, the newest (`None`: the hub's
    /// maximum, 10000).
    pub limit: Option<u32>,
}

impl Hub {
    /// The hub's audit events matching `query`, oldest first; with
    /// `follow`, the stream goes on with new events until dropped.
    pub async fn audit_events(
        &self,
        query: &AuditQuery,
    ) -> Result<impl Stream<Item = Result<AuditEvent, ManagementError>> + use<>, ManagementError> {
        let request = pb::AuditEventsRequest {
            cluster: query.cluster.clone().unwrap_or_default(),
            user: query.user.clone().unwrap_or_default(),
            since_unix_ms: query
                .since
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            follow: query.follow,
            limit: query.limit.unwrap_or(0),
        };
        let mut client = AuditClient::new(self.transport());
        let stream = match client.events(request).await {
            Ok(r) => r.into_inner(),
            Err(status) => return Err(self.error(&status).await),
        };
        let hub = self.url().to_owned();
        Ok(stream.map(move |item| item.map_err(|status| ManagementError::from_status(&status, &hub))))
    }
}

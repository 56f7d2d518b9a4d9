//! The management API: `ferry.v1.Clusters` ([`clusters`], with [`watch`],
//! [`selector`] and [`view`]), `ferry.v1.Access` ([`access`]) and
//! `ferry.v1.Proxy` ([`proxy`]) and `ferry.v1.Audit` ([`audit`]), served on
//! the hub's one address.
//!
//! Every call is authenticated (client certificate or bearer token) and
//! authorized here: credentials bound to one cluster (those in issued
//! kubeconfigs) are for the gateway only; admin calls need
//! [`ADMIN_GROUP`](crate::auth::ADMIN_GROUP).

pub mod access;
pub mod audit;
pub mod clusters;
pub mod proxy;
pub mod selector;
pub mod view;
pub mod watch;

use std::time::Duration;

use tonic::{Request, Status};
use tracing::warn;

use crate::auth::{self, ADMIN_GROUP, AuthError, Authenticated, Peer};
use crate::state::HubState;
use crate::store::StoreError;

/// Whether `name` can be a cluster name: a DNS label.
pub fn valid_cluster_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// NOT_FOUND for a cluster that is not registered, with what to do next.
pub(crate) fn unknown_cluster(name: &str) -> Status {
    Status::not_found(format!(
        "cluster {name:?} is not registered; `ferryctl clusters` lists the clusters you may see"
    ))
}

pub(crate) fn store_error(e: StoreError) -> Status {
    match e {
        StoreError::NotFound => Status::not_found("not found"),
        StoreError::AlreadyExists => Status::already_exists("already exists"),
        e => {
            warn!(error = %e, "store failure");
            Status::unavailable("hub store unavailable")
        }
    }
}

/// The caller of a management call. Credentials scoped to one cluster are
/// for the gateway only: with them a user could otherwise mint a
/// kubeconfig for another cluster.
pub(crate) async fn caller<T>(state: &HubState, req: &Request<T>) -> Result<Authenticated, Status> {
    let peer = req.extensions().get::<Peer>().cloned().unwrap_or_default();
    let authorization = req.metadata().get("authorization").and_then(|v| v.to_str().ok());
    let caller = match auth::authenticate(state.store.as_ref(), &peer, authorization).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            return Err(Status::unauthenticated(
                "a client certificate from the hub CA or a hub bearer token is required",
            ));
        }
        Err(AuthError::Store(e)) => return Err(store_error(e)),
        Err(e) => return Err(Status::unauthenticated(e.to_string())),
    };
    if let Some((cluster, _)) = caller.bound_cluster() {
        return Err(Status::permission_denied(format!(
            "this credential is bound to cluster {cluster:?} and cannot use the management API; use a hub-wide credential (admin.kubeconfig, or a token from `ferryctl token create`)"
        )));
    }
    Ok(caller)
}

/// The caller, who must be a hub administrator.
pub(crate) async fn admin<T>(state: &HubState, req: &Request<T>) -> Result<Authenticated, Status> {
    let caller = caller(state, req).await?;
    if caller.is_admin() {
        Ok(caller)
    } else {
        Err(Status::permission_denied(format!(
            "user {:?} is not a hub administrator (group {ADMIN_GROUP:?}); this call needs an admin credential, such as DATA_DIR/admin.kubeconfig on the hub",
            caller.identity.user
        )))
    }
}

/// Through what a management call came, for its audit event's `via`:
/// [`Via::GRPC`] unless the caller put another one in the request's
/// extensions (the web console does).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Via(&'static str);

impl Via {
    /// A gRPC client (ferryctl, the SDK, grpcurl).
    pub(crate) const GRPC: Via = Via("grpc");
    /// The web console at `/ui/`.
    pub(crate) const CONSOLE: Via = Via("console");
}

/// Who made a management call, for its audit event.
pub(crate) struct Actor {
    user: String,
    groups: Vec<String>,
    auth_method: &'static str,
    client: String,
    via: Via,
}

impl Actor {
    /// The caller `who` of `req`.
    pub(crate) fn of<T>(req: &Request<T>, who: &Authenticated) -> Actor {
        let client = req.extensions().get::<crate::gateway::ClientAddr>().map(|a| a.0.ip().to_string());
        Actor {
            user: who.identity.user.clone(),
            groups: who.identity.groups.clone(),
            auth_method: who.method.as_str(),
            client: client.unwrap_or_default(),
            via: req.extensions().get::<Via>().copied().unwrap_or(Via::GRPC),
        }
    }
}

/// Records a management change in the audit log: `action` on `cluster`
/// (may be empty), to `target` (a user, group, token id; never a secret).
pub(crate) fn audit(state: &HubState, actor: &Actor, action: &str, cluster: &str, target: String) {
    if !state.audit.enabled() {
        return;
    }
    let mut event = crate::audit::AuditEvent::new(crate::audit::kind::MANAGEMENT);
    event.user = actor.user.clone();
    event.groups = actor.groups.clone();
    event.auth_method = actor.auth_method.to_owned();
    event.client_address = actor.client.clone();
    event.via = actor.via.0.into();
    event.action = action.to_owned();
    event.cluster = cluster.to_owned();
    event.target = target;
    event.code = Some(200);
    event.outcome = "completed".into();
    state.audit.record(event);
}

/// A lifetime from a request: `0` means `default`; more than `max` is
/// refused.
pub(crate) fn lifetime(
    seconds: u32,
    default: Duration,
    max: Duration,
    what: &str,
) -> Result<Duration, Status> {
    let ttl = match seconds {
        0 => default,
        s => Duration::from_secs(u64::from(s)),
    };
    if ttl > max {
        return Err(Status::invalid_argument(format!(
            "{what} lifetime {}s is longer than the hub allows ({}s)",
            ttl.as_secs(),
            max.as_secs()
        )));
    }
    Ok(ttl)
}

#[cfg(test)]
mod tests {
    use super::valid_cluster_name;

    #[test]
    fn cluster_names_are_dns_labels() {
        assert!(valid_cluster_name("edge-1"));
        assert!(!valid_cluster_name("Edge"));
        assert!(!valid_cluster_name("-a"));
        assert!(!valid_cluster_name("a/b"));
        assert!(!valid_cluster_name(""));
        assert!(!valid_cluster_name(&"a".repeat(64)));
    }
}

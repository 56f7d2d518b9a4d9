//! Who is calling: the identity in a verified client certificate.

use ferry::identity::Identity;

/// Members of this group may administer the hub (register clusters, issue
/// kubeconfigs for other users).
pub const ADMIN_GROUP: &str = "ferry:admins";

/// User name of the admin credential the hub writes on first start.
pub const ADMIN_USER: &str = "ferry-admin";

/// A caller proven by a client certificate from the hub CA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authenticated {
    /// Who (CN = user, O = groups).
    pub identity: Identity,
    /// Clusters the certificate is valid for; `None`: any cluster (admin
    /// credentials). Kubeconfigs from `ferryctl kubeconfig NAME` are scoped
    /// to NAME, so one cluster's kubeconfig never opens another cluster.
    pub clusters: Option<Vec<String>>,
}

impl Authenticated {
    /// Whether the credential may be used for cluster `name`.
    pub fn may_reach(&self, name: &str) -> bool {
        self.clusters.as_ref().is_none_or(|c| c.iter().any(|n| n == name))
    }
}

/// The authenticated caller of one connection, put in every request's
/// extensions. `None`: no client certificate was presented.
#[derive(Clone, Debug, Default)]
pub struct Caller(pub Option<Authenticated>);

/// Whether `id` is a hub administrator.
pub fn is_admin(id: &Identity) -> bool {
    id.groups.iter().any(|g| g == ADMIN_GROUP)
}

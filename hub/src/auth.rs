//! Who is calling: the identity in a verified client certificate.

use ferry::identity::Identity;

/// Members of this group may administer the hub (register clusters, issue
/// kubeconfigs for other users).
pub const ADMIN_GROUP: &str = "ferry:admins";

/// User name of the admin credential the hub writes on first start.
pub const ADMIN_USER: &str = "ferry-admin";

/// The authenticated caller of one connection, put in every request's
/// extensions. `None`: no client certificate was presented.
#[derive(Clone, Debug, Default)]
pub struct Caller(pub Option<Identity>);

/// Whether `id` is a hub administrator.
pub fn is_admin(id: &Identity) -> bool {
    id.groups.iter().any(|g| g == ADMIN_GROUP)
}

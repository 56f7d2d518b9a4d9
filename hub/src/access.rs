//! Who may reach which cluster (grants), and whether a caller may act as
//! someone else there (kubectl `--as`).
//!
//! Checked at the hub before anything enters a tunnel: a caller without a
//! grant gets 403 and the child apiserver sees nothing. Members of
//! [`ADMIN_GROUP`](crate::auth::ADMIN_GROUP) reach every cluster.

use std::collections::BTreeMap;

use ferry::identity::Identity;
use http::HeaderMap;

use crate::auth::Authenticated;
use crate::store::{ALL_CLUSTERS, GrantRecord, Store, StoreError, Subject};

/// What a caller may do on one cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// Whether the caller may act as someone else (kubectl `--as`); the
    /// child cluster's RBAC still decides whom.
    pub allow_impersonate: bool,
}

/// Whether `grant` lets `identity` reach `cluster`.
pub fn grant_applies(grant: &GrantRecord, cluster: &str, identity: &Identity) -> bool {
    (grant.cluster == cluster || grant.cluster == ALL_CLUSTERS)
        && match &grant.subject {
            Subject::User(u) => *u == identity.user,
            Subject::Group(g) => identity.groups.iter().any(|have| have == g),
        }
}

/// What `caller` may do on `cluster`; `None` when no grant lets them in.
pub async fn check(
    store: &dyn Store,
    caller: &Authenticated,
    cluster: &str,
) -> Result<Option<Access>, StoreError> {
    if caller.is_admin() {
        return Ok(Some(Access { allow_impersonate: true }));
    }
    let mut grants = store.grants().await?;
    let applies = |grants: &[GrantRecord]| grants.iter().any(|g| grant_applies(g, cluster, &caller.identity));
    if !applies(&grants) {
        // A grant made on another hub replica a moment ago counts.
        store.refresh().await?;
        grants = store.grants().await?;
    }
    let applicable: Vec<&GrantRecord> =
        grants.iter().filter(|g| grant_applies(g, cluster, &caller.identity)).collect();
    if applicable.is_empty() {
        return Ok(None);
    }
    Ok(Some(Access { allow_impersonate: applicable.iter().any(|g| g.allow_impersonate) }))
}

/// The message of a 403 for a caller without a grant: names the user and
/// the cluster, and what an admin can do about it.
pub fn no_grant_message(caller: &Authenticated, cluster: &str) -> String {
    format!(
        "user {:?} may not reach cluster {cluster:?}: no grant for the user or any of their groups; an admin can run `ferryctl grant --cluster {cluster} --user {}`",
        caller.identity.user, caller.identity.user
    )
}

/// Why impersonation headers are refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ImpersonationError {
    /// Groups, uid or extras without a user.
    #[error("impersonating groups, a uid or extras needs a user to impersonate (kubectl --as)")]
    NoUser,
    /// More than one `Impersonate-User` or `Impersonate-Uid`.
    #[error("only one user and one uid may be impersonated")]
    Repeated,
    /// A value that is not text.
    #[error("an impersonation header is not valid text")]
    NotText,
}

/// The identity a caller asks to act as, from its `Impersonate-*` headers
/// (kubectl `--as`, `--as-group`, `--as-uid`); `None` when it asks nothing.
pub fn requested(headers: &HeaderMap) -> Result<Option<Identity>, ImpersonationError> {
    let text = |v: &http::HeaderValue| v.to_str().map(str::to_owned).map_err(|_| ImpersonationError::NotText);
    let users = headers.get_all("impersonate-user").iter().map(text).collect::<Result<Vec<_>, _>>()?;
    let uids = headers.get_all("impersonate-uid").iter().map(text).collect::<Result<Vec<_>, _>>()?;
    let groups = headers.get_all("impersonate-group").iter().map(text).collect::<Result<Vec<_>, _>>()?;
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in headers {
        if let Some(key) = name.as_str().strip_prefix("impersonate-extra-") {
            let key = percent_decode(key);
            extra.entry(key).or_default().push(text(value)?);
        }
    }
    if users.len() > 1 || uids.len() > 1 {
        return Err(ImpersonationError::Repeated);
    }
    let Some(user) = users.into_iter().next() else {
        if groups.is_empty() && uids.is_empty() && extra.is_empty() {
            return Ok(None);
        }
        return Err(ImpersonationError::NoUser);
    };
    Ok(Some(Identity { user, uid: uids.into_iter().next().unwrap_or_default(), groups, extra }))
}

/// Decodes `%XX` escapes of an `Impersonate-Extra-` key (as the apiserver
/// does); anything malformed is kept as it is.
fn percent_decode(key: &str) -> String {
    let bytes = key.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(hex) = std::str::from_utf8(&bytes[i + 1..i + 3])
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AuthMethod, Scope};
    use crate::store::FileStore;

    fn caller(user: &str, groups: &[&str]) -> Authenticated {
        Authenticated {
            identity: Identity {
                user: user.into(),
                groups: groups.iter().map(|g| (*g).to_owned()).collect(),
                ..Default::default()
            },
            scope: Scope::All,
            method: AuthMethod::ClientCert,
            expires_at: u64::MAX,
        }
    }

    fn grant(cluster: &str, subject: Subject, allow_impersonate: bool) -> GrantRecord {
        GrantRecord {
            cluster: cluster.into(),
            subject,
            allow_impersonate,
            created_at: 0,
            created_by: "x".into(),
        }
    }

    #[tokio::test]
    async fn grants_by_user_group_and_wildcard() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileStore::open(dir.path()).expect("open");
        store.put_grant(grant("edge", Subject::User("alice".into()), false)).await.expect("grant");
        store.put_grant(grant("edge", Subject::Group("sre".into()), true)).await.expect("grant");
        store.put_grant(grant(ALL_CLUSTERS, Subject::Group("auditors".into()), false)).await.expect("grant");

        let alice = caller("alice", &["dev"]);
        assert_eq!(
            check(&store, &alice, "edge").await.expect("ok"),
            Some(Access { allow_impersonate: false })
        );
        assert_eq!(check(&store, &alice, "core").await.expect("ok"), None, "a grant is for its cluster only");
        let sre = caller("bob", &["sre"]);
        assert_eq!(check(&store, &sre, "edge").await.expect("ok"), Some(Access { allow_impersonate: true }));
        let auditor = caller("carol", &["auditors"]);
        assert!(check(&store, &auditor, "anything").await.expect("ok").is_some());
        let nobody = caller("mallory", &["alice"]);
        assert_eq!(
            check(&store, &nobody, "edge").await.expect("ok"),
            None,
            "a group named like a user is not the user"
        );
        let admin = caller("root", &[crate::auth::ADMIN_GROUP]);
        assert_eq!(
            check(&store, &admin, "edge").await.expect("ok"),
            Some(Access { allow_impersonate: true })
        );
        assert!(no_grant_message(&alice, "core").contains("\"alice\" may not reach cluster \"core\""));
    }

    #[test]
    fn impersonation_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(requested(&h), Ok(None));
        h.append("impersonate-group", "dev".parse().expect("v"));
        assert_eq!(requested(&h), Err(ImpersonationError::NoUser));
        h.append("impersonate-user", "bob".parse().expect("v"));
        h.append("impersonate-group", "ops".parse().expect("v"));
        h.append("impersonate-extra-scopes.example.com%2fteam", "a".parse().expect("v"));
        let id = requested(&h).expect("ok").expect("some");
        assert_eq!(id.user, "bob");
        assert_eq!(id.groups, vec!["dev".to_owned(), "ops".to_owned()]);
        assert_eq!(id.extra["scopes.example.com/team"], vec!["a".to_owned()]);
        h.append("impersonate-user", "carol".parse().expect("v"));
        assert_eq!(requested(&h), Err(ImpersonationError::Repeated));
    }
}

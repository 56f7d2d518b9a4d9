//! The caller identity the hub authenticates and the agent impersonates.

use std::collections::BTreeMap;

use http::{HeaderName, HeaderValue};

use crate::proto::v1 as pb;

/// Groups no hub identity may ever carry into a child cluster: they would
/// turn a hub user into a cluster administrator behind RBAC's back.
pub const DENIED_GROUPS: &[&str] = &["system:masters"];

/// An authenticated caller, as Kubernetes understands users.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// User name (`Impersonate-User`).
    pub user: String,
    /// Optional stable id (`Impersonate-Uid`).
    pub uid: String,
    /// Groups (`Impersonate-Group`, one header each).
    pub groups: Vec<String>,
    /// Extra attributes (`Impersonate-Extra-KEY`).
    pub extra: BTreeMap<String, Vec<String>>,
}

/// Why an identity cannot be impersonated.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    /// No user name: Kubernetes would reject impersonation without one.
    #[error("identity has no user name")]
    MissingUser,
    /// A group on the deny list.
    #[error("group {0:?} may not be impersonated through Ferry")]
    DeniedGroup(String),
    /// A value that cannot be sent as an HTTP header.
    #[error("identity field {0:?} is not a valid header value")]
    InvalidValue(String),
    /// A Kubernetes system user or group the agent does not impersonate.
    #[error(
        "the agent does not impersonate the system identity {0:?} (see ferry-agent --allow-system-identity)"
    )]
    SystemIdentity(String),
}

/// The agent's own last line of defence: it never impersonates Kubernetes
/// system identities (`system:...` users and groups, such as
/// `system:serviceaccount:kube-system:*` or `system:nodes`), whatever the
/// hub sends, except `system:authenticated` and what its operator allows
/// explicitly. So even a compromised hub cannot act as the cluster's own
/// components.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SystemIdentityPolicy {
    /// Allowed system names; a trailing `*` matches any rest
    /// (`system:serviceaccount:ci:*`).
    pub allowed: Vec<String>,
}

/// Groups every authenticated identity has anyway.
const ALWAYS_ALLOWED: &[&str] = &["system:authenticated"];

impl SystemIdentityPolicy {
    fn allows(&self, name: &str) -> bool {
        !name.starts_with("system:")
            || ALWAYS_ALLOWED.contains(&name)
            || self.allowed.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => p == name,
            })
    }

    /// Refuses an identity with a system user or group not allowed.
    pub fn check(&self, id: &Identity) -> Result<(), IdentityError> {
        if !self.allows(&id.user) {
            return Err(IdentityError::SystemIdentity(id.user.clone()));
        }
        match id.groups.iter().find(|g| !self.allows(g)) {
            Some(g) => Err(IdentityError::SystemIdentity(g.clone())),
            None => Ok(()),
        }
    }
}

impl Identity {
    /// Checks that the identity can be impersonated: a user name, no denied
    /// group, every value a legal header value.
    pub fn validate(&self) -> Result<(), IdentityError> {
        if self.user.is_empty() {
            return Err(IdentityError::MissingUser);
        }
        if let Some(g) = self.groups.iter().find(|g| DENIED_GROUPS.contains(&g.as_str())) {
            return Err(IdentityError::DeniedGroup(g.clone()));
        }
        Ok(())
    }

    /// The `Impersonate-*` headers for this identity, in a stable order.
    pub fn impersonation_headers(&self) -> Result<Vec<(HeaderName, HeaderValue)>, IdentityError> {
        self.validate()?;
        let value = |v: &str| HeaderValue::from_str(v).map_err(|_| IdentityError::InvalidValue(v.to_owned()));
        let mut out = vec![(HeaderName::from_static("impersonate-user"), value(&self.user)?)];
        if !self.uid.is_empty() {
            out.push((HeaderName::from_static("impersonate-uid"), value(&self.uid)?));
        }
        for g in &self.groups {
            out.push((HeaderName::from_static("impersonate-group"), value(g)?));
        }
        for (key, values) in &self.extra {
            let name = format!("impersonate-extra-{}", encode_extra_key(key));
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| IdentityError::InvalidValue(key.clone()))?;
            for v in values {
                out.push((name.clone(), value(v)?));
            }
        }
        Ok(out)
    }
}

/// How the hub maps its callers' identities before they reach a child
/// cluster: optional prefixes keep hub user and group names from colliding
/// with the cluster's own, and denied groups are never forwarded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityPolicy {
    /// Prepended to every user name (e.g. `ferry:`); empty: none.
    pub user_prefix: String,
    /// Prepended to every group name; empty: none.
    pub group_prefix: String,
    /// Groups dropped before forwarding, compared before and after the
    /// prefix; [`DENIED_GROUPS`] are always among them.
    pub denied_groups: Vec<String>,
}

impl Default for IdentityPolicy {
    fn default() -> Self {
        Self {
            user_prefix: String::new(),
            group_prefix: String::new(),
            denied_groups: DENIED_GROUPS.iter().map(|g| (*g).to_owned()).collect(),
        }
    }
}

impl IdentityPolicy {
    /// Whether `group` (as the hub knows it) is never forwarded.
    pub fn denies_group(&self, group: &str) -> bool {
        let prefixed = format!("{}{group}", self.group_prefix);
        DENIED_GROUPS.contains(&group) || self.denied_groups.iter().any(|d| d == group || *d == prefixed)
    }

    /// A group as the child cluster sees it.
    pub fn group(&self, group: &str) -> String {
        format!("{}{group}", self.group_prefix)
    }

    /// The identity the child cluster sees for a hub caller: prefixes
    /// applied, denied groups dropped.
    pub fn map(&self, id: &Identity) -> Identity {
        Identity {
            user: format!("{}{}", self.user_prefix, id.user),
            uid: id.uid.clone(),
            groups: id.groups.iter().filter(|g| !self.denies_group(g)).map(|g| self.group(g)).collect(),
            extra: id.extra.clone(),
        }
    }
}

/// Percent-encodes an extra key the way the apiserver decodes
/// `Impersonate-Extra-` header suffixes (keys are case-insensitive header
/// names, so anything outside lower-case token characters is escaped).
fn encode_extra_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        match b {
            b'a'..=b'z'
            | b'0'..=b'9'
            | b'-'
            | b'_'
            | b'.'
            | b'~'
            | b'!'
            | b'$'
            | b'&'
            | b'\''
            | b'*'
            | b'+'
            | b'^'
            | b'`'
            | b'|' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02x}")),
        }
    }
    out
}

impl From<Identity> for pb::Identity {
    fn from(id: Identity) -> Self {
        pb::Identity {
            user: id.user,
            uid: id.uid,
            groups: id.groups,
            extra: id.extra.into_iter().map(|(k, values)| (k, pb::ExtraValues { values })).collect(),
        }
    }
}

impl From<pb::Identity> for Identity {
    fn from(id: pb::Identity) -> Self {
        Identity {
            user: id.user,
            uid: id.uid,
            groups: id.groups,
            extra: id.extra.into_iter().map(|(k, v)| (k, v.values)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Identity {
        Identity {
            user: "alice".into(),
            uid: "42".into(),
            groups: vec!["dev".into(), "ops".into()],
            extra: BTreeMap::from([("scopes.example.com/Team".into(), vec!["a".into(), "b".into()])]),
        }
    }

    #[test]
    fn headers_carry_every_field() {
        let h = alice().impersonation_headers().expect("valid identity");
        let pairs: Vec<(String, String)> =
            h.iter().map(|(n, v)| (n.to_string(), v.to_str().expect("ascii").to_owned())).collect();
        assert_eq!(
            pairs,
            vec![
                ("impersonate-user".into(), "alice".into()),
                ("impersonate-uid".into(), "42".into()),
                ("impersonate-group".into(), "dev".into()),
                ("impersonate-group".into(), "ops".into()),
                ("impersonate-extra-scopes.example.com%2f%54eam".into(), "a".into()),
                ("impersonate-extra-scopes.example.com%2f%54eam".into(), "b".into()),
            ]
        );
    }

    #[test]
    fn system_masters_is_refused() {
        let mut id = alice();
        id.groups.push("system:masters".into());
        assert_eq!(id.validate(), Err(IdentityError::DeniedGroup("system:masters".into())));
        assert!(id.impersonation_headers().is_err());
    }

    #[test]
    fn empty_user_is_refused() {
        assert_eq!(Identity::default().validate(), Err(IdentityError::MissingUser));
    }

    #[test]
    fn header_injection_is_refused() {
        let mut id = alice();
        id.user = "alice\r\nImpersonate-Group: system:masters".into();
        assert!(matches!(id.impersonation_headers(), Err(IdentityError::InvalidValue(_))));
    }

    #[test]
    fn policy_prefixes_and_drops_denied_groups() {
        let policy = IdentityPolicy {
            user_prefix: "ferry:".into(),
            group_prefix: "ferry:".into(),
            denied_groups: vec!["ops".into()],
        };
        let mut id = alice();
        id.groups.push("system:masters".into());
        let mapped = policy.map(&id);
        assert_eq!(mapped.user, "ferry:alice");
        assert_eq!(mapped.groups, vec!["ferry:dev".to_owned()], "ops and system:masters never forwarded");
        assert_eq!(mapped.uid, "42");
        let plain = IdentityPolicy::default().map(&id);
        assert_eq!(plain.user, "alice");
        assert_eq!(plain.groups, vec!["dev".to_owned(), "ops".to_owned()]);
    }

    #[test]
    fn the_agent_never_impersonates_system_identities_unless_allowed() {
        let policy = SystemIdentityPolicy::default();
        assert_eq!(policy.check(&alice()), Ok(()));
        let mut id = alice();
        id.groups.push("system:authenticated".into());
        assert_eq!(policy.check(&id), Ok(()));
        for (user, group) in [("system:serviceaccount:kube-system:admin", "dev"), ("bob", "system:nodes")] {
            let id = Identity { user: user.into(), groups: vec![group.into()], ..Default::default() };
            assert!(matches!(policy.check(&id), Err(IdentityError::SystemIdentity(_))), "{user} {group}");
        }
        let ci = SystemIdentityPolicy { allowed: vec!["system:serviceaccount:ci:*".into()] };
        let builder = Identity { user: "system:serviceaccount:ci:builder".into(), ..Default::default() };
        assert_eq!(ci.check(&builder), Ok(()));
        let other = Identity { user: "system:serviceaccount:kube-system:x".into(), ..Default::default() };
        assert!(ci.check(&other).is_err());
    }

    #[test]
    fn proto_round_trip() {
        let id = alice();
        assert_eq!(Identity::from(pb::Identity::from(id.clone())), id);
    }
}

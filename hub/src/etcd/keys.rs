//! Where the hub keeps things in etcd, under its prefix (`/ferry` by
//! default):
//!
//! | key | value |
//! | --- | --- |
//! | `PREFIX/store/clusters/NAME` | a cluster record (JSON) |
//! | `PREFIX/store/tokens/ID` | a caller token record, its hash only (JSON) |
//! | `PREFIX/store/grants/CLUSTER/user/NAME`, `.../group/NAME` | a grant (JSON; the name percent-encoded in the key) |
//! | `PREFIX/store/sync` | written only to learn the current revision |
//! | `PREFIX/hubs/ID` | a hub replica: its peer URL (under its lease) |
//! | `PREFIX/live/CLUSTER/ID` | what replica ID's agent sessions of CLUSTER report (under its lease) |
//!
//! Everything under `store/` is durable state, mirrored by every replica;
//! `hubs/` and `live/` vanish with the lease of the replica that wrote them.

use crate::store::Subject;

/// The key layout under one prefix.
#[derive(Clone, Debug)]
pub struct Keys {
    root: String,
}

/// What a key under `store/` holds.
#[derive(Debug, PartialEq, Eq)]
pub enum StoreKey<'a> {
    /// A cluster, by name.
    Cluster(&'a str),
    /// A caller token, by id.
    Token(&'a str),
    /// A grant.
    Grant,
    /// The sync marker.
    Sync,
}

impl Keys {
    /// The layout under `prefix` (no trailing slash).
    pub fn new(prefix: &str) -> Self {
        Keys { root: prefix.trim_end_matches('/').to_owned() }
    }

    /// Everything durable.
    pub fn store(&self) -> String {
        format!("{}/store/", self.root)
    }

    /// All clusters.
    pub fn clusters(&self) -> String {
        format!("{}/store/clusters/", self.root)
    }

    /// One cluster.
    pub fn cluster(&self, name: &str) -> String {
        format!("{}/store/clusters/{name}", self.root)
    }

    /// One caller token.
    pub fn token(&self, id: &str) -> String {
        format!("{}/store/tokens/{id}", self.root)
    }

    /// The grants of one cluster (or of `*`).
    pub fn grants_of(&self, cluster: &str) -> String {
        format!("{}/store/grants/{cluster}/", self.root)
    }

    /// One grant.
    pub fn grant(&self, cluster: &str, subject: &Subject) -> String {
        let (kind, name) = match subject {
            Subject::User(u) => ("user", u),
            Subject::Group(g) => ("group", g),
        };
        format!("{}{kind}/{}", self.grants_of(cluster), escape(name))
    }

    /// The sync marker.
    pub fn sync(&self) -> String {
        format!("{}/store/sync", self.root)
    }

    /// All hub replicas.
    pub fn hubs(&self) -> String {
        format!("{}/hubs/", self.root)
    }

    /// One hub replica.
    pub fn hub(&self, id: &str) -> String {
        format!("{}/hubs/{id}", self.root)
    }

    /// Every replica's live agents, of every cluster.
    pub fn lives(&self) -> String {
        format!("{}/live/", self.root)
    }

    /// Replica `id`'s live agents of `cluster`.
    pub fn live(&self, cluster: &str, id: &str) -> String {
        format!("{}/live/{cluster}/{id}", self.root)
    }

    /// What a key under [`Keys::store`] holds (`None`: not ours).
    pub fn parse_store<'a>(&self, key: &'a str) -> Option<StoreKey<'a>> {
        let rest = key.strip_prefix(&self.root)?.strip_prefix("/store/")?;
        if rest == "sync" {
            return Some(StoreKey::Sync);
        }
        if let Some(name) = rest.strip_prefix("clusters/") {
            return Some(StoreKey::Cluster(name));
        }
        if let Some(id) = rest.strip_prefix("tokens/") {
            return Some(StoreKey::Token(id));
        }
        rest.starts_with("grants/").then_some(StoreKey::Grant)
    }

    /// The cluster and replica of a key under [`Keys::lives`].
    pub fn parse_live<'a>(&self, key: &'a str) -> Option<(&'a str, &'a str)> {
        key.strip_prefix(&self.root)?.strip_prefix("/live/")?.split_once('/')
    }

    /// The replica of a key under [`Keys::hubs`].
    pub fn parse_hub<'a>(&self, key: &'a str) -> Option<&'a str> {
        key.strip_prefix(&self.root)?.strip_prefix("/hubs/")
    }
}

/// Percent-encodes everything but letters, digits and `-._:@`, so any user
/// or group name is one key segment.
fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':' | b'@') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let k = Keys::new("/ferry/");
        assert_eq!(k.cluster("edge"), "/ferry/store/clusters/edge");
        assert_eq!(
            k.grant("*", &Subject::Group("sre/oncall".into())),
            "/ferry/store/grants/*/group/sre%2Foncall"
        );
        assert_eq!(
            k.grant("a", &Subject::User("system:x@y".into())),
            "/ferry/store/grants/a/user/system:x@y"
        );
        assert_eq!(k.parse_store("/ferry/store/clusters/edge"), Some(StoreKey::Cluster("edge")));
        assert_eq!(k.parse_store("/ferry/store/tokens/t1"), Some(StoreKey::Token("t1")));
        assert_eq!(k.parse_store(&k.grant("a", &Subject::User("u".into()))), Some(StoreKey::Grant));
        assert_eq!(k.parse_store(&k.sync()), Some(StoreKey::Sync));
        assert_eq!(k.parse_store("/other/store/clusters/edge"), None);
        assert_eq!(k.parse_live(&k.live("edge", "r1")), Some(("edge", "r1")));
        assert_eq!(k.parse_hub(&k.hub("r1")), Some("r1"));
        // One cluster's grants are not another's whose name it starts.
        assert!(!k.grant("ab", &Subject::User("u".into())).starts_with(&k.grants_of("a")));
    }
}

//! `ferry-hub migrate --from DIR --to etcd://...`: copies an embedded store
//! into etcd, so a hub that started small can grow into several replicas.
//!
//! Clusters (with their approval, labels, bootstrap tokens, agent
//! certificate serials and last status), caller tokens (hashes) and grants
//! are copied as they are; each record gets etcd's revision. The change log
//! is not: revisions start afresh in etcd, so watchers list again (a resume
//! from an embedded-store revision is refused with a message saying so).
//! The target prefix must be empty, and the hub that used the data dir must
//! be stopped first (what it writes afterwards is not copied). The CA stays
//! in files: copy `ca.crt` and `ca.key` into every replica's data dir.

use std::path::Path;

use crate::etcd::{EtcdConfig, EtcdStore};
use crate::store::{FileStore, Store, StoreError};

/// What was copied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Migrated {
    /// Cluster records.
    pub clusters: usize,
    /// Caller tokens.
    pub tokens: usize,
    /// Grants.
    pub grants: usize,
}

/// Why a migration did not happen.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The source has no embedded store.
    #[error("{0} holds no store.json: nothing to migrate (is it the hub's --data-dir?)")]
    NoSource(String),
    /// The target already holds a store.
    #[error(
        "etcd prefix {prefix:?} already holds {clusters} clusters, {tokens} tokens and {grants} grants; migrate into an empty prefix (--etcd-prefix)"
    )]
    NotEmpty {
        /// The prefix.
        prefix: String,
        /// Clusters found there.
        clusters: usize,
        /// Tokens found there.
        tokens: usize,
        /// Grants found there.
        grants: usize,
    },
    /// Reading or writing failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Copies the embedded store in `from` into etcd at `to`.
pub async fn migrate(from: &Path, to: &EtcdConfig) -> Result<Migrated, MigrateError> {
    if !from.join("store.json").is_file() {
        return Err(MigrateError::NoSource(from.display().to_string()));
    }
    let source = FileStore::open(from)?;
    let target = EtcdStore::open(to).await?;
    let result = copy(&source, &target, &to.prefix).await;
    target.close().await;
    result
}

async fn copy(source: &dyn Store, target: &dyn Store, prefix: &str) -> Result<Migrated, MigrateError> {
    let there = Migrated {
        clusters: target.clusters().await?.len(),
        tokens: target.tokens().await?.len(),
        grants: target.grants().await?.len(),
    };
    if there != Migrated::default() {
        return Err(MigrateError::NotEmpty {
            prefix: prefix.to_owned(),
            clusters: there.clusters,
            tokens: there.tokens,
            grants: there.grants,
        });
    }
    let mut done = Migrated::default();
    // One cluster per transaction: each change gets its own revision.
    for cluster in source.clusters().await? {
        target.create_cluster(cluster).await?;
        done.clusters += 1;
    }
    for token in source.tokens().await? {
        target.create_token(token).await?;
        done.tokens += 1;
    }
    for grant in source.grants().await? {
        target.put_grant(grant).await?;
        done.grants += 1;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use ferry::ids::TokenId;
    use ferry_integration::etcd::Etcd;

    use super::*;
    use crate::store::Subject;
    use crate::store::contract::{cluster, grant, token};

    #[tokio::test]
    async fn an_embedded_store_moves_into_an_empty_etcd_prefix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let etcd = Etcd::start();
        let to = EtcdConfig::from_url(&etcd.store_url(), "/ferry", None).expect("config");
        let nothing = dir.path().join("nothing");
        assert!(matches!(migrate(&nothing, &to).await, Err(MigrateError::NoSource(_))));
        {
            let files = FileStore::open(dir.path()).expect("open");
            let edge = files.create_cluster(cluster("edge")).await.expect("edge");
            files.create_cluster(cluster("core")).await.expect("core");
            files.create_token(token(TokenId::new(), Some(&edge))).await.expect("token");
            files.put_grant(grant("edge", Subject::User("alice".into()))).await.expect("grant");
            files.put_grant(grant("*", Subject::Group("sre".into()))).await.expect("grant");
        }
        let done = migrate(dir.path(), &to).await.expect("migrate");
        assert_eq!(done, Migrated { clusters: 2, tokens: 1, grants: 2 });

        let etcd_store = EtcdStore::open(&to).await.expect("open");
        let files = FileStore::open(dir.path()).expect("open");
        let strip = |mut c: crate::store::ClusterRecord| {
            c.revision = 0;
            c
        };
        let moved: Vec<_> = etcd_store.clusters().await.expect("clusters").into_iter().map(strip).collect();
        let kept: Vec<_> = files.clusters().await.expect("clusters").into_iter().map(strip).collect();
        assert_eq!(moved, kept, "records arrive as they were");
        assert_eq!(etcd_store.tokens().await.expect("tokens"), files.tokens().await.expect("tokens"));
        assert_eq!(etcd_store.grants().await.expect("grants"), files.grants().await.expect("grants"));
        etcd_store.close().await;

        match migrate(dir.path(), &to).await {
            Err(e @ MigrateError::NotEmpty { clusters: 2, tokens: 1, grants: 2, .. }) => {
                assert!(e.to_string().contains("empty prefix"), "{e}")
            }
            other => panic!("a second migration must be refused, got {other:?}"),
        }
    }
}

//! Who is calling: a verified client certificate, or a hub bearer token.
//!
//! The TLS handshake reads the peer certificate once per connection
//! ([`Peer`], put in every request's extensions); a request without a
//! caller certificate may carry `Authorization: Bearer <token>` (HTTP) or
//! the same gRPC metadata. Agent certificates authenticate agents on the
//! tunnel only: they are refused everywhere a caller is expected.

use ferry::identity::Identity;
use ferry::ids::{ClusterId, TokenId};
use ferry::secret::{Secret, hashes_equal, user_token_id};
use http::HeaderMap;

use crate::pki::AgentPeer;
use crate::store::{Store, StoreError, unix_now};

/// Members of this group may administer the hub (register clusters, issue
/// kubeconfigs for other users) and reach every cluster.
pub const ADMIN_GROUP: &str = "ferry:admins";

/// User name of the admin credential the hub writes on every start.
pub const ADMIN_USER: &str = "ferry-admin";

/// What a credential may reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The management API and every cluster the caller's grants allow.
    All,
    /// One cluster, through the gateway only (issued kubeconfigs).
    Cluster {
        /// Cluster name.
        name: String,
        /// The cluster's id at issuance: a cluster deleted and registered
        /// again under the same name does not honour it.
        id: ClusterId,
    },
}

/// How a caller proved who they are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    /// A client certificate from the hub CA.
    ClientCert,
    /// A hub bearer token.
    Token(TokenId),
}

impl AuthMethod {
    /// `cert` or `token`, for logs and `WhoAmI`.
    pub fn as_str(&self) -> &'static str {
        match self {
            AuthMethod::ClientCert => "cert",
            AuthMethod::Token(_) => "token",
        }
    }
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authenticated {
    /// Who (CN = user, O = groups; or the token's user and groups).
    pub identity: Identity,
    /// What the credential may reach.
    pub scope: Scope,
    /// Certificate or token.
    pub method: AuthMethod,
    /// When the credential expires, seconds since the Unix epoch.
    pub expires_at: u64,
}

impl Authenticated {
    /// Whether the caller is a hub administrator.
    pub fn is_admin(&self) -> bool {
        is_admin(&self.identity)
    }

    /// The one cluster the credential is bound to, if any.
    pub fn bound_cluster(&self) -> Option<(&str, ClusterId)> {
        match &self.scope {
            Scope::All => None,
            Scope::Cluster { name, id } => Some((name, *id)),
        }
    }
}

/// What the TLS handshake proved about one connection.
#[derive(Clone, Debug, Default)]
pub enum Peer {
    /// No client certificate (a bearer token may follow per request).
    #[default]
    Anonymous,
    /// A caller certificate.
    User(Authenticated),
    /// An agent certificate.
    Agent(AgentPeer),
    /// Another hub replica's certificate (its id).
    Replica(String),
    /// A certificate from the hub CA that is not a usable credential.
    Invalid(String),
}

/// Why a caller is not authenticated.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The bearer token is unknown, revoked or malformed.
    #[error("invalid bearer token (unknown, revoked or malformed); ask an admin for a new one")]
    BadToken,
    /// The credential has expired.
    #[error("the {0} has expired; get a new one (ferryctl kubeconfig / ferryctl token create)")]
    Expired(&'static str),
    /// An agent certificate was presented where a caller is expected.
    #[error("an agent certificate cannot be used as a caller credential")]
    AgentCredential,
    /// A certificate from the hub CA that carries no usable identity.
    #[error("{0}")]
    InvalidCertificate(String),
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Whether `id` is a hub administrator.
pub fn is_admin(id: &Identity) -> bool {
    id.groups.iter().any(|g| g == ADMIN_GROUP)
}

/// The bearer token of an `Authorization` header (HTTP or gRPC metadata).
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

/// Authenticates a caller: the connection's certificate if it carries one,
/// else a bearer token from `authorization`. `Ok(None)`: no credential.
pub async fn authenticate(
    store: &dyn Store,
    peer: &Peer,
    authorization: Option<&str>,
) -> Result<Option<Authenticated>, AuthError> {
    let now = unix_now();
    match peer {
        Peer::User(caller) if caller.expires_at <= now => Err(AuthError::Expired("client certificate")),
        Peer::User(caller) => Ok(Some(caller.clone())),
        Peer::Agent(_) | Peer::Replica(_) => Err(AuthError::AgentCredential),
        Peer::Invalid(reason) => Err(AuthError::InvalidCertificate(reason.clone())),
        Peer::Anonymous => match authorization.and_then(bearer) {
            None => Ok(None),
            Some(token) => token_caller(store, token, now).await.map(Some),
        },
    }
}

async fn token_caller(store: &dyn Store, token: &str, now: u64) -> Result<Authenticated, AuthError> {
    let id = user_token_id(token).ok_or(AuthError::BadToken)?;
    let record = store.token(id).await?.ok_or(AuthError::BadToken)?;
    if !hashes_equal(&record.hash, &Secret::new(token).hash()) {
        return Err(AuthError::BadToken);
    }
    if record.expires_at <= now {
        return Err(AuthError::Expired("token"));
    }
    let scope = match record.cluster {
        None => Scope::All,
        Some(c) => Scope::Cluster { id: ClusterId::parse(&c.id).ok_or(AuthError::BadToken)?, name: c.name },
    };
    Ok(Authenticated {
        identity: Identity { user: record.user, groups: record.groups, ..Default::default() },
        scope,
        method: AuthMethod::Token(id),
        expires_at: record.expires_at,
    })
}

/// The `Authorization` value of an HTTP request, if it is text.
pub fn authorization_header(headers: &HeaderMap) -> Option<&str> {
    headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{BoundCluster, FileStore, TokenRecord};
    use ferry::secret::{TokenKind, generate_token};

    async fn store_with_token(
        expires_in: i64,
        cluster: Option<BoundCluster>,
    ) -> (FileStore, Secret, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileStore::open(dir.path()).expect("open");
        let id = TokenId::new();
        let token = generate_token(TokenKind::User, &id).expect("random");
        let now = unix_now();
        store
            .create_token(TokenRecord {
                id: id.to_string(),
                hash: token.hash(),
                user: "alice".into(),
                groups: vec!["dev".into()],
                cluster,
                created_at: now,
                expires_at: now.saturating_add_signed(expires_in),
                created_by: ADMIN_USER.into(),
            })
            .await
            .expect("token");
        (store, token, dir)
    }

    #[tokio::test]
    async fn bearer_tokens_authenticate_until_they_expire() {
        let (store, token, _dir) = store_with_token(3600, None).await;
        let header = format!("Bearer {}", token.expose());
        let caller =
            authenticate(&store, &Peer::Anonymous, Some(&header)).await.expect("ok").expect("caller");
        assert_eq!(caller.identity.user, "alice");
        assert_eq!(caller.scope, Scope::All);
        assert!(matches!(caller.method, AuthMethod::Token(_)));
        assert!(authenticate(&store, &Peer::Anonymous, None).await.expect("ok").is_none());

        // The right id with the wrong secret, a made-up token, another kind.
        let t = token.expose();
        let last = if t.ends_with('0') { '1' } else { '0' };
        let forged = format!("Bearer {}{last}", &t[..t.len() - 1]);
        for h in [forged.as_str(), "Bearer nope", "Bearer ferryboot.x.y", "Basic abc"] {
            let r = authenticate(&store, &Peer::Anonymous, Some(h)).await;
            assert!(matches!(r, Err(AuthError::BadToken) | Ok(None)), "{h}: {r:?}");
        }
        let (store, token, _dir) = store_with_token(-1, None).await;
        let header = format!("Bearer {}", token.expose());
        assert!(matches!(
            authenticate(&store, &Peer::Anonymous, Some(&header)).await,
            Err(AuthError::Expired("token"))
        ));
    }

    #[tokio::test]
    async fn a_bound_token_is_scoped_and_certificates_win_over_tokens() {
        let cid = ClusterId::new();
        let bound = BoundCluster { name: "edge".into(), id: cid.to_string() };
        let (store, token, _dir) = store_with_token(3600, Some(bound)).await;
        let header = format!("Bearer {}", token.expose());
        let caller =
            authenticate(&store, &Peer::Anonymous, Some(&header)).await.expect("ok").expect("caller");
        assert_eq!(caller.bound_cluster(), Some(("edge", cid)));

        let cert_caller = Authenticated {
            identity: Identity { user: "bob".into(), ..Default::default() },
            scope: Scope::All,
            method: AuthMethod::ClientCert,
            expires_at: unix_now() + 60,
        };
        let got = authenticate(&store, &Peer::User(cert_caller.clone()), Some(&header)).await.expect("ok");
        assert_eq!(got, Some(cert_caller.clone()));
        let expired = Authenticated { expires_at: unix_now() - 1, ..cert_caller };
        assert!(authenticate(&store, &Peer::User(expired), None).await.is_err());
        let agent =
            Peer::Agent(AgentPeer { cluster_id: cid, serial: "01".into(), not_after: unix_now() + 60 });
        assert!(matches!(authenticate(&store, &agent, None).await, Err(AuthError::AgentCredential)));
        let replica = Peer::Replica("r-1".into());
        assert!(authenticate(&store, &replica, None).await.is_err(), "a replica is no caller");
    }
}

//! `ferry.v1.Access`: kubeconfigs, bearer tokens and grants.

use std::sync::Arc;

use ferry::identity::Identity;
use ferry::ids::TokenId;
use ferry::proto::v1::access_server::Access;
use ferry::proto::v1::{
    CreateTokenRequest, CreateTokenResponse, CredentialKind, Grant, GrantRequest, IssueKubeconfigRequest,
    IssueKubeconfigResponse, ListGrantsRequest, ListGrantsResponse, ListTokensRequest, ListTokensResponse,
    RevokeRequest, RevokeResponse, RevokeTokenRequest, Token, WhoAmIRequest, WhoAmIResponse,
};
use ferry::secret::{TokenKind, generate_token};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use super::{Actor, admin, audit, caller, lifetime, store_error, unknown_cluster};
use crate::access;
use crate::auth::ADMIN_GROUP;
use crate::config::MAX_CREDENTIAL_TTL;
use crate::kubeconfig::{Credential, KubeconfigSpec, render};
use crate::pki::CertScope;
use crate::state::HubState;
use crate::store::{ALL_CLUSTERS, BoundCluster, ClusterRecord, GrantRecord, Subject, TokenRecord, unix_now};

/// Longest user or group name accepted in a credential.
pub const MAX_NAME_LEN: usize = 256;
/// Most groups one credential may carry.
pub const MAX_GROUPS: usize = 64;

/// The `Access` service.
#[derive(Clone)]
pub struct AccessService {
    state: Arc<HubState>,
}

impl AccessService {
    /// A service over the hub's shared state.
    pub fn new(state: Arc<HubState>) -> Self {
        AccessService { state }
    }

    async fn cluster(&self, name: &str) -> Result<ClusterRecord, Status> {
        self.state.store.cluster(name).await.map_err(store_error)?.ok_or_else(|| unknown_cluster(name))
    }

    /// Checks an identity a credential is issued for: a user name that is
    /// not a Kubernetes system name, and no denied group.
    fn check_identity(&self, id: &Identity) -> Result<(), Status> {
        let printable =
            |s: &str| !s.is_empty() && s.len() <= MAX_NAME_LEN && !s.chars().any(char::is_control);
        if !printable(&id.user) || id.user.starts_with("system:") {
            return Err(Status::invalid_argument(format!("user name {:?} is not allowed", id.user)));
        }
        if id.groups.len() > MAX_GROUPS {
            return Err(Status::invalid_argument(format!("at most {MAX_GROUPS} groups")));
        }
        for g in &id.groups {
            if !printable(g) || self.state.identity_policy.denies_group(g) {
                return Err(Status::invalid_argument(format!("group {g:?} may not be used through Ferry")));
            }
        }
        Ok(())
    }
}

fn token_view(t: &TokenRecord) -> Token {
    Token {
        id: t.id.clone(),
        user: t.user.clone(),
        groups: t.groups.clone(),
        cluster: t.cluster.as_ref().map(|c| c.name.clone()).unwrap_or_default(),
        created_at_unix: t.created_at,
        expires_at_unix: t.expires_at,
        created_by: t.created_by.clone(),
    }
}

fn grant_view(g: &GrantRecord) -> Grant {
    let (user, group) = match &g.subject {
        Subject::User(u) => (u.clone(), String::new()),
        Subject::Group(gr) => (String::new(), gr.clone()),
    };
    Grant {
        cluster: g.cluster.clone(),
        user,
        group,
        allow_impersonate: g.allow_impersonate,
        created_at_unix: g.created_at,
        created_by: g.created_by.clone(),
    }
}

/// `user alice` or `group dev`, for audit events.
fn subject_text(subject: &Subject) -> String {
    match subject {
        Subject::User(u) => format!("user {u}"),
        Subject::Group(g) => format!("group {g}"),
    }
}

fn subject(user: &str, group: &str) -> Result<Subject, Status> {
    match (user.trim(), group.trim()) {
        (u, "") if !u.is_empty() => Ok(Subject::User(u.to_owned())),
        ("", g) if !g.is_empty() => Ok(Subject::Group(g.to_owned())),
        _ => Err(Status::invalid_argument("name exactly one of a user and a group")),
    }
}

#[tonic::async_trait]
impl Access for AccessService {
    async fn who_am_i(&self, request: Request<WhoAmIRequest>) -> Result<Response<WhoAmIResponse>, Status> {
        let who = caller(&self.state, &request).await?;
        Ok(Response::new(WhoAmIResponse {
            admin: who.is_admin(),
            auth_method: who.method.as_str().to_owned(),
            cluster: who.bound_cluster().map(|(c, _)| c.to_owned()).unwrap_or_default(),
            user: who.identity.user,
            groups: who.identity.groups,
        }))
    }

    async fn issue_kubeconfig(
        &self,
        request: Request<IssueKubeconfigRequest>,
    ) -> Result<Response<IssueKubeconfigResponse>, Status> {
        let who = caller(&self.state, &request).await?;
        let actor = Actor::of(&request, &who);
        let req = request.into_inner();
        let target = if req.user.is_empty() && req.groups.is_empty() {
            who.identity.clone()
        } else {
            let user = if req.user.is_empty() { who.identity.user.clone() } else { req.user.clone() };
            Identity { user, groups: req.groups.clone(), ..Default::default() }
        };
        if target != who.identity && !who.is_admin() {
            return Err(Status::permission_denied(format!(
                "only members of {ADMIN_GROUP:?} may issue kubeconfigs for another identity"
            )));
        }
        self.check_identity(&target)?;
        let record = self.cluster(&req.cluster).await?;
        if !who.is_admin()
            && access::check(self.state.store.as_ref(), &who, &record.name)
                .await
                .map_err(store_error)?
                .is_none()
        {
            return Err(Status::permission_denied(access::no_grant_message(&who, &record.name)));
        }
        let ttl =
            lifetime(req.ttl_seconds, self.state.limits.credential_ttl, MAX_CREDENTIAL_TTL, "credential")?;
        let id = record.cluster_id().ok_or_else(|| Status::internal("corrupt cluster id"))?;
        let server = format!("{}/clusters/{}", self.state.advertise_url.trim_end_matches('/'), record.name);
        let kind = CredentialKind::try_from(req.kind).unwrap_or(CredentialKind::Unspecified);
        let (kubeconfig, expires_at) = if kind == CredentialKind::Token {
            let token_id = TokenId::new();
            let secret =
                generate_token(TokenKind::User, &token_id).map_err(|_| Status::internal("no randomness"))?;
            let now = unix_now();
            let expires_at = now + ttl.as_secs();
            self.state
                .store
                .create_token(TokenRecord {
                    id: token_id.to_string(),
                    hash: secret.hash(),
                    user: target.user.clone(),
                    groups: target.groups.clone(),
                    cluster: Some(BoundCluster { name: record.name.clone(), id: record.id.clone() }),
                    created_at: now,
                    expires_at,
                    created_by: who.identity.user.clone(),
                })
                .await
                .map_err(store_error)?;
            let yaml = render(&KubeconfigSpec {
                name: &record.name,
                server: &server,
                ca_pem: self.state.ca.cert_pem(),
                credential: Credential::Token(secret.expose()),
            });
            (yaml, expires_at)
        } else {
            let scope = CertScope::Cluster { name: record.name.clone(), id: id.to_string() };
            let issued = self.state.ca.client_cert(&target, &scope, ttl).map_err(|e| {
                warn!(error = %e, "client certificate issuance failed");
                Status::internal("could not issue a client certificate")
            })?;
            let yaml = render(&KubeconfigSpec {
                name: &record.name,
                server: &server,
                ca_pem: self.state.ca.cert_pem(),
                credential: Credential::Cert { cert_pem: &issued.cert_pem, key_pem: issued.key_pem.expose() },
            });
            (yaml, issued.not_after)
        };
        info!(cluster = %record.name, user = %target.user, by = %who.identity.user, kind = ?kind, "kubeconfig issued");
        let what = if kind == CredentialKind::Token { "token" } else { "certificate" };
        let groups = target.groups.join(",");
        audit(
            &self.state,
            &actor,
            "kubeconfig.issue",
            &record.name,
            format!("user {} groups [{groups}] ({what}, {}s)", target.user, ttl.as_secs()),
        );
        Ok(Response::new(IssueKubeconfigResponse { kubeconfig, expires_at_unix: expires_at }))
    }

    async fn create_token(
        &self,
        request: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        let who = admin(&self.state, &request).await?;
        let actor = Actor::of(&request, &who);
        let req = request.into_inner();
        let identity = Identity { user: req.user.clone(), groups: req.groups.clone(), ..Default::default() };
        self.check_identity(&identity)?;
        let cluster = if req.cluster.is_empty() {
            None
        } else {
            let r = self.cluster(&req.cluster).await?;
            Some(BoundCluster { name: r.name, id: r.id })
        };
        let ttl = lifetime(req.ttl_seconds, self.state.limits.credential_ttl, MAX_CREDENTIAL_TTL, "token")?;
        let id = TokenId::new();
        let secret = generate_token(TokenKind::User, &id).map_err(|_| Status::internal("no randomness"))?;
        let now = unix_now();
        let record = TokenRecord {
            id: id.to_string(),
            hash: secret.hash(),
            user: req.user,
            groups: req.groups,
            cluster,
            created_at: now,
            expires_at: now + ttl.as_secs(),
            created_by: who.identity.user.clone(),
        };
        self.state.store.create_token(record.clone()).await.map_err(store_error)?;
        info!(token = %id, user = %record.user, by = %who.identity.user, "token created");
        let cluster = record.cluster.as_ref().map(|c| c.name.as_str()).unwrap_or_default();
        let target = format!("token {id} for user {} groups [{}]", record.user, record.groups.join(","));
        audit(&self.state, &actor, "token.create", cluster, target);
        Ok(Response::new(CreateTokenResponse {
            token: Some(token_view(&record)),
            secret: secret.expose().to_owned(),
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<ListTokensRequest>,
    ) -> Result<Response<ListTokensResponse>, Status> {
        admin(&self.state, &request).await?;
        let tokens = self.state.store.tokens().await.map_err(store_error)?;
        Ok(Response::new(ListTokensResponse { tokens: tokens.iter().map(token_view).collect() }))
    }

    async fn revoke_token(&self, request: Request<RevokeTokenRequest>) -> Result<Response<Token>, Status> {
        let who = admin(&self.state, &request).await?;
        let actor = Actor::of(&request, &who);
        let raw = request.into_inner().id;
        let id = TokenId::parse(raw.trim()).ok_or_else(|| {
            Status::invalid_argument(format!("{raw:?} is not a token id (see ferryctl token list)"))
        })?;
        let removed = self
            .state
            .store
            .delete_token(id)
            .await
            .map_err(store_error)?
            .ok_or_else(|| Status::not_found(format!("no token with id {id}")))?;
        info!(token = %id, by = %who.identity.user, "token revoked");
        let cluster = removed.cluster.as_ref().map(|c| c.name.as_str()).unwrap_or_default();
        audit(&self.state, &actor, "token.revoke", cluster, format!("token {id} of user {}", removed.user));
        Ok(Response::new(token_view(&removed)))
    }

    async fn grant(&self, request: Request<GrantRequest>) -> Result<Response<Grant>, Status> {
        let who = admin(&self.state, &request).await?;
        let actor = Actor::of(&request, &who);
        let req = request.into_inner();
        let subject = subject(&req.user, &req.group)?;
        if let Subject::Group(g) = &subject
            && self.state.identity_policy.denies_group(g)
        {
            return Err(Status::invalid_argument(format!("group {g:?} may not be used through Ferry")));
        }
        if req.cluster != ALL_CLUSTERS {
            self.cluster(&req.cluster).await?;
        }
        let grant = GrantRecord {
            cluster: req.cluster,
            subject,
            allow_impersonate: req.allow_impersonate,
            created_at: unix_now(),
            created_by: who.identity.user.clone(),
        };
        self.state.store.put_grant(grant.clone()).await.map_err(store_error)?;
        info!(cluster = %grant.cluster, subject = ?grant.subject, by = %who.identity.user, "grant created");
        let extra = if grant.allow_impersonate { " (may impersonate)" } else { "" };
        audit(
            &self.state,
            &actor,
            "grant.create",
            &grant.cluster,
            format!("{}{extra}", subject_text(&grant.subject)),
        );
        Ok(Response::new(grant_view(&grant)))
    }

    async fn revoke(&self, request: Request<RevokeRequest>) -> Result<Response<RevokeResponse>, Status> {
        let who = admin(&self.state, &request).await?;
        let actor = Actor::of(&request, &who);
        let req = request.into_inner();
        let subject = subject(&req.user, &req.group)?;
        let removed =
            self.state.store.delete_grant(&req.cluster, &subject).await.map_err(store_error)?.ok_or_else(
                || Status::not_found(format!("no grant for {subject:?} on cluster {:?}", req.cluster)),
            )?;
        info!(cluster = %removed.cluster, subject = ?removed.subject, by = %who.identity.user, "grant revoked");
        audit(&self.state, &actor, "grant.revoke", &removed.cluster, subject_text(&removed.subject));
        Ok(Response::new(RevokeResponse { grant: Some(grant_view(&removed)) }))
    }

    async fn list_grants(
        &self,
        request: Request<ListGrantsRequest>,
    ) -> Result<Response<ListGrantsResponse>, Status> {
        let who = caller(&self.state, &request).await?;
        let cluster = request.into_inner().cluster;
        let grants = self.state.store.grants().await.map_err(store_error)?;
        let grants = grants
            .iter()
            .filter(|g| cluster.is_empty() || g.cluster == cluster || g.cluster == ALL_CLUSTERS)
            .filter(|g| {
                who.is_admin()
                    || match &g.subject {
                        Subject::User(u) => *u == who.identity.user,
                        Subject::Group(gr) => who.identity.groups.contains(gr),
                    }
            })
            .map(grant_view)
            .collect();
        Ok(Response::new(ListGrantsResponse { grants }))
    }
}

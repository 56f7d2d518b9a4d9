//! The console's JSON API under `/ui/api/`: sign-in and sign-out, then one
//! route per management call. Each call goes to the same `Clusters` and
//! `Access` service code gRPC callers reach, made with the session's
//! credential, so authentication, authorization, validation and limits are
//! the management API's own; only the shapes (JSON, HTTP codes) are the
//! console's.
//!
//! | route | call |
//! | --- | --- |
//! | `GET/POST/DELETE session` | who is signed in / sign in / sign out |
//! | `GET clusters`, `GET clusters/NAME` | `List`, `Get` |
//! | `GET clusters/events` | `Watch`, as server-sent events |
//! | `POST clusters` | `Register`, plus a one-time manifest link |
//! | `POST clusters/NAME/approve`, `.../deny`, `DELETE clusters/NAME` | `Approve`, `Deny`, `Delete` |
//! | `GET/POST/DELETE grants` | `ListGrants`, `Grant`, `Revoke` |
//! | `GET/POST tokens`, `DELETE tokens/ID` | `ListTokens`, `CreateToken`, `RevokeToken` |
//! | `POST kubeconfig` | `IssueKubeconfig` for the signed-in user |

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ferry::proto::v1 as pb;
use ferry::proto::v1::access_server::Access;
use ferry::proto::v1::clusters_server::Clusters;
use http::{HeaderMap, Method, StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};
use tonic::{Code, Status};
use tracing::info;

use super::session::{Credential, Session, SessionError};
use super::{COOKIE, Console, Reply, cookie, error, json as reply_json, session_cookie};
use crate::api::valid_cluster_name;
use crate::auth::{self, AuthError, Peer};
use crate::store::unix_now;

/// One API request, read whole.
pub struct ApiRequest<'a> {
    /// Method.
    pub method: Method,
    /// Path below `/ui/api/`.
    pub path: String,
    /// Query string.
    pub query: Option<&'a str>,
    /// Body (at most [`super::MAX_BODY`] bytes).
    pub body: &'a [u8],
    /// The browser's address, as the hub's listener saw it.
    pub client: Option<crate::gateway::ClientAddr>,
}

impl ApiRequest<'_> {
    /// The body as JSON; a boxed 400 answer when it is not (boxed: an
    /// answer is large, and the error path is the rare one).
    fn parse<T: for<'de> Deserialize<'de>>(&self) -> Result<T, Box<Reply>> {
        serde_json::from_slice(self.body)
            .map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}"))))
    }

    pub(crate) fn query_param(&self, name: &str) -> Option<String> {
        url_query(self.query.unwrap_or(""), name)
    }
}

/// The value of `name` in a query string (percent-decoded).
pub fn url_query(query: &str, name: &str) -> Option<String> {
    query.split('&').filter_map(|p| p.split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| decode(v))
}

fn decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The HTTP code for a management call's refusal.
pub fn http_code(code: Code) -> StatusCode {
    match code {
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn refused(s: Status) -> Reply {
    error(http_code(s.code()), s.message())
}

/// The phase as people read it (`Ready`, `NotReady`, ...).
pub fn phase_name(phase: i32) -> &'static str {
    match pb::ClusterPhase::try_from(phase).unwrap_or(pb::ClusterPhase::Unspecified) {
        pb::ClusterPhase::Pending => "Pending",
        pb::ClusterPhase::Ready => "Ready",
        pb::ClusterPhase::NotReady => "NotReady",
        pb::ClusterPhase::Offline => "Offline",
        pb::ClusterPhase::Denied => "Denied",
        pb::ClusterPhase::Unspecified => "Unknown",
    }
}

/// A cluster as the console's pages read it.
pub fn cluster_json(c: &pb::Cluster) -> Value {
    let labels: BTreeMap<&String, &String> = c.labels.iter().collect();
    json!({
        "name": c.name,
        "id": c.id,
        "phase": phase_name(c.phase),
        "reason": c.reason,
        "phaseSince": c.phase_since_unix,
        "connected": c.connected,
        "agents": c.agents,
        "version": c.kubernetes_version,
        "platform": c.platform,
        "nodes": c.nodes.map(|n| json!({"ready": n.ready, "notReady": n.not_ready})),
        "labels": labels,
        "lastSeen": c.last_seen_unix,
        "createdAt": c.created_at_unix,
        "approval": match pb::ApprovalMode::try_from(c.approval).unwrap_or(pb::ApprovalMode::Unspecified) {
            pb::ApprovalMode::Manual => "manual",
            _ => "auto",
        },
        "missingPermissions": c.missing_permissions,
        "history": c.history.iter().map(|h| json!({
            "phase": phase_name(h.phase), "reason": h.reason, "at": h.at_unix,
        })).collect::<Vec<_>>(),
        "replicas": c.replicas.iter().map(|r| json!({
            "agentId": r.agent_id,
            "agentVersion": r.agent_version,
            "connectedAt": r.connected_at_unix,
            "lastHeartbeatMs": r.last_heartbeat_unix_ms,
            "rttMicros": r.heartbeat_rtt_micros,
            "apiserverReachable": r.apiserver_reachable,
            "apiserverError": r.apiserver_error,
        })).collect::<Vec<_>>(),
        "revision": c.revision,
    })
}

fn grant_json(g: &pb::Grant) -> Value {
    json!({
        "cluster": g.cluster, "user": g.user, "group": g.group,
        "allowImpersonate": g.allow_impersonate, "createdAt": g.created_at_unix, "createdBy": g.created_by,
    })
}

fn token_json(t: &pb::Token) -> Value {
    json!({
        "id": t.id, "user": t.user, "groups": t.groups, "cluster": t.cluster,
        "createdAt": t.created_at_unix, "expiresAt": t.expires_at_unix, "createdBy": t.created_by,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    certificate: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RegisterBody {
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    approval: String,
    #[serde(default)]
    admin_group: String,
    #[serde(default)]
    token_ttl_seconds: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct GrantBody {
    cluster: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    group: String,
    #[serde(default)]
    allow_impersonate: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TokenBody {
    user: String,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    ttl_seconds: u32,
    #[serde(default)]
    cluster: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct KubeconfigBody {
    cluster: String,
    #[serde(default)]
    auth: String,
    #[serde(default)]
    ttl_seconds: u32,
}

impl Console {
    /// A management call's request, made with the session's credential.
    /// The call is audited as made through the console, from the browser's
    /// address.
    pub(crate) fn grpc<T>(&self, session: &Session, req: &ApiRequest<'_>, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.extensions_mut().insert(crate::api::Via::CONSOLE);
        if let Some(client) = req.client {
            r.extensions_mut().insert(client);
        }
        match &session.credential {
            Credential::Token(t) => {
                if let Ok(v) = format!("Bearer {}", t.expose()).parse() {
                    r.metadata_mut().insert("authorization", v);
                }
            }
            Credential::Certificate(caller) => {
                r.extensions_mut().insert(Peer::User(caller.clone()));
            }
        }
        r
    }

    /// `/ui/api/session`: who is signed in, sign in, sign out.
    pub(crate) async fn session_call(&self, peer: &Peer, headers: &HeaderMap, req: &ApiRequest<'_>) -> Reply {
        match req.method {
            Method::GET => match self.session_of(headers) {
                Some(s) => self.whoami(&s, req).await,
                None => error(StatusCode::UNAUTHORIZED, "not signed in"),
            },
            Method::POST => self.sign_in(peer, headers, req).await,
            Method::DELETE => {
                let Some(s) = self.session_of(headers) else {
                    return error(StatusCode::UNAUTHORIZED, "not signed in");
                };
                let sent = headers.get(super::CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
                if !s.csrf_matches(sent) {
                    return error(StatusCode::FORBIDDEN, "missing or wrong X-CSRF-Token header");
                }
                if let Some(id) = cookie(headers, COOKIE) {
                    self.sessions.remove(&id);
                }
                info!(user = %s.user, "console sign-out");
                let mut r = reply_json(StatusCode::OK, &json!({"signedOut": true}));
                r.headers_mut().insert(header::SET_COOKIE, session_cookie("", Duration::ZERO));
                r
            }
            _ => error(StatusCode::METHOD_NOT_ALLOWED, "session answers GET, POST and DELETE"),
        }
    }

    async fn sign_in(&self, peer: &Peer, headers: &HeaderMap, req: &ApiRequest<'_>) -> Reply {
        let body: SignIn = match req.parse() {
            Ok(b) => b,
            Err(r) => return *r,
        };
        let (caller, credential) = match (body.token, body.certificate) {
            (Some(token), false) => {
                let token = token.trim().to_owned();
                let header = format!("Bearer {token}");
                match auth::authenticate(self.state.store.as_ref(), &Peer::Anonymous, Some(&header)).await {
                    Ok(Some(c)) => (c, Credential::Token(ferry::secret::Secret::new(token))),
                    Ok(None) => {
                        return error(StatusCode::BAD_REQUEST, "paste a hub bearer token (ferryuser.…)");
                    }
                    Err(e) => return auth_refusal(e),
                }
            }
            (None, true) => match peer {
                Peer::Anonymous => {
                    return error(
                        StatusCode::UNAUTHORIZED,
                        "your browser presented no client certificate from the hub CA: import one (see docs/console.md) or sign in with a token",
                    );
                }
                peer => match auth::authenticate(self.state.store.as_ref(), peer, None).await {
                    Ok(Some(c)) => (c.clone(), Credential::Certificate(c)),
                    Ok(None) => return error(StatusCode::UNAUTHORIZED, "no client certificate"),
                    Err(e) => return auth_refusal(e),
                },
            },
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "sign in with either {\"token\": \"...\"} or {\"certificate\": true}",
                );
            }
        };
        if let Some((cluster, _)) = caller.bound_cluster() {
            return error(
                StatusCode::FORBIDDEN,
                format!(
                    "this credential is bound to cluster {cluster:?} (an issued kubeconfig's) and cannot sign in to the console; use a hub-wide token (ferryctl token create)"
                ),
            );
        }
        if let Some(old) = cookie(headers, COOKIE) {
            self.sessions.remove(&old);
        }
        let left = Duration::from_secs(caller.expires_at.saturating_sub(unix_now()));
        let (id, session) =
            match self.sessions.create(&caller.identity.user, credential, left, Instant::now()) {
                Ok(s) => s,
                Err(SessionError::Full) => {
                    return error(StatusCode::SERVICE_UNAVAILABLE, SessionError::Full.to_string());
                }
                Err(e @ SessionError::Expired) => return error(StatusCode::UNAUTHORIZED, e.to_string()),
                Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            };
        info!(user = %caller.identity.user, method = caller.method.as_str(), "console sign-in");
        let mut r = self.whoami(&session, req).await;
        if r.status().is_success() {
            let age = session.expires.saturating_duration_since(Instant::now());
            r.headers_mut().insert(header::SET_COOKIE, session_cookie(id.expose(), age));
        }
        r
    }

    async fn whoami(&self, s: &Session, req: &ApiRequest<'_>) -> Reply {
        match self.access.who_am_i(self.grpc(s, req, pb::WhoAmIRequest {})).await {
            Ok(w) => {
                let w = w.into_inner();
                reply_json(
                    StatusCode::OK,
                    &json!({
                        "user": w.user, "groups": w.groups, "admin": w.admin, "method": w.auth_method,
                        "csrf": s.csrf.expose(),
                        "expiresIn": s.expires.saturating_duration_since(Instant::now()).as_secs(),
                        "hubUrl": self.state.advertise_url,
                    }),
                )
            }
            Err(s) => refused(s),
        }
    }

    /// Every other route, for a signed-in session.
    pub(crate) async fn call(
        &self,
        s: &std::sync::Arc<Session>,
        headers: &HeaderMap,
        req: &ApiRequest<'_>,
    ) -> Reply {
        let segments: Vec<&str> = req.path.split('/').collect();
        match (&req.method, segments.as_slice()) {
            (&Method::GET, ["whoami"]) => self.whoami(s, req).await,
            (&Method::GET, ["clusters"]) => {
                let selector = req.query_param("selector").unwrap_or_default();
                let msg = pb::ListClustersRequest {
                    label_selector: selector,
                    page_size: 0,
                    page_token: String::new(),
                };
                match self.clusters.list(self.grpc(s, req, msg)).await {
                    Ok(r) => {
                        let r = r.into_inner();
                        let clusters: Vec<Value> = r.clusters.iter().map(cluster_json).collect();
                        reply_json(
                            StatusCode::OK,
                            &json!({"clusters": clusters, "revision": r.revision, "more": !r.next_page_token.is_empty()}),
                        )
                    }
                    Err(e) => refused(e),
                }
            }
            (&Method::GET, ["clusters", "events"]) => self.events(s, headers, req).await,
            (&Method::POST, ["clusters"]) => self.register(s, req).await,
            (method, ["clusters", name]) => {
                if !valid_cluster_name(name) {
                    return error(StatusCode::BAD_REQUEST, format!("{name:?} is not a cluster name"));
                }
                let named = pb::ClusterNameRequest { name: (*name).to_owned() };
                let result = match *method {
                    Method::GET => self.clusters.get(self.grpc(s, req, pb::GetClusterRequest { name: named.name })).await.map(|r| cluster_json(&r.into_inner())),
                    Method::DELETE => self.clusters.delete(self.grpc(s, req, named)).await.map(|r| {
                        let r = r.into_inner();
                        json!({"deleted": r.cluster.as_ref().map(cluster_json), "disconnectedAgents": r.disconnected_agents})
                    }),
                    _ => return error(StatusCode::METHOD_NOT_ALLOWED, "a cluster answers GET and DELETE"),
                };
                result.map_or_else(refused, |v| reply_json(StatusCode::OK, &v))
            }
            (&Method::POST, ["clusters", name, action]) => {
                let named = pb::ClusterNameRequest { name: (*name).to_owned() };
                let result = match *action {
                    "approve" => self.clusters.approve(self.grpc(s, req, named)).await,
                    "deny" => self.clusters.deny(self.grpc(s, req, named)).await,
                    _ => {
                        return error(
                            StatusCode::NOT_FOUND,
                            format!("no action {action:?}: approve or deny"),
                        );
                    }
                };
                result.map_or_else(refused, |r| reply_json(StatusCode::OK, &cluster_json(&r.into_inner())))
            }
            (&Method::GET, ["grants"]) => {
                let cluster = req.query_param("cluster").unwrap_or_default();
                match self.access.list_grants(self.grpc(s, req, pb::ListGrantsRequest { cluster })).await {
                    Ok(r) => reply_json(
                        StatusCode::OK,
                        &json!({"grants": r.into_inner().grants.iter().map(grant_json).collect::<Vec<_>>()}),
                    ),
                    Err(e) => refused(e),
                }
            }
            (&Method::POST, ["grants"]) => {
                let b: GrantBody = match req.parse() {
                    Ok(b) => b,
                    Err(r) => return *r,
                };
                let msg = pb::GrantRequest {
                    cluster: b.cluster,
                    user: b.user,
                    group: b.group,
                    allow_impersonate: b.allow_impersonate,
                };
                self.access
                    .grant(self.grpc(s, req, msg))
                    .await
                    .map_or_else(refused, |r| reply_json(StatusCode::CREATED, &grant_json(&r.into_inner())))
            }
            (&Method::DELETE, ["grants"]) => {
                let msg = pb::RevokeRequest {
                    cluster: req.query_param("cluster").unwrap_or_default(),
                    user: req.query_param("user").unwrap_or_default(),
                    group: req.query_param("group").unwrap_or_default(),
                };
                self.access.revoke(self.grpc(s, req, msg)).await.map_or_else(refused, |r| {
                    reply_json(
                        StatusCode::OK,
                        &json!({"revoked": r.into_inner().grant.as_ref().map(grant_json)}),
                    )
                })
            }
            (&Method::GET, ["tokens"]) => {
                match self.access.list_tokens(self.grpc(s, req, pb::ListTokensRequest {})).await {
                    Ok(r) => reply_json(
                        StatusCode::OK,
                        &json!({"tokens": r.into_inner().tokens.iter().map(token_json).collect::<Vec<_>>()}),
                    ),
                    Err(e) => refused(e),
                }
            }
            (&Method::POST, ["tokens"]) => {
                let b: TokenBody = match req.parse() {
                    Ok(b) => b,
                    Err(r) => return *r,
                };
                let msg = pb::CreateTokenRequest {
                    user: b.user,
                    groups: b.groups,
                    ttl_seconds: b.ttl_seconds,
                    cluster: b.cluster,
                };
                self.access.create_token(self.grpc(s, req, msg)).await.map_or_else(refused, |r| {
                    let r = r.into_inner();
                    reply_json(
                        StatusCode::CREATED,
                        &json!({"token": r.token.as_ref().map(token_json), "secret": r.secret}),
                    )
                })
            }
            (&Method::DELETE, ["tokens", id]) => {
                let msg = pb::RevokeTokenRequest { id: (*id).to_owned() };
                self.access.revoke_token(self.grpc(s, req, msg)).await.map_or_else(refused, |r| {
                    reply_json(StatusCode::OK, &json!({"revoked": token_json(&r.into_inner())}))
                })
            }
            (&Method::POST, ["kubeconfig"]) => {
                let b: KubeconfigBody = match req.parse() {
                    Ok(b) => b,
                    Err(r) => return *r,
                };
                let kind = match b.auth.as_str() {
                    "" | "cert" => pb::CredentialKind::Cert,
                    "token" => pb::CredentialKind::Token,
                    other => return error(StatusCode::BAD_REQUEST, format!("auth {other:?}: cert or token")),
                };
                let msg = pb::IssueKubeconfigRequest {
                    cluster: b.cluster.clone(),
                    user: String::new(),
                    groups: Vec::new(),
                    kind: kind as i32,
                    ttl_seconds: b.ttl_seconds,
                };
                self.access.issue_kubeconfig(self.grpc(s, req, msg)).await.map_or_else(refused, |r| {
                    let r = r.into_inner();
                    reply_json(StatusCode::OK, &json!({
                        "kubeconfig": r.kubeconfig, "expiresAt": r.expires_at_unix, "filename": format!("{}.kubeconfig", b.cluster),
                    }))
                })
            }
            _ => error(StatusCode::NOT_FOUND, format!("no console API {} /ui/api/{}", req.method, req.path)),
        }
    }

    /// `POST clusters`: `Register`, and a one-time link to its manifest.
    async fn register(&self, s: &Session, req: &ApiRequest<'_>) -> Reply {
        let b: RegisterBody = match req.parse() {
            Ok(b) => b,
            Err(r) => return *r,
        };
        let approval = match b.approval.as_str() {
            "" => pb::ApprovalMode::Unspecified,
            "auto" => pb::ApprovalMode::Auto,
            "manual" => pb::ApprovalMode::Manual,
            other => return error(StatusCode::BAD_REQUEST, format!("approval {other:?}: auto or manual")),
        };
        let msg = pb::RegisterRequest {
            name: b.name,
            token_ttl_seconds: b.token_ttl_seconds,
            approval: approval as i32,
            labels: b.labels.into_iter().collect(),
            admin_group: b.admin_group,
        };
        let r = match self.clusters.register(self.grpc(s, req, msg)).await {
            Ok(r) => r.into_inner(),
            Err(e) => return refused(e),
        };
        let token_left = Duration::from_secs(r.token_expires_at_unix.saturating_sub(unix_now()));
        let Some((secret, expires)) = self.links.insert(r.manifest.clone(), token_left, Instant::now())
        else {
            return error(StatusCode::INTERNAL_SERVER_ERROR, "no randomness for a manifest link");
        };
        let link_expires = unix_now() + expires.saturating_duration_since(Instant::now()).as_secs();
        let url =
            format!("{}/ui/manifests/{}", self.state.advertise_url.trim_end_matches('/'), secret.expose());
        let name = r.cluster.as_ref().map(|c| c.name.clone()).unwrap_or_default();
        info!(cluster = %name, by = %s.user, "console: cluster registered, manifest link made");
        reply_json(
            StatusCode::CREATED,
            &json!({
                "cluster": r.cluster.as_ref().map(cluster_json),
                "manifestUrl": url,
                "manifestUrlExpiresAt": link_expires,
                "tokenExpiresAt": r.token_expires_at_unix,
                "manifest": r.manifest,
                "hubUrl": r.hub_url,
                "hubCaPem": r.hub_ca_pem,
            }),
        )
    }
}

/// A refused sign-in.
fn auth_refusal(e: AuthError) -> Reply {
    match e {
        AuthError::Store(_) => error(StatusCode::SERVICE_UNAVAILABLE, "hub store unavailable"),
        e => error(StatusCode::UNAUTHORIZED, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_found_and_decoded() {
        assert_eq!(url_query("a=1&cluster=edge%2D1&user=a+b", "cluster").as_deref(), Some("edge-1"));
        assert_eq!(url_query("a=1&user=a+b", "user").as_deref(), Some("a b"));
        assert_eq!(url_query("a=1", "b"), None);
        assert_eq!(url_query("g=ferry%3Aadmins", "g").as_deref(), Some("ferry:admins"));
        assert_eq!(url_query("g=%zz%4", "g").as_deref(), Some("%zz%4"));
    }

    #[test]
    fn refusals_keep_their_meaning_over_http() {
        assert_eq!(http_code(Code::Unauthenticated), StatusCode::UNAUTHORIZED);
        assert_eq!(http_code(Code::PermissionDenied), StatusCode::FORBIDDEN);
        assert_eq!(http_code(Code::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(http_code(Code::InvalidArgument), StatusCode::BAD_REQUEST);
        assert_eq!(http_code(Code::ResourceExhausted), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(http_code(Code::Unavailable), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(phase_name(pb::ClusterPhase::NotReady as i32), "NotReady");
    }
}

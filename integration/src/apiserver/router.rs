//! The request pipeline, in kube-apiserver's order: record, authenticate,
//! check and apply impersonation, authorize, read the body, then route.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;

use super::auth::{Identity, authenticate, impersonation};
use super::authz;
use super::body::{self, ResponseBody};
use super::discovery;
use super::handlers::{self, Target};
use super::logs;
use super::media::{DiscoveryVersion, Representation, negotiate};
use super::query::Query;
use super::record::{Arrival, RecordGuard};
use super::request_info::{RequestInfo, ResourceRequest, classify};
use super::resources::ResourceKind;
use super::reviews;
use super::server::State;
use super::status::ApiError;
use super::streaming::{self, Subresource};
use super::test_endpoints;
use super::tokens;

/// The largest request body accepted (kube-apiserver's 3 MiB).
pub(crate) const MAX_REQUEST_BODY: usize = 3 * 1024 * 1024;

/// One request, authenticated and with its body read.
pub(crate) struct Ctx<'a> {
    pub state: &'a Arc<State>,
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
    pub query: &'a Query,
    pub identity: &'a Identity,
    pub body: Bytes,
    /// The connection upgrade of an HTTP/1.1 request that asks for one
    /// (taken by the streaming subresources).
    pub upgrade: &'a Mutex<Option<OnUpgrade>>,
    /// The request's record (a streaming session keeps it until the
    /// upgraded connection ends).
    pub guard: &'a Arc<RecordGuard>,
}

fn version_name(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/?",
    }
}

fn is_test_path(path: &str) -> bool {
    path == "/_test" || path.starts_with("/_test/")
}

/// Serves one request; never fails (failures are `Status` responses).
/// The user a connection's verified client certificate names, put in every
/// request's extensions.
#[derive(Clone, Debug)]
pub(crate) struct ClientCertUser(pub super::auth::UserInfo);

pub(crate) async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<ResponseBody> {
    let (mut parts, body) = req.into_parts();
    let upgrade = Mutex::new(parts.extensions.remove::<OnUpgrade>());
    let guard = if is_test_path(parts.uri.path()) {
        RecordGuard::disabled()
    } else {
        state.recorder.start(Arrival {
            method: parts.method.to_string(),
            path: parts.uri.path().to_string(),
            authority: parts.uri.authority().map(|a| a.to_string()).or_else(|| {
                parts
                    .headers
                    .get(http::header::HOST)
                    .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
            }),
            query: parts.uri.query().map(str::to_string),
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect(),
            http_version: version_name(parts.version).to_string(),
        })
    };
    let guard = Arc::new(guard);
    let resp = match serve(&state, &parts, body, &guard, &upgrade).await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::debug!(method = %parts.method, path = parts.uri.path(), code = e.code.as_u16(), message = %e.message, "request failed");
            body::error(&e)
        }
    };
    guard.set_status(resp.status().as_u16());
    let (head, b) = resp.into_parts();
    if head.status == StatusCode::SWITCHING_PROTOCOLS {
        // The streaming session holds the record until its connection ends.
        return Response::from_parts(head, b);
    }
    Response::from_parts(head, b.with_guard(guard))
}

async fn read_body(body: Incoming, guard: &RecordGuard) -> Result<Bytes, ApiError> {
    match Limited::new(body, MAX_REQUEST_BODY).collect().await {
        Ok(collected) => {
            let bytes = collected.to_bytes();
            guard.set_body(&bytes);
            Ok(bytes)
        }
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::too_large(MAX_REQUEST_BODY)),
        Err(e) => Err(ApiError::bad_request(format!("reading the request body failed: {e}"))),
    }
}

async fn serve(
    state: &Arc<State>,
    parts: &Parts,
    body: Incoming,
    guard: &Arc<RecordGuard>,
    upgrade: &Mutex<Option<OnUpgrade>>,
) -> Result<Response<ResponseBody>, ApiError> {
    let client_cert = parts.extensions.get::<ClientCertUser>().map(|c| &c.0);
    let (requester, credential) =
        authenticate(&parts.headers, client_cert, state.admin_token.expose(), |t| {
            state.service_account_user(t)
        })?;
    guard.set_requester(&requester);
    let identity = match impersonation(&parts.headers)? {
        None => Identity::direct(requester, credential),
        Some(imp) => {
            authz::authorize_impersonation(state, &requester, &imp)?;
            Identity { user: imp.effective_user(), requester, impersonated: true, credential }
        }
    };
    guard.set_user(&identity.user, identity.impersonated);
    let path = parts.uri.path();
    let query = Query::parse(parts.uri.query());
    let info = if is_test_path(path) {
        let info =
            RequestInfo::NonResource { path: path.to_string(), verb: parts.method.as_str().to_lowercase() };
        if !identity.is_admin() {
            return Err(authz::forbidden(&identity.user.username, &info, ""));
        }
        info
    } else {
        classify(&parts.method, path, &query)
    };
    authz::authorize(state, &identity.user, &info)?;
    if let RequestInfo::Resource(r) = &info
        && r.verb != "create"
        && r.resource == "pods"
        && Subresource::parse(&r.subresource).is_some()
    {
        // WebSocket streaming uses GET: like kube-apiserver 1.34+ (with
        // AuthorizePodWebsocketUpgradeCreatePermission), also require the
        // `create` that the SPDY POST needs.
        let create = ResourceRequest { verb: "create".to_string(), ..r.clone() };
        authz::authorize(state, &identity.user, &RequestInfo::Resource(create))?;
    }
    let body = read_body(body, guard).await?;
    let ctx = Ctx {
        state,
        method: &parts.method,
        headers: &parts.headers,
        query: &query,
        identity: &identity,
        body,
        upgrade,
        guard,
    };
    if is_test_path(path) {
        return test_endpoints::serve(&ctx, path);
    }
    match info {
        RequestInfo::NonResource { .. } => non_resource(&ctx, path),
        RequestInfo::Resource(_) => resource(&ctx, path),
    }
}

fn get_only(ctx: &Ctx<'_>) -> Result<(), ApiError> {
    if matches!(*ctx.method, Method::GET | Method::HEAD) {
        Ok(())
    } else {
        Err(ApiError::method_not_allowed())
    }
}

fn ok_json(value: &serde_json::Value) -> Response<ResponseBody> {
    body::json(StatusCode::OK, value)
}

fn discovery_doc(
    ctx: &Ctx<'_>,
    legacy: impl FnOnce() -> serde_json::Value,
    aggregated: impl FnOnce(DiscoveryVersion) -> serde_json::Value,
) -> Result<Response<ResponseBody>, ApiError> {
    let offered = [
        Representation::Discovery(DiscoveryVersion::V2),
        Representation::Discovery(DiscoveryVersion::V2Beta1),
        Representation::Json,
    ];
    match negotiate(ctx.headers, &offered) {
        Some(Representation::Discovery(v)) => {
            Ok(body::json_as(StatusCode::OK, &v.content_type(), &aggregated(v)))
        }
        Some(_) => Ok(ok_json(&legacy())),
        None => Err(ApiError::not_acceptable()),
    }
}

fn non_resource(ctx: &Ctx<'_>, path: &str) -> Result<Response<ResponseBody>, ApiError> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        [check @ ("healthz" | "livez" | "readyz"), ..] => {
            get_only(ctx)?;
            let passing = if *check == "readyz" { ctx.state.ready() } else { ctx.state.live() };
            if passing {
                Ok(body::respond(StatusCode::OK, "text/plain; charset=utf-8", ResponseBody::full("ok")))
            } else {
                // What kube-apiserver answers when etcd is unreachable.
                let text = format!(
                    "[+]ping ok\n[+]log ok\n[-]etcd failed: reason withheld\n[+]poststarthook/start-apiserver-admission-initializer ok\n{check} check failed\n"
                );
                Ok(body::respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain; charset=utf-8",
                    ResponseBody::full(text),
                ))
            }
        }
        ["version"] => {
            get_only(ctx)?;
            Ok(ok_json(&discovery::version()))
        }
        ["api"] => {
            get_only(ctx)?;
            discovery_doc(
                ctx,
                || discovery::api_versions(&ctx.state.server_address),
                discovery::aggregated_core,
            )
        }
        ["apis"] => {
            get_only(ctx)?;
            discovery_doc(ctx, discovery::api_group_list, discovery::aggregated_groups)
        }
        ["api", "v1"] => {
            get_only(ctx)?;
            Ok(ok_json(&discovery::resource_list("", "v1")))
        }
        ["apis", group] => {
            let g = discovery::group(group, None).ok_or_else(ApiError::no_route)?;
            get_only(ctx)?;
            Ok(ok_json(&discovery::api_group(g)))
        }
        ["apis", group, version] => {
            let g = discovery::group(group, Some(version)).ok_or_else(ApiError::no_route)?;
            get_only(ctx)?;
            Ok(ok_json(&discovery::resource_list(g.name, version)))
        }
        ["openapi", "v2"] => {
            get_only(ctx)?;
            let accept =
                ctx.headers.get(http::header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or_default();
            if accept.contains("application/com.github.proto-openapi.spec.v2") {
                Ok(body::respond(
                    StatusCode::OK,
                    "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
                    ResponseBody::full(discovery::openapi_v2_protobuf()),
                ))
            } else {
                Ok(ok_json(&discovery::openapi_v2_json()))
            }
        }
        ["openapi", "v3"] => {
            get_only(ctx)?;
            Ok(ok_json(&discovery::openapi_v3_root()))
        }
        ["openapi", "v3", rest @ ..] => {
            let doc = discovery::openapi_v3_doc(&rest.join("/")).ok_or_else(ApiError::no_route)?;
            get_only(ctx)?;
            Ok(ok_json(&doc))
        }
        _ => Err(ApiError::no_route()),
    }
}

fn resource(ctx: &Ctx<'_>, path: &str) -> Result<Response<ResponseBody>, ApiError> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["api", "v1", rest @ ..] => objects(ctx, "", rest),
        ["apis", group, version, rest @ ..] => {
            let g = discovery::group(group, Some(version)).ok_or_else(ApiError::no_route)?;
            let review = match rest {
                [resource] => g.reviews.iter().find(|(plural, _, _)| plural == resource),
                _ => None,
            };
            let Some((review, _, _)) = review else { return objects(ctx, g.name, rest) };
            if *ctx.method != Method::POST {
                return Err(ApiError::method_not_allowed());
            }
            match *review {
                "selfsubjectreviews" => reviews::self_subject_review(ctx, version),
                "subjectaccessreviews" => reviews::subject_access_review(ctx),
                _ => reviews::self_subject_access_review(ctx, version),
            }
        }
        _ => Err(ApiError::no_route()),
    }
}

/// Paths of stored objects (and their subresources) in one API group.
fn objects(ctx: &Ctx<'_>, group: &str, rest: &[&str]) -> Result<Response<ResponseBody>, ApiError> {
    let kind = |plural: &str, namespaced: bool| {
        ResourceKind::from_plural(group, plural)
            .filter(|k| k.namespaced() == namespaced)
            .ok_or_else(ApiError::no_route)
    };
    let core = group.is_empty();
    let target = match rest {
        ["namespaces", ns, "pods", name, sub] if core => {
            return match *sub {
                "log" => {
                    get_only(ctx)?;
                    logs::serve_log(ctx, ns, name)
                }
                other => match Subresource::parse(other) {
                    Some(sub) => streaming::serve(ctx, ns, name, sub),
                    None => Err(ApiError::no_route()),
                },
            };
        }
        ["namespaces", ns, "serviceaccounts", name, "token"] if core => return tokens::serve(ctx, ns, name),
        ["namespaces", ns, plural] => Target::collection(kind(plural, true)?, Some(ns)),
        ["namespaces", ns, plural, name] => Target::item(kind(plural, true)?, ns, name),
        [plural] => match kind(plural, false) {
            Ok(k) => Target::collection(k, None),
            // A namespaced kind across all namespaces: read only.
            Err(_) => {
                let k = kind(plural, true)?;
                get_only(ctx)?;
                Target::collection(k, None)
            }
        },
        [plural, name] => Target::item(kind(plural, false)?, "", name),
        _ => return Err(ApiError::no_route()),
    };
    handlers::serve(ctx, &target)
}

//! The request pipeline, in kube-apiserver's order: record, authenticate
//! (and impersonate), authorize, read the body, then route.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;

use super::auth::{Identity, authenticate};
use super::body::{self, ResponseBody};
use super::discovery;
use super::handlers::{self, Target};
use super::logs;
use super::media::{DiscoveryVersion, Representation, negotiate};
use super::query::Query;
use super::rbac::authorize;
use super::record::{Arrival, RecordGuard};
use super::request_info::{RequestInfo, ResourceRequest, classify};
use super::resources::ResourceKind;
use super::reviews;
use super::server::State;
use super::status::ApiError;
use super::streaming::{self, Subresource};
use super::test_endpoints;

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
    let identity = authenticate(&parts.headers, state.admin_token.expose())?;
    guard.set_user(&identity.user, identity.impersonated);
    let path = parts.uri.path();
    let query = Query::parse(parts.uri.query());
    let info = if is_test_path(path) {
        RequestInfo::NonResource { path: path.to_string(), verb: parts.method.as_str().to_lowercase() }
    } else {
        classify(&parts.method, path, &query)
    };
    authorize(&state.rules(), &identity, &info)?;
    if let RequestInfo::Resource(r) = &info
        && r.verb != "create"
        && r.resource == "pods"
        && Subresource::parse(&r.subresource).is_some()
    {
        // WebSocket streaming uses GET: like kube-apiserver 1.34+ (with
        // AuthorizePodWebsocketUpgradeCreatePermission), also require the
        // `create` that the SPDY POST needs.
        let create = ResourceRequest { verb: "create".to_string(), ..r.clone() };
        authorize(&state.rules(), &identity, &RequestInfo::Resource(create))?;
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
        ["healthz" | "livez" | "readyz", ..] => {
            get_only(ctx)?;
            Ok(body::respond(StatusCode::OK, "text/plain; charset=utf-8", ResponseBody::full("ok")))
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
            Ok(ok_json(&discovery::core_resource_list()))
        }
        ["apis", group] => {
            let g = discovery::group(group, None).ok_or_else(ApiError::no_route)?;
            get_only(ctx)?;
            Ok(ok_json(&discovery::api_group(g)))
        }
        ["apis", group, version] => {
            let g = discovery::group(group, Some(version)).ok_or_else(ApiError::no_route)?;
            get_only(ctx)?;
            Ok(ok_json(&discovery::group_resource_list(g, version)))
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
        ["api", "v1", rest @ ..] => core(ctx, rest),
        ["apis", group, version, resource] => {
            let g = discovery::group(group, Some(version)).ok_or_else(ApiError::no_route)?;
            if !g.resources.iter().any(|(plural, _, _)| plural == resource) {
                return Err(ApiError::no_route());
            }
            if *ctx.method != Method::POST {
                return Err(ApiError::method_not_allowed());
            }
            match *resource {
                "selfsubjectreviews" => reviews::self_subject_review(ctx, version),
                _ => reviews::self_subject_access_review(ctx, version),
            }
        }
        _ => Err(ApiError::no_route()),
    }
}

fn kind_of(plural: &str, namespaced: bool) -> Result<ResourceKind, ApiError> {
    ResourceKind::from_plural(plural).filter(|k| k.namespaced() == namespaced).ok_or_else(ApiError::no_route)
}

fn core(ctx: &Ctx<'_>, rest: &[&str]) -> Result<Response<ResponseBody>, ApiError> {
    let target = match rest {
        ["namespaces"] => Target::collection(ResourceKind::Namespace, None),
        ["namespaces", name] => Target::item(ResourceKind::Namespace, "", name),
        ["namespaces", ns, plural] => Target::collection(kind_of(plural, true)?, Some(ns)),
        ["namespaces", ns, plural, name] => Target::item(kind_of(plural, true)?, ns, name),
        ["namespaces", ns, "pods", name, sub] => {
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
        [plural] => {
            let kind = kind_of(plural, true)?;
            get_only(ctx)?;
            Target::collection(kind, None)
        }
        _ => return Err(ApiError::no_route()),
    };
    handlers::serve(ctx, &target)
}

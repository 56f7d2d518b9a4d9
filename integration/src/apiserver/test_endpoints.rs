//! The `/_test/` endpoints, for tests that run the server as a separate
//! process (see the module docs). Authorization already limited them to the
//! non-impersonated admin.

use http::{Method, Response, StatusCode};

use super::body::{self, ResponseBody};
use super::rbac::RbacRule;
use super::router::Ctx;
use super::status::ApiError;

/// Serves `/_test/...`.
pub(crate) fn serve(ctx: &Ctx<'_>, path: &str) -> Result<Response<ResponseBody>, ApiError> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (ctx.method.clone(), segments.as_slice()) {
        (Method::GET, ["_test", "requests"]) => {
            let all = serde_json::to_value(ctx.state.recorder.snapshot())
                .map_err(|e| ApiError::internal(format!("encoding requests: {e}")))?;
            Ok(body::json(StatusCode::OK, &all))
        }
        (Method::POST, ["_test", "logs", namespace, pod]) => {
            let text =
                std::str::from_utf8(&ctx.body).map_err(|_| ApiError::bad_request("log line is not UTF-8"))?;
            ctx.state.logs.append(namespace, pod, ctx.query.non_empty("container"), text);
            Ok(body::empty(StatusCode::NO_CONTENT))
        }
        (Method::PUT, ["_test", "rbac"]) => {
            let rules: Vec<RbacRule> = serde_yaml::from_slice(&ctx.body)
                .map_err(|e| ApiError::bad_request(format!("invalid RBAC rules: {e}")))?;
            ctx.state.set_rules(rules);
            Ok(body::empty(StatusCode::NO_CONTENT))
        }
        (_, ["_test", "requests"] | ["_test", "logs", _, _] | ["_test", "rbac"]) => {
            Err(ApiError::method_not_allowed())
        }
        _ => Err(ApiError::no_route()),
    }
}

//! The `/_test/` endpoints, for tests that run the server as a separate
//! process (see the module docs). Authorization already limited them to the
//! non-impersonated admin.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use serde_json::json;

use super::body::{self, ResponseBody};
use super::rbac::RbacRule;
use super::record::RequestOutcome;
use super::router::Ctx;
use super::status::ApiError;

/// How long `/_test/requests/wait` waits when not told.
const DEFAULT_WAIT: Duration = Duration::from_secs(30);
/// The longest `/_test/requests/wait` may be asked to wait.
const MAX_WAIT: Duration = Duration::from_secs(300);

/// `GET /_test/requests/wait?pathContains=X&outcome=cancelled&afterId=I&timeoutSeconds=N`:
/// answers, once one exists or the time is up, `{"found": bool, "request":
/// RecordedRequest|null}` for the first recorded request whose path
/// contains `X` (and, if given, that ended with `outcome` and came after
/// request `I`).
fn wait(ctx: &Ctx<'_>) -> Result<Response<ResponseBody>, ApiError> {
    let needle = ctx.query.get("pathContains").unwrap_or_default().to_string();
    let after = ctx.query.int("afterId").map_err(ApiError::bad_request)?.unwrap_or(0);
    let after = u64::try_from(after).unwrap_or(0);
    let outcome = match ctx.query.get("outcome") {
        None => None,
        Some("inProgress") => Some(RequestOutcome::InProgress),
        Some("completed") => Some(RequestOutcome::Completed),
        Some("cancelled") => Some(RequestOutcome::Cancelled),
        Some(other) => return Err(ApiError::bad_request(format!("unknown outcome {other:?}"))),
    };
    let limit = match ctx.query.int("timeoutSeconds").map_err(ApiError::bad_request)? {
        Some(s) => Duration::from_secs(u64::try_from(s).unwrap_or(0)).min(MAX_WAIT),
        None => DEFAULT_WAIT,
    };
    let recorder = Arc::clone(&ctx.state.recorder);
    let shutdown = ctx.state.shutdown.clone();
    let answer = async move {
        let pred = |r: &super::RecordedRequest| {
            r.id > after && r.path.contains(&needle) && outcome.is_none_or(|o| r.outcome == o)
        };
        let found = tokio::select! {
            r = tokio::time::timeout(limit, recorder.wait_for(pred)) => r.ok(),
            () = shutdown.cancelled() => None,
        };
        Bytes::from(json!({ "found": found.is_some(), "request": found }).to_string())
    };
    Ok(body::respond(
        StatusCode::OK,
        "application/json",
        ResponseBody::stream(futures_util::stream::once(answer)),
    ))
}

/// The body of `PUT /_test/health`; a check left out keeps its state.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Health {
    readyz: Option<bool>,
    livez: Option<bool>,
}

/// Serves `/_test/...`.
pub(crate) fn serve(ctx: &Ctx<'_>, path: &str) -> Result<Response<ResponseBody>, ApiError> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (ctx.method.clone(), segments.as_slice()) {
        (Method::GET, ["_test", "requests", "wait"]) => wait(ctx),
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
        (Method::PUT, ["_test", "health"]) => {
            let health: Health = serde_json::from_slice(&ctx.body)
                .map_err(|e| ApiError::bad_request(format!("invalid health: {e}")))?;
            if let Some(ok) = health.readyz {
                ctx.state.set_ready(ok);
            }
            if let Some(ok) = health.livez {
                ctx.state.set_live(ok);
            }
            Ok(body::empty(StatusCode::NO_CONTENT))
        }
        (Method::PUT, ["_test", "rbac"]) => {
            let rules: Vec<RbacRule> = serde_yaml::from_slice(&ctx.body)
                .map_err(|e| ApiError::bad_request(format!("invalid RBAC rules: {e}")))?;
            ctx.state.set_rules(rules);
            Ok(body::empty(StatusCode::NO_CONTENT))
        }
        (
            _,
            ["_test", "requests"]
            | ["_test", "requests", "wait"]
            | ["_test", "logs", _, _]
            | ["_test", "rbac"]
            | ["_test", "health"],
        ) => Err(ApiError::method_not_allowed()),
        _ => Err(ApiError::no_route()),
    }
}

//! Self reviews: `SelfSubjectReview` (`kubectl auth whoami`) and
//! `SelfSubjectAccessReview` (`kubectl auth can-i`), answered for the
//! effective (impersonated) user.

use std::time::SystemTime;

use http::{Response, StatusCode};
use serde_json::{Value, json};

use super::body::{self, ResponseBody};
use super::clock::rfc3339;
use super::handlers::body_value;
use super::rbac::allowed;
use super::request_info::{RequestInfo, ResourceRequest};
use super::router::Ctx;
use super::status::ApiError;

fn review_body(ctx: &Ctx<'_>, kind: &str) -> Result<Value, ApiError> {
    let v = body_value(ctx)?;
    match v.get("kind").and_then(Value::as_str) {
        Some(k) if k != kind => Err(ApiError::bad_request(format!("expected a {kind}, got {k}"))),
        _ => Ok(v),
    }
}

/// `POST /apis/authentication.k8s.io/{version}/selfsubjectreviews`.
pub(crate) fn self_subject_review(ctx: &Ctx<'_>, version: &str) -> Result<Response<ResponseBody>, ApiError> {
    review_body(ctx, "SelfSubjectReview")?;
    Ok(body::json(
        StatusCode::CREATED,
        &json!({
            "kind": "SelfSubjectReview",
            "apiVersion": format!("authentication.k8s.io/{version}"),
            "metadata": { "creationTimestamp": rfc3339(SystemTime::now()) },
            "status": { "userInfo": ctx.identity.user.to_json() },
        }),
    ))
}

/// `POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews`.
pub(crate) fn self_subject_access_review(
    ctx: &Ctx<'_>,
    version: &str,
) -> Result<Response<ResponseBody>, ApiError> {
    let review = review_body(ctx, "SelfSubjectAccessReview")?;
    let spec = review.get("spec").cloned().unwrap_or(json!({}));
    let s = |v: &Value, f: &str| v.get(f).and_then(Value::as_str).unwrap_or_default().to_string();
    let info = if let Some(r) = spec.get("resourceAttributes") {
        RequestInfo::Resource(ResourceRequest {
            verb: s(r, "verb"),
            group: s(r, "group"),
            version: s(r, "version"),
            namespace: s(r, "namespace"),
            resource: s(r, "resource"),
            subresource: s(r, "subresource"),
            name: s(r, "name"),
            name_in_path: false,
        })
    } else if let Some(n) = spec.get("nonResourceAttributes") {
        RequestInfo::NonResource { path: s(n, "path"), verb: s(n, "verb") }
    } else {
        return Err(ApiError::invalid(
            "SelfSubjectAccessReview",
            "",
            vec![super::status::Cause {
                reason: "FieldValueRequired",
                field: "spec.resourceAttributes".into(),
                message: "Required value: exactly one of nonResourceAttributes or resourceAttributes must be specified".into(),
            }],
        ));
    };
    let ok = allowed(&ctx.state.rules(), ctx.identity, &info);
    let mut status = json!({ "allowed": ok });
    if ok && !ctx.identity.is_admin() {
        status["reason"] = json!("allowed by a test-apiserver RBAC rule");
    }
    Ok(body::json(
        StatusCode::CREATED,
        &json!({
            "kind": "SelfSubjectAccessReview",
            "apiVersion": format!("authorization.k8s.io/{version}"),
            "metadata": { "creationTimestamp": null },
            "spec": spec,
            "status": status,
        }),
    ))
}

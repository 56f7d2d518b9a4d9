//! Reviews: `SelfSubjectReview` (`kubectl auth whoami`) and
//! `SelfSubjectAccessReview` (`kubectl auth can-i`), answered for the
//! effective (impersonated) user, and `SubjectAccessReview`, answered for
//! the user it names; all decided by the authorizer that decides requests.

use std::time::SystemTime;

use http::{Response, StatusCode};
use serde_json::{Value, json};

use super::auth::UserInfo;
use super::authz::decide;
use super::body::{self, ResponseBody};
use super::clock::rfc3339;
use super::decode::{FieldValidation, decode_as};
use super::handlers::body_value;
use super::handlers::warning_headers;
use super::request_info::{RequestInfo, ResourceRequest};
use super::router::Ctx;
use super::status::{ApiError, Cause};

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

/// The request a review's `spec` asks about (422 unless exactly one of
/// `resourceAttributes` and `nonResourceAttributes` is given).
fn attributes(spec: &Value, kind: &str) -> Result<RequestInfo, ApiError> {
    let s = |v: &Value, f: &str| v.get(f).and_then(Value::as_str).unwrap_or_default().to_string();
    let given = |f: &str| spec.get(f).filter(|v| !v.is_null());
    let invalid = |reason, field: &str, message: &str| {
        ApiError::invalid(
            &format!("{kind}.authorization.k8s.io"),
            "",
            vec![Cause { reason, field: field.into(), message: message.into() }],
        )
    };
    match (given("resourceAttributes"), given("nonResourceAttributes")) {
        (Some(r), None) => Ok(RequestInfo::Resource(ResourceRequest {
            verb: s(r, "verb"),
            group: s(r, "group"),
            version: s(r, "version"),
            namespace: s(r, "namespace"),
            resource: s(r, "resource"),
            subresource: s(r, "subresource"),
            name: s(r, "name"),
            name_in_path: false,
        })),
        (None, Some(n)) => Ok(RequestInfo::NonResource { path: s(n, "path"), verb: s(n, "verb") }),
        (Some(_), Some(n)) => Err(invalid(
            "FieldValueInvalid",
            "spec.nonResourceAttributes",
            &format!("Invalid value: {n}: cannot be specified in combination with resourceAttributes"),
        )),
        (None, None) => Err(invalid(
            "FieldValueRequired",
            "spec.resourceAttributes",
            "Required value: exactly one of nonResourceAttributes or resourceAttributes must be specified",
        )),
    }
}

/// A review's `status`: `allowed`, and the reason when there is one.
fn status(ctx: &Ctx<'_>, user: &UserInfo, info: &RequestInfo) -> Value {
    let d = decide(ctx.state, user, info);
    let mut status = json!({ "allowed": d.allowed });
    if !d.reason.is_empty() {
        status["reason"] = json!(d.reason);
    }
    status
}

/// `POST /apis/authorization.k8s.io/v1/subjectaccessreviews`: may `spec`'s
/// user (exactly as given: nothing is added to its groups) do what the
/// attributes say? Decided as that user's own request would be.
pub(crate) fn subject_access_review(ctx: &Ctx<'_>) -> Result<Response<ResponseBody>, ApiError> {
    let validation = FieldValidation::parse(ctx.query.get("fieldValidation"))?;
    let mut review = body_value(ctx)?;
    if let Some(m) = review.as_object_mut() {
        m.entry("kind").or_insert_with(|| json!("SubjectAccessReview"));
        m.entry("apiVersion").or_insert_with(|| json!("authorization.k8s.io/v1"));
    }
    let warnings = decode_as::<k8s_openapi::api::authorization::v1::SubjectAccessReview>(
        "SubjectAccessReview",
        "authorization.k8s.io/v1",
        &review,
        validation,
    )?;
    let spec = review.get("spec").cloned().unwrap_or(json!({}));
    let info = attributes(&spec, "SubjectAccessReview")?;
    let strings = |f: &str| -> Vec<String> {
        spec.get(f)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect()
    };
    let user = UserInfo {
        username: spec.get("user").and_then(Value::as_str).unwrap_or_default().to_string(),
        uid: spec.get("uid").and_then(Value::as_str).unwrap_or_default().to_string(),
        groups: strings("groups"),
        extra: serde_json::from_value(spec.get("extra").cloned().unwrap_or(json!({}))).unwrap_or_default(),
    };
    if user.username.is_empty() && user.groups.is_empty() {
        return Err(ApiError::invalid(
            "SubjectAccessReview.authorization.k8s.io",
            "",
            vec![Cause {
                reason: "FieldValueInvalid",
                field: "spec.user".into(),
                message: "Invalid value: \"\": at least one of user or group must be specified".into(),
            }],
        ));
    }
    let status = status(ctx, &user, &info);
    let mut resp = body::json(
        StatusCode::CREATED,
        &json!({
            "kind": "SubjectAccessReview",
            "apiVersion": "authorization.k8s.io/v1",
            "metadata": { "creationTimestamp": null },
            "spec": spec,
            "status": status,
        }),
    );
    warning_headers(&mut resp, &warnings);
    Ok(resp)
}

/// `POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews`.
pub(crate) fn self_subject_access_review(
    ctx: &Ctx<'_>,
    version: &str,
) -> Result<Response<ResponseBody>, ApiError> {
    let review = review_body(ctx, "SelfSubjectAccessReview")?;
    let spec = review.get("spec").cloned().unwrap_or(json!({}));
    let info = attributes(&spec, "SelfSubjectAccessReview")?;
    let status = status(ctx, &ctx.identity.user, &info);
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

//! Kubernetes `Status` bodies: how the test apiserver reports failures (and
//! some successes), with the codes, reasons and messages a real one uses.

use bytes::Bytes;
use http::StatusCode;
use serde_json::{Value, json};

/// A request failure, turned into a `Status` response at the edge.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ApiError {
    /// HTTP status code.
    pub code: StatusCode,
    /// Machine-readable reason (`NotFound`, `Forbidden`, ...).
    pub reason: &'static str,
    /// Human-readable message, worded like kube-apiserver's.
    pub message: String,
    /// `details` of the Status, when a real apiserver sends them.
    pub details: Option<Value>,
}

/// One `details.causes` entry of an `Invalid` status.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Cause {
    /// `FieldValueInvalid`, `FieldValueRequired`, ...
    pub reason: &'static str,
    /// The field path, e.g. `metadata.name`.
    pub field: String,
    /// What is wrong with it, without the field prefix.
    pub message: String,
}

/// `details` of a Status about a resource, named as in messages:
/// `configmaps`, or `deployments.apps` (split into `kind` and `group`).
fn details(resource: &str, name: &str) -> Value {
    let (kind, group) = resource.split_once('.').unwrap_or((resource, ""));
    let mut d = json!({ "kind": kind });
    if !group.is_empty() {
        d["group"] = json!(group);
    }
    if !name.is_empty() {
        d["name"] = json!(name);
    }
    d
}

impl ApiError {
    pub fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self { code, reason, message: message.into(), details: None }
    }

    fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    /// 401 Unauthorized, as for a missing or wrong credential.
    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized")
    }

    /// 403 Forbidden with a given message, about a resource (`details`
    /// left empty when `resource` is).
    pub fn forbidden(message: impl Into<String>, group: &str, resource: &str, name: &str) -> Self {
        let mut d = details(resource, name);
        if !group.is_empty() {
            d["group"] = json!(group);
        }
        if resource.is_empty() {
            d = json!({});
        }
        Self::new(StatusCode::FORBIDDEN, "Forbidden", message).with_details(d)
    }

    /// 404 for an object: `configmaps "x" not found`.
    pub fn not_found(resource: &str, name: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NotFound", format!("{resource} \"{name}\" not found"))
            .with_details(details(resource, name))
    }

    /// 404 for a path nothing is served at.
    pub fn no_route() -> Self {
        Self::new(StatusCode::NOT_FOUND, "NotFound", "the server could not find the requested resource")
            .with_details(json!({}))
    }

    /// 405 MethodNotAllowed.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
        .with_details(json!({}))
    }

    /// 409 AlreadyExists.
    pub fn already_exists(resource: &str, name: &str) -> Self {
        Self::new(StatusCode::CONFLICT, "AlreadyExists", format!("{resource} \"{name}\" already exists"))
            .with_details(details(resource, name))
    }

    /// 409 Conflict on a stale `resourceVersion`.
    pub fn conflict(resource: &str, name: &str) -> Self {
        Self::conflict_because(
            resource,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// 409 Conflict with a given explanation.
    pub fn conflict_because(resource: &str, name: &str, why: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "Conflict",
            format!("Operation cannot be fulfilled on {resource} \"{name}\": {why}"),
        )
        .with_details(details(resource, name))
    }

    /// 410 Expired, for a `resourceVersion` no longer in the history.
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GONE, "Expired", message)
    }

    /// 413 RequestEntityTooLarge.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            format!("Request entity too large: limit is {limit}"),
        )
    }

    /// 406 NotAcceptable.
    pub fn not_acceptable() -> Self {
        Self::new(
            StatusCode::NOT_ACCEPTABLE,
            "NotAcceptable",
            "only the following media types are accepted: application/json",
        )
    }

    /// 415 UnsupportedMediaType.
    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType", message)
    }

    /// 422 Invalid, listing every cause like kube-apiserver does.
    pub fn invalid(kind: &str, name: &str, causes: Vec<Cause>) -> Self {
        let list = causes.iter().map(|c| format!("{}: {}", c.field, c.message)).collect::<Vec<_>>();
        let joined = if list.len() == 1 { list.join("") } else { format!("[{}]", list.join(", ")) };
        let causes = causes
            .iter()
            .map(|c| json!({ "reason": c.reason, "message": c.message, "field": c.field }))
            .collect::<Vec<_>>();
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!("{kind} \"{name}\" is invalid: {joined}"),
        )
        .with_details(json!({ "name": name, "kind": kind, "causes": causes }))
    }

    /// 422 with a plain message (JSON patch that does not apply, ...).
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "", message)
    }

    /// 500 InternalError.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            format!("Internal error occurred: {}", message.into()),
        )
    }

    /// The `Status` object.
    pub fn to_value(&self) -> Value {
        let mut v = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "code": self.code.as_u16(),
        });
        if !self.reason.is_empty() {
            v["reason"] = json!(self.reason);
        }
        if let Some(d) = &self.details {
            v["details"] = d.clone();
        }
        v
    }

    /// The `Status` object as JSON bytes.
    pub fn to_bytes(&self) -> Bytes {
        Bytes::from(self.to_value().to_string())
    }
}

/// The `Status` a real apiserver returns after deleting an object that is
/// gone at once (ConfigMaps).
pub(crate) fn delete_success(resource: &str, name: &str, uid: &str) -> Value {
    let mut d = details(resource, name);
    d["uid"] = json!(uid);
    json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": d })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_looks_like_kubernetes() {
        let v = ApiError::not_found("configmaps", "x").to_value();
        assert_eq!(v["message"], "configmaps \"x\" not found");
        assert_eq!(v["reason"], "NotFound");
        assert_eq!(v["code"], 404);
        assert_eq!(v["details"]["kind"], "configmaps");
        assert_eq!(v["details"]["name"], "x");
        let v = ApiError::not_found("deployments.apps", "d").to_value();
        assert_eq!(v["message"], "deployments.apps \"d\" not found");
        assert_eq!(v["details"], json!({"kind": "deployments", "group": "apps", "name": "d"}));
    }

    #[test]
    fn invalid_joins_causes() {
        let one = Cause { reason: "FieldValueRequired", field: "a".into(), message: "Required value".into() };
        let two = Cause { reason: "FieldValueInvalid", field: "b".into(), message: "Invalid value".into() };
        let e = ApiError::invalid("Pod", "p", vec![one.clone()]);
        assert_eq!(e.message, "Pod \"p\" is invalid: a: Required value");
        let e = ApiError::invalid("Pod", "p", vec![one, two]);
        assert_eq!(e.message, "Pod \"p\" is invalid: [a: Required value, b: Invalid value]");
        assert_eq!(e.code, StatusCode::UNPROCESSABLE_ENTITY);
    }
}

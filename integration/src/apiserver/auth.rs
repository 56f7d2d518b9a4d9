//! Authentication (the admin bearer token only) and impersonation.

use std::collections::BTreeMap;

use http::HeaderMap;
use serde::{Deserialize, Serialize};

use super::status::ApiError;

/// The user name of the (non-impersonated) admin credential.
pub const ADMIN_USER: &str = "test-admin";

const ADMIN_GROUPS: [&str; 2] = ["system:masters", "system:authenticated"];
const ALL_AUTHENTICATED: &str = "system:authenticated";
const ALL_UNAUTHENTICATED: &str = "system:unauthenticated";
const IMPERSONATE_EXTRA_PREFIX: &str = "impersonate-extra-";

/// A Kubernetes `UserInfo`: who a request is evaluated as.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct UserInfo {
    /// User name.
    pub username: String,
    /// User uid; empty when none was given.
    #[serde(default)]
    pub uid: String,
    /// Groups, including `system:authenticated`.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Extra attributes (`Impersonate-Extra-<key>`), keys lower-case.
    #[serde(default)]
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    /// The admin identity.
    pub(crate) fn admin() -> Self {
        Self {
            username: ADMIN_USER.to_string(),
            groups: ADMIN_GROUPS.iter().map(|g| g.to_string()).collect(),
            ..Self::default()
        }
    }

    /// As a Kubernetes `userInfo` object (empty fields left out).
    pub(crate) fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({ "username": self.username });
        if !self.uid.is_empty() {
            v["uid"] = self.uid.clone().into();
        }
        if !self.groups.is_empty() {
            v["groups"] = self.groups.clone().into();
        }
        if !self.extra.is_empty() {
            v["extra"] = serde_json::json!(self.extra);
        }
        v
    }
}

/// The authenticated caller of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Identity {
    /// The effective user (the impersonated one, if any).
    pub user: UserInfo,
    /// Whether `Impersonate-*` headers chose `user`.
    pub impersonated: bool,
}

impl Identity {
    /// Whether this is the admin acting as itself (always authorized).
    pub fn is_admin(&self) -> bool {
        !self.impersonated
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn values<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect()
}

/// Authenticates the request and applies impersonation.
///
/// Fails with 401 unless the admin bearer token is presented; with 500 (as
/// kube-apiserver does) for groups, uid or extra without a user.
pub(crate) fn authenticate(headers: &HeaderMap, admin_token: &str) -> Result<Identity, ApiError> {
    match bearer(headers) {
        Some(token) if !token.is_empty() && token == admin_token => {}
        _ => return Err(ApiError::unauthorized()),
    }
    let users = values(headers, "impersonate-user");
    let groups: Vec<String> = values(headers, "impersonate-group").iter().map(|g| g.to_string()).collect();
    let uid = values(headers, "impersonate-uid");
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in headers {
        if let Some(key) = name.as_str().strip_prefix(IMPERSONATE_EXTRA_PREFIX) {
            let key = percent_encoding::percent_decode_str(key).decode_utf8_lossy().to_lowercase();
            if let Ok(v) = value.to_str() {
                extra.entry(key).or_default().push(v.to_string());
            }
        }
    }
    let Some(username) = users.first() else {
        if !groups.is_empty() || !uid.is_empty() || !extra.is_empty() {
            return Err(ApiError::internal(
                "requested impersonation of groups, uid or extra without impersonating a user",
            ));
        }
        return Ok(Identity { user: UserInfo::admin(), impersonated: false });
    };
    let groups_specified = !groups.is_empty();
    let mut user = UserInfo {
        username: username.to_string(),
        uid: uid.first().map(|u| u.to_string()).unwrap_or_default(),
        groups,
        extra,
    };
    if let Some(rest) = user.username.strip_prefix("system:serviceaccount:")
        && let Some((ns, _)) = rest.split_once(':')
        && !groups_specified
    {
        user.groups = vec!["system:serviceaccounts".to_string(), format!("system:serviceaccounts:{ns}")];
    }
    if user.username != "system:anonymous"
        && !user.groups.iter().any(|g| g == ALL_AUTHENTICATED || g == ALL_UNAUTHENTICATED)
    {
        user.groups.push(ALL_AUTHENTICATED.to_string());
    }
    Ok(Identity { user, impersonated: true })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                http::HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn only_the_admin_token_authenticates() {
        assert!(authenticate(&headers(&[]), "tok").is_err());
        assert!(authenticate(&headers(&[("authorization", "Bearer nope")]), "tok").is_err());
        assert!(authenticate(&headers(&[("authorization", "Basic tok")]), "tok").is_err());
        let id = authenticate(&headers(&[("authorization", "Bearer tok")]), "tok").expect("admin");
        assert!(id.is_admin());
        assert_eq!(id.user.username, ADMIN_USER);
    }

    #[test]
    fn impersonation_sets_the_effective_user() {
        let h = headers(&[
            ("authorization", "bearer tok"),
            ("impersonate-user", "alice"),
            ("impersonate-group", "dev"),
            ("impersonate-group", "ops"),
            ("impersonate-uid", "u-1"),
            ("impersonate-extra-scopes%2Fa", "x"),
            ("impersonate-extra-scopes%2Fa", "y"),
        ]);
        let id = authenticate(&h, "tok").expect("ok");
        assert!(!id.is_admin());
        assert_eq!(id.user.username, "alice");
        assert_eq!(id.user.uid, "u-1");
        assert_eq!(id.user.groups, ["dev", "ops", "system:authenticated"]);
        assert_eq!(id.user.extra["scopes/a"], ["x", "y"]);
    }

    #[test]
    fn groups_without_user_is_an_error() {
        let h = headers(&[("authorization", "Bearer tok"), ("impersonate-group", "dev")]);
        let err = authenticate(&h, "tok").expect_err("no user");
        assert_eq!(err.code, http::StatusCode::INTERNAL_SERVER_ERROR);
    }
}

//! Authentication (the admin bearer token, or a ServiceAccount token) and
//! the `Impersonate-*` headers.

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
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

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

/// The credential a request presented.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Credential {
    /// The server's admin bearer token.
    Admin,
    /// A ServiceAccount token from the TokenRequest API.
    ServiceAccountToken,
    /// A client certificate from the server's CA (CN = user, O = groups),
    /// as kind and minikube give their admins.
    ClientCert,
}

/// The authenticated caller of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Identity {
    /// Who presented the credential.
    pub requester: UserInfo,
    /// The effective user: the impersonated one, or else the requester.
    pub user: UserInfo,
    /// Whether `Impersonate-*` headers chose `user`.
    pub impersonated: bool,
    /// What the requester authenticated with.
    pub credential: Credential,
}

impl Identity {
    /// A requester acting as itself.
    pub fn direct(requester: UserInfo, credential: Credential) -> Self {
        Self { user: requester.clone(), requester, impersonated: false, credential }
    }

    /// Whether this is the admin acting as itself (who alone may use the
    /// `/_test/` endpoints).
    pub fn is_admin(&self) -> bool {
        self.credential == Credential::Admin && !self.impersonated
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

/// Authenticates the request's bearer token: the admin token, or a live
/// ServiceAccount token (`service_account` looks those up). Anything else
/// is 401.
pub(crate) fn authenticate(
    headers: &HeaderMap,
    client_cert: Option<&UserInfo>,
    admin_token: &str,
    service_account: impl FnOnce(&str) -> Option<UserInfo>,
) -> Result<(UserInfo, Credential), ApiError> {
    // kube-apiserver tries the x509 authenticator before bearer tokens.
    if let Some(user) = client_cert {
        return Ok((user.clone(), Credential::ClientCert));
    }
    match bearer(headers) {
        Some(token) if !token.is_empty() && token == admin_token => {
            Ok((UserInfo::admin(), Credential::Admin))
        }
        Some(token) if !token.is_empty() => service_account(token)
            .map(|u| (u, Credential::ServiceAccountToken))
            .ok_or_else(ApiError::unauthorized),
        _ => Err(ApiError::unauthorized()),
    }
}

/// What `Impersonate-*` headers ask for, as sent (before the server adds
/// implied groups).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Impersonation {
    /// `Impersonate-User`.
    pub user: String,
    /// Every `Impersonate-Group`.
    pub groups: Vec<String>,
    /// `Impersonate-Uid`.
    pub uid: Option<String>,
    /// `Impersonate-Extra-<key>` values, keys decoded and lower-case.
    pub extra: BTreeMap<String, Vec<String>>,
}

/// The namespace and name of a `system:serviceaccount:NS:NAME` user.
pub(crate) fn service_account_of(username: &str) -> Option<(&str, &str)> {
    username.strip_prefix(SERVICE_ACCOUNT_PREFIX)?.split_once(':')
}

/// `system:serviceaccount:NS:NAME`.
pub(crate) fn service_account_user(namespace: &str, name: &str) -> String {
    format!("{SERVICE_ACCOUNT_PREFIX}{namespace}:{name}")
}

/// The groups every ServiceAccount in `namespace` is in (besides
/// `system:authenticated`).
pub(crate) fn service_account_groups(namespace: &str) -> Vec<String> {
    vec!["system:serviceaccounts".to_string(), format!("system:serviceaccounts:{namespace}")]
}

impl Impersonation {
    /// The user the request then runs as: a ServiceAccount impersonated
    /// without groups gets its implied groups, and everyone but
    /// `system:anonymous` gets `system:authenticated`.
    pub fn effective_user(&self) -> UserInfo {
        let mut user = UserInfo {
            username: self.user.clone(),
            uid: self.uid.clone().unwrap_or_default(),
            groups: self.groups.clone(),
            extra: self.extra.clone(),
        };
        if let Some((ns, _)) = service_account_of(&user.username)
            && self.groups.is_empty()
        {
            user.groups = service_account_groups(ns);
        }
        if user.username != "system:anonymous"
            && !user.groups.iter().any(|g| g == ALL_AUTHENTICATED || g == ALL_UNAUTHENTICATED)
        {
            user.groups.push(ALL_AUTHENTICATED.to_string());
        }
        user
    }
}

/// Reads the `Impersonate-*` headers: `None` when there are none; 500 (as
/// kube-apiserver answers) for groups, uid or extra without a user.
pub(crate) fn impersonation(headers: &HeaderMap) -> Result<Option<Impersonation>, ApiError> {
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
        return Ok(None);
    };
    Ok(Some(Impersonation {
        user: username.to_string(),
        groups,
        uid: uid.first().map(|u| u.to_string()),
        extra,
    }))
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

    fn none(_: &str) -> Option<UserInfo> {
        None
    }

    #[test]
    fn only_known_tokens_authenticate() {
        assert!(authenticate(&headers(&[]), None, "tok", none).is_err());
        assert!(authenticate(&headers(&[("authorization", "Bearer nope")]), None, "tok", none).is_err());
        assert!(authenticate(&headers(&[("authorization", "Basic tok")]), None, "tok", none).is_err());
        let (user, cred) =
            authenticate(&headers(&[("authorization", "Bearer tok")]), None, "tok", none).expect("admin");
        assert_eq!((user.username.as_str(), cred), (ADMIN_USER, Credential::Admin));
        let sa = |t: &str| {
            (t == "sa")
                .then(|| UserInfo { username: "system:serviceaccount:a:b".into(), ..UserInfo::default() })
        };
        let (user, cred) =
            authenticate(&headers(&[("authorization", "Bearer sa")]), None, "tok", sa).expect("sa");
        assert_eq!(
            (user.username.as_str(), cred),
            ("system:serviceaccount:a:b", Credential::ServiceAccountToken)
        );
    }

    #[test]
    fn impersonation_sets_the_effective_user() {
        let h = headers(&[
            ("impersonate-user", "alice"),
            ("impersonate-group", "dev"),
            ("impersonate-group", "ops"),
            ("impersonate-uid", "u-1"),
            ("impersonate-extra-scopes%2Fa", "x"),
            ("impersonate-extra-scopes%2Fa", "y"),
        ]);
        let imp = impersonation(&h).expect("ok").expect("some");
        assert_eq!(imp.groups, ["dev", "ops"]);
        let user = imp.effective_user();
        assert_eq!(user.username, "alice");
        assert_eq!(user.uid, "u-1");
        assert_eq!(user.groups, ["dev", "ops", "system:authenticated"]);
        assert_eq!(user.extra["scopes/a"], ["x", "y"]);
        let sa = impersonation(&headers(&[("impersonate-user", "system:serviceaccount:ns:x")])).expect("ok");
        assert_eq!(
            sa.expect("some").effective_user().groups,
            ["system:serviceaccounts", "system:serviceaccounts:ns", "system:authenticated"]
        );
        assert_eq!(impersonation(&headers(&[])).expect("ok"), None);
    }

    #[test]
    fn groups_without_user_is_an_error() {
        let err = impersonation(&headers(&[("impersonate-group", "dev")])).expect_err("no user");
        assert_eq!(err.code, http::StatusCode::INTERNAL_SERVER_ERROR);
    }
}

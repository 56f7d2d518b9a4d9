//! ServiceAccount tokens: the TokenRequest API
//! (`POST .../serviceaccounts/{name}/token`, what `kubectl create token`
//! calls) and the registry of minted tokens that authentication consults.
//!
//! A token is shaped like kube-apiserver's (a JWT with the same claims) but
//! is not verified as one: it authenticates only if this server minted it
//! (looked up by its SHA-256), it has not expired, its audiences include the
//! apiserver's, and its ServiceAccount (and bound object, if any) still
//! exist with the uid they had. The registry holds at most [`MAX_TOKENS`].

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use http::{Method, Response, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::auth::{UserInfo, service_account_groups, service_account_user};
use super::body::{self, ResponseBody};
use super::clock::rfc3339;
use super::decode::{FieldValidation, decode_as};
use super::handlers::body_value;
use super::resources::ResourceKind;
use super::router::Ctx;
use super::status::{ApiError, Cause};
use super::store::{ObjectKey, Store};

/// The audience (and issuer) of tokens meant for this apiserver, as in a
/// default cluster.
pub(crate) const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";
/// How long a token lives when the request does not say (`kubectl create
/// token` without `--duration`).
const DEFAULT_EXPIRATION: Duration = Duration::from_secs(3600);
/// The shortest lifetime kube-apiserver accepts.
const MIN_EXPIRATION: Duration = Duration::from_secs(600);
/// The longest lifetime kube-apiserver accepts (2^32 seconds).
const MAX_EXPIRATION_SECONDS: i64 = 1 << 32;
/// Live tokens kept; minting more drops expired ones, then the soonest to
/// expire.
pub const MAX_TOKENS: usize = 10_000;
const CREDENTIAL_ID_EXTRA: &str = "authentication.kubernetes.io/credential-id";

/// One minted token.
#[derive(Clone, Debug)]
struct Minted {
    namespace: String,
    name: String,
    sa_uid: String,
    audiences: Vec<String>,
    expires: SystemTime,
    jti: String,
    /// The object the token is bound to, and its uid.
    bound: Option<(ObjectKey, String)>,
}

/// The tokens minted so far, by the SHA-256 of the token.
#[derive(Debug, Default)]
pub(crate) struct Tokens {
    inner: Mutex<HashMap<[u8; 32], Minted>>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn uid_of(obj: &Value) -> &str {
    obj.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

impl Tokens {
    fn mint(&self, m: Minted, now: SystemTime) -> String {
        let header = json!({ "alg": "RS256", "kid": "test-apiserver" });
        let mut claims = json!({
            "aud": m.audiences,
            "exp": unix(m.expires),
            "iat": unix(now),
            "iss": API_AUDIENCE,
            "jti": m.jti,
            "kubernetes.io": {
                "namespace": m.namespace,
                "serviceaccount": { "name": m.name, "uid": m.sa_uid },
            },
            "nbf": unix(now),
            "sub": service_account_user(&m.namespace, &m.name),
        });
        if let Some((key, uid)) = &m.bound {
            claims["kubernetes.io"][key.kind.singular()] = json!({ "name": key.name, "uid": uid });
        }
        let signature = [*uuid::Uuid::new_v4().as_bytes(), *uuid::Uuid::new_v4().as_bytes()].concat();
        let token = format!(
            "{}.{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes()),
            b64(&signature)
        );
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.retain(|_, t| t.expires > now);
        if inner.len() >= MAX_TOKENS
            && let Some(soonest) = inner.iter().min_by_key(|(_, t)| t.expires).map(|(k, _)| *k)
        {
            inner.remove(&soonest);
        }
        inner.insert(digest(&token), m);
        token
    }

    /// The user a token authenticates as, if it is live: minted here, not
    /// expired, for this apiserver's audience, and its ServiceAccount (and
    /// bound object) not deleted since.
    pub fn user(&self, token: &str, store: &Store, now: SystemTime) -> Option<UserInfo> {
        let m = self.inner.lock().unwrap_or_else(PoisonError::into_inner).get(&digest(token)).cloned()?;
        let sa = store.get(&ObjectKey::new(ResourceKind::ServiceAccount, &m.namespace, &m.name))?;
        let bound_alive =
            m.bound.as_ref().is_none_or(|(key, uid)| store.get(key).is_some_and(|o| uid_of(&o) == uid));
        if now >= m.expires
            || uid_of(&sa) != m.sa_uid
            || !bound_alive
            || !m.audiences.iter().any(|a| a == API_AUDIENCE)
        {
            return None;
        }
        let mut groups = service_account_groups(&m.namespace);
        groups.push("system:authenticated".to_string());
        let mut extra = std::collections::BTreeMap::new();
        extra.insert(CREDENTIAL_ID_EXTRA.to_string(), vec![format!("JTI={}", m.jti)]);
        if let Some((key, uid)) = m.bound.as_ref().filter(|(k, _)| k.kind == ResourceKind::Pod) {
            extra.insert("authentication.kubernetes.io/pod-name".to_string(), vec![key.name.clone()]);
            extra.insert("authentication.kubernetes.io/pod-uid".to_string(), vec![uid.clone()]);
        }
        Some(UserInfo { username: service_account_user(&m.namespace, &m.name), uid: m.sa_uid, groups, extra })
    }
}

fn invalid(name: &str, field: &str, message: String) -> ApiError {
    ApiError::invalid(
        "TokenRequest.authentication.k8s.io",
        name,
        vec![Cause { reason: "FieldValueInvalid", field: field.to_string(), message }],
    )
}

/// The object a `spec.boundObjectRef` names, with its uid (404 if missing,
/// 409 if the given uid does not match).
fn bound_object(
    store: &Store,
    namespace: &str,
    r: &Value,
    name: &str,
) -> Result<(ObjectKey, String), ApiError> {
    let s = |f: &str| r.get(f).and_then(Value::as_str).unwrap_or_default();
    let kind = match s("kind") {
        "Pod" => ResourceKind::Pod,
        "Secret" => ResourceKind::Secret,
        "Node" => ResourceKind::Node,
        other => {
            return Err(invalid(
                name,
                "spec.boundObjectRef.kind",
                format!("Unsupported value: {other:?}: supported values: \"Pod\", \"Secret\", \"Node\""),
            ));
        }
    };
    let ns = if kind.namespaced() { namespace } else { "" };
    let key = ObjectKey::new(kind, ns, s("name"));
    let obj = store.get(&key).ok_or_else(|| ApiError::not_found(kind.plural(), s("name")))?;
    let uid = uid_of(&obj).to_string();
    if !s("uid").is_empty() && s("uid") != uid {
        return Err(ApiError::conflict_because(
            kind.plural(),
            s("name"),
            &format!(
                "the UID in the bound object reference ({}) does not match the UID in record ({uid}). The object might have been deleted and then recreated",
                s("uid")
            ),
        ));
    }
    Ok((key, uid))
}

/// `POST /api/v1/namespaces/{namespace}/serviceaccounts/{name}/token`.
pub(crate) fn serve(ctx: &Ctx<'_>, namespace: &str, name: &str) -> Result<Response<ResponseBody>, ApiError> {
    if *ctx.method != Method::POST {
        return Err(ApiError::method_not_allowed());
    }
    let validation = FieldValidation::parse(ctx.query.get("fieldValidation"))?;
    let mut review = body_value(ctx)?;
    if let Some(m) = review.as_object_mut() {
        // The body may leave these out: the path says what it is.
        m.entry("kind").or_insert_with(|| json!("TokenRequest"));
        m.entry("apiVersion").or_insert_with(|| json!("authentication.k8s.io/v1"));
    }
    let warnings = decode_as::<k8s_openapi::api::authentication::v1::TokenRequest>(
        "TokenRequest",
        "authentication.k8s.io/v1",
        &review,
        validation,
    )?;
    let store = &ctx.state.store;
    let sa = store
        .get(&ObjectKey::new(ResourceKind::ServiceAccount, namespace, name))
        .ok_or_else(|| ApiError::not_found("serviceaccounts", name))?;
    let spec = review.get("spec").cloned().unwrap_or_else(|| json!({}));
    let seconds = match spec.get("expirationSeconds").and_then(Value::as_i64) {
        None => DEFAULT_EXPIRATION.as_secs().cast_signed(),
        Some(s) if s < MIN_EXPIRATION.as_secs().cast_signed() => {
            return Err(invalid(
                name,
                "spec.expirationSeconds",
                format!("Invalid value: {s}: may not specify a duration less than 10 minutes"),
            ));
        }
        Some(s) if s > MAX_EXPIRATION_SECONDS => {
            return Err(invalid(
                name,
                "spec.expirationSeconds",
                format!("Invalid value: {s}: may not specify a duration larger than 2^32 seconds"),
            ));
        }
        Some(s) => s,
    };
    let audiences: Vec<String> = match spec.get("audiences").and_then(Value::as_array) {
        Some(a) if !a.is_empty() => a.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        _ => vec![API_AUDIENCE.to_string()],
    };
    let bound = match spec.get("boundObjectRef").filter(|r| !r.is_null()) {
        Some(r) => Some(bound_object(store, namespace, r, name)?),
        None => None,
    };
    let now = SystemTime::now();
    let expires = now + Duration::from_secs(seconds.unsigned_abs());
    let minted = Minted {
        namespace: namespace.to_string(),
        name: name.to_string(),
        sa_uid: uid_of(&sa).to_string(),
        audiences: audiences.clone(),
        expires,
        jti: uuid::Uuid::new_v4().to_string(),
        bound,
    };
    let token = ctx.state.tokens.mint(minted, now);
    let mut resp = body::json(
        StatusCode::CREATED,
        &json!({
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": { "name": name, "namespace": namespace, "creationTimestamp": null },
            "spec": {
                "audiences": audiences,
                "expirationSeconds": seconds,
                "boundObjectRef": spec.get("boundObjectRef").cloned().unwrap_or(Value::Null),
            },
            "status": { "token": token, "expirationTimestamp": rfc3339(expires) },
        }),
    );
    super::handlers::warning_headers(&mut resp, &warnings);
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with_sa() -> (Store, String) {
        let store = Store::new();
        store
            .create(
                ObjectKey::new(ResourceKind::Namespace, "", "ns"),
                json!({"metadata": {"name": "ns"}}),
                false,
            )
            .expect("ns");
        store
            .create(
                ObjectKey::new(ResourceKind::ServiceAccount, "ns", "sa"),
                json!({"metadata": {"name": "sa", "uid": "u-1"}}),
                false,
            )
            .expect("sa");
        (store, "u-1".to_string())
    }

    fn minted(audience: &str, expires: SystemTime) -> Minted {
        Minted {
            namespace: "ns".into(),
            name: "sa".into(),
            sa_uid: "u-1".into(),
            audiences: vec![audience.into()],
            expires,
            jti: "j".into(),
            bound: None,
        }
    }

    #[test]
    fn live_tokens_authenticate_as_their_service_account() {
        let (store, _) = store_with_sa();
        let tokens = Tokens::default();
        let now = SystemTime::now();
        let token = tokens.mint(minted(API_AUDIENCE, now + DEFAULT_EXPIRATION), now);
        assert_eq!(token.split('.').count(), 3, "JWT-shaped");
        let user = tokens.user(&token, &store, now).expect("live");
        assert_eq!(user.username, "system:serviceaccount:ns:sa");
        assert_eq!(user.uid, "u-1");
        assert_eq!(
            user.groups,
            ["system:serviceaccounts", "system:serviceaccounts:ns", "system:authenticated"]
        );
        assert_eq!(user.extra[CREDENTIAL_ID_EXTRA], ["JTI=j"]);
        assert!(tokens.user(&token, &store, now + DEFAULT_EXPIRATION).is_none(), "expired");
        assert!(tokens.user("nope", &store, now).is_none());
        let other = tokens.mint(minted("https://elsewhere", now + DEFAULT_EXPIRATION), now);
        assert!(tokens.user(&other, &store, now).is_none(), "another audience");
        store
            .delete(&ObjectKey::new(ResourceKind::ServiceAccount, "ns", "sa"), false, |c| Ok(c.clone()))
            .expect("delete");
        assert!(tokens.user(&token, &store, now).is_none(), "service account deleted");
    }
}

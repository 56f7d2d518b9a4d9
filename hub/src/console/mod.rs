//! The web console, under `/ui/` on the hub's one address: static pages
//! embedded in the binary ([`assets`]), a JSON API under `/ui/api/` that
//! calls the management services' own code ([`api`]), live cluster events
//! as server-sent events bridged from `Clusters.Watch` ([`events`]),
//! sessions ([`session`]) and one-time manifest links ([`links`]).
//!
//! Security, in one place ([`Console::handle`]):
//! - A browser signs in with a hub bearer token or its client certificate
//!   and gets a session cookie (`HttpOnly`, `Secure`, `SameSite=Strict`,
//!   `Path=/ui/`: it never reaches the gateway, which forwards headers to
//!   child clusters). Each API call is then made with that credential by
//!   the management services, which authorize it exactly as over gRPC.
//! - Every state change (`POST`, `PUT`, `PATCH`, `DELETE`) must come from
//!   the hub's own origin (`Origin`, and `Sec-Fetch-Site` when sent) and,
//!   once signed in, carry the session's CSRF token in `X-CSRF-Token`.
//! - Every answer carries a strict Content-Security-Policy (scripts and
//!   styles from the hub only, no inline script, no eval, no framing),
//!   `X-Content-Type-Options: nosniff` and `Referrer-Policy: no-referrer`
//!   (a manifest link's secret never leaks in a `Referer`).
//! - Request bodies are bounded ([`MAX_BODY`]); memory per session, link
//!   and event stream is bounded by the named limits of each module.

pub mod api;
pub mod assets;
pub mod events;
pub mod links;
pub mod session;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::api::access::AccessService;
use crate::api::clusters::ClustersService;
use crate::auth::Peer;
use crate::gateway::{BoxError, HubBody};
use crate::state::HubState;

use links::Links;
use session::{Session, Sessions};

/// Path prefix the console owns.
pub const PREFIX: &str = "/ui";
/// Name of the session cookie (`__Secure-`: browsers accept it only with
/// `Secure`, over HTTPS).
pub const COOKIE: &str = "__Secure-ferry-session";
/// Header carrying the session's CSRF token on state changes.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Largest request body the console reads (JSON forms are small).
pub const MAX_BODY: usize = 64 * 1024;

/// The Content-Security-Policy of every console answer.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Whether `path` is the console's.
pub fn serves(path: &str) -> bool {
    path == PREFIX || path.starts_with("/ui/")
}

/// The console: its sessions and links, and the management services it
/// calls.
pub struct Console {
    state: Arc<HubState>,
    clusters: ClustersService,
    access: AccessService,
    sessions: Sessions,
    links: Links,
}

/// An answer before the security headers are added.
pub(crate) type Reply = Response<HubBody>;

pub(crate) fn full(data: impl Into<Bytes>) -> HubBody {
    http_body_util::Full::new(data.into()).map_err(|never| match never {}).boxed_unsync()
}

/// A JSON answer.
pub(crate) fn json(code: StatusCode, value: &serde_json::Value) -> Reply {
    let mut r = Response::new(full(value.to_string()));
    *r.status_mut() = code;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// A JSON error: `{"error": message}`.
pub(crate) fn error(code: StatusCode, message: impl Into<String>) -> Reply {
    json(code, &serde_json::json!({ "error": message.into() }))
}

impl Console {
    /// A console over the hub's state and the same service instances gRPC
    /// serves (so limits such as concurrent watches are shared).
    pub fn new(state: Arc<HubState>, clusters: ClustersService, access: AccessService) -> Self {
        Console { state, clusters, access, sessions: Sessions::default(), links: Links::default() }
    }

    /// Serves one request below [`PREFIX`].
    pub async fn handle(&self, peer: Peer, req: Request<Incoming>) -> Response<HubBody> {
        let (parts, body) = req.into_parts();
        let mut reply = self.route(peer, parts, body).await;
        secure(reply.headers_mut());
        reply
    }

    async fn route(&self, peer: Peer, parts: http::request::Parts, body: Incoming) -> Reply {
        let path = parts.uri.path().to_owned();
        let method = parts.method.clone();
        if path == PREFIX {
            let mut r = Response::new(full(""));
            *r.status_mut() = StatusCode::PERMANENT_REDIRECT;
            r.headers_mut().insert(header::LOCATION, HeaderValue::from_static("/ui/"));
            return r;
        }
        let changes_state = !matches!(method, Method::GET | Method::HEAD);
        if changes_state && let Err(why) = same_origin(&parts.headers, &parts.uri) {
            return error(StatusCode::FORBIDDEN, why);
        }
        if let Some(secret) = path.strip_prefix("/ui/manifests/") {
            if method != Method::GET {
                return error(StatusCode::METHOD_NOT_ALLOWED, "manifest links answer GET only");
            }
            return self.manifest(secret);
        }
        let Some(rest) = path.strip_prefix("/ui/api/") else {
            return assets::serve(&method, &path);
        };
        let body = match read_body(body).await {
            Ok(b) => b,
            Err(reply) => return reply,
        };
        let client = parts.extensions.get::<crate::gateway::ClientAddr>().copied();
        let req =
            api::ApiRequest { method, path: rest.to_owned(), query: parts.uri.query(), body: &body, client };
        if rest == "session" {
            return self.session_call(&peer, &parts.headers, &req).await;
        }
        let Some(session) = self.session_of(&parts.headers) else {
            return error(
                StatusCode::UNAUTHORIZED,
                "not signed in (or the session has ended): sign in again",
            );
        };
        if changes_state {
            let sent = parts.headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
            if !session.csrf_matches(sent) {
                return error(
                    StatusCode::FORBIDDEN,
                    "missing or wrong X-CSRF-Token header: reload the console and try again",
                );
            }
        }
        self.call(&session, &parts.headers, &req).await
    }

    /// `GET /ui/manifests/SECRET`: a one-time link, served once.
    fn manifest(&self, secret: &str) -> Reply {
        match self.links.take(secret, Instant::now()) {
            Some(yaml) => {
                let mut r = Response::new(full(yaml));
                r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/yaml"));
                r.headers_mut().insert(
                    header::CONTENT_DISPOSITION,
                    HeaderValue::from_static("attachment; filename=\"agent.yaml\""),
                );
                r
            }
            None => error(
                StatusCode::NOT_FOUND,
                "this manifest link is unknown, used already or expired (links are single-use and expire within the hour): register the cluster again in the console for a new one",
            ),
        }
    }

    /// The session the request's cookie names, if it is live.
    fn session_of(&self, headers: &HeaderMap) -> Option<Arc<Session>> {
        self.sessions.get(&cookie(headers, COOKIE)?, Instant::now())
    }
}

/// Reads a request body of at most [`MAX_BODY`] bytes.
async fn read_body(body: Incoming) -> Result<Bytes, Reply> {
    match http_body_util::Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            Err(error(StatusCode::PAYLOAD_TOO_LARGE, format!("request body larger than {MAX_BODY} bytes")))
        }
        Err(e) => Err(error(StatusCode::BAD_REQUEST, format!("reading the request body: {e}"))),
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
        .filter(|v| !v.is_empty())
}

/// Checks that a state-changing request comes from the hub's own origin:
/// `Origin` must be `https://` + the host the request was sent to, and
/// `Sec-Fetch-Site`, when the browser sends it, `same-origin`.
pub fn same_origin(headers: &HeaderMap, uri: &http::Uri) -> Result<(), &'static str> {
    let host = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| headers.get(header::HOST).and_then(|v| v.to_str().ok()).map(str::to_owned))
        .ok_or("the request names no host")?;
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .ok_or("a state change needs an Origin header (browsers send it): use the console's pages")?;
    if !origin.eq_ignore_ascii_case(&format!("https://{host}")) {
        return Err("cross-origin request refused: state changes must come from the console's own pages");
    }
    if let Some(site) = headers.get("sec-fetch-site")
        && site.as_bytes() != b"same-origin"
    {
        return Err("cross-site request refused (Sec-Fetch-Site)");
    }
    Ok(())
}

/// Adds the console's security headers to an answer.
fn secure(h: &mut HeaderMap) {
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    h.insert("cross-origin-resource-policy", HeaderValue::from_static("same-origin"));
    h.insert("permissions-policy", HeaderValue::from_static("camera=(), microphone=(), geolocation=()"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

/// The `Set-Cookie` value for session `id` (empty: clears it).
fn session_cookie(id: &str, max_age: std::time::Duration) -> HeaderValue {
    let v =
        format!("{COOKIE}={id}; Path=/ui/; Max-Age={}; Secure; HttpOnly; SameSite=Strict", max_age.as_secs());
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static("invalid=1"))
}

/// Error type of streamed bodies.
pub(crate) type StreamError = BoxError;

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn state_changes_must_come_from_the_hubs_own_origin() {
        let uri: http::Uri = "/ui/api/clusters".parse().expect("uri");
        let ok = headers(&[("host", "hub:8443"), ("origin", "https://hub:8443")]);
        assert_eq!(same_origin(&ok, &uri), Ok(()));
        let fetch = headers(&[
            ("host", "hub:8443"),
            ("origin", "https://hub:8443"),
            ("sec-fetch-site", "same-origin"),
        ]);
        assert_eq!(same_origin(&fetch, &uri), Ok(()));
        for bad in [
            headers(&[("host", "hub:8443")]),
            headers(&[("host", "hub:8443"), ("origin", "https://evil:8443")]),
            headers(&[("host", "hub:8443"), ("origin", "http://hub:8443")]),
            headers(&[("host", "hub:8443"), ("origin", "null")]),
            headers(&[
                ("host", "hub:8443"),
                ("origin", "https://hub:8443"),
                ("sec-fetch-site", "cross-site"),
            ]),
            headers(&[("host", "hub:8443"), ("origin", "https://hub:8443"), ("sec-fetch-site", "same-site")]),
            headers(&[("origin", "https://hub:8443")]),
        ] {
            assert!(same_origin(&bad, &uri).is_err(), "{bad:?}");
        }
        // HTTP/2: the authority is in the URI.
        let h2: http::Uri = "https://hub:8443/ui/api/x".parse().expect("uri");
        assert_eq!(same_origin(&headers(&[("origin", "https://hub:8443")]), &h2), Ok(()));
    }

    #[test]
    fn the_session_cookie_is_read_from_any_cookie_header_and_set_strictly() {
        let h = headers(&[("cookie", "a=b; __Secure-ferry-session=abc"), ("cookie", "c=d")]);
        assert_eq!(cookie(&h, COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&headers(&[("cookie", "x__Secure-ferry-session=abc")]), COOKIE), None);
        assert_eq!(cookie(&headers(&[("cookie", "__Secure-ferry-session=")]), COOKIE), None);
        let set = session_cookie("abc", std::time::Duration::from_secs(60));
        let set = set.to_str().expect("text");
        for part in ["Path=/ui/", "Secure", "HttpOnly", "SameSite=Strict", "Max-Age=60"] {
            assert!(set.contains(part), "{set}");
        }
    }

    #[test]
    fn every_answer_gets_the_security_headers() {
        let mut h = HeaderMap::new();
        secure(&mut h);
        assert_eq!(h[header::CONTENT_SECURITY_POLICY], CSP);
        assert!(!CSP.contains("unsafe"), "no unsafe-inline, no unsafe-eval");
        assert!(CSP.contains("frame-ancestors 'none'") && CSP.contains("script-src 'self'"));
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(h[header::CACHE_CONTROL], "no-store");
        assert!(
            serves("/ui")
                && serves("/ui/")
                && serves("/ui/api/x")
                && !serves("/uix")
                && !serves("/clusters/ui")
        );
    }
}

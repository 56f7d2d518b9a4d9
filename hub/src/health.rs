//! The hub's readiness: `/readyz` on the HTTPS address and on
//! `--health-listen` answers 200 only while the hub accepts connections
//! and its store answers; `/healthz` and `/livez` say only that the process
//! serves.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::state::HubState;

/// How long the store may take to answer a readiness check.
pub const STORE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// `Ok` when the hub is ready to serve, else why not.
pub async fn ready(state: &HubState) -> Result<(), String> {
    if !state.serving.load(Ordering::Acquire) {
        return Err("the hub is not accepting connections (starting or shutting down)".into());
    }
    match tokio::time::timeout(STORE_CHECK_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("the store is unavailable: {e}")),
        Err(_) => Err(format!("the store did not answer within {STORE_CHECK_TIMEOUT:?}")),
    }
}

/// The answer to a health path (`/healthz`, `/livez`, `/readyz`), as a
/// status code and text; `None` for other paths.
pub async fn answer(state: &HubState, path: &str) -> Option<(http::StatusCode, String)> {
    match path {
        "/healthz" | "/livez" => Some((http::StatusCode::OK, "ok".into())),
        "/readyz" => Some(match ready(state).await {
            Ok(()) => (http::StatusCode::OK, "ok".into()),
            Err(why) => (http::StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}")),
        }),
        _ => None,
    }
}

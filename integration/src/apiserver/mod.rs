//! An in-memory **test double** of kube-apiserver.
//!
//! It speaks enough of the real Kubernetes HTTP API (over TLS, HTTP/1.1 and
//! HTTP/2) for the real `kubectl` (1.27 to 1.33) and kube-rs to work against
//! it, and it records every request it receives so tests can assert on what
//! an apiserver behind Ferry actually saw.
//!
//! ```no_run
//! # async fn demo() -> Result<(), ferry_integration::apiserver::StartError> {
//! use ferry_integration::apiserver::{RbacRule, TestApiserver};
//!
//! let api = TestApiserver::builder()
//!     .rbac([RbacRule::for_user("alice").verbs(["get", "list"]).resources(["configmaps"]).namespaces(["default"])])
//!     .start()
//!     .await?;
//! let kubeconfig = api.kubeconfig_yaml(); // server URL, CA, admin token
//! api.append_log("default", "web", "hello"); // `kubectl logs -f web` prints it
//! let seen = api.requests(); // everything received, headers as sent
//! api.shutdown().await;
//! # drop((kubeconfig, seen)); Ok(()) }
//! ```
//!
//! # What it serves
//!
//! - `/version`, `/healthz`, `/livez`, `/readyz`.
//! - Discovery: `/api`, `/apis`, `/api/v1`, `/apis/{group}[/{version}]`, and
//!   aggregated discovery (`apidiscovery.k8s.io` `v2` and `v2beta1`) on `/api`
//!   and `/apis` when the `Accept` header asks for it.
//! - `/openapi/v3` and its per group-version documents: small, but enough for
//!   kubectl's server-side field validation check and `kubectl apply`.
//!   `/openapi/v2` is a minimal document (no definitions), which kubectl
//!   1.27 and 1.28 load before writes.
//! - Core `v1` `namespaces` (cluster-scoped; `default`, `kube-system`,
//!   `kube-public` and `kube-node-lease` exist at start), `configmaps`,
//!   `pods` and `events` (which `kubectl describe` reads): create, get,
//!   list, watch, update, patch (JSON merge, strategic merge, JSON patch),
//!   delete and deletecollection, with label and field selectors,
//!   `limit`/`continue`, `dryRun=All`, `fieldValidation`, and `Table`
//!   output (`as=Table;g=meta.k8s.io;v=v1`) as `kubectl get` asks for.
//! - `pods/log` (with `follow`, `container`, `tailLines`, `timestamps`,
//!   `sinceSeconds`, `limitBytes`); lines come from
//!   [`TestApiserver::append_log`] or `POST /_test/logs/...`.
//! - Request bodies as JSON, YAML, or Kubernetes protobuf for the messages
//!   kubectl 1.32+ sends that way (`create configmap`, `create namespace`,
//!   `auth whoami`, `auth can-i`); responses are always JSON.
//! - `selfsubjectreviews` (`authentication.k8s.io` `v1`, `v1beta1`,
//!   `v1alpha1`, as `kubectl auth whoami` uses) and `selfsubjectaccessreviews`
//!   (`authorization.k8s.io/v1`, as `kubectl auth can-i` uses).
//!
//! # Security model (never more lenient than a real apiserver)
//!
//! - Authentication: only the server's own admin bearer token is accepted;
//!   anything else is `401 Unauthorized`.
//! - Impersonation (`Impersonate-User`, repeated `Impersonate-Group`,
//!   `Impersonate-Uid`, `Impersonate-Extra-<key>`) is honoured from the admin
//!   credential; the effective user then also gets `system:authenticated`.
//! - Authorization: the non-impersonated admin (`test-admin`, group
//!   `system:masters`) may do anything. Impersonated users are checked against
//!   a table of [`RbacRule`]s (all requests are allowed when none were
//!   configured: demo mode); a denial is a real-looking `403 Forbidden`.
//!   Discovery, `/version`, `/openapi`, health and self reviews are allowed to
//!   every authenticated user, as in real clusters.
//!
//! # Test-only endpoints
//!
//! For tests that run the `test-apiserver` binary as a separate process; all
//! require the admin token without impersonation (403 otherwise) and are not
//! themselves recorded:
//!
//! - `GET /_test/requests`: JSON array of [`RecordedRequest`].
//! - `POST /_test/logs/{namespace}/{pod}`: the body is appended to the pod's
//!   log (one line per `\n`-separated line); answers 204.
//! - `PUT /_test/rbac`: the body is a JSON (or YAML) array of [`RbacRule`]
//!   that replaces the table; answers 204.
//!
//! # Known simplifications
//!
//! - Strategic merge patch merges lists by merge key (`containers`, `env`,
//!   `volumes`, ...) and honours `$patch`, `$retainKeys` and
//!   `$deleteFromPrimitiveList`, but ignores `$setElementOrder` (new list
//!   elements are appended).
//! - Server-side apply (`application/apply-patch+yaml`) is answered with 415,
//!   as the field-ownership model is not implemented.
//! - Unknown-field detection (`fieldValidation`) covers the object's top
//!   level, metadata, ConfigMap, Namespace and Event fields, and pod spec
//!   and container fields, not deeper pod fields; duplicate JSON keys are
//!   not detected. Type checks (400) likewise stop at those levels; a wrong
//!   type deeper in a pod is caught, if at all, by validation (422).
//! - Pods are "running" from creation and are removed at once on delete
//!   (there is no kubelet; the returned pod carries `deletionTimestamp`).
//!   Deleting a namespace removes its contents at once.
//! - `pods/exec`, `pods/attach` and `pods/portforward` are listed in
//!   discovery but answer 400, as to a request without a protocol upgrade.
//! - A `continue` token pages through the current state, not a snapshot;
//!   lists always read the latest state whatever `resourceVersion` asks.
//! - Protobuf request bodies of other kinds (and protobuf-only `Accept`)
//!   are refused (415 / 406) rather than decoded.

mod auth;
mod body;
mod clock;
mod defaults;
mod discovery;
mod error;
mod handlers;
mod logs;
mod media;
mod patch;
mod protobuf;
mod query;
mod rbac;
mod record;
mod request_info;
mod resources;
mod reviews;
mod router;
mod selector;
mod server;
mod status;
mod store;
mod table;
mod test_endpoints;
mod tls;
mod validate;
mod watch;

pub use auth::ADMIN_USER;
pub use error::StartError;
pub use rbac::{RbacRule, Subject};
pub use record::{MAX_RECORDED_REQUESTS, RECORDED_BODY_LIMIT, RecordedRequest, RequestOutcome};
pub use server::{TestApiserver, TestApiserverBuilder};

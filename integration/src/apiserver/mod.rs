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
//! - `pods/exec`, `pods/attach` and `pods/portforward` over HTTP/1.1
//!   upgrades, as a kubelet-backed apiserver answers them (see below).
//!
//! # Streaming: exec, attach, port-forward, cp
//!
//! - Transports: SPDY/3.1 (`Upgrade: SPDY/3.1`, `X-Stream-Protocol-Version`
//!   `v4.channel.k8s.io` down to `channel.k8s.io` for exec/attach,
//!   `portforward.k8s.io` for port-forward; see the `spdy` module), WebSocket for
//!   exec/attach (`v5.channel.k8s.io` ... `channel.k8s.io`, and
//!   `v4.base64.channel.k8s.io` / `base64.channel.k8s.io`), and WebSocket
//!   port-forward as kubectl 1.30+ does it (`SPDY/3.1+portforward.k8s.io`:
//!   SPDY tunnelled in binary messages). What kubectl 1.27 to 1.33 send with
//!   `KUBECTL_REMOTE_COMMAND_WEBSOCKETS` / `KUBECTL_PORT_FORWARD_WEBSOCKETS`
//!   on or off all work; an unsupported subprotocol gets 403, which makes
//!   kubectl fall back to SPDY.
//! - Exit codes: on the error stream, a `Status` (`Success`, or `Failure`
//!   with reason `NonZeroExitCode` and the code as an `ExitCode` cause) for
//!   v4 and v5; a text message on failure for older versions.
//! - There are no processes: each pod has a small in-memory filesystem and
//!   built-in commands (`echo`, `cat` streaming stdin, `sh -c` with a small
//!   script language, `env`, `test`, `ls`, `tar` for `kubectl cp` both
//!   ways, `sha256sum`, `wc -c`, `wait-for-stdin-eof`, `sleep`, ...; see
//!   the `commands` module). Unknown commands exit 127 with a message on stderr.
//!   With a tty, `sh` and `cat` become a terminal session that echoes input
//!   and prints `resize COLSxROWS` on every resize event.
//! - `attach` joins the container's main process: it echoes stdin and shows
//!   every line appended to the pod's log (see [`TestApiserver::append_log`]).
//! - Port-forward joins each forwarded connection to the TCP address in the
//!   pod annotation [`FORWARD_TO_ANNOTATION`] (`HOST:PORT`), or else to a
//!   built-in echo service; half-closes are passed on.
//! - RBAC: `create` on `pods/exec`, `pods/attach` or `pods/portforward`;
//!   WebSocket requests (GET) need `get` as well, as in kube-apiserver 1.34+.
//! - The request's record stays [`RequestOutcome::InProgress`] while the
//!   upgraded connection is open, then shows how it ended (`Completed` when
//!   the command exited, `Cancelled` when the client went away first, which
//!   for port-forward is the normal end), when (`finished_at`), the
//!   negotiated `upgrade` and `stream_protocol`, and the `exit_code`.
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
//! - `GET /_test/requests/wait?pathContains=X&outcome=cancelled&afterId=I&timeoutSeconds=N`:
//!   waits (at most `N` seconds, default 30) for the first recorded request
//!   whose path contains `X` (and, when given, whose id is above `I` and
//!   that is in that state: `inProgress`, `completed` or `cancelled`), and
//!   answers `{"found": bool, "request": RecordedRequest|null}`.
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
//! - Streaming needs HTTP/1.1: an HTTP/2 request to `pods/exec` (which
//!   cannot be upgraded) answers 400, as to a request without an upgrade.
//!   The old WebSocket port-forward protocol (channels, `?ports=`) is not
//!   served. Pipes, globs and control flow are not in the shell language.
//! - A `continue` token pages through the current state, not a snapshot;
//!   lists always read the latest state whatever `resourceVersion` asks.
//! - Protobuf request bodies of other kinds (and protobuf-only `Accept`)
//!   are refused (415 / 406) rather than decoded.

mod auth;
mod body;
mod clock;
mod commands;
mod defaults;
mod discovery;
mod error;
mod handlers;
mod logs;
mod media;
mod patch;
mod podfs;
mod portforward;
mod protobuf;
mod query;
mod rbac;
mod record;
mod remotecommand;
mod request_info;
mod resources;
mod reviews;
mod router;
mod selector;
mod server;
mod shell;
mod spdy;
mod status;
mod stdio;
mod store;
mod streaming;
mod table;
mod tarball;
mod test_endpoints;
mod tls;
mod validate;
mod watch;
mod websocket;

pub use auth::ADMIN_USER;
pub use error::StartError;
pub use portforward::FORWARD_TO_ANNOTATION;
pub use rbac::{RbacRule, Subject};
pub use record::{MAX_RECORDED_REQUESTS, RECORDED_BODY_LIMIT, RecordedRequest, RequestOutcome};
pub use server::{TestApiserver, TestApiserverBuilder};

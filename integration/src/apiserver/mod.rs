//! An in-memory **test double** of kube-apiserver.
//!
//! It speaks enough of the real Kubernetes HTTP API (over TLS, HTTP/1.1 and
//! HTTP/2) for the real `kubectl` (1.27 to 1.33) and kube-rs to work against
//! it, and it records every request it receives (with who authenticated and
//! whom it impersonated) so tests can assert on what an apiserver behind
//! Ferry actually saw. Its RBAC comes from the objects applied to it, so a
//! manifest missing a verb fails here as on a real cluster.
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
//! // A token from `kubectl create token NAME -n NS` (the TokenRequest API):
//! # let token = "";
//! let as_service_account = api.kubeconfig_with_token(token)?;
//! api.shutdown().await;
//! # drop((kubeconfig, seen, as_service_account)); Ok(()) }
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
//! - Stored kinds, with create, get, list, watch, update, patch (JSON
//!   merge, strategic merge, JSON patch), delete and deletecollection,
//!   label and field selectors, `limit`/`continue`, `dryRun=All`,
//!   `fieldValidation`, `Table` output (`as=Table;g=meta.k8s.io;v=v1`) with
//!   kube-apiserver's columns, and kubectl's short names:
//!   - core `v1`: `namespaces` (cluster-scoped; `default`, `kube-system`,
//!     `kube-public` and `kube-node-lease` exist at start), `configmaps`,
//!     `pods`, `events` (which `kubectl describe` reads), `serviceaccounts`,
//!     `secrets` (`stringData` is merged into `data` on write and never
//!     returned; `type` defaults to `Opaque`) and `nodes` (cluster-scoped;
//!     `test-node`, Ready, exists at start);
//!   - `rbac.authorization.k8s.io/v1`: `clusterroles`, `clusterrolebindings`,
//!     `roles`, `rolebindings` (they decide authorization, see below;
//!     `cluster-admin`, `admin`, `edit` and `view` exist at start, with the
//!     `cluster-admin` binding of `system:masters`);
//!   - `apps/v1`: `deployments` (defaulted, `generation` kept, but no
//!     controller: no ReplicaSets or pods, an empty `status`).
//! - Decoding as kube-apiserver's (400): every stored kind goes through its
//!   `k8s-openapi` type and back; a wrong type is refused, and fields the
//!   type lacks are refused (`fieldValidation=Strict`, what kubectl sends),
//!   warned about (`Warn`, the default) or ignored. Then validation (422):
//!   names, labels, and per-kind rules (containers, selectors matching
//!   template labels, RBAC rules and role references, ...).
//! - The TokenRequest API, `POST
//!   /api/v1/namespaces/{ns}/serviceaccounts/{name}/token` (`kubectl create
//!   token NAME -n NS [--duration]`): a JWT-shaped token for the
//!   ServiceAccount (`expirationSeconds` 600 to 2^32, default 3600;
//!   `audiences`; `boundObjectRef` to a Pod, Secret or Node).
//! - `pods/log` (with `follow`, `container`, `tailLines`, `timestamps`,
//!   `sinceSeconds`, `limitBytes`); lines come from
//!   [`TestApiserver::append_log`] or `POST /_test/logs/...`.
//! - Request bodies as JSON, YAML, or Kubernetes protobuf for the messages
//!   kubectl 1.32+ sends that way (`create configmap`, `namespace`,
//!   `serviceaccount`, `secret generic`, `role`, `clusterrole`,
//!   `rolebinding`, `clusterrolebinding`, `token`; `auth whoami`, `auth
//!   can-i`); responses are always JSON.
//! - `/readyz`, `/livez` and `/healthz` answer `ok`, or, once turned off
//!   ([`TestApiserver::set_readyz`], [`TestApiserver::set_livez`] or `PUT
//!   /_test/health`), 500 with the body a kube-apiserver without etcd sends
//!   (`[-]etcd failed: reason withheld` ... `readyz check failed`).
//! - `selfsubjectreviews` (`authentication.k8s.io` `v1`, `v1beta1`,
//!   `v1alpha1`, as `kubectl auth whoami` uses), `selfsubjectaccessreviews`
//!   (`authorization.k8s.io/v1`, as `kubectl auth can-i` uses) and
//!   `subjectaccessreviews` (for the user in its `spec`, exactly as given),
//!   all answered by the authorizer that decides requests.
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
//! - Authentication: the server's own admin bearer token (user
//!   `test-admin`, groups `system:masters`, `system:authenticated`), or a
//!   live ServiceAccount token from the TokenRequest API (user
//!   `system:serviceaccount:NS:NAME`, uid the ServiceAccount's, groups
//!   `system:serviceaccounts`, `system:serviceaccounts:NS`,
//!   `system:authenticated`) until it expires or the ServiceAccount is
//!   deleted, or a client certificate from the server's own CA (CN = user,
//!   O = groups, plus `system:authenticated`; checked first, as
//!   kube-apiserver's x509 authenticator is;
//!   [`TestApiserver::client_cert_kubeconfig_yaml`] and the binary's
//!   `--cert-kubeconfig-out` give kind's `kubernetes-admin` in
//!   `system:masters`). Anything else is `401 Unauthorized`.
//! - Impersonation (`Impersonate-User`, repeated `Impersonate-Group`,
//!   `Impersonate-Uid`, `Impersonate-Extra-<key>`) is checked as
//!   kube-apiserver checks it: the requester needs `impersonate` on `users`
//!   (on `serviceaccounts` NAME in NS for a `system:serviceaccount:NS:NAME`
//!   user), on `groups` for each group, on `userextras/<key>` for each extra
//!   value and on `uids` (both in `authentication.k8s.io`); the first
//!   denial is a 403 like `users "alice" is forbidden: User "..." cannot
//!   impersonate resource "users" in API group "" at the cluster scope`. The
//!   admin (in `system:masters`) may impersonate anyone. The effective user
//!   then also gets `system:authenticated` (and a ServiceAccount without
//!   groups its ServiceAccount groups).
//! - Authorization of the effective user, in this order: members of
//!   `system:masters` may do anything; discovery, `/version`, `/openapi`,
//!   health and self reviews are allowed to everyone (as `system:discovery`,
//!   `system:public-info-viewer` and `system:basic-user` allow them); then
//!   RBAC objects (ClusterRoleBindings, then the RoleBindings of the
//!   request's namespace, with their roles' `apiGroups`, `resources`
//!   including `pods/exec`-style subresources and `*/sub`,
//!   `resourceNames`, `verbs`, `nonResourceURLs` with a trailing `*`, and
//!   User, Group and ServiceAccount subjects); then the table of
//!   [`RbacRule`]s (resource requests only); then demo mode. Demo mode
//!   allows every resource request of a human user (not a ServiceAccount,
//!   not anonymous) and is on when no table was configured and the server
//!   is not strict ([`TestApiserverBuilder::strict_rbac`], `--strict-rbac`).
//!   So ServiceAccounts, whether with a token, impersonated or in a
//!   SubjectAccessReview, get only what the table and RBAC objects give
//!   them. A denial is a real-looking `403 Forbidden` (`secrets "x" is
//!   forbidden: User "..." cannot update resource "secrets" in API group ""
//!   in the namespace "ns"`, with `: RBAC: ...` when a binding's role is
//!   missing).
//! - Writing RBAC objects cannot escalate, as in kube-apiserver: a Role or
//!   ClusterRole may be created or changed only by someone who holds every
//!   permission it grants or may `escalate` it; a binding only by someone
//!   who holds every permission of its role or may `bind` that role
//!   (`roles "x" is forbidden: user "..." (groups=[...]) is attempting to
//!   grant RBAC permissions not currently held: ...`).
//! - The default `admin`, `edit` and `view` ClusterRoles approximate the
//!   real ones (their rules written out rather than aggregated): `view`
//!   reads namespaced workloads and config but not Secrets; `edit` adds
//!   writes, Secrets, `pods/exec`-like subresources, `serviceaccounts/token`
//!   and impersonating ServiceAccounts; `admin` adds Roles and
//!   RoleBindings.
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
//!   that replaces the table (and ends demo mode); answers 204.
//! - `PUT /_test/health`: the body is JSON `{"readyz": bool, "livez":
//!   bool}` (a check left out keeps its state); `false` makes that endpoint
//!   fail (`livez` also fails `/healthz`); answers 204.
//!
//! # Known simplifications
//!
//! - Strategic merge patch merges lists by merge key (`containers`, `env`,
//!   `volumes`, ...) and honours `$patch`, `$retainKeys` and
//!   `$deleteFromPrimitiveList`, but ignores `$setElementOrder` (new list
//!   elements are appended).
//! - Server-side apply (`application/apply-patch+yaml`) is answered with 415,
//!   as the field-ownership model is not implemented.
//! - Decoding knows the fields of `k8s-openapi`'s newest Kubernetes version,
//!   so fields added after 1.33 are accepted; an unknown field whose value
//!   is `null`, and duplicate JSON keys, are not reported. Type errors name
//!   the field but word the expected type the Rust way (`i32`).
//! - Validation (422) covers names, labels, containers, Secret and
//!   ConfigMap keys and sizes, Deployment selectors and replicas, RBAC
//!   rules, role references and subjects, and the immutable fields of
//!   Secrets, bindings (`roleRef`) and Deployments (`spec.selector`); not
//!   every rule of kube-apiserver (e.g. type-specific Secret keys).
//! - No controllers: a Deployment gets no ReplicaSets, pods or status; no
//!   `default` ServiceAccount appears in new namespaces; no token Secrets
//!   are made for ServiceAccounts.
//! - RBAC: `aggregationRule` is stored but not acted on.
//! - ServiceAccount tokens look like JWTs but are not signed: only this
//!   server's registry makes them valid. TokenReview and
//!   `selfsubjectrulesreviews` (`kubectl auth can-i --list`) are not
//!   served.
//! - Pods are "running" from creation and are removed at once on delete
//!   (there is no kubelet; the returned pod carries `deletionTimestamp`).
//!   Deleting a namespace removes its contents at once.
//! - Streaming needs HTTP/1.1: an HTTP/2 request to `pods/exec` (which
//!   cannot be upgraded) answers 400, as to a request without an upgrade.
//!   The old WebSocket port-forward protocol (channels, `?ports=`) is not
//!   served. Pipes, globs and control flow are not in the shell language.
//! - A `continue` token pages through the current state, not a snapshot;
//!   lists always read the latest state whatever `resourceVersion` asks.
//! - Protobuf request bodies of other kinds (e.g. `kubectl create
//!   deployment`, and protobuf-only `Accept`) are refused (415 / 406)
//!   rather than decoded.

mod auth;
mod authz;
mod body;
mod clock;
mod commands;
mod decode;
mod defaults;
mod discovery;
mod error;
mod escalation;
mod handlers;
mod logs;
mod media;
mod patch;
mod podfs;
mod policy;
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
mod tokens;
mod validate;
mod watch;
mod websocket;

pub use auth::ADMIN_USER;
pub use error::StartError;
pub use portforward::FORWARD_TO_ANNOTATION;
pub use rbac::{RbacRule, Subject};
pub use record::{MAX_RECORDED_REQUESTS, RECORDED_BODY_LIMIT, RecordedRequest, RequestOutcome};
pub use server::{TestApiserver, TestApiserverBuilder};
pub use tokens::MAX_TOKENS;

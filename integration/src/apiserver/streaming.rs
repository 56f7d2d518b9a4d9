//! `pods/{name}/exec`, `attach` and `portforward`: checks the request as the
//! apiserver does, negotiates the transport (SPDY/3.1 or WebSocket) and its
//! protocol, answers `101 Switching Protocols`, and runs the session on the
//! upgraded connection in a task the server owns (so shutdown ends it).
//! The request's record stays open until the connection ends, and then
//! tells how: [`RequestOutcome::Completed`] when the server finished (the
//! command exited), [`RequestOutcome::Cancelled`] when the client went away
//! first (or at shutdown).

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::body::{self, ResponseBody};
use super::commands::{Container, Program};
use super::portforward::{self, Target};
use super::record::{RecordGuard, RequestOutcome};
use super::remotecommand::{self, Ending, Options, SPDY_PROTOCOLS, Version};
use super::resources::ResourceKind;
use super::router::Ctx;
use super::server::State;
use super::spdy::SpdyConn;
use super::status::ApiError;
use super::store::ObjectKey;
use super::websocket::{self, CHANNEL_PROTOCOLS, SPDY_TUNNEL_PROTOCOL};

/// How long a finished session waits for the client to close its side
/// (and then for its socket to close in order). The client closes once it
/// has read everything, and a slow reader may still have megabytes to go
/// (buffered in sockets, and in a tunnel's hops): closing first would cut
/// its output short. Sessions end as soon as the client closes; this only
/// bounds one that never does.
const CLOSE_LINGER: Duration = Duration::from_secs(60);
/// The SPDY port-forward protocol.
const PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";
/// The kubelet's header naming the protocol versions it accepts.
const ACCEPTED_VERSIONS_HEADER: &str = "x-accepted-stream-protocol-versions";
/// The header a SPDY client lists its protocol versions in.
const STREAM_PROTOCOL_HEADER: &str = "x-stream-protocol-version";

/// Which streaming subresource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Subresource {
    /// `pods/exec`.
    Exec,
    /// `pods/attach`.
    Attach,
    /// `pods/portforward`.
    PortForward,
}

impl Subresource {
    /// The subresource for a path segment.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "exec" => Some(Self::Exec),
            "attach" => Some(Self::Attach),
            "portforward" => Some(Self::PortForward),
            _ => None,
        }
    }
}

/// The negotiated transport.
#[derive(Clone, Copy, Debug)]
enum Transport {
    /// SPDY/3.1 with a remote command version (`None` for port-forward).
    Spdy(Option<Version>),
    /// WebSocket channels (exec/attach).
    Channels { version: Version, base64: bool },
    /// SPDY tunnelled in WebSocket (port-forward).
    Tunnel,
}

/// A command session: exec (with a command line) or attach.
struct Command {
    argv: Option<Vec<String>>,
    opts: Options,
    container: Container,
}

enum Work {
    Command(Command),
    PortForward { pod: String, target: Target },
}

fn header_list(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn wants_upgrade(headers: &HeaderMap) -> Option<String> {
    let connection = header_list(headers, header::CONNECTION.as_str());
    if !connection.iter().any(|c| c.eq_ignore_ascii_case("upgrade")) {
        return None;
    }
    headers.get(header::UPGRADE).and_then(|v| v.to_str().ok()).map(str::to_string)
}

fn container_of(ctx: &Ctx<'_>, pod: &Value, pod_name: &str, namespace: &str) -> Result<Container, ApiError> {
    let containers: Vec<&Value> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let name_of = |c: &Value| c.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
    let names: Vec<String> = containers.iter().map(|c| name_of(c)).collect();
    let default = names.first().cloned().unwrap_or_default();
    let wanted = match ctx.query.non_empty("container") {
        Some(c) => c.to_string(),
        None if names.len() == 1 => default.clone(),
        None => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {pod_name}, choose one of: [{}]",
                names.join(" ")
            )));
        }
    };
    let Some(spec) = containers.iter().find(|c| name_of(c) == wanted) else {
        return Err(ApiError::bad_request(format!("container {wanted} is not valid for pod {pod_name}")));
    };
    let env = spec
        .get("env")
        .and_then(Value::as_array)
        .map(|vars| {
            vars.iter()
                .filter_map(|v| {
                    let name = v.get("name")?.as_str()?;
                    Some((
                        name.to_string(),
                        v.get("value").and_then(Value::as_str).unwrap_or_default().to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Container {
        namespace: namespace.to_string(),
        pod: pod_name.to_string(),
        name: wanted,
        default_container: default,
        env,
        fs: ctx.state.files.get(namespace, pod_name),
    })
}

/// Serves a streaming subresource request.
pub(crate) fn serve(
    ctx: &Ctx<'_>,
    namespace: &str,
    pod_name: &str,
    sub: Subresource,
) -> Result<Response<ResponseBody>, ApiError> {
    if !matches!(*ctx.method, Method::GET | Method::POST) {
        return Err(ApiError::method_not_allowed());
    }
    let pod = ctx
        .state
        .store
        .get(&ObjectKey::new(ResourceKind::Pod, namespace, pod_name))
        .ok_or_else(|| ApiError::not_found("pods", pod_name))?;
    let work = match sub {
        Subresource::Exec => {
            let argv = ctx.query.all("command");
            let opts = Options::parse(ctx.query)?;
            if argv.is_empty() {
                return Err(ApiError::bad_request("you must specify at least one command for the container"));
            }
            Work::Command(Command {
                argv: Some(argv),
                opts,
                container: container_of(ctx, &pod, pod_name, namespace)?,
            })
        }
        Subresource::Attach => Work::Command(Command {
            argv: None,
            opts: Options::parse(ctx.query)?,
            container: container_of(ctx, &pod, pod_name, namespace)?,
        }),
        Subresource::PortForward => {
            Work::PortForward { pod: pod_name.to_string(), target: Target::of_pod(&pod) }
        }
    };
    let Some(upgrade) = wants_upgrade(ctx.headers) else {
        return Err(ApiError::bad_request("Upgrade request required"));
    };
    let mut resp = Response::new(ResponseBody::full(bytes::Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let set = |resp: &mut Response<ResponseBody>, name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            resp.headers_mut().insert(name, v);
        }
    };
    let (transport, protocol, upgrade_name) = if upgrade.eq_ignore_ascii_case("SPDY/3.1") {
        let offered = header_list(ctx.headers, STREAM_PROTOCOL_HEADER);
        let offered: Vec<&str> = offered.iter().map(String::as_str).collect();
        let supported: Vec<(&str, Option<Version>)> = match &work {
            Work::PortForward { .. } => vec![(PORT_FORWARD_PROTOCOL, None)],
            _ => SPDY_PROTOCOLS.iter().map(|(n, v)| (*n, Some(*v))).collect(),
        };
        let (name, version) = if offered.is_empty() {
            // A client that names no version gets the oldest protocol.
            ("", supported.last().and_then(|(_, v)| *v))
        } else {
            match websocket::negotiate(&offered, &supported) {
                Some(found) => found,
                None => return Ok(refuse_versions(&offered, &supported)),
            }
        };
        set(&mut resp, "connection", "Upgrade");
        set(&mut resp, "upgrade", "SPDY/3.1");
        if !name.is_empty() {
            set(&mut resp, STREAM_PROTOCOL_HEADER, name);
        }
        (Transport::Spdy(version), name.to_string(), "SPDY/3.1")
    } else if upgrade.eq_ignore_ascii_case("websocket") {
        let key = ctx
            .headers
            .get("sec-websocket-key")
            .ok_or_else(|| ApiError::bad_request("missing Sec-WebSocket-Key"))?;
        if ctx.headers.get("sec-websocket-version").and_then(|v| v.to_str().ok()) != Some("13") {
            return Err(ApiError::bad_request("unsupported WebSocket version (want 13)"));
        }
        let offered = header_list(ctx.headers, "sec-websocket-protocol");
        let offered: Vec<&str> = offered.iter().map(String::as_str).collect();
        let (transport, name) = match &work {
            Work::PortForward { .. } => {
                if !offered.contains(&SPDY_TUNNEL_PROTOCOL) {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "Forbidden",
                        format!(
                            "requested protocol(s) are not supported: {offered:?}; supports [\"{SPDY_TUNNEL_PROTOCOL}\"]"
                        ),
                    ));
                }
                (Transport::Tunnel, SPDY_TUNNEL_PROTOCOL)
            }
            _ => {
                let supported: Vec<(&str, (Version, bool))> =
                    CHANNEL_PROTOCOLS.iter().map(|(n, v, b)| (*n, (*v, *b))).collect();
                let found = if offered.is_empty() {
                    Some(("", (Version::V1, false)))
                } else {
                    websocket::negotiate(&offered, &supported)
                };
                let Some((name, (version, base64))) = found else {
                    let names: Vec<&str> = supported.iter().map(|(n, _)| *n).collect();
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "Forbidden",
                        format!("requested protocol(s) are not supported: {offered:?}; supports {names:?}"),
                    ));
                };
                (Transport::Channels { version, base64 }, name)
            }
        };
        set(&mut resp, "connection", "Upgrade");
        set(&mut resp, "upgrade", "websocket");
        set(&mut resp, "sec-websocket-accept", &derive_accept_key(key.as_bytes()));
        if !name.is_empty() {
            set(&mut resp, "sec-websocket-protocol", name);
        }
        (transport, name.to_string(), "websocket")
    } else {
        return Err(ApiError::bad_request(format!("unsupported upgrade {upgrade:?}")));
    };
    // HTTP/2 requests carry no upgrade: they cannot stream this way.
    let on_upgrade = ctx
        .upgrade
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
        .ok_or_else(|| ApiError::bad_request("Upgrade request required"))?;
    ctx.guard.set_stream(upgrade_name, &protocol);
    let guard = Arc::clone(ctx.guard);
    let state = Arc::clone(ctx.state);
    ctx.state.sessions.spawn(session(on_upgrade, transport, work, guard, state));
    Ok(resp)
}

/// The kubelet's answer when no protocol version fits: 403 with the
/// versions it accepts.
fn refuse_versions<T>(offered: &[&str], supported: &[(&str, T)]) -> Response<ResponseBody> {
    let names: Vec<&str> = supported.iter().map(|(n, _)| *n).collect();
    let text = format!(
        "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts {names:?}\n"
    );
    let mut resp =
        body::respond(StatusCode::FORBIDDEN, "text/plain; charset=utf-8", ResponseBody::full(text));
    for n in names {
        if let Ok(v) = HeaderValue::from_str(n) {
            resp.headers_mut().append(ACCEPTED_VERSIONS_HEADER, v);
        }
    }
    resp
}

async fn session(
    on_upgrade: OnUpgrade,
    transport: Transport,
    work: Work,
    guard: Arc<RecordGuard>,
    state: Arc<State>,
) {
    let upgraded = tokio::select! {
        r = on_upgrade => match r {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "the upgrade did not complete");
                return;
            }
        },
        () = state.shutdown.cancelled() => return,
    };
    let io = TokioIo::new(upgraded);
    let ending = tokio::select! {
        e = run(io, transport, work, &state) => e,
        () = state.shutdown.cancelled() => Ending::ClientGone,
    };
    match ending {
        Ending::Exited(code) => {
            guard.set_exit_code(code);
            guard.finish(RequestOutcome::Completed);
        }
        Ending::Failed(why) => {
            tracing::debug!(why, "streaming session failed");
            guard.finish(RequestOutcome::Completed);
        }
        Ending::ClientGone => guard.finish(RequestOutcome::Cancelled),
    }
}

async fn run<S>(io: S, transport: Transport, work: Work, state: &Arc<State>) -> Ending
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    match (transport, work) {
        (Transport::Spdy(_), Work::PortForward { pod, target }) => {
            let (r, w) = tokio::io::split(io);
            let mut conn = SpdyConn::start(r, w);
            portforward::serve(&mut conn, &pod, &target).await;
            conn.close(CLOSE_LINGER).await;
            Ending::ClientGone
        }
        (Transport::Tunnel, Work::PortForward { pod, target }) => {
            let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
            let (pipe, pump) = websocket::tunnel(ws, CLOSE_LINGER);
            let (r, w) = tokio::io::split(pipe);
            let mut conn = SpdyConn::start(r, w);
            let serve = async {
                portforward::serve(&mut conn, &pod, &target).await;
                conn.close(CLOSE_LINGER).await;
            };
            tokio::join!(pump, serve);
            Ending::ClientGone
        }
        (Transport::Spdy(version), Work::Command(cmd)) => {
            let version = version.unwrap_or(Version::V1);
            let (r, w) = tokio::io::split(io);
            let mut conn = SpdyConn::start(r, w);
            let (program, argv) = program_of(&cmd, state);
            let ending =
                remotecommand::serve_spdy(&mut conn, version, cmd.opts, program, &argv, &cmd.container).await;
            if ending != Ending::ClientGone {
                conn.close(CLOSE_LINGER).await;
            }
            ending
        }
        (Transport::Channels { version, base64 }, Work::Command(cmd)) => {
            let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
            let (program, argv) = program_of(&cmd, state);
            let session = websocket::Session { version, base64, opts: cmd.opts, linger: CLOSE_LINGER };
            websocket::serve_exec(ws, session, program, &argv, &cmd.container).await
        }
        (Transport::Channels { .. }, Work::PortForward { .. }) | (Transport::Tunnel, Work::Command(_)) => {
            Ending::Failed("transport does not fit the subresource".into())
        }
    }
}

/// The program to run, and the command line for messages.
fn program_of(cmd: &Command, state: &State) -> (Program, Vec<String>) {
    match &cmd.argv {
        Some(argv) => (Program::Exec(argv.clone()), argv.clone()),
        None => {
            let (_, rx) = state.logs.read(&cmd.container.namespace, &cmd.container.pod);
            (Program::Attach(rx), Vec::new())
        }
    }
}

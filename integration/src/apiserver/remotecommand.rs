//! `pods/exec` and `pods/attach` over SPDY, as the kubelet serves them
//! (`k8s.io/kubelet/pkg/cri/streaming/remotecommand`): the client opens one
//! stream per standard stream (`streamtype: error|stdin|stdout|stderr|
//! resize`), the command runs, stdout and stderr are half-closed, and the
//! result is written on the error stream.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;

use super::commands::{self, Container, Program};
use super::query::Query;
use super::spdy::{SendHalf, SpdyConn, SpdyStream};
use super::status::ApiError;
use super::stdio::{Input, Output, Resizes, Stdio};

/// How long the client has to open every stream it asked for (the
/// kubelet's default `streamCreationTimeout`).
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

/// A remote command protocol version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Version {
    /// `channel.k8s.io`.
    V1,
    /// `v2.channel.k8s.io`: the error stream carries text.
    V2,
    /// `v3.channel.k8s.io`: adds the resize stream.
    V3,
    /// `v4.channel.k8s.io`: the error stream carries a `Status` with the
    /// exit code.
    V4,
    /// `v5.channel.k8s.io` (WebSocket only): adds the close signal.
    V5,
}

/// The SPDY protocols, in the server's order of preference.
pub(crate) const SPDY_PROTOCOLS: [(&str, Version); 4] = [
    ("v4.channel.k8s.io", Version::V4),
    ("v3.channel.k8s.io", Version::V3),
    ("v2.channel.k8s.io", Version::V2),
    ("channel.k8s.io", Version::V1),
];

/// What the client asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Options {
    /// Send stdin.
    pub stdin: bool,
    /// Receive stdout.
    pub stdout: bool,
    /// Receive stderr (never with a tty).
    pub stderr: bool,
    /// Use a terminal.
    pub tty: bool,
}

impl Options {
    /// Reads and validates the query, as the apiserver does.
    pub fn parse(query: &Query) -> Result<Self, ApiError> {
        let tty = query.flag("tty");
        let opts = Self {
            stdin: query.flag("stdin"),
            stdout: query.flag("stdout"),
            stderr: query.flag("stderr") && !tty,
            tty,
        };
        if !(opts.stdin || opts.stdout || query.flag("stderr")) {
            return Err(ApiError::bad_request("you must specify at least 1 of stdin, stdout, stderr"));
        }
        Ok(opts)
    }
}

/// How a streaming session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Ending {
    /// The command exited (and the result was sent).
    Exited(i32),
    /// The client went away first.
    ClientGone,
    /// The session could not start (the client did not open its streams).
    Failed(String),
}

/// What goes on the error stream after the command exits: for v4 and later
/// a `Status` (with the exit code as a cause, as kubectl reads it); for
/// older protocols a text message on failure and nothing on success.
pub(crate) fn exit_message(version: Version, code: i32, argv: &[String]) -> Option<Bytes> {
    let text = format!(
        "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
        argv.join(" ")
    );
    if version < Version::V4 {
        return (code != 0).then(|| Bytes::from(text));
    }
    let status = if code == 0 {
        json!({ "metadata": {}, "status": "Success" })
    } else {
        json!({
            "metadata": {},
            "status": "Failure",
            "message": text,
            "reason": "NonZeroExitCode",
            "details": { "causes": [{ "reason": "ExitCode", "message": code.to_string() }] },
        })
    };
    Some(Bytes::from(status.to_string()))
}

#[derive(Default)]
struct Streams {
    error: Option<SpdyStream>,
    stdin: Option<SpdyStream>,
    stdout: Option<SpdyStream>,
    stderr: Option<SpdyStream>,
    resize: Option<SpdyStream>,
}

impl Streams {
    fn complete(&self, opts: Options, version: Version) -> bool {
        self.error.is_some()
            && (!opts.stdin || self.stdin.is_some())
            && (!opts.stdout || self.stdout.is_some())
            && (!opts.stderr || self.stderr.is_some())
            && (!(opts.tty && version >= Version::V3) || self.resize.is_some())
    }
}

async fn collect(conn: &mut SpdyConn, opts: Options, version: Version) -> Result<Streams, Ending> {
    let mut streams = Streams::default();
    let gather = async {
        while !streams.complete(opts, version) {
            let Some(mut s) = conn.accept().await else { return Err(Ending::ClientGone) };
            let kind = s.header("streamtype").unwrap_or_default().to_string();
            let slot = match kind.as_str() {
                "error" => &mut streams.error,
                "stdin" if opts.stdin => &mut streams.stdin,
                "stdout" if opts.stdout => &mut streams.stdout,
                "stderr" if opts.stderr => &mut streams.stderr,
                "resize" if opts.tty => &mut streams.resize,
                _ => {
                    tracing::debug!(kind, id = %s.id(), "refusing an unexpected stream");
                    s.send.reset().await;
                    continue;
                }
            };
            if slot.is_some() {
                s.send.reset().await;
                return Err(Ending::Failed(format!("duplicate {kind} stream")));
            }
            *slot = Some(s);
        }
        Ok(())
    };
    match tokio::time::timeout(STREAM_CREATION_TIMEOUT, gather).await {
        Ok(Ok(())) => Ok(streams),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Ending::Failed("timed out waiting for the client to create streams".into())),
    }
}

/// Runs an exec or attach session on an upgraded SPDY connection.
pub(crate) async fn serve_spdy(
    conn: &mut SpdyConn,
    version: Version,
    opts: Options,
    program: Program,
    argv: &[String],
    container: &Container,
) -> Ending {
    let streams = match collect(conn, opts, version).await {
        Ok(s) => s,
        Err(e) => return e,
    };
    let Some(error) = streams.error else { return Ending::Failed("no error stream".into()) };
    let (_, mut error_send): (_, SendHalf) = error.split();
    let stdout = streams.stdout.map_or_else(Output::discard, |s| Output::spdy(s.split().1));
    let stderr = match streams.stderr {
        Some(s) => Output::spdy(s.split().1),
        None if opts.tty => stdout.clone(),
        None => Output::discard(),
    };
    let stdin = streams.stdin.map(|s| Input::spdy(s.split().0));
    let stdin_bytes = stdin.as_ref().map(Input::counter).unwrap_or_default();
    let (stdout_bytes, stderr_bytes) =
        (stdout.counter(), if opts.tty { Arc::default() } else { stderr.counter() });
    let stdio = Stdio {
        stdin,
        stdout: stdout.clone(),
        stderr: stderr.clone(),
        resize: streams.resize.map(|s| Resizes::spdy(s.split().0)),
        tty: opts.tty,
    };
    let peer_gone = conn.peer_gone();
    let code = tokio::select! {
        biased;
        code = commands::run(program, stdio, container) => code,
        () = peer_gone.cancelled() => return Ending::ClientGone,
    };
    if peer_gone.is_cancelled() {
        // The command ended because the connection did (its stdin closed
        // with it): the client went away, it did not finish.
        return Ending::ClientGone;
    }
    stdout.finish().await;
    stderr.finish().await;
    if let Some(msg) = exit_message(version, code, argv) {
        // If this fails the client is gone; the ending still is the exit.
        let _ = error_send.send(msg).await;
    }
    let _ = error_send.finish().await;
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    tracing::info!(
        protocol = ?version,
        stdin = load(&stdin_bytes),
        stdout = load(&stdout_bytes),
        stderr = load(&stderr_bytes),
        exit_code = code,
        "SPDY exec session ended"
    );
    Ending::Exited(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_become_statuses() {
        let argv = ["sh".to_string(), "-c".to_string(), "exit 3".to_string()];
        let v: serde_json::Value =
            serde_json::from_slice(&exit_message(Version::V4, 3, &argv).expect("status")).expect("json");
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0], json!({"reason": "ExitCode", "message": "3"}));
        let ok: serde_json::Value =
            serde_json::from_slice(&exit_message(Version::V5, 0, &argv).expect("status")).expect("json");
        assert_eq!(ok["status"], "Success");
        assert_eq!(exit_message(Version::V2, 0, &argv), None);
        assert!(exit_message(Version::V2, 1, &argv).is_some());
    }

    #[test]
    fn options_need_a_stream() {
        let q = |s: &str| Query::parse(Some(s));
        assert!(Options::parse(&q("command=ls")).is_err());
        let o = Options::parse(&q("stdout=true&stderr=true&tty=true")).expect("ok");
        assert_eq!(o, Options { stdin: false, stdout: true, stderr: false, tty: true });
    }
}

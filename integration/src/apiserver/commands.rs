//! The "container": built-in commands that `pods/exec` runs (there are no
//! real processes), the tty session, and what `pods/attach` attaches to.
//!
//! Commands: `echo [-n]`, `printf`, `cat [FILE|-]...` (stdin is streamed
//! chunk by chunk, so memory stays bounded whatever passes through), `sh -c
//! SCRIPT` / `sh` reading a script from stdin (see [`super::shell`]), `exit
//! N`, `true`, `false`, `env`, `printenv`, `hostname`, `pwd`, `cd`, `test` /
//! `[`, `ls`, `mkdir [-p]`, `rm [-rf]`, `touch`, `wc -c`, `sha256sum`,
//! `sleep N|infinity`, `wait-for-stdin-eof` and `tar` (`cf -` and `xf -`
//! with `-C DIR`, as `kubectl cp` uses it). Anything else exits 127 with a
//! message on stderr, like a container without that binary.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use super::logs::LogEvent;
use super::podfs::{FsError, Node, PodFs, resolve};
use super::shell::{self, Connector, Target, Vars};
use super::stdio::{Closed, Input, Output, Resizes, Stdio};
use super::tarball::{self, AsyncNext};

/// Exit code of a command that is not there.
pub(crate) const EXIT_NOT_FOUND: i32 = 127;
/// Exit code of a usage error.
const EXIT_USAGE: i32 = 2;
/// Exit code when the output went away (SIGPIPE).
const EXIT_PIPE: i32 = 141;
/// Exit code after Ctrl-C in a tty (SIGINT).
const EXIT_INTERRUPT: i32 = 130;

/// The container a command runs in.
#[derive(Clone, Debug)]
pub(crate) struct Container {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name (also the hostname).
    pub pod: String,
    /// Container name.
    pub name: String,
    /// The pod's first container (whose log lines have no container).
    pub default_container: String,
    /// Environment from the container spec (plus the usual variables).
    pub env: Vec<(String, String)>,
    /// The pod's files.
    pub fs: PodFs,
}

impl Container {
    fn environment(&self, tty: bool) -> Vec<(String, String)> {
        let mut env = vec![
            ("PATH".to_string(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()),
            ("HOSTNAME".to_string(), self.pod.clone()),
        ];
        if tty {
            env.push(("TERM".to_string(), "xterm".to_string()));
        }
        env.extend(self.env.iter().cloned());
        env.push(("KUBERNETES_SERVICE_HOST".to_string(), "10.96.0.1".to_string()));
        env.push(("KUBERNETES_SERVICE_PORT".to_string(), "443".to_string()));
        env.push(("HOME".to_string(), "/root".to_string()));
        env
    }
}

/// What a streaming session runs.
pub(crate) enum Program {
    /// `pods/exec`: a command line.
    Exec(Vec<String>),
    /// `pods/attach`: the container's main process, an echo of stdin that
    /// also shows lines appended to the pod's log.
    Attach(broadcast::Receiver<Arc<LogEvent>>),
}

/// Runs a program to its exit code.
pub(crate) async fn run(program: Program, stdio: Stdio, container: &Container) -> i32 {
    match program {
        Program::Exec(argv) if stdio.tty => tty_session(&argv, stdio, container).await,
        Program::Exec(argv) => {
            let mut sh = Shell::new(container, stdio.stdin, stdio.tty);
            let out = stdio.stdout;
            let err = stdio.stderr;
            match sh.exec(&argv, &out, &err, false).await {
                Flow::Next(code) | Flow::Exit(code) => code,
            }
        }
        Program::Attach(logs) => attach(stdio, logs, container).await,
    }
}

/// How a command left the shell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    /// Go on with the next command; `$?`.
    Next(i32),
    /// `exit N`.
    Exit(i32),
}

impl Flow {
    fn code(self) -> i32 {
        match self {
            Self::Next(c) | Self::Exit(c) => c,
        }
    }
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl AsyncNext for &mut Option<Input> {
    async fn next_chunk(&mut self) -> Option<Bytes> {
        match self.as_mut() {
            Some(i) => i.recv().await,
            None => None,
        }
    }
}

struct Shell<'c> {
    container: &'c Container,
    stdin: Option<Input>,
    vars: HashMap<String, String>,
    cwd: String,
    status: i32,
}

fn lines(s: &str) -> Bytes {
    Bytes::from(format!("{s}\n"))
}

impl<'c> Shell<'c> {
    fn new(container: &'c Container, stdin: Option<Input>, tty: bool) -> Self {
        Self {
            container,
            stdin,
            vars: container.environment(tty).into_iter().collect(),
            cwd: "/".to_string(),
            status: 0,
        }
    }

    fn path(&self, p: &str) -> String {
        resolve(&self.cwd, p)
    }

    /// Runs a script (`sh -c`).
    fn script<'a>(
        &'a mut self,
        text: &'a str,
        positional: &'a [String],
        out: &'a Output,
        err: &'a Output,
    ) -> BoxFuture<'a, Flow> {
        Box::pin(async move {
            let vars = Vars { env: &self.vars, positional, status: self.status };
            let cmds = match shell::parse(text, &vars) {
                Ok(c) => c,
                Err(e) => {
                    let _ = err.write(lines(&format!("sh: {e}"))).await;
                    return Flow::Exit(EXIT_USAGE);
                }
            };
            let mut last = 0;
            for (connector, cmd) in cmds {
                let skip = match connector {
                    Connector::Always => false,
                    Connector::And => last != 0,
                    Connector::Or => last == 0,
                };
                if skip {
                    continue;
                }
                let o = self.target(&cmd.stdout, out, err);
                let e = self.target(&cmd.stderr, out, err);
                let (o, e) = match (o, e) {
                    (Ok(o), Ok(e)) => (o, e),
                    (Err(m), _) | (_, Err(m)) => {
                        let _ = err.write(lines(&format!("sh: {m}"))).await;
                        last = 1;
                        self.status = last;
                        continue;
                    }
                };
                match self.exec(&cmd.argv, &o, &e, true).await {
                    Flow::Next(code) => last = code,
                    Flow::Exit(code) => return Flow::Exit(code),
                }
                self.status = last;
            }
            Flow::Next(last)
        })
    }

    fn target(&self, t: &Target, out: &Output, err: &Output) -> Result<Output, String> {
        match t {
            Target::Stdout => Ok(out.clone()),
            Target::Stderr => Ok(err.clone()),
            Target::File { path, .. } if path == "/dev/null" => Ok(Output::discard()),
            Target::File { path, append } => {
                let full = self.path(path);
                let mut fs = self.container.fs.lock();
                if !append || fs.get(&full).is_none() {
                    fs.write(&full, Bytes::new(), 0o644, None)
                        .map_err(|e| format!("can't create {path}: {e}"))?;
                }
                Ok(Output::file(self.container.fs.clone(), full))
            }
        }
    }

    /// Runs one command line; `in_shell` words errors as `sh` does.
    fn exec<'a>(
        &'a mut self,
        argv: &'a [String],
        out: &'a Output,
        err: &'a Output,
        in_shell: bool,
    ) -> BoxFuture<'a, Flow> {
        Box::pin(async move {
            let Some((cmd, args)) = argv.split_first() else { return Flow::Next(0) };
            let result = self.builtin(cmd, args, out, err).await;
            match result {
                Some(Ok(flow)) => flow,
                Some(Err(Closed)) => Flow::Exit(EXIT_PIPE),
                None => {
                    if let Some((name, value)) = cmd.split_once('=')
                        && in_shell
                        && args.is_empty()
                        && !name.is_empty()
                    {
                        self.vars.insert(name.to_string(), value.to_string());
                        return Flow::Next(0);
                    }
                    let msg = if in_shell {
                        format!("sh: {cmd}: not found")
                    } else {
                        format!("exec: \"{cmd}\": executable file not found in $PATH")
                    };
                    let _ = err.write(lines(&msg)).await;
                    Flow::Next(EXIT_NOT_FOUND)
                }
            }
        })
    }

    /// A built-in, or `None` when there is no such command.
    async fn builtin(
        &mut self,
        cmd: &str,
        args: &[String],
        out: &Output,
        err: &Output,
    ) -> Option<Result<Flow, Closed>> {
        let name = cmd.rsplit('/').next().unwrap_or(cmd);
        let next = |code: i32| Ok(Flow::Next(code));
        Some(match name {
            "echo" => {
                let (newline, words) = match args.first().map(String::as_str) {
                    Some("-n") => (false, &args[1..]),
                    _ => (true, args),
                };
                let mut text = words.join(" ");
                if newline {
                    text.push('\n');
                }
                out.write(text).await.and(next(0))
            }
            "printf" => match args.split_first() {
                None => {
                    let _ = err.write(lines("printf: usage: printf format [arguments]")).await;
                    next(EXIT_USAGE)
                }
                Some((format, rest)) => out.write(printf(format, rest)).await.and(next(0)),
            },
            "true" | ":" => next(0),
            "false" => next(1),
            "exit" => {
                let code = args.first().map_or(Ok(self.status), |a| a.parse::<i32>());
                match code {
                    Ok(c) => Ok(Flow::Exit(c & 0xff)),
                    Err(_) => {
                        let _ = err.write(lines(&format!("sh: exit: Illegal number: {}", args[0]))).await;
                        Ok(Flow::Exit(EXIT_USAGE))
                    }
                }
            }
            "env" | "printenv" => {
                if let Some(var) = args.first().filter(|_| name == "printenv") {
                    return Some(match self.vars.get(var) {
                        Some(v) => out.write(lines(v)).await.and(next(0)),
                        None => next(1),
                    });
                }
                let mut all: Vec<(&String, &String)> = self.vars.iter().collect();
                all.sort();
                let text: String = all.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
                out.write(text).await.and(next(0))
            }
            "hostname" => out.write(lines(&self.container.pod)).await.and(next(0)),
            "pwd" => out.write(lines(&self.cwd)).await.and(next(0)),
            "cd" => {
                let dir = self.path(args.first().map_or("/root", String::as_str));
                if matches!(self.container.fs.lock().get(&dir), Some(Node::Dir { .. })) {
                    self.cwd = dir;
                    next(0)
                } else {
                    let _ = err
                        .write(lines(&format!(
                            "sh: cd: can't cd to {}",
                            args.first().map_or("", String::as_str)
                        )))
                        .await;
                    next(EXIT_USAGE)
                }
            }
            "test" | "[" => {
                let mut a: Vec<&str> = args.iter().map(String::as_str).collect();
                if name == "[" {
                    if a.last() != Some(&"]") {
                        let _ = err.write(lines("sh: [: missing ]")).await;
                        return Some(next(EXIT_USAGE));
                    }
                    a.pop();
                }
                next(match self.test(&a) {
                    Some(true) => 0,
                    Some(false) => 1,
                    None => EXIT_USAGE,
                })
            }
            "cat" => self.cat(args, out, err).await,
            "wc" => self.wc(args, out, err).await,
            "sha256sum" => self.sha256sum(args, out, err).await,
            "ls" => self.ls(args, out, err).await,
            "mkdir" | "rm" | "touch" => self.modify(name, args, err).await,
            "sleep" => {
                let secs = args.first().map(String::as_str).unwrap_or_default();
                if secs == "infinity" {
                    std::future::pending::<()>().await;
                }
                match secs.parse::<f64>() {
                    Ok(s) if s >= 0.0 && s.is_finite() => {
                        tokio::time::sleep(Duration::from_secs_f64(s)).await;
                        next(0)
                    }
                    _ => {
                        let _ = err.write(lines(&format!("sleep: invalid time interval '{secs}'"))).await;
                        next(1)
                    }
                }
            }
            "wait-for-stdin-eof" => {
                if let Some(input) = self.stdin.as_mut() {
                    while input.recv().await.is_some() {}
                }
                next(0)
            }
            "sh" | "bash" | "ash" => self.sh(args, out, err).await,
            "tar" => self.tar(args, out, err).await,
            _ => return None,
        })
    }

    fn test(&self, a: &[&str]) -> Option<bool> {
        let fs = self.container.fs.lock();
        Some(match a {
            [] => false,
            ["!", rest @ ..] => return self.test(rest).map(|b| !b),
            [s] => !s.is_empty(),
            ["-n", s] => !s.is_empty(),
            ["-z", s] => s.is_empty(),
            ["-e", p] => fs.get(&self.path(p)).is_some(),
            ["-f", p] => matches!(fs.get(&self.path(p)), Some(Node::File { .. })),
            ["-d", p] => matches!(fs.get(&self.path(p)), Some(Node::Dir { .. })),
            ["-s", p] => matches!(fs.get(&self.path(p)), Some(Node::File { data, .. }) if !data.is_empty()),
            [x, "=" | "==", y] => x == y,
            [x, "!=", y] => x != y,
            [x, op @ ("-eq" | "-ne" | "-lt" | "-le" | "-gt" | "-ge"), y] => {
                let (x, y) = (x.parse::<i64>().ok()?, y.parse::<i64>().ok()?);
                match *op {
                    "-eq" => x == y,
                    "-ne" => x != y,
                    "-lt" => x < y,
                    "-le" => x <= y,
                    "-gt" => x > y,
                    _ => x >= y,
                }
            }
            _ => return None,
        })
    }

    /// Streams stdin to `out` (memory bounded by one chunk).
    async fn copy_stdin(&mut self, out: &Output) -> Result<(), Closed> {
        if let Some(input) = self.stdin.as_mut() {
            while let Some(chunk) = input.recv().await {
                out.write(chunk).await?;
            }
        }
        Ok(())
    }

    async fn cat(&mut self, args: &[String], out: &Output, err: &Output) -> Result<Flow, Closed> {
        let files: Vec<&String> = args.iter().filter(|a| !a.starts_with('-') || *a == "-").collect();
        if files.is_empty() {
            self.copy_stdin(out).await?;
            return Ok(Flow::Next(0));
        }
        let mut code = 0;
        for f in files {
            if f == "-" {
                self.copy_stdin(out).await?;
                continue;
            }
            let data = self.container.fs.lock().read(&self.path(f));
            match data {
                Ok(d) => out.write(d).await?,
                Err(e) => {
                    err.write(lines(&format!("cat: {f}: {e}"))).await?;
                    code = 1;
                }
            }
        }
        Ok(Flow::Next(code))
    }

    async fn wc(&mut self, args: &[String], out: &Output, err: &Output) -> Result<Flow, Closed> {
        let files: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
        if files.is_empty() {
            let mut n = 0usize;
            if let Some(input) = self.stdin.as_mut() {
                while let Some(chunk) = input.recv().await {
                    n += chunk.len();
                }
            }
            out.write(lines(&n.to_string())).await?;
            return Ok(Flow::Next(0));
        }
        let mut code = 0;
        for f in files {
            let data = self.container.fs.lock().read(&self.path(f));
            match data {
                Ok(d) => out.write(lines(&format!("{} {f}", d.len()))).await?,
                Err(e) => {
                    err.write(lines(&format!("wc: {f}: {e}"))).await?;
                    code = 1;
                }
            }
        }
        Ok(Flow::Next(code))
    }

    async fn sha256sum(&mut self, args: &[String], out: &Output, err: &Output) -> Result<Flow, Closed> {
        if args.is_empty() {
            let mut h = Sha256::new();
            if let Some(input) = self.stdin.as_mut() {
                while let Some(chunk) = input.recv().await {
                    h.update(&chunk);
                }
            }
            out.write(lines(&format!("{}  -", hex(&h.finalize())))).await?;
            return Ok(Flow::Next(0));
        }
        let mut code = 0;
        for f in args {
            let data = self.container.fs.lock().read(&self.path(f));
            match data {
                Ok(d) => out.write(lines(&format!("{}  {f}", hex(&Sha256::digest(&d))))).await?,
                Err(e) => {
                    err.write(lines(&format!("sha256sum: {f}: {e}"))).await?;
                    code = 1;
                }
            }
        }
        Ok(Flow::Next(code))
    }

    async fn ls(&mut self, args: &[String], out: &Output, err: &Output) -> Result<Flow, Closed> {
        let paths: Vec<&str> = args.iter().map(String::as_str).filter(|a| !a.starts_with('-')).collect();
        let paths = if paths.is_empty() { vec!["."] } else { paths };
        let mut code = 0;
        let mut text = String::new();
        let mut errors = String::new();
        {
            let fs = self.container.fs.lock();
            for p in &paths {
                let full = self.path(p);
                match fs.get(&full) {
                    Some(Node::Dir { .. }) => {
                        if paths.len() > 1 {
                            text.push_str(&format!("{p}:\n"));
                        }
                        for name in fs.list(&full) {
                            text.push_str(&name);
                            text.push('\n');
                        }
                    }
                    Some(Node::File { .. }) => text.push_str(&format!("{p}\n")),
                    None => {
                        errors.push_str(&format!("ls: {p}: {}\n", FsError::NotFound));
                        code = 1;
                    }
                }
            }
        }
        err.write(errors).await?;
        out.write(text).await?;
        Ok(Flow::Next(code))
    }

    async fn modify(&mut self, name: &str, args: &[String], err: &Output) -> Result<Flow, Closed> {
        let flags: String =
            args.iter().filter(|a| a.starts_with('-')).flat_map(|a| a.chars().skip(1)).collect();
        let mut code = 0;
        let mut errors = String::new();
        for p in args.iter().filter(|a| !a.starts_with('-')) {
            let full = self.path(p);
            let mut fs = self.container.fs.lock();
            let result = match name {
                "mkdir" => fs.mkdir(&full, flags.contains('p'), 0o755),
                "touch" => match fs.get(&full) {
                    Some(_) => Ok(()),
                    None => fs.write(&full, Bytes::new(), 0o644, None),
                },
                _ => match fs.remove(&full, flags.contains('r') || flags.contains('R')) {
                    Err(FsError::NotFound) if flags.contains('f') => Ok(()),
                    other => other,
                },
            };
            if let Err(e) = result {
                errors.push_str(&format!("{name}: {p}: {e}\n"));
                code = 1;
            }
        }
        if args.iter().all(|a| a.starts_with('-')) {
            errors.push_str(&format!("{name}: missing operand\n"));
            code = 1;
        }
        err.write(errors).await?;
        Ok(Flow::Next(code))
    }

    async fn sh(&mut self, args: &[String], out: &Output, err: &Output) -> Result<Flow, Closed> {
        match args.split_first() {
            Some((flag, rest)) if flag == "-c" => {
                let Some((script, params)) = rest.split_first() else {
                    err.write(lines("sh: -c requires an argument")).await?;
                    return Ok(Flow::Next(EXIT_USAGE));
                };
                let mut positional = vec!["sh".to_string()];
                if let Some((zero, more)) = params.split_first() {
                    positional = vec![zero.clone()];
                    positional.extend(more.iter().cloned());
                }
                // `sh -c` is its own process: `exit` ends only it.
                Ok(Flow::Next(self.script(script, &positional, out, err).await.code()))
            }
            Some((file, _)) if !file.starts_with('-') => {
                let data = self.container.fs.lock().read(&self.path(file));
                match data {
                    Ok(d) => {
                        let text = String::from_utf8_lossy(&d).into_owned();
                        let positional = vec![file.clone()];
                        Ok(Flow::Next(self.script(&text, &positional, out, err).await.code()))
                    }
                    Err(e) => {
                        err.write(lines(&format!("sh: can't open '{file}': {e}"))).await?;
                        Ok(Flow::Next(EXIT_NOT_FOUND))
                    }
                }
            }
            _ => {
                // A shell reading its script from stdin, line by line.
                let mut pending = Vec::new();
                let mut status = 0;
                loop {
                    let chunk = match self.stdin.as_mut() {
                        Some(i) => i.recv().await,
                        None => None,
                    };
                    let eof = chunk.is_none();
                    if let Some(c) = chunk {
                        pending.extend_from_slice(&c);
                    }
                    while let Some(pos) = pending
                        .iter()
                        .position(|b| *b == b'\n')
                        .or(eof.then_some(pending.len()).filter(|n| *n > 0))
                    {
                        let line: Vec<u8> = pending.drain(..pos.min(pending.len())).collect();
                        if !pending.is_empty() {
                            pending.remove(0);
                        }
                        let text = String::from_utf8_lossy(&line).into_owned();
                        match self.script(&text, &["sh".to_string()], out, err).await {
                            Flow::Next(c) => status = c,
                            Flow::Exit(c) => return Ok(Flow::Next(c)),
                        }
                    }
                    if eof {
                        return Ok(Flow::Next(status));
                    }
                }
            }
        }
    }

    async fn tar(&mut self, args: &[String], out: &Output, err: &Output) -> Result<Flow, Closed> {
        let mut mode = None;
        let mut archive = None;
        let mut dir = self.cwd.clone();
        let mut keep_mtime = true;
        let mut operands = Vec::new();
        let mut i = 0;
        let mut first = true;
        while i < args.len() {
            let a = &args[i];
            i += 1;
            if a.starts_with("--") {
                match a.as_str() {
                    "--no-same-permissions" | "--no-same-owner" | "--touch" | "--verbose" => {
                        if a == "--touch" {
                            keep_mtime = false;
                        }
                    }
                    _ if a.starts_with("--directory=") => dir = self.path(&a["--directory=".len()..]),
                    _ => {
                        err.write(lines(&format!("tar: unrecognized option '{a}'"))).await?;
                        return Ok(Flow::Next(EXIT_USAGE));
                    }
                }
                continue;
            }
            // The first word may be a bundle without a dash (`tar cf -`).
            let bundle = if let Some(b) = a.strip_prefix('-') {
                Some(b)
            } else if first && mode.is_none() {
                Some(a.as_str())
            } else {
                None
            };
            first = false;
            let Some(letters) = bundle else {
                operands.push(a.clone());
                continue;
            };
            for l in letters.chars() {
                match l {
                    'c' | 'x' | 't' => mode = Some(l),
                    'f' => {
                        archive = args.get(i).cloned();
                        i += 1;
                    }
                    'C' => {
                        dir = self.path(args.get(i).map_or("", String::as_str));
                        i += 1;
                        // GNU tar applies -C to the operands that follow.
                    }
                    'm' => keep_mtime = false,
                    'v' | 'o' | 'p' => {}
                    other => {
                        err.write(lines(&format!("tar: invalid option -- '{other}'"))).await?;
                        return Ok(Flow::Next(EXIT_USAGE));
                    }
                }
            }
        }
        if archive.as_deref() != Some("-") {
            err.write(lines("tar: only an archive on stdin/stdout (f -) is supported here")).await?;
            return Ok(Flow::Next(EXIT_USAGE));
        }
        match mode {
            Some('c') => {
                if operands.is_empty() {
                    err.write(lines("tar: Cowardly refusing to create an empty archive")).await?;
                    return Ok(Flow::Next(EXIT_USAGE));
                }
                let (members, errors) = tarball::members(&self.container.fs, &dir, &operands);
                let failed = errors.iter().any(|e| e.contains("Cannot stat"));
                for e in &errors {
                    err.write(lines(e)).await?;
                }
                for chunk in tarball::archive(members) {
                    out.write(chunk).await?;
                }
                if failed {
                    err.write(lines("tar: Exiting with failure status due to previous errors")).await?;
                    return Ok(Flow::Next(EXIT_USAGE));
                }
                Ok(Flow::Next(0))
            }
            Some('x') => {
                let stdin = &mut self.stdin;
                match tarball::unpack(&self.container.fs, &dir, keep_mtime, stdin).await {
                    Ok(()) => Ok(Flow::Next(0)),
                    Err(errors) => {
                        for e in errors {
                            err.write(lines(&e)).await?;
                        }
                        err.write(lines("tar: Exiting with failure status due to previous errors")).await?;
                        Ok(Flow::Next(EXIT_USAGE))
                    }
                }
            }
            _ => {
                err.write(lines("tar: You must specify one of the '-Acdtrux' options")).await?;
                Ok(Flow::Next(EXIT_USAGE))
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn printf(format: &str, args: &[String]) -> String {
    let mut out = String::new();
    let mut args = args.iter();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('r') => out.push('\r'),
                Some('\\') => out.push('\\'),
                Some(o) => {
                    out.push('\\');
                    out.push(o);
                }
                None => out.push('\\'),
            },
            '%' => match chars.next() {
                Some('s' | 'd') => out.push_str(args.next().map_or("", String::as_str)),
                Some('%') => out.push('%'),
                Some(o) => {
                    out.push('%');
                    out.push(o);
                }
                None => out.push('%'),
            },
            c => out.push(c),
        }
    }
    out
}

/// Whether a command line is one that reads a terminal interactively.
fn interactive(argv: &[String]) -> Option<bool> {
    let name = argv.first()?.rsplit('/').next()?;
    match (name, argv.len()) {
        ("sh" | "bash" | "ash", 1) => Some(true),
        ("cat", 1) | ("wait-for-stdin-eof", _) => Some(false),
        _ => None,
    }
}

/// A command under a tty. Shells and `cat` become a terminal session:
/// input is echoed (as the line discipline does), a shell runs each line,
/// and every resize event prints `resize COLSxROWS`. Other commands run
/// as usual with `\n` turned into `\r\n`.
async fn tty_session(argv: &[String], stdio: Stdio, container: &Container) -> i32 {
    let out = stdio.stdout.with_crlf();
    let Some(is_shell) = interactive(argv) else {
        let mut sh = Shell::new(container, stdio.stdin, true);
        return sh.exec(argv, &out, &out, false).await.code();
    };
    let mut sh = Shell::new(container, None, true);
    let mut stdin = stdio.stdin;
    let mut resize = stdio.resize;
    let prompt = if is_shell { "# " } else { "" };
    if out.write(prompt).await.is_err() {
        return EXIT_PIPE;
    }
    let mut line = Vec::new();
    loop {
        tokio::select! {
            chunk = next_input(&mut stdin) => {
                let Some(chunk) = chunk else { return 0 };
                for &b in chunk.iter() {
                    let echo: Vec<u8> = match b {
                        // Ctrl-D on an empty line: EOF.
                        0x04 if line.is_empty() => return 0,
                        0x03 => {
                            line.clear();
                            if !is_shell {
                                let _ = out.write("^C\n").await;
                                return EXIT_INTERRUPT;
                            }
                            format!("^C\n{prompt}").into_bytes()
                        }
                        0x7f | 0x08 => {
                            if line.pop().is_some() { b"\x08 \x08".to_vec() } else { Vec::new() }
                        }
                        b'\r' | b'\n' => {
                            if out.write("\n").await.is_err() {
                                return EXIT_PIPE;
                            }
                            let text = String::from_utf8_lossy(&std::mem::take(&mut line)).into_owned();
                            if is_shell {
                                if let Flow::Exit(code) = sh.script(&text, &["sh".to_string()], &out, &out).await {
                                    return code;
                                }
                                prompt.as_bytes().to_vec()
                            } else {
                                Vec::new()
                            }
                        }
                        other => {
                            line.push(other);
                            vec![other]
                        }
                    };
                    if out.write(echo).await.is_err() {
                        return EXIT_PIPE;
                    }
                }
            }
            size = next_resize(&mut resize) => match size {
                Some(s) => {
                    if out.write(format!("resize {}x{}\n", s.width, s.height)).await.is_err() {
                        return EXIT_PIPE;
                    }
                }
                None => resize = None,
            },
        }
    }
}

async fn next_input(stdin: &mut Option<Input>) -> Option<Bytes> {
    match stdin {
        Some(i) => i.recv().await,
        // No stdin: a terminal that never types.
        None => std::future::pending().await,
    }
}

async fn next_resize(resize: &mut Option<Resizes>) -> Option<super::stdio::TermSize> {
    match resize {
        Some(r) => r.next().await,
        None => std::future::pending().await,
    }
}

/// `pods/attach`: echoes stdin and shows lines appended to the container's
/// log; ends when stdin ends, the pod goes away, or the client leaves.
async fn attach(stdio: Stdio, mut logs: broadcast::Receiver<Arc<LogEvent>>, c: &Container) -> i32 {
    let out = if stdio.tty { stdio.stdout.with_crlf() } else { stdio.stdout.clone() };
    let mut stdin = stdio.stdin;
    let mut resize = stdio.resize;
    loop {
        tokio::select! {
            chunk = next_input(&mut stdin) => {
                let Some(chunk) = chunk else { return 0 };
                let chunk = if stdio.tty {
                    Bytes::from(chunk.iter().map(|b| if *b == b'\r' { b'\n' } else { *b }).collect::<Vec<u8>>())
                } else {
                    chunk
                };
                if out.write(chunk).await.is_err() {
                    return EXIT_PIPE;
                }
            }
            event = logs.recv() => match event {
                Ok(e) => {
                    let shown = match &*e {
                        LogEvent::Line { namespace, pod, line }
                            if *namespace == c.namespace && *pod == c.pod && line.visible_to(&c.name, &c.default_container) =>
                        {
                            Some(lines(&line.text))
                        }
                        LogEvent::PodGone { namespace, pod } if *namespace == c.namespace && *pod == c.pod => return 0,
                        _ => None,
                    };
                    if let Some(text) = shown && out.write(text).await.is_err() {
                        return EXIT_PIPE;
                    }
                }
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return 0,
            },
            size = next_resize(&mut resize) => match size {
                Some(s) => {
                    if out.write(format!("resize {}x{}\n", s.width, s.height)).await.is_err() {
                        return EXIT_PIPE;
                    }
                }
                None => resize = None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;

    use super::*;

    fn container() -> Container {
        Container {
            namespace: "default".into(),
            pod: "web".into(),
            name: "c".into(),
            default_container: "c".into(),
            env: vec![("COLOR".into(), "blue".into())],
            fs: PodFs::standalone("web"),
        }
    }

    async fn exec(argv: &[&str], stdin: Option<&[u8]>) -> (i32, String, String) {
        exec_in(&container(), argv, stdin).await
    }

    async fn exec_in(c: &Container, argv: &[&str], stdin: Option<&[u8]>) -> (i32, String, String) {
        let stdin = stdin.map(|data| {
            let (tx, rx) = mpsc::channel(data.len() / 1000 + 2);
            for chunk in data.chunks(1000) {
                tx.try_send(Bytes::copy_from_slice(chunk)).expect("queue");
            }
            Input::channel(rx)
        });
        let (out, err) = (Output::buffer(), Output::buffer());
        let stdio = Stdio { stdin, stdout: out.clone(), stderr: err.clone(), resize: None, tty: false };
        let argv = argv.iter().map(|s| s.to_string()).collect();
        let code = run(Program::Exec(argv), stdio, c).await;
        let text = |v: Vec<u8>| String::from_utf8(v).expect("utf8");
        (code, text(out.contents().await), text(err.contents().await))
    }

    #[tokio::test]
    async fn simple_commands() {
        assert_eq!(exec(&["echo", "hello", "world"], None).await, (0, "hello world\n".into(), String::new()));
        assert_eq!(exec(&["cat"], Some(b"piped")).await, (0, "piped".into(), String::new()));
        assert_eq!(exec(&["sh", "-c", "exit 3"], None).await.0, 3);
        assert_eq!(
            exec(&["sh", "-c", "echo oops >&2; exit 1"], None).await,
            (1, String::new(), "oops\n".into())
        );
        let (code, _, err) = exec(&["no-such-binary"], None).await;
        assert_eq!(code, EXIT_NOT_FOUND);
        assert!(err.contains("executable file not found"), "{err}");
        let (code, out, _) = exec(&["env"], None).await;
        assert_eq!(code, 0);
        assert!(out.contains("HOSTNAME=web\n") && out.contains("COLOR=blue\n"), "{out}");
        assert_eq!(exec(&["wc", "-c"], Some(&[0u8; 2500])).await.1, "2500\n");
        assert_eq!(
            exec(&["sh"], Some(b"echo one\nexit 5\necho two\n")).await,
            (5, "one\n".into(), String::new())
        );
        assert_eq!(exec(&["test", "-d", "/tmp"], None).await.0, 0);
        assert_eq!(exec(&["test", "-d", "/etc/hostname"], None).await.0, 1);
    }

    #[tokio::test]
    async fn files_through_the_shell_and_tar() {
        let c = container();
        assert_eq!(
            exec_in(&c, &["sh", "-c", "mkdir -p /data && printf 'x\\n' > /data/f && cat /data/f"], None)
                .await
                .1,
            "x\n"
        );
        let (code, archive, err) = exec_in(&c, &["tar", "cf", "-", "/data"], None).await;
        assert_eq!(code, 0, "{err}");
        assert!(err.contains("Removing leading"), "{err}");
        let other = container();
        let (code, _, err) =
            exec_in(&other, &["tar", "-xmf", "-", "-C", "/tmp"], Some(archive.as_bytes())).await;
        assert_eq!(code, 0, "{err}");
        assert_eq!(exec_in(&other, &["cat", "/tmp/data/f"], None).await.1, "x\n");
        let (_, sum, _) = exec_in(&other, &["sha256sum", "/tmp/data/f"], None).await;
        assert!(sum.starts_with("73cb3858a687a849"), "{sum}");
        let (code, _, err) = exec_in(&c, &["tar", "cf", "-", "/missing"], None).await;
        assert_eq!(code, 2);
        assert!(err.contains("Cannot stat"), "{err}");
    }
}

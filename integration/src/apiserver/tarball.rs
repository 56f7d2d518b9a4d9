//! Tar archives of a pod's files, as `kubectl cp` drives `tar`: `tar cf -
//! PATH` streams an archive to stdout, `tar xmf - -C DIR` unpacks stdin.

use std::io::Read;

use bytes::{Buf, Bytes};
use tokio::sync::mpsc;

use super::podfs::{FsError, Node, PodFs, resolve};

/// Tar block size.
const BLOCK: usize = 512;
/// GNU tar pads archives to a multiple of this (20 blocks).
const RECORD: usize = 20 * BLOCK;
/// Chunks of stdin queued for the unpacking thread.
const UNPACK_QUEUE: usize = 8;
/// The longest file GNU tar's ustar name field holds.
const NAME_FIELD: usize = 100;

/// One archive member to write.
pub(crate) struct Member {
    /// The name in the archive (directories end with `/`).
    pub name: String,
    /// The node (file data is shared, not copied).
    pub node: Node,
}

/// Collects what `tar c` of `operands` (relative to `dir`) archives, with
/// GNU tar's diagnostics for missing paths and leading slashes.
pub(crate) fn members(fs: &PodFs, dir: &str, operands: &[String]) -> (Vec<Member>, Vec<String>) {
    let fs = fs.lock();
    let mut members = Vec::new();
    let mut errors = Vec::new();
    let mut warned_slash = false;
    for op in operands {
        let path = resolve(dir, op);
        let mut name = op.trim_start_matches('/').to_string();
        if name.len() != op.len() && !warned_slash {
            errors.push("tar: Removing leading `/' from member names".to_string());
            warned_slash = true;
        }
        while name.ends_with('/') {
            name.pop();
        }
        if name.is_empty() {
            name = ".".into();
        }
        let Some(node) = fs.get(&path) else {
            errors.push(format!("tar: {op}: Cannot stat: No such file or directory"));
            continue;
        };
        match node {
            Node::File { .. } => members.push(Member { name, node: node.clone() }),
            Node::Dir { .. } => {
                members.push(Member { name: format!("{name}/"), node: node.clone() });
                let prefix = if path == "/" { "/".to_string() } else { format!("{path}/") };
                for child in fs.children_recursive(&path) {
                    let Some(child_node) = fs.get(&child) else { continue };
                    let rel = &child[prefix.len()..];
                    let suffix = if matches!(child_node, Node::Dir { .. }) { "/" } else { "" };
                    members.push(Member { name: format!("{name}/{rel}{suffix}"), node: child_node.clone() });
                }
            }
        }
    }
    (members, errors)
}

fn header(name: &str, node: &Node) -> Vec<u8> {
    let (kind, size, mode, mtime) = match node {
        Node::File { data, mode, mtime } => (tar::EntryType::Regular, data.len(), *mode, *mtime),
        Node::Dir { mode, mtime } => (tar::EntryType::Directory, 0, *mode, *mtime),
    };
    let mut out = Vec::with_capacity(2 * BLOCK);
    let mut h = tar::Header::new_gnu();
    if name.len() > NAME_FIELD {
        // GNU long name: a `././@LongLink` member carrying the name.
        let mut long = tar::Header::new_gnu();
        long.set_entry_type(tar::EntryType::GNULongName);
        long.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        long.set_size(u64::try_from(name.len() + 1).unwrap_or(0));
        long.set_mode(0o644);
        long.set_cksum();
        out.extend_from_slice(long.as_bytes());
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        pad(&mut out);
        h.as_old_mut().name.copy_from_slice(&name.as_bytes()[..NAME_FIELD]);
    } else {
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    }
    h.set_entry_type(kind);
    h.set_size(u64::try_from(size).unwrap_or(0));
    h.set_mode(mode);
    h.set_mtime(mtime);
    h.set_uid(0);
    h.set_gid(0);
    // Both always fit the 32-byte fields.
    let _ = h.set_username("root");
    let _ = h.set_groupname("root");
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out
}

fn pad(out: &mut Vec<u8>) {
    let rem = out.len() % BLOCK;
    if rem != 0 {
        out.resize(out.len() + BLOCK - rem, 0);
    }
}

/// The archive, as chunks to send: headers and padding are small, file data
/// is sent as the (shared) bytes it is stored as.
pub(crate) fn archive(members: Vec<Member>) -> impl Iterator<Item = Bytes> {
    let mut written = 0usize;
    let mut chunks = Vec::new();
    for m in members {
        let head = header(&m.name, &m.node);
        written += head.len();
        chunks.push(Bytes::from(head));
        if let Node::File { data, .. } = m.node {
            let len = data.len();
            written += len;
            if !data.is_empty() {
                chunks.push(data);
            }
            let rem = len % BLOCK;
            if rem != 0 {
                written += BLOCK - rem;
                chunks.push(Bytes::from(vec![0u8; BLOCK - rem]));
            }
        }
    }
    // Two zero blocks end the archive; GNU tar fills the last record.
    let mut end = 2 * BLOCK;
    let total = written + end;
    if !total.is_multiple_of(RECORD) {
        end += RECORD - total % RECORD;
    }
    chunks.push(Bytes::from(vec![0u8; end]));
    chunks.into_iter()
}

/// Reads stdin chunks handed over from the async side.
struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.current = b,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}

/// How `tar x` went: error lines (GNU tar wording) if any.
pub(crate) type UnpackResult = Result<(), Vec<String>>;

fn unpack_sync(reader: ChannelReader, fs: &PodFs, dir: &str, keep_mtime: bool) -> UnpackResult {
    let mut archive = tar::Archive::new(reader);
    let mut errors = Vec::new();
    let entries = archive.entries().map_err(|e| vec![format!("tar: {e}")])?;
    for entry in entries {
        let mut entry = match entry {
            Ok(e) => e,
            Err(e) => {
                errors.push(format!("tar: {e}"));
                return Err(errors);
            }
        };
        let name = match entry.path() {
            Ok(p) => p.to_string_lossy().into_owned(),
            Err(e) => {
                errors.push(format!("tar: {e}"));
                continue;
            }
        };
        let path = resolve(dir, &name);
        let header = entry.header();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let mtime = if keep_mtime { header.mtime().ok() } else { None };
        let kind = header.entry_type();
        let result = if kind.is_dir() {
            fs.lock().mkdir(&path, true, mode)
        } else if kind.is_file() {
            let mut data = Vec::with_capacity(usize::try_from(entry.size()).unwrap_or(0).min(1 << 30));
            if let Err(e) = entry.read_to_end(&mut data) {
                errors.push(format!("tar: {name}: {e}"));
                return Err(errors);
            }
            let mut fs = fs.lock();
            let parent = resolve(&path, "..");
            fs.mkdir(&parent, true, 0o755).and_then(|()| fs.write(&path, Bytes::from(data), mode, mtime))
        } else {
            errors.push(format!("tar: {name}: entry type not supported by this test container; skipped"));
            Ok(())
        };
        if let Err(e) = result {
            errors.push(format!("tar: {name}: Cannot open: {e}"));
        }
    }
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

/// `tar x` into `dir`, fed by `next` (stdin chunks until EOF). The archive
/// is parsed on a blocking thread; stdin is read to its end either way.
pub(crate) async fn unpack(
    fs: &PodFs,
    dir: &str,
    keep_mtime: bool,
    mut next: impl AsyncNext,
) -> UnpackResult {
    match fs.lock().get(dir) {
        Some(Node::Dir { .. }) => {}
        Some(Node::File { .. }) => {
            return Err(vec![format!("tar: {dir}: Cannot open: {}", FsError::NotADirectory)]);
        }
        None => return Err(vec![format!("tar: {dir}: Cannot open: {}", FsError::NotFound)]),
    }
    let (tx, rx) = mpsc::channel(UNPACK_QUEUE);
    let fs_for_thread = fs.clone();
    let dir_for_thread = dir.to_string();
    let worker = tokio::task::spawn_blocking(move || {
        unpack_sync(ChannelReader { rx, current: Bytes::new() }, &fs_for_thread, &dir_for_thread, keep_mtime)
    });
    let mut tx = Some(tx);
    while let Some(chunk) = next.next_chunk().await {
        if let Some(t) = &tx
            && t.send(chunk).await.is_err()
        {
            // The archive ended: keep reading stdin to its end, like tar.
            tx = None;
        }
    }
    drop(tx);
    worker.await.unwrap_or_else(|e| Err(vec![format!("tar: unpacking failed: {e}")]))
}

/// Something that yields stdin chunks.
pub(crate) trait AsyncNext {
    /// The next chunk, `None` at EOF.
    fn next_chunk(&mut self) -> impl std::future::Future<Output = Option<Bytes>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Chunks(std::vec::IntoIter<Bytes>);

    impl AsyncNext for Chunks {
        async fn next_chunk(&mut self) -> Option<Bytes> {
            self.0.next()
        }
    }

    #[tokio::test]
    async fn archives_round_trip_through_the_tar_crate() {
        let fs = PodFs::standalone("p");
        {
            let mut f = fs.lock();
            f.mkdir("/data/sub", true, 0o755).expect("mkdir");
            f.write("/data/a.txt", Bytes::from_static(b"hello"), 0o600, Some(7)).expect("write");
            let long = format!("/data/sub/{}", "n".repeat(120));
            f.write(&long, Bytes::from(vec![9u8; 1000]), 0o644, None).expect("write");
        }
        let (members, errors) = members(&fs, "/", &["/data".to_string()]);
        assert_eq!(errors, ["tar: Removing leading `/' from member names"]);
        let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names[..3], ["data/", "data/a.txt", "data/sub/"]);
        let bytes: Vec<u8> = archive(members).flat_map(|b| b.to_vec()).collect();
        assert_eq!(bytes.len() % RECORD, 0);
        let mut read = tar::Archive::new(bytes.as_slice());
        let listed: Vec<(String, u64)> = read
            .entries()
            .expect("entries")
            .map(|e| {
                let e = e.expect("entry");
                (e.path().expect("path").to_string_lossy().into_owned(), e.size())
            })
            .collect();
        assert_eq!(listed[1], ("data/a.txt".to_string(), 5));
        assert_eq!(listed[3].0.len(), "data/sub/".len() + 120);

        let target = PodFs::standalone("q");
        let chunks: Vec<Bytes> = bytes.chunks(700).map(Bytes::copy_from_slice).collect();
        unpack(&target, "/tmp", true, Chunks(chunks.into_iter())).await.expect("unpack");
        let t = target.lock();
        assert_eq!(t.read("/tmp/data/a.txt").expect("file"), "hello");
        assert!(matches!(t.get("/tmp/data/a.txt"), Some(Node::File { mode: 0o600, mtime: 7, .. })));
        assert_eq!(t.read(&format!("/tmp/data/sub/{}", "n".repeat(120))).expect("long").len(), 1000);
    }

    #[tokio::test]
    async fn unpacking_needs_an_existing_directory() {
        let fs = PodFs::standalone("p");
        let err = unpack(&fs, "/nope", false, Chunks(Vec::new().into_iter())).await.expect_err("missing dir");
        assert_eq!(err, ["tar: /nope: Cannot open: No such file or directory"]);
    }
}

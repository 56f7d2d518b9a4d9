//! Each pod's small in-memory filesystem, which the built-in commands of
//! `pods/exec` read and write (`cat`, `tar` for `kubectl cp`, `ls`, ...).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

/// One file or directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Node {
    /// A directory (its entries are the paths below it).
    Dir { mode: u32, mtime: u64 },
    /// A regular file.
    File { data: Bytes, mode: u32, mtime: u64 },
}

/// Why a filesystem operation failed, worded like coreutils.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FsError {
    /// ENOENT.
    #[error("No such file or directory")]
    NotFound,
    /// ENOTDIR.
    #[error("Not a directory")]
    NotADirectory,
    /// EISDIR.
    #[error("Is a directory")]
    IsADirectory,
    /// EEXIST.
    #[error("File exists")]
    Exists,
    /// ENOTEMPTY.
    #[error("Directory not empty")]
    NotEmpty,
}

/// One pod's files, keyed by normalized absolute path.
#[derive(Debug)]
pub(crate) struct Fs {
    nodes: BTreeMap<String, Node>,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `base` joined with `path` (absolute paths ignore `base`), with `.` and
/// `..` resolved; always absolute, never with a trailing slash (but `/`).
pub(crate) fn resolve(base: &str, path: &str) -> String {
    let joined = if path.starts_with('/') { path.to_string() } else { format!("{base}/{path}") };
    let mut parts: Vec<&str> = Vec::new();
    for seg in joined.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    format!("/{}", parts.join("/"))
}

fn parent(path: &str) -> Option<&str> {
    if path == "/" {
        return None;
    }
    Some(match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    })
}

impl Fs {
    /// A fresh container filesystem for pod `hostname`.
    pub fn new(hostname: &str) -> Self {
        let mut fs = Self { nodes: BTreeMap::new() };
        let t = now_secs();
        for dir in ["/", "/bin", "/etc", "/home", "/root", "/tmp", "/usr", "/usr/bin", "/var", "/var/log"] {
            let mode = if dir == "/tmp" { 0o1777 } else { 0o755 };
            fs.nodes.insert(dir.to_string(), Node::Dir { mode, mtime: t });
        }
        let file = |s: &str| Node::File { data: Bytes::from(s.to_string()), mode: 0o644, mtime: t };
        fs.nodes.insert("/etc/hostname".into(), file(&format!("{hostname}\n")));
        fs.nodes.insert(
            "/etc/os-release".into(),
            file("NAME=\"Ferry test container\"\nID=ferry-test\nPRETTY_NAME=\"Ferry test container (in memory)\"\n"),
        );
        fs
    }

    /// The node at an absolute, normalized path.
    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    /// A file's contents.
    pub fn read(&self, path: &str) -> Result<Bytes, FsError> {
        match self.nodes.get(path) {
            Some(Node::File { data, .. }) => Ok(data.clone()),
            Some(Node::Dir { .. }) => Err(FsError::IsADirectory),
            None => Err(FsError::NotFound),
        }
    }

    fn check_parent(&self, path: &str) -> Result<(), FsError> {
        match parent(path).map(|p| self.nodes.get(p)) {
            None | Some(Some(Node::Dir { .. })) => Ok(()),
            Some(Some(Node::File { .. })) => Err(FsError::NotADirectory),
            Some(None) => Err(FsError::NotFound),
        }
    }

    /// Creates or replaces a file (its directory must exist).
    pub fn write(&mut self, path: &str, data: Bytes, mode: u32, mtime: Option<u64>) -> Result<(), FsError> {
        self.check_parent(path)?;
        if matches!(self.nodes.get(path), Some(Node::Dir { .. })) {
            return Err(FsError::IsADirectory);
        }
        self.nodes.insert(path.to_string(), Node::File { data, mode, mtime: mtime.unwrap_or_else(now_secs) });
        Ok(())
    }

    /// Appends to a file, creating it if needed.
    pub fn append(&mut self, path: &str, more: &[u8]) -> Result<(), FsError> {
        let mut data = match self.nodes.get(path) {
            Some(Node::File { data, .. }) => data.to_vec(),
            Some(Node::Dir { .. }) => return Err(FsError::IsADirectory),
            None => Vec::new(),
        };
        data.extend_from_slice(more);
        self.write(path, Bytes::from(data), 0o644, None)
    }

    /// `mkdir` (with `parents`, `mkdir -p`).
    pub fn mkdir(&mut self, path: &str, parents: bool, mode: u32) -> Result<(), FsError> {
        match self.nodes.get(path) {
            Some(Node::Dir { .. }) if parents => return Ok(()),
            Some(_) => return Err(FsError::Exists),
            None => {}
        }
        if parents && let Some(p) = parent(path) {
            self.mkdir(p, true, 0o755)?;
        }
        self.check_parent(path)?;
        self.nodes.insert(path.to_string(), Node::Dir { mode, mtime: now_secs() });
        Ok(())
    }

    /// `rm` (with `recursive`, `rm -r`).
    pub fn remove(&mut self, path: &str, recursive: bool) -> Result<(), FsError> {
        match self.nodes.get(path) {
            None => Err(FsError::NotFound),
            Some(Node::File { .. }) => {
                self.nodes.remove(path);
                Ok(())
            }
            Some(Node::Dir { .. }) => {
                let below: Vec<String> = self.children_recursive(path);
                if !below.is_empty() && !recursive {
                    return Err(FsError::NotEmpty);
                }
                if !recursive {
                    return Err(FsError::IsADirectory);
                }
                for p in below {
                    self.nodes.remove(&p);
                }
                if path != "/" {
                    self.nodes.remove(path);
                }
                Ok(())
            }
        }
    }

    fn prefix(path: &str) -> String {
        if path == "/" { "/".to_string() } else { format!("{path}/") }
    }

    /// Every path below a directory, in order.
    pub fn children_recursive(&self, dir: &str) -> Vec<String> {
        let prefix = Self::prefix(dir);
        self.nodes
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The names directly in a directory, sorted.
    pub fn list(&self, dir: &str) -> Vec<String> {
        let prefix = Self::prefix(dir);
        self.children_recursive(dir)
            .into_iter()
            .filter_map(|p| p.strip_prefix(&prefix).filter(|rest| !rest.contains('/')).map(str::to_string))
            .collect()
    }
}

/// Pods' filesystems by (namespace, name).
type ByPod = HashMap<(String, String), Arc<Mutex<Fs>>>;

/// Every pod's filesystem, created on first use.
#[derive(Debug, Default)]
pub(crate) struct PodFiles {
    pods: Mutex<ByPod>,
}

/// A locked filesystem.
pub(crate) type FsGuard<'a> = MutexGuard<'a, Fs>;

/// One pod's filesystem, shared by its commands.
#[derive(Clone, Debug)]
pub(crate) struct PodFs(Arc<Mutex<Fs>>);

impl PodFs {
    /// Locks it (briefly: never across an `.await`).
    pub fn lock(&self) -> FsGuard<'_> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A filesystem not tied to any pod (tests).
    #[cfg(test)]
    pub fn standalone(hostname: &str) -> Self {
        Self(Arc::new(Mutex::new(Fs::new(hostname))))
    }
}

impl PodFiles {
    fn lock(&self) -> MutexGuard<'_, ByPod> {
        self.pods.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The pod's filesystem.
    pub fn get(&self, namespace: &str, pod: &str) -> PodFs {
        let fs = self
            .lock()
            .entry((namespace.to_string(), pod.to_string()))
            .or_insert_with(|| Arc::new(Mutex::new(Fs::new(pod))))
            .clone();
        PodFs(fs)
    }

    /// Forgets a deleted pod's files.
    pub fn pod_gone(&self, namespace: &str, pod: &str) {
        self.lock().remove(&(namespace.to_string(), pod.to_string()));
    }

    /// Forgets the files of every pod in a deleted namespace.
    pub fn namespace_gone(&self, namespace: &str) {
        self.lock().retain(|(ns, _), _| ns != namespace);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_like_a_shell() {
        assert_eq!(resolve("/", "tmp/x"), "/tmp/x");
        assert_eq!(resolve("/tmp", "../etc/./hostname"), "/etc/hostname");
        assert_eq!(resolve("/tmp", "/a//b/"), "/a/b");
        assert_eq!(resolve("/", "../.."), "/");
    }

    #[test]
    fn files_and_directories() {
        let mut fs = Fs::new("web");
        assert_eq!(fs.read("/etc/hostname").expect("hostname"), "web\n");
        assert_eq!(fs.write("/nope/x", Bytes::new(), 0o644, None), Err(FsError::NotFound));
        fs.mkdir("/a/b/c", true, 0o755).expect("mkdir -p");
        fs.write("/a/b/c/f", Bytes::from_static(b"1"), 0o644, None).expect("write");
        fs.append("/a/b/c/f", b"2").expect("append");
        assert_eq!(fs.read("/a/b/c/f").expect("read"), "12");
        assert_eq!(fs.list("/a/b"), ["c"]);
        assert_eq!(fs.mkdir("/a", false, 0o755), Err(FsError::Exists));
        assert_eq!(fs.remove("/a", false), Err(FsError::NotEmpty));
        fs.remove("/a", true).expect("rm -r");
        assert!(fs.get("/a/b/c/f").is_none() && fs.get("/a").is_none());
        assert!(fs.list("/").contains(&"tmp".to_string()));
    }
}

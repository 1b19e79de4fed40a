//! A folder of this fuzzing process's own on tmpfs (/dev/shm), emptied
//! before each input and removed when the process exits. Its whole
//! content is compared before and after the operations: no file appears,
//! none changes unless the harness let it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub struct PrivateDir {
    path: PathBuf,
}

/// Every file below the folder (relative name, bytes); links as their
/// target's name; the files a snapshot was told to skip as present only.
pub type Snapshot = BTreeMap<PathBuf, Vec<u8>>;

static DIR: OnceLock<PrivateDir> = OnceLock::new();
/// The folder's name before the process id.
const PREFIX: &str = "fuse-export-fuzz.";

/// A process that crashed (the input libFuzzer saves) never reached its exit.
fn remove_folders_of_dead_processes(root: &Path) {
    for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let pid = name.to_str().and_then(|n| n.strip_prefix(PREFIX));
        if pid.is_some_and(|pid| !Path::new("/proc").join(pid).exists()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

extern "C" fn remove_at_exit() {
    if let Some(dir) = DIR.get() {
        let _ = std::fs::remove_dir_all(&dir.path);
    }
}

impl PrivateDir {
    /// The process's folder, empty.
    pub fn fresh() -> &'static PrivateDir {
        let dir = DIR.get_or_init(|| {
            let root = if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
            remove_folders_of_dead_processes(&root);
            let path = root.join(format!("{PREFIX}{}", std::process::id()));
            // SAFETY: registers a plain function; libFuzzer ends with exit().
            unsafe { libc::atexit(remove_at_exit) };
            PrivateDir { path }
        });
        let _ = std::fs::remove_dir_all(&dir.path);
        std::fs::create_dir_all(&dir.path).expect("the private folder");
        dir
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `bytes` to `name` in the folder; its path.
    pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.path.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("a folder in the private folder");
        }
        std::fs::write(&path, bytes).expect("a file in the private folder");
        path
    }

    /// Everything the folder holds now, but the bytes of the files named
    /// in `skipped` (a writable image may change, and grow sparse to
    /// terabytes: it is not read).
    pub fn snapshot(&self, skipped: &[&str]) -> Snapshot {
        let mut files = Snapshot::new();
        collect(&self.path, &self.path, skipped, &mut files);
        files
    }
}

fn collect(root: &Path, dir: &Path, skipped: &[&str], into: &mut Snapshot) {
    for entry in std::fs::read_dir(dir).expect("the private folder").flatten() {
        let path = entry.path();
        let name = path.strip_prefix(root).unwrap().to_path_buf();
        let kind = entry.file_type().expect("a file type");
        if kind.is_symlink() {
            into.insert(name, std::fs::read_link(&path).unwrap().into_os_string().into_encoded_bytes());
        } else if kind.is_dir() {
            collect(root, &path, skipped, into);
        } else if skipped.iter().any(|skip| name == Path::new(skip)) {
            into.insert(name, Vec::new());
        } else {
            into.insert(name, std::fs::read(&path).expect("a file of the private folder"));
        }
    }
}

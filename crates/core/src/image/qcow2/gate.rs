//! Every file a qcow2 image names (its backing file, the backing file's
//! backing file, an external data file) is opened through here: relative
//! names were resolved against the naming image's folder already, backing
//! files come read-only, and a file met twice in one chain is a loop.

use super::storage::HostFile;
use imago::format::builder::FormatDriverBuilder;
use imago::format::gate::ImplicitOpenGate;
use imago::{FormatAccess, StorageOpenOptions};
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

#[derive(Clone)]
pub struct ChainGate {
    /// Canonical paths of the files opened so far, the top image first.
    seen: Arc<Mutex<Vec<PathBuf>>>,
    direct: bool,
}

impl ChainGate {
    pub fn new(top: PathBuf, direct: bool) -> Self {
        let top = std::fs::canonicalize(&top).unwrap_or(top);
        Self { seen: Arc::new(Mutex::new(vec![top])), direct }
    }
}

impl ImplicitOpenGate<HostFile> for ChainGate {
    fn open_format<F: FormatDriverBuilder<HostFile>>(&mut self, builder: F) -> io::Result<FormatAccess<HostFile>> {
        let format = builder.open(self.clone())?;
        Ok(FormatAccess::new(format))
    }

    fn open_storage(&mut self, options: StorageOpenOptions) -> io::Result<HostFile> {
        let path = options.get_filename().ok_or_else(|| io::Error::other("a file without a name"))?.to_path_buf();
        let canonical = std::fs::canonicalize(&path)?;
        {
            let mut seen = self.seen.lock().unwrap();
            if seen.contains(&canonical) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the backing chain loops: {} is named again", canonical.display()),
                ));
            }
            seen.push(canonical);
        }
        HostFile::open_path(&path, options.get_writable(), self.direct)
    }
}

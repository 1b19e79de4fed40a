//! Every file a qcow2 image names (its backing file, the backing file's
//! backing file, an external data file) is opened through here: relative
//! names were resolved against the naming image's folder already, backing
//! files come read-only, a file met twice in one chain is a loop, and a
//! qcow2 backing file's header passes the same checks as the top image's
//! (`limits.rs`), within the chain's one memory budget.

use super::limits::{check_header, MetadataBudget};
use super::read_first_bytes;
use super::storage::HostFile;
use imago::format::builder::FormatDriverBuilder;
use imago::format::gate::ImplicitOpenGate;
use imago::format::Format;
use imago::{FormatAccess, StorageOpenOptions};
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

#[derive(Clone)]
pub struct ChainGate {
    /// Canonical paths of the files opened so far, the top image first.
    seen: Arc<Mutex<Vec<PathBuf>>>,
    direct: bool,
    /// Whether the top image is opened for writing: nothing under a
    /// read-only one is (imago asks for its external data file writable
    /// whatever the image is opened as: test/fixtures/README.md).
    writable: bool,
    /// What the chain's metadata may still hold in memory (the top image's
    /// share is taken already).
    budget: MetadataBudget,
}

impl ChainGate {
    pub fn new(top: PathBuf, writable: bool, direct: bool, budget: MetadataBudget) -> Self {
        let top = std::fs::canonicalize(&top).unwrap_or(top);
        Self { seen: Arc::new(Mutex::new(vec![top])), direct, writable, budget }
    }

    /// Checks the qcow2 backing file opened last (imago opens a backing
    /// file's storage, then its format), before imago reads its tables.
    fn check_qcow2_backing(&self) -> io::Result<()> {
        let path = self.seen.lock().unwrap().last().cloned().ok_or_else(|| io::Error::other("no file opened"))?;
        let first = read_first_bytes(&path)?;
        let size = std::fs::metadata(&path)?.len();
        check_header(&first, size, false).and_then(|cost| self.budget.charge(cost)).map_err(|problem| {
            io::Error::new(io::ErrorKind::InvalidData, format!("not a usable qcow2 image: {problem}"))
        })
    }
}

impl ImplicitOpenGate<HostFile> for ChainGate {
    fn open_format<F: FormatDriverBuilder<HostFile>>(&mut self, builder: F) -> io::Result<FormatAccess<HostFile>> {
        if F::FORMAT == Format::Qcow2 {
            self.check_qcow2_backing()?;
        }
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
        HostFile::open_path(&path, options.get_writable() && self.writable, self.direct)
    }
}

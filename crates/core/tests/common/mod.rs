//! What more than one integration test needs (each test file is a crate of
//! its own and takes `mod common;`).

use fuse_export_core::image::{self, CacheMode, FormatChoice, ImageOptions, Seek};
use std::path::Path;

/// Opens `path` as qcow2 through the page cache and walks its mappings
/// with SEEK_DATA / SEEK_HOLE up to `limit` bytes of its virtual size,
/// each seek moving on: an error is fine, a panic or a hang is not.
pub fn open_and_walk(path: &Path, writable: bool, limit: u64) -> Result<(), String> {
    let options = ImageOptions {
        path: path.to_path_buf(),
        writable,
        growable: false,
        cache: CacheMode::Writeback,
        format: FormatChoice::Qcow2,
        ..Default::default()
    };
    let (image, _) = image::open(&options).map_err(|e| e.0)?;
    let size = image.size().min(limit);
    let mut at = 0;
    while at < size {
        let Ok(data) = image.seek(at, Seek::Data) else { break };
        let Ok(hole) = image.seek(data, Seek::Hole) else { break };
        assert!(hole > at || hole >= size, "seeking made no progress at {at}");
        at = hole.max(data + 1);
    }
    Ok(())
}

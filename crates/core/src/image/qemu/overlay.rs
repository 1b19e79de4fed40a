//! `--snapshot` and `--overlay FILE`: a qcow2 made by qemu-img over the
//! image (its backing file, the format recorded), taking every write while
//! the image is opened read-only. A temporary one is unlinked as soon as
//! it is open and reached through our descriptor (`/proc/PID/fd/N`), so
//! that nothing is left behind, not even by `kill -9`.

use super::child::PrivateDir;
use super::Access;
use crate::image::probe::{is_qcow2, parse_qcow2_header};
use crate::image::qcow2::read_first_bytes;
use crate::image::ImageError;
use serde_json::Value;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

pub struct OverlayFile {
    /// Where QEMU and imago open it.
    pub path: PathBuf,
    /// A temporary overlay lives as long as this descriptor.
    _held: Option<File>,
}

/// Makes (or, for an existing `--overlay FILE`, checks) the overlay over
/// `base`, the image's format node: the user's FILE, or a temporary one.
pub fn create(file: Option<&Path>, access: &Access, format: &str, base: &Value) -> Result<OverlayFile, ImageError> {
    let backing = access.backing_name(base);
    match file {
        Some(path) if path.exists() => reuse(path, &backing),
        Some(path) => {
            make(access, &backing, format, path)?;
            Ok(OverlayFile { path: path.to_path_buf(), _held: None })
        }
        None => {
            let dir = PrivateDir::create().map_err(ImageError)?;
            let path = dir.path().join("snapshot.qcow2");
            make(access, &backing, format, &path)?;
            let held = File::options().read(true).write(true).open(&path).map_err(|e| {
                ImageError(format!("Failed to open the snapshot overlay: {}", crate::os_error::describe(&e)))
            })?;
            // The directory and the file's name go now; the file stays ours.
            drop(dir);
            let path = PathBuf::from(format!("/proc/{}/fd/{}", std::process::id(), held.as_raw_fd()));
            Ok(OverlayFile { path, _held: Some(held) })
        }
    }
}

fn make(access: &Access, backing: &str, format: &str, path: &Path) -> Result<(), ImageError> {
    let args = ["-q", "-f", "qcow2", "-b", backing, "-F", format, &path.to_string_lossy()];
    access.qemu_img("create", args.iter().map(|a| a.to_string()).collect()).map(drop).map_err(|why| {
        ImageError(format!("Failed to make the overlay {} over {}: {why}", path.display(), access.shown))
    })
}

/// An existing overlay is used as it is, if it is one of this image.
fn reuse(path: &Path, backing: &str) -> Result<OverlayFile, ImageError> {
    let head = read_first_bytes(path).map_err(|e| {
        ImageError(format!("Failed to read the overlay {}: {}", path.display(), crate::os_error::describe(&e)))
    })?;
    if !is_qcow2(&head) {
        return Err(ImageError(format!(
            "The overlay {} exists and is not a qcow2 image: give --overlay a new file's name",
            path.display()
        )));
    }
    match parse_qcow2_header(&head).ok().and_then(|header| header.backing_file) {
        Some(recorded) if recorded != backing && !backing.starts_with("json:") => Err(ImageError(format!(
            "The overlay {} lies over {recorded}, not over this image ({backing}): give --overlay a new file's name",
            path.display()
        ))),
        _ => Ok(OverlayFile { path: path.to_path_buf(), _held: None }),
    }
}

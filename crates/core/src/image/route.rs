//! Which backend serves an image: NBD servers through libnbd, raw files
//! and the qcow2 chains imago follows natively, everything else through
//! QEMU's block layer. Under `--format auto` a container QEMU recognises is
//! never served as raw.

use super::probe::{self, FormatChoice};
use super::qcow2::read_first_bytes;
use super::{nbd, qemu};
use std::path::{Path, PathBuf};

/// Backing files followed before a chain counts as a loop (the native
/// backend then names the loop).
const MAX_CHAIN: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Nbd,
    Raw,
    Qcow2,
    /// QEMU's block layer: the format when it is known before QEMU looks,
    /// and whether the image's header says it is encrypted.
    Qemu {
        format: Option<&'static str>,
        encrypted: bool,
    },
}

impl Route {
    /// The format name QEMU knows the image by, when known.
    pub fn format(self) -> Option<&'static str> {
        match self {
            Route::Nbd | Route::Raw => Some("raw"),
            Route::Qcow2 => Some("qcow2"),
            Route::Qemu { format, .. } => format,
        }
    }
}

pub fn route(image: &str, choice: FormatChoice) -> Route {
    let named = |format| Route::Qemu { format: Some(format), encrypted: false };
    if nbd::is_uri(image) || qemu::is_place(image) {
        return match choice {
            FormatChoice::Auto | FormatChoice::Raw if nbd::is_uri(image) => Route::Nbd,
            FormatChoice::Auto => Route::Qemu { format: None, encrypted: false },
            FormatChoice::Raw => named("raw"),
            FormatChoice::Qcow2 => named("qcow2"),
            FormatChoice::Qemu(format) => named(format),
        };
    }
    // A file we may not read fails in the backend's own open, with its hints.
    let path = Path::new(image);
    let head = read_first_bytes(path).unwrap_or_default();
    let encrypted = probe::parse_qcow2_header(&head).is_ok_and(|header| header.encrypted);
    let qcow2 = Route::Qemu { format: Some("qcow2"), encrypted };
    match (choice, probe::probe_format(&head, image)) {
        (FormatChoice::Raw, _) | (FormatChoice::Auto, None) => Route::Raw,
        (FormatChoice::Auto | FormatChoice::Qcow2, Some("qcow2")) if imago_follows(path, &head) => Route::Qcow2,
        (FormatChoice::Auto | FormatChoice::Qcow2, Some("qcow2")) => qcow2,
        // Not a qcow2 at all: the native backend says so.
        (FormatChoice::Qcow2, _) => Route::Qcow2,
        (FormatChoice::Auto, Some(format)) | (FormatChoice::Qemu(format), _) => {
            Route::Qemu { format: Some(format), encrypted }
        }
    }
}

/// Whether imago serves this qcow2 and every file under it as QEMU would:
/// an unencrypted qcow2 version 2 or 3 over qcow2s like it, down to a raw
/// file or none. A header the native backend refuses stays native, for
/// its message; a backing file QEMU would read as anything else (a VMDK,
/// a URL) sends the whole chain to QEMU.
fn imago_follows(top: &Path, head: &[u8]) -> bool {
    let mut level: (PathBuf, Vec<u8>) = (top.to_path_buf(), head.to_vec());
    for _ in 0..MAX_CHAIN {
        let (path, head) = &level;
        let header = match probe::parse_qcow2_header(head) {
            Ok(header) if probe::is_qcow2(head) => header,
            _ => return true,
        };
        if header.encrypted {
            return false;
        }
        let Some(name) = backing_name(path, head) else { return true };
        if qemu::is_place(&name) || name.contains("://") {
            return false;
        }
        let backing = path.parent().unwrap_or(Path::new("/")).join(&name);
        let Ok(backing_head) = read_first_bytes(&backing) else { return true };
        match probe::probe_format(&backing_head, &backing.to_string_lossy()) {
            None => return true,
            Some("qcow2") => level = (backing, backing_head),
            Some(_) => return false,
        }
    }
    true
}

/// A qcow2's backing file name, wherever in its first cluster it lies
/// (after the header extensions: often past the first bytes read).
fn backing_name(path: &Path, head: &[u8]) -> Option<String> {
    use std::os::unix::fs::FileExt;
    let offset = u64::from_be_bytes(head.get(8..16)?.try_into().ok()?);
    let len = u32::from_be_bytes(head.get(16..20)?.try_into().ok()?) as usize;
    if offset == 0 || len == 0 || len > probe::MAX_BACKING_NAME {
        return None;
    }
    let mut name = vec![0u8; len];
    std::fs::File::open(path).ok()?.read_exact_at(&mut name, offset).ok()?;
    String::from_utf8(name).ok()
}

/// Whether a file QEMU takes for raw ends in a VHD footer (a fixed VHD,
/// which QEMU 7.2's probe does not recognise either).
pub fn ends_with_vhd_footer(path: &Path) -> bool {
    use std::os::unix::fs::FileExt;
    let Ok(file) = std::fs::File::open(path) else { return false };
    let size = file.metadata().map_or(0, |m| m.len());
    let mut tail = [0u8; probe::TAIL_BYTES];
    let tail_len = tail.len() as u64;
    size >= tail_len && file.read_exact_at(&mut tail, size - tail_len).is_ok() && probe::has_vhd_footer(&tail)
}

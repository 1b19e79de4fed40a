//! Backing-file names: a chain of small qcow2 images in the private
//! folder, each naming the backing file the fuzzer chose, opened through
//! our backend (the chain gate resolves each name, refuses loops, opens
//! backing files read-only), then read, sought and, when writable, written.
//!
//! The folder holds top.qcow2, mid.qcow2, base.qcow2 (names nothing),
//! raw.img, link.qcow2 (a link to top.qcow2) and d/deep.qcow2. The input:
//! a flags byte (bit 0 the page cache, bit 1 writable, bits 2-3 the
//! backing format extension: none, qcow2, raw, a fuzzed name), then the
//! backing names of top, mid and d/deep, NUL-separated. A name starting
//! with "@/" means the private folder's absolute path; a name that would
//! leave the folder is not tried (the fuzzer must not open the host's
//! files and devices). Properties: no panic, no hang, no file but the
//! top image changes, and that only when writable.
#![no_main]

use fuse_export_core::image::{ImageIo, ImageOp, Seek};
use fuse_export_fuzz::{open, qcow2_file, Driver, Input, Operation, PrivateDir};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

/// The images that name a backing file, and the folder depth each is at.
const NAMING: [(&str, usize); 3] = [("top.qcow2", 0), ("mid.qcow2", 0), ("d/deep.qcow2", 1)];

/// `name` with "@/" made absolute in `dir`, or `None` when it would leave
/// the folder from an image `depth` folders down in it.
fn confined(name: &[u8], depth: usize, dir: &Path) -> Option<Vec<u8>> {
    let (prefix, rest, depth) = match name.strip_prefix(b"@/") {
        Some(rest) => ([dir.as_os_str().as_encoded_bytes(), b"/"].concat(), rest, 0),
        None if name.starts_with(b"/") => return None,
        None => (Vec::new(), name, depth),
    };
    let mut depth = depth as isize;
    for part in rest.split(|&b| b == b'/') {
        depth += match part {
            b".." => -1,
            b"" | b"." => 0,
            _ => 1,
        };
        if depth < 0 {
            return None;
        }
    }
    Some([prefix.as_slice(), rest].concat())
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.u8();
    let format = match flags >> 2 & 3 {
        0 => "",
        1 => "qcow2",
        2 => "raw",
        _ => std::str::from_utf8(input.until_nul()).unwrap_or(""),
    };
    let dir = PrivateDir::fresh();
    let mut names = Vec::new();
    for (image, depth) in NAMING {
        let Some(name) = confined(input.until_nul(), depth, dir.path()) else { return };
        names.push((image, name));
    }
    for (image, name) in &names {
        dir.write(image, &qcow2_file::naming(name, format));
    }
    dir.write("base.qcow2", &qcow2_file::naming(b"", ""));
    dir.write("raw.img", &[0xa5; qcow2_file::SIZE as usize]);
    std::os::unix::fs::symlink("top.qcow2", dir.path().join("link.qcow2")).expect("a link");
    let writable = flags & 2 != 0;
    let may_change: &[&str] = if writable { &["top.qcow2"] } else { &[] };
    let before = dir.snapshot(may_change);
    if let Some(image) = open(&dir.path().join("top.qcow2"), writable, false, flags) {
        let mut driver = Driver::default();
        let size = image.size();
        driver.run(&*image, Operation::Io(ImageIo::new(ImageOp::Read, 0, size.min(1 << 20))), 0);
        driver.run(&*image, Operation::Seek(0, Seek::Hole), 0);
        if writable {
            driver.run(&*image, Operation::Io(ImageIo::new(ImageOp::Write, 4096, 512)), 1);
        }
    }
    let after = dir.snapshot(may_change);
    assert!(after == before, "a file changed or appeared: {:?}", after.keys().collect::<Vec<_>>());
});

//! Reads that skip the child: where QEMU's own map (`qemu-img map`, taken
//! once the child has opened the image) puts a range of the guest's bytes,
//! plainly, at a fixed place in the local image file, a read of that range
//! is an SQE on the I/O thread's ring into the request's buffer, as for a
//! raw file. We parse nothing of the format: QEMU says where the bytes are.
//!
//! Only for formats that write an allocated block in place and never move
//! or transform it (MAPPED_FORMATS), unencrypted, with no overlay. Any other
//! operation on a range (a write, a discard, write-zeroes) forgets the
//! range first, so that every read after it goes through QEMU: the map
//! only ever shrinks, and holds only what QEMU said before we changed it.

use crate::image::raw::DIRECT_ALIGNMENT;
use crate::image::{CacheMode, ImageIo, IoContext, Stage};
use io_uring::{opcode, types};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::RwLock;
use std::task::Poll;

/// Formats whose allocated blocks stay where they are, holding the guest's
/// bytes as they are (no compression, no encryption, no copy-on-write).
pub const MAPPED_FORMATS: &[&str] = &["vmdk", "vhdx", "vdi", "vpc", "parallels"];
/// A map longer than this is not kept (its memory would outweigh the gain).
const MAX_EXTENTS: usize = 1 << 20;

/// Guest bytes [start, end) lie at `host` onward in the image file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Extent {
    start: u64,
    end: u64,
    host: u64,
}

pub struct MappedReads {
    /// By guest start: a random write splits an extent in O(log n).
    extents: RwLock<BTreeMap<u64, Extent>>,
    buffered: File,
    direct: Option<File>,
}

impl MappedReads {
    /// From `qemu-img map --output=json` of the image at `path`; None when
    /// nothing in it can be read straight.
    pub fn new(path: &Path, map: &str, cache: CacheMode) -> Option<MappedReads> {
        let extents = extents_of(map)?;
        // No lock of QEMU's: the child holds the image, and our reads of
        // what it mapped stay within what it allows its own readers.
        let open = |flags: i32| File::options().read(true).custom_flags(libc::O_CLOEXEC | flags).open(path).ok();
        let buffered = open(0)?;
        let direct = if cache == CacheMode::Direct { open(libc::O_DIRECT) } else { None };
        let extents = extents.into_iter().map(|e| (e.start, e)).collect();
        Some(MappedReads { extents: RwLock::new(extents), buffered, direct })
    }

    /// Where the whole of [offset, offset + len) lies in the file, if it
    /// lies in one mapped extent.
    fn host_of(&self, offset: u64, len: u64) -> Option<u64> {
        let extents = self.extents.read().unwrap();
        let (_, extent) = extents.range(..=offset).next_back()?;
        (offset + len <= extent.end).then(|| extent.host + (offset - extent.start))
    }

    /// Starts a read of `io` from the file when its range is mapped.
    pub fn submit_read(&self, io: &mut ImageIo, context: &mut IoContext) -> Option<Poll<i32>> {
        let host = self.host_of(io.offset, io.len)?;
        let aligned = |v: u64| v.is_multiple_of(DIRECT_ALIGNMENT);
        let fd = match &self.direct {
            Some(direct) if aligned(host) && aligned(io.len) && aligned(context.buffer as u64) => direct,
            _ => &self.buffered,
        };
        let entry = opcode::Read::new(types::Fd(fd.as_raw_fd()), context.buffer, io.len as u32).offset(host).build();
        io.stage = Stage::Mapped;
        context.ring.push(entry, context.token);
        Some(Poll::Pending)
    }

    /// A mapped read ended: every byte of it lies within the file, so a
    /// short read means the file changed under us (EIO), never zeroes.
    pub fn complete(io: &ImageIo, result: i32) -> i32 {
        if result >= 0 && (result as u64) < io.len {
            -libc::EIO
        } else {
            result
        }
    }

    /// [offset, offset + len) is about to change through QEMU: reads of it
    /// go through QEMU from now on.
    pub fn forget(&self, offset: u64, len: u64) {
        let end = offset.saturating_add(len.max(1));
        let mut extents = self.extents.write().unwrap();
        // The extent that starts before the range, then those that start in it.
        let before = extents.range(..offset).next_back().map(|(_, e)| *e).filter(|e| e.end > offset);
        let inside: Vec<Extent> = extents.range(offset..end).map(|(_, e)| *e).collect();
        for extent in before.iter().chain(&inside) {
            extents.remove(&extent.start);
            if extent.start < offset {
                extents.insert(extent.start, Extent { end: offset, ..*extent });
            }
            if extent.end > end {
                extents.insert(end, Extent { start: end, host: extent.host + (end - extent.start), ..*extent });
            }
        }
    }
}

/// The extents of QEMU's map that hold data in the image file itself
/// (depth 0), merged where both sides are contiguous.
fn extents_of(map: &str) -> Option<Vec<Extent>> {
    let entries: Vec<Value> = serde_json::from_str(map).ok()?;
    let mut extents: Vec<Extent> = Vec::new();
    for entry in &entries {
        let number = |key: &str| entry.get(key).and_then(Value::as_u64);
        let flag = |key: &str| entry.get(key).and_then(Value::as_bool) == Some(true);
        let (Some(start), Some(length), Some(host)) = (number("start"), number("length"), number("offset")) else {
            continue;
        };
        if number("depth") != Some(0) || !flag("data") || flag("zero") || length == 0 {
            continue;
        }
        let extent = Extent { start, end: start.checked_add(length)?, host };
        match extents.last_mut() {
            Some(last) if last.end == start && last.host + (last.end - last.start) == host => last.end = extent.end,
            Some(last) if last.end > start => return None,
            _ => extents.push(extent),
        }
    }
    (!extents.is_empty() && extents.len() <= MAX_EXTENTS).then_some(extents)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: &str = r#"[{ "start": 0, "length": 1048576, "depth": 0, "present": true, "zero": false, "data": true, "offset": 65536},
{ "start": 1048576, "length": 3145728, "depth": 0, "present": false, "zero": true, "data": false},
{ "start": 4194304, "length": 65536, "depth": 0, "present": true, "zero": false, "data": true, "offset": 1114112},
{ "start": 4259840, "length": 65536, "depth": 1, "present": true, "zero": false, "data": true, "offset": 4096},
{ "start": 4325376, "length": 65536, "depth": 0, "present": true, "zero": false, "data": true, "offset": 1179648}]"#;

    fn reads(extents: Vec<Extent>) -> MappedReads {
        let extents = RwLock::new(extents.into_iter().map(|e| (e.start, e)).collect());
        MappedReads { extents, buffered: File::open("/dev/null").unwrap(), direct: None }
    }

    #[test]
    fn only_data_in_the_file_itself_is_mapped_and_contiguous_runs_merge() {
        let extents = extents_of(MAP).unwrap();
        assert_eq!(
            extents,
            [
                Extent { start: 0, end: 1 << 20, host: 65536 },
                Extent { start: 4194304, end: 4259840, host: 1114112 },
                Extent { start: 4325376, end: 4390912, host: 1179648 },
            ]
        );
        assert!(extents_of("[]").is_none());
        assert!(extents_of("not json").is_none());
    }

    #[test]
    fn a_read_is_mapped_only_within_one_extent() {
        let mapped = reads(extents_of(MAP).unwrap());
        assert_eq!(mapped.host_of(4096, 4096), Some(65536 + 4096));
        assert_eq!(mapped.host_of((1 << 20) - 4096, 8192), None, "into a hole");
        assert_eq!(mapped.host_of(4259840, 4096), None, "a backing file's data");
        assert_eq!(mapped.host_of(4194304 + 65536 - 512, 512), Some(1114112 + 65536 - 512));
    }

    #[test]
    fn a_changed_range_is_forgotten_and_the_rest_kept() {
        let mapped = reads(vec![
            Extent { start: 0, end: 65536, host: 4096 },
            Extent { start: 131072, end: 196608, host: 81920 },
        ]);
        mapped.forget(4096, 4096);
        assert_eq!(mapped.host_of(0, 4096), Some(4096));
        assert_eq!(mapped.host_of(4096, 1), None);
        assert_eq!(mapped.host_of(8192, 4096), Some(4096 + 8192));
        mapped.forget(60000, 100000);
        assert_eq!(mapped.host_of(8192, 4096), Some(4096 + 8192));
        assert_eq!(mapped.host_of(60000, 1), None);
        assert_eq!(mapped.host_of(160000, 4096), Some(81920 + (160000 - 131072)));
        assert_eq!(mapped.host_of(131072, 1), None);
        mapped.forget(0, u64::MAX);
        assert_eq!(mapped.host_of(0, 1), None);
        assert_eq!(mapped.host_of(190000, 1), None);
    }
}

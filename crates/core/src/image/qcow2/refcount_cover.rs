//! A writable image must have refcount blocks for the clusters its own
//! metadata lies in. QEMU counts every cluster it uses, so a valid image
//! always has them; a corrupt one without them makes imago 0.2.6's
//! allocator look for a refcount block without end at the first allocating
//! write (it recurses until the thread's stack overflows and the process
//! dies: test/fixtures/imago-refblock-recursion.qcow2, found by the
//! `qcow2_image` fuzz target). Read-only exports never allocate and skip
//! the check.

use super::storage::HostFile;
use crate::image::probe::Qcow2Header;
use std::io;
use std::os::unix::fs::FileExt;

/// Bits 9..63 of a refcount table entry: the refcount block's offset.
const REFBLOCK_OFFSET_MASK: u64 = !0x1ff;

/// The first metadata of the image (named) whose cluster no refcount block
/// covers, with its offset.
pub fn uncovered_metadata(top: &HostFile, header: &Qcow2Header) -> io::Result<Option<String>> {
    let order = header.refcount_order;
    // Clusters per refcount block: a cluster's worth of 2^order-bit counts.
    let Some(block_bits) = (header.cluster_bits + 3).checked_sub(order) else {
        return Ok(Some(format!("its refcount width (2^{order} bits) is wider than a cluster")));
    };
    let (table_offset, table_len) = header.refcount_table;
    let table_entries = table_len / 8;
    let metadata = [("header", (0, 1)), ("L1 table", header.l1_table), ("refcount table", header.refcount_table)];
    for (name, (offset, len)) in metadata {
        let first = offset >> header.cluster_bits;
        let last = (offset + len.max(1) - 1) >> header.cluster_bits;
        for index in (first >> block_bits)..=(last >> block_bits) {
            let mut entry = [0u8; 8];
            let covered = index < table_entries && {
                top.file().read_exact_at(&mut entry, table_offset + index * 8)?;
                u64::from_be_bytes(entry) & REFBLOCK_OFFSET_MASK != 0
            };
            if !covered {
                return Ok(Some(format!("no refcount block covers its {name} (at offset {offset})")));
            }
        }
    }
    Ok(None)
}

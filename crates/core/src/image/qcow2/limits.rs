//! What a qcow2 header may ask of the process, checked before imago reads
//! its tables, for the top image and every qcow2 file of its backing chain.
//! A header is untrusted input: its tables must lie within the file (a
//! truncated copy is refused, not read as zeroes), and what imago would
//! hold in memory for the whole chain (L1 tables, refcount tables, their
//! caches) must fit one budget, so that no header makes the process
//! allocate gigabytes. The limits are QEMU's where QEMU has one: an image
//! QEMU opens is not refused for its size alone.

use crate::image::probe::{parse_qcow2_header, Qcow2Header};
use std::sync::{Arc, Mutex};

/// QEMU's largest L1 table (QCOW_MAX_L1_SIZE).
const MAX_L1_BYTES: u64 = 32 << 20;
/// QEMU's largest refcount table (QCOW_MAX_REFTABLE_SIZE).
const MAX_REFCOUNT_TABLE_BYTES: u64 = 8 << 20;
/// QEMU's largest number of internal snapshots (QCOW_MAX_SNAPSHOTS).
const MAX_SNAPSHOTS: u32 = 65536;
/// imago's L2 table cache and refcount block cache, in tables (one cluster each).
const L2_CACHE_TABLES: u64 = 128;
const REFCOUNT_CACHE_BLOCKS: u64 = 32;
/// What the metadata of a whole chain may hold in memory. 1 TiB with
/// 64 KiB clusters needs 8 MiB; 2 MiB clusters reach it only past 30 TiB
/// of virtual size. With the process's own footprint (Node.js: about
/// 60 MiB) it keeps the peak under 256 MiB.
pub const METADATA_BUDGET: u64 = 128 << 20;

/// The memory left for the metadata of a chain, shared by its files.
#[derive(Clone)]
pub struct MetadataBudget {
    left: Arc<Mutex<u64>>,
}

impl Default for MetadataBudget {
    fn default() -> Self {
        Self { left: Arc::new(Mutex::new(METADATA_BUDGET)) }
    }
}

impl MetadataBudget {
    /// Takes `bytes` from the budget, or says why the chain is refused.
    pub fn charge(&self, bytes: u64) -> Result<(), String> {
        let mut left = self.left.lock().unwrap();
        if bytes > *left {
            let used = METADATA_BUDGET - *left;
            return Err(format!(
                "its metadata would hold {} MiB of memory ({} MiB already taken by the files above it), \
                 more than the {} MiB an export allows: the header is corrupt, or the image is too \
                 large for its cluster size (convert it with smaller clusters)",
                bytes >> 20,
                used >> 20,
                METADATA_BUDGET >> 20
            ));
        }
        *left -= bytes;
        Ok(())
    }
}

/// Checks the header of a qcow2 file of `file_size` bytes that starts with
/// `first_bytes`: its tables lie within the file and within QEMU's limits,
/// and its L1 table covers its virtual size. Returns what imago may hold in
/// memory for it, opened `writable` or not.
pub fn check_header(first_bytes: &[u8], file_size: u64, writable: bool) -> Result<u64, String> {
    let header = parse_qcow2_header(first_bytes)?;
    let (_, l1_bytes) = header.l1_table;
    let (_, refcount_bytes) = header.refcount_table;
    if l1_bytes > MAX_L1_BYTES {
        return Err(format!("its L1 table is {l1_bytes} bytes; at most {MAX_L1_BYTES} are allowed"));
    }
    if refcount_bytes > MAX_REFCOUNT_TABLE_BYTES {
        return Err(format!(
            "its refcount table is {refcount_bytes} bytes; at most {MAX_REFCOUNT_TABLE_BYTES} are allowed"
        ));
    }
    if header.snapshots.0 > MAX_SNAPSHOTS {
        return Err(format!("it has {} snapshots; at most {MAX_SNAPSHOTS} are allowed", header.snapshots.0));
    }
    if let Some(problem) = header.table_past_end(file_size) {
        return Err(problem);
    }
    let needed = l1_entries_needed(&header);
    if l1_bytes / 8 < needed {
        return Err(format!(
            "its L1 table has {} entries, too few for its virtual size of {} bytes ({needed} are needed)",
            l1_bytes / 8,
            header.size
        ));
    }
    Ok(metadata_memory(&header, writable))
}

/// L1 entries that map `header.size` bytes: each names one L2 table.
fn l1_entries_needed(header: &Qcow2Header) -> u64 {
    let l2_span = 1u64 << (2 * header.cluster_bits - 3);
    header.size.div_ceil(l2_span)
}

/// What imago holds for a file: its L1 table (twice while it loads: the
/// bytes read and the table made of them), and at most as many cached L2
/// tables as it has L1 entries (up to the cache's size); writable, the
/// refcount table (twice too) and its cached blocks.
fn metadata_memory(header: &Qcow2Header, writable: bool) -> u64 {
    let cluster = 1u64 << header.cluster_bits;
    let (_, l1_bytes) = header.l1_table;
    let l2_cache = (l1_bytes / 8).min(L2_CACHE_TABLES) * cluster;
    let refcounts = if writable {
        let (_, refcount_bytes) = header.refcount_table;
        2 * refcount_bytes + (refcount_bytes / 8).min(REFCOUNT_CACHE_BLOCKS) * cluster
    } else {
        0
    };
    2 * l1_bytes + l2_cache + refcounts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::probe::QCOW2_MAGIC;

    /// A v3 header: 2^`cluster_bits` clusters, `size` bytes, an L1 table of
    /// `l1_entries` at cluster 3, a refcount table of one cluster at cluster 1.
    fn header(cluster_bits: u32, size: u64, l1_entries: u32) -> Vec<u8> {
        let mut bytes = vec![0u8; 512];
        bytes[..4].copy_from_slice(&QCOW2_MAGIC);
        bytes[4..8].copy_from_slice(&3u32.to_be_bytes());
        bytes[20..24].copy_from_slice(&cluster_bits.to_be_bytes());
        bytes[24..32].copy_from_slice(&size.to_be_bytes());
        bytes[36..40].copy_from_slice(&l1_entries.to_be_bytes());
        bytes[40..48].copy_from_slice(&(3u64 << cluster_bits).to_be_bytes());
        bytes[48..56].copy_from_slice(&(1u64 << cluster_bits).to_be_bytes());
        bytes[56..60].copy_from_slice(&1u32.to_be_bytes());
        bytes
    }

    const GIB: u64 = 1 << 30;

    #[test]
    fn an_image_as_qemu_img_makes_it_passes_and_costs_little() {
        // 1 TiB, 64 KiB clusters: 2048 L1 entries.
        let cost = check_header(&header(16, 1024 * GIB, 2048), 1 << 20, true).unwrap();
        assert!(cost < 16 << 20, "{cost}");
    }

    #[test]
    fn absurd_tables_and_too_small_l1_tables_are_refused_by_name() {
        let huge = 1 << 40;
        let l1 = check_header(&header(16, GIB, 8 << 20), huge, false).unwrap_err();
        assert!(l1.contains("L1 table is 67108864 bytes"), "{l1}");
        let mut refcounts = header(16, GIB, 16);
        refcounts[56..60].copy_from_slice(&1024u32.to_be_bytes());
        assert!(check_header(&refcounts, huge, false).unwrap_err().contains("refcount table"));
        let mut snapshots = header(16, GIB, 16);
        snapshots[60..64].copy_from_slice(&(1u32 << 20).to_be_bytes());
        assert!(check_header(&snapshots, huge, false).unwrap_err().contains("snapshots"));
        let small = check_header(&header(16, 1 << 50, 16), huge, false).unwrap_err();
        assert!(small.contains("too few for its virtual size"), "{small}");
        assert!(check_header(&header(16, GIB, 16), 3 << 16, false).unwrap_err().contains("past the end"));
    }

    #[test]
    fn a_chain_shares_one_budget() {
        // 2 MiB clusters, 128 L1 entries: the L2 cache alone may hold 256 MiB.
        let greedy = check_header(&header(21, 128 * 512 * GIB, 128), 1 << 30, false).unwrap();
        assert!(MetadataBudget::default().charge(greedy).unwrap_err().contains("more than the 128 MiB"));
        let budget = MetadataBudget::default();
        let modest = METADATA_BUDGET / 2;
        budget.charge(modest).unwrap();
        budget.charge(modest).unwrap();
        assert!(budget.charge(1 << 20).unwrap_err().contains("already taken"));
    }
}

//! The smallest qcow2 image that names a backing file: 64 KiB, 4 KiB
//! clusters, nothing allocated (every read goes to the backing file).
//! Made here so that the backing-chain target can give each of its files
//! a name the fuzzer chose.

/// The virtual size.
pub const SIZE: u64 = 64 << 10;
const CLUSTER: usize = 4096;
/// The header of a version 3 image, as long as the fixed part.
const HEADER_LENGTH: usize = 104;
/// The header extension that names the backing file's format.
const BACKING_FORMAT: u32 = 0xe279_2aca;

/// The image, with `backing` as its backing file name (none when empty)
/// and `format` as the backing format extension (none when empty).
pub fn naming(backing: &[u8], format: &str) -> Vec<u8> {
    let mut image = vec![0u8; 4 * CLUSTER];
    let mut put = |at: usize, bytes: &[u8]| image[at..at + bytes.len()].copy_from_slice(bytes);
    put(0, b"QFI\xfb");
    put(4, &3u32.to_be_bytes());
    put(20, &12u32.to_be_bytes()); // cluster_bits
    put(24, &SIZE.to_be_bytes());
    put(36, &1u32.to_be_bytes()); // L1 entries: one covers 2 MiB
    put(40, &(3 * CLUSTER as u64).to_be_bytes()); // L1 table
    put(48, &(CLUSTER as u64).to_be_bytes()); // refcount table
    put(56, &1u32.to_be_bytes()); // its clusters
    put(96, &4u32.to_be_bytes()); // refcount_order: 16-bit refcounts
    put(100, &(HEADER_LENGTH as u32).to_be_bytes());
    let mut at = HEADER_LENGTH;
    if !format.is_empty() {
        put(at, &BACKING_FORMAT.to_be_bytes());
        put(at + 4, &(format.len() as u32).to_be_bytes());
        put(at + 8, format.as_bytes());
        at += 8 + format.len().next_multiple_of(8);
    }
    at += 8; // the end of the extensions: type 0, length 0
    if !backing.is_empty() {
        let backing = &backing[..backing.len().min(CLUSTER - at)];
        put(8, &(at as u64).to_be_bytes());
        put(16, &(backing.len() as u32).to_be_bytes());
        put(at, backing);
    }
    put(CLUSTER, &(2 * CLUSTER as u64).to_be_bytes()); // refcount block at cluster 2
    for cluster in 0..4 {
        put(2 * CLUSTER + 2 * cluster, &1u16.to_be_bytes());
    }
    image
}

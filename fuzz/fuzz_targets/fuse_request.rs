//! The FUSE request decoder: a message read from /dev/fuse, and the same
//! bytes as a FUSE-over-io_uring entry's header.
#![no_main]

use fuse_export_core::protocol::abi::UringReqHeader;
use fuse_export_core::protocol::request::{decode_message, decode_ring_entry};
use libfuzzer_sys::fuzz_target;
use vm_memory::ByteValued;

fuzz_target!(|data: &[u8]| {
    let _ = decode_message(data);
    let mut entry = UringReqHeader::default();
    let bytes = entry.as_mut_slice();
    let n = data.len().min(bytes.len());
    bytes[..n].copy_from_slice(&data[..n]);
    let _ = decode_ring_entry(&entry);
});

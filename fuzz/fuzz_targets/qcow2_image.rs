//! A qcow2 image made of the fuzzer's bytes, opened through our backend
//! (read-only, writable or growable), then read, written, discarded,
//! zeroed, flushed and sought at the offsets the fuzzer picks.
//!
//! The input: a flags byte (bit 0 the page cache instead of O_DIRECT,
//! bit 1 writable, bit 2 growable), the number of operations, each
//! operation (kind, offset, length: 17 bytes), then the image file.
//! Properties: no panic, no hang, bounded memory (scripts/fuzz.sh runs
//! it with -rss_limit_mb=256), a transfer is whole or an error, and no
//! file changes but the image itself, and that only when writable.
#![no_main]

use fuse_export_fuzz::{open, Driver, Input, Operation, PrivateDir};
use libfuzzer_sys::fuzz_target;

/// Operations per input: enough to allocate, discard and read back.
const MAX_OPERATIONS: u8 = 8;
/// Bytes of each operation in the input.
const OPERATION_BYTES: usize = 17;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let (flags, count) = (input.u8(), input.u8() % (MAX_OPERATIONS + 1));
    let operations = input.take(count as usize * OPERATION_BYTES);
    let dir = PrivateDir::fresh();
    let path = dir.write("image.qcow2", input.rest());
    // An image may keep its data in a file of its own (data_file): one is there to be found.
    dir.write("data.raw", &[0x5a; 64 << 10]);
    let writable = flags & 2 != 0;
    // The image and its data file may change when writable; nothing else may, and nothing may appear.
    let may_change: &[&str] = if writable { &["image.qcow2", "data.raw"] } else { &[] };
    let before = dir.snapshot(may_change);
    if let Some(image) = open(&path, writable, flags & 4 != 0, flags) {
        let mut driver = Driver::default();
        let mut operations = Input::new(operations);
        for fill in 0..count {
            if let Some(operation) = Operation::next(&mut operations, &*image) {
                driver.run(&*image, operation, fill);
            }
        }
    }
    let after = dir.snapshot(may_change);
    assert!(after == before, "a file changed or appeared: {:?}", after.keys().collect::<Vec<_>>());
});

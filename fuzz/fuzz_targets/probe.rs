//! The format probe and the qcow2 header fields checked before imago
//! opens an image: any first bytes, any file size.
#![no_main]

use fuse_export_core::image::probe::{is_qcow2, parse_qcow2_header, PROBE_BYTES};
use fuse_export_fuzz::Input;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let file_size = input.u64();
    let first = input.rest();
    let first = &first[..first.len().min(PROBE_BYTES)];
    match parse_qcow2_header(first) {
        Ok(header) => {
            assert!(is_qcow2(first));
            assert!(
                header.backing_file.as_ref().is_none_or(|name| name.len() <= 3 * 1023),
                "a name from at most 1023 bytes"
            );
            let _ = header.table_past_end(file_size);
        }
        Err(problem) => assert!(!problem.is_empty()),
    }
});

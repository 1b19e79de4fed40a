//! The format probes and the qcow2 header fields checked before imago
//! opens an image: any first bytes, any file size, a name ending in ".dmg"
//! or not.
#![no_main]

use fuse_export_core::image::probe::{
    has_vhd_footer, is_qcow2, parse_qcow2_header, probe_format, PROBE_BYTES, QEMU_FORMATS, QEMU_PROBE_BYTES,
};
use fuse_export_fuzz::Input;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let file_size = input.u64();
    let rest = input.rest();
    let first = &rest[..rest.len().min(PROBE_BYTES)];
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
    // The file size's low bit picks the name: dmg is known by its name alone.
    let name = if file_size & 1 == 0 { "disk.img" } else { "disk.dmg" };
    let format = probe_format(rest, name);
    assert!(format.is_none_or(|format| format != "raw" && QEMU_FORMATS.contains(&format)), "{format:?}");
    // Only the first QEMU_PROBE_BYTES count, and a short file is as if zeroes followed.
    let head = &rest[..rest.len().min(QEMU_PROBE_BYTES)];
    assert_eq!(probe_format(head, name), format);
    if !head.is_empty() {
        let mut padded = head.to_vec();
        padded.resize(QEMU_PROBE_BYTES, 0);
        assert_eq!(probe_format(&padded, name), format);
    }
    if is_qcow2(rest) {
        assert!(format.is_some(), "a qcow2 image is never raw");
    }
    let _ = has_vhd_footer(rest);
});

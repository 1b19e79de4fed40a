//! Arbitrary bytes from the kernel never crash the export: every input is
//! decoded into a request, answered with EINVAL, or refused as a broken
//! stream — and whatever decodes is handled without a panic.

use fuse_export_core::export::{Event, Export, ExportSettings, Step};
use fuse_export_core::image::{CacheMode, Image, ImageOptions};
use fuse_export_core::protocol::abi::{opcode, InHeader, UringReqHeader, IN_HEADER_SIZE};
use fuse_export_core::protocol::request::{decode_message, decode_ring_entry};
use fuse_export_core::protocol::Malformed;
use proptest::prelude::*;
use std::sync::{Arc, Mutex};
use vm_memory::ByteValued;

fn export_on_scratch_image() -> (Export, Arc<Mutex<Vec<Event>>>, std::path::PathBuf) {
    let path = std::env::temp_dir().join(format!("fuse-export-fuzz-{}-{:?}", std::process::id(), std::thread::current().id()));
    std::fs::write(&path, vec![7u8; 64 << 10]).unwrap();
    let options = ImageOptions { path: path.clone(), writable: true, growable: false, cache: CacheMode::Writeback };
    let (image, _) = Image::open(&options).unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let settings = ExportSettings { allow_other: false, ring_wanted: false, uid: 0, gid: 0, faults: Default::default(), threads: 1 };
    let export = Export::new(image, settings, Box::new(move |e| sink.lock().unwrap().push(e)));
    (export, events, path)
}

/// A message with a valid header for `opcode` and arbitrary arguments.
fn message(opcode: u32, args: &[u8]) -> Vec<u8> {
    let header = InHeader { len: (IN_HEADER_SIZE + args.len()) as u32, opcode, unique: 1, nodeid: 1, ..Default::default() };
    let mut bytes = header.as_slice().to_vec();
    bytes.extend_from_slice(args);
    bytes
}

const OPCODES: &[u32] = &[
    opcode::INIT, opcode::LOOKUP, opcode::GETATTR, opcode::SETATTR, opcode::OPEN, opcode::READ, opcode::WRITE,
    opcode::RELEASE, opcode::FSYNC, opcode::FLUSH, opcode::FALLOCATE, opcode::LSEEK, opcode::FORGET,
    opcode::INTERRUPT, opcode::BATCH_FORGET, 52, 9999,
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_message(&bytes);
    }

    #[test]
    fn arbitrary_ring_headers_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 288)) {
        let mut header = UringReqHeader::default();
        header.as_mut_slice().copy_from_slice(&bytes);
        let _ = decode_ring_entry(&header);
    }

    #[test]
    fn decoded_requests_are_answered_without_panic(
        index in 0..OPCODES.len(),
        args in proptest::collection::vec(any::<u8>(), 0..160),
    ) {
        let (export, _events, path) = export_on_scratch_image();
        match decode_message(&message(OPCODES[index], &args)) {
            Ok(request) => match export.handle(&request) {
                Step::Reply(reply) => prop_assert!(reply.errno() >= 0 && reply.errno() < 4096),
                Step::Io(io) => prop_assert!(io.len <= (1 << 20) || OPCODES[index] == opcode::FALLOCATE),
                Step::NoReply => {}
            },
            Err(Malformed::Arguments { unique }) => prop_assert_eq!(unique, 1),
            Err(Malformed::Header) => prop_assert!(false, "a consistent header was refused"),
        }
        std::fs::remove_file(path).unwrap();
    }
}

#[test]
fn a_second_init_halts_the_export() {
    let (export, events, path) = export_on_scratch_image();
    let mut init = vec![0u8; 64];
    init[0..4].copy_from_slice(&7u32.to_ne_bytes());
    init[4..8].copy_from_slice(&45u32.to_ne_bytes());
    let request = decode_message(&message(opcode::INIT, &init)).unwrap();
    assert!(matches!(export.handle(&request), Step::Reply(r) if r.errno() == 0));
    assert!(!export.is_halted());
    assert!(matches!(export.handle(&request), Step::Reply(r) if r.errno() == libc::EPROTO));
    assert!(export.is_halted());
    assert!(matches!(&events.lock().unwrap()[..], [Event::Halted(reason)] if reason.contains("second INIT")));
    std::fs::remove_file(path).unwrap();
}

#[test]
fn a_broken_header_halts_and_arguments_that_do_not_add_up_get_einval() {
    let (export, _events, path) = export_on_scratch_image();
    assert_eq!(export.malformed(Malformed::Arguments { unique: 5 }).map(|(u, r)| (u, r.errno())), Some((5, libc::EINVAL)));
    assert!(!export.is_halted());
    assert!(export.malformed(Malformed::Header).is_none());
    assert!(export.is_halted());
    std::fs::remove_file(path).unwrap();
}

//! Arbitrary bytes from the kernel never crash the export: every input is
//! decoded into a request, answered with EINVAL, or refused as a broken
//! stream — and whatever decodes is handled without a panic.

use fuse_export_core::image::{self, CacheMode, FormatChoice, ImageIo, ImageOptions};
use fuse_export_core::protocol::abi::{opcode, InHeader, UringReqHeader, IN_HEADER_SIZE};
use fuse_export_core::protocol::request::{decode_message, decode_ring_entry};
use fuse_export_core::protocol::{Malformed, Reply, Request};
use fuse_export_core::request::{Carrier, Outcome, RequestCore, Settings, Via};
use fuse_export_core::runtime::buffer::AlignedBuffer;
use fuse_export_core::runtime::ring::Ring;
use fuse_export_core::runtime::token::Token;
use fuse_export_core::status::{Event, Status};
use proptest::prelude::*;
use std::sync::{Arc, Mutex};
use vm_memory::ByteValued;

/// A request core on a scratch image, with the ring and the payload buffer
/// a transport would lend it.
struct Harness {
    core: RequestCore,
    events: Arc<Mutex<Vec<Event>>>,
    path: std::path::PathBuf,
    ring: Ring,
    buffer: AlignedBuffer,
    io: Option<ImageIo>,
}

impl Harness {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!(
            "fuse-export-fuzz-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&path, vec![7u8; 64 << 10]).unwrap();
        let options = ImageOptions {
            path: path.clone(),
            writable: true,
            growable: false,
            cache: CacheMode::Writeback,
            format: FormatChoice::Raw,
            ..Default::default()
        };
        let (image, _) = image::open(&options).unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let status = Arc::new(Status::new(Box::new(move |e| sink.lock().unwrap().push(e))));
        let settings = Settings {
            allow_other: false,
            ring_wanted: false,
            passthrough: None,
            uid: 0,
            gid: 0,
            faults: Default::default(),
            threads: 1,
        };
        let core = RequestCore::new(image, settings, status);
        let ring = Ring::new(64).unwrap();
        Self { core, events, path, ring, buffer: AlignedBuffer::zeroed((1 << 20) + 4096), io: None }
    }

    fn begin(&mut self, decoded: Result<Request, Malformed>) -> Option<(u64, Outcome)> {
        let Self { core, ring, buffer, io, .. } = self;
        core.begin(decoded, Via::Legacy, carrier(ring, buffer, io))
    }

    /// Feeds the ring's completions back to the core until the request
    /// that went `Pending` is answered, as a transport does, so that no SQE
    /// is left pointing at the buffer when the harness goes.
    fn finish(&mut self) -> Outcome {
        let Self { core, ring, buffer, io, .. } = self;
        let mut completions = Vec::new();
        loop {
            ring.submit(1);
            ring.reap(&mut completions);
            for completion in completions.clone() {
                match core.resume(completion.result, carrier(ring, buffer, io)) {
                    Outcome::Pending => {}
                    answered => return answered,
                }
            }
        }
    }
}

/// What a transport lends a request: its ring, token and payload buffer.
fn carrier<'a>(ring: &'a mut Ring, buffer: &AlignedBuffer, io: &'a mut Option<ImageIo>) -> Carrier<'a> {
    Carrier { ring, token: Token::new(3, 0, 0), buffer: buffer.as_ptr(), io }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The errno a reply carries (0 for success), as the kernel reads it.
fn errno(reply: &Reply) -> i32 {
    -reply.out_header(1).error
}

/// A message with a valid header for `opcode` and arbitrary arguments.
fn message(opcode: u32, args: &[u8]) -> Vec<u8> {
    let header =
        InHeader { len: (IN_HEADER_SIZE + args.len()) as u32, opcode, unique: 1, nodeid: 1, ..Default::default() };
    let mut bytes = header.as_slice().to_vec();
    bytes.extend_from_slice(args);
    bytes
}

const OPCODES: &[u32] = &[
    opcode::INIT,
    opcode::LOOKUP,
    opcode::GETATTR,
    opcode::SETATTR,
    opcode::OPEN,
    opcode::READ,
    opcode::WRITE,
    opcode::RELEASE,
    opcode::FSYNC,
    opcode::FLUSH,
    opcode::FALLOCATE,
    opcode::LSEEK,
    opcode::FORGET,
    opcode::INTERRUPT,
    opcode::BATCH_FORGET,
    52,
    9999,
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
        let mut harness = Harness::new();
        match decode_message(&message(OPCODES[index], &args)) {
            Ok(request) => match harness.begin(Ok(request)) {
                Some((_, Outcome::Reply(reply))) => prop_assert!((0..4096).contains(&errno(&reply))),
                Some((_, Outcome::Pending)) => {
                    let io = harness.io.unwrap();
                    prop_assert!(io.len <= (1 << 20) || OPCODES[index] == opcode::FALLOCATE);
                    match harness.finish() {
                        Outcome::Reply(reply) => prop_assert!((0..4096).contains(&errno(&reply))),
                        other => prop_assert!(false, "image I/O ended without a reply: {other:?}"),
                    }
                }
                Some((_, Outcome::NoReply)) => {}
                None => prop_assert!(false, "a decoded request went unanswered"),
            },
            Err(Malformed::Arguments { unique }) => prop_assert_eq!(unique, 1),
            Err(Malformed::Header) => prop_assert!(false, "a consistent header was refused"),
        }
    }
}

fn reply_errno(outcome: Option<(u64, Outcome)>) -> Option<(u64, i32)> {
    match outcome? {
        (unique, Outcome::Reply(reply)) => Some((unique, errno(&reply))),
        _ => None,
    }
}

#[test]
fn a_second_init_halts_the_export() {
    let mut harness = Harness::new();
    let mut init = vec![0u8; 64];
    init[0..4].copy_from_slice(&7u32.to_ne_bytes());
    init[4..8].copy_from_slice(&45u32.to_ne_bytes());
    let request = decode_message(&message(opcode::INIT, &init));
    assert_eq!(reply_errno(harness.begin(request)), Some((1, 0)));
    assert!(!harness.core.status.is_halted());
    assert_eq!(reply_errno(harness.begin(request)), Some((1, libc::EPROTO)));
    assert!(harness.core.status.is_halted());
    assert!(matches!(&harness.events.lock().unwrap()[..], [Event::Halted(reason)] if reason.contains("second INIT")));
}

#[test]
fn a_broken_header_halts_and_arguments_that_do_not_add_up_get_einval() {
    let mut harness = Harness::new();
    assert_eq!(reply_errno(harness.begin(Err(Malformed::Arguments { unique: 5 }))), Some((5, libc::EINVAL)));
    assert!(!harness.core.status.is_halted());
    assert!(harness.begin(Err(Malformed::Header)).is_none());
    assert!(harness.core.status.is_halted());
}

//! Our image backend driven the way the request core drives it, without a
//! mount: `image::open`, then each operation submitted with a ring and its
//! completions (ring transfers, workers' posts) fed back until it ends.
//! Operations come from the fuzzer's bytes, clamped as the request core
//! clamps them (`request/operations.rs`), so that every one is a request
//! the kernel could send.

use crate::Input;
use fuse_export_core::image::{
    self, CacheMode, FormatChoice, ImageBackend, ImageIo, ImageOp, ImageOptions, IoContext, Seek,
};
use fuse_export_core::protocol::abi::MAX_WRITE;
use fuse_export_core::runtime::buffer::AlignedBuffer;
use fuse_export_core::runtime::ring::Ring;
use fuse_export_core::runtime::token::Token;
use std::path::Path;
use std::sync::Arc;
use std::task::Poll;

/// Waits for a completion one operation may take before it counts as never ending
/// (a 1 MiB request over 512-byte clusters takes a few thousand at most).
const MAX_COMPLETIONS: usize = 100_000;

/// How far past its size a growable image may be asked to grow: the
/// growth a user asks for is not the image's doing, and an exabyte
/// offset would only measure imago's L1 table.
const MAX_GROWTH: u64 = 16 << 20;

/// The longest discard or zero range asked: their work grows with the
/// length the user asks for (zeroing a whole disk of 512-byte clusters is
/// millions of cluster updates, in QEMU too), which says nothing of the image.
const MAX_SPAN: u64 = 16 << 20;

/// Opens `path` as `--format auto` does, with the cache mode and access
/// the flags byte picks; `None` when it is refused (a fine answer).
pub fn open(path: &Path, writable: bool, growable: bool, flags: u8) -> Option<Arc<dyn ImageBackend>> {
    let options = ImageOptions {
        path: path.to_path_buf(),
        writable,
        growable: writable && growable,
        cache: if flags & 1 == 0 { CacheMode::Direct } else { CacheMode::Writeback },
        format: FormatChoice::Auto,
        ..Default::default()
    };
    match image::open(&options) {
        Ok((image, _warnings)) => Some(image),
        Err(refused) => {
            // To see what the seeds reach: FUSE_EXPORT_FUZZ_VERBOSE=1 target input...
            if std::env::var_os("FUSE_EXPORT_FUZZ_VERBOSE").is_some() {
                eprintln!("refused: {refused}");
            }
            None
        }
    }
}

/// One request as the request core would hand it to the backend.
#[derive(Debug, Clone, Copy)]
pub enum Operation {
    Io(ImageIo),
    Seek(u64, Seek),
}

impl Operation {
    /// The next operation the fuzzer's bytes ask of `image`, or `None`
    /// where the request core would answer without the backend.
    pub fn next(input: &mut Input, image: &dyn ImageBackend) -> Option<Operation> {
        let (kind, raw_offset, raw_len) = (input.u8(), input.u64(), input.u64());
        let size = image.size();
        // Mostly near the disk, sometimes anywhere a file offset can be.
        let offset =
            if raw_offset >> 63 == 0 { raw_offset % (size + MAX_GROWTH) } else { raw_offset & (i64::MAX as u64) };
        let fixed_end = |len: u64| len.min(size.saturating_sub(offset));
        let growth_end = |len: u64| {
            let limit = if image.growable() { size + MAX_GROWTH } else { size };
            len.min(limit.saturating_sub(offset))
        };
        let io = |op, len| (len > 0).then_some(Operation::Io(ImageIo::new(op, offset, len)));
        let request_len = raw_len % (u64::from(MAX_WRITE) + 1);
        let span = raw_len % (MAX_SPAN + 1);
        match kind % 8 {
            0 | 1 => io(ImageOp::Read, fixed_end(request_len)),
            2 => Some(Operation::Seek(offset, if kind & 8 == 0 { Seek::Data } else { Seek::Hole })),
            3 => Some(Operation::Io(ImageIo::new(ImageOp::Flush, 0, 0))),
            _ if !image.writable() => None,
            4 => io(ImageOp::Write, growth_end(request_len)),
            5 => io(ImageOp::Discard, fixed_end(span)),
            // FALLOC_FL_ZERO_RANGE with FALLOC_FL_KEEP_SIZE, or without it.
            6 if kind & 8 == 0 => io(ImageOp::WriteZeroes, fixed_end(span)),
            6 => io(ImageOp::WriteZeroes, growth_end(span)),
            _ if offset < size => None,
            _ => io(ImageOp::Allocate, growth_end(span)),
        }
    }
}

/// Runs operations on one image with one ring.
pub struct Driver {
    ring: Ring,
    completions: Vec<fuse_export_core::runtime::ring::Completion>,
}

impl Default for Driver {
    fn default() -> Self {
        Self { ring: Ring::new(16).expect("an io_uring"), completions: Vec::new() }
    }
}

impl Driver {
    /// Runs `operation` to its end and checks what the request core relies
    /// on: a transfer is whole or an error; a seek lands between `offset`
    /// and the end. `fill` is the byte a write's data is made of.
    pub fn run(&mut self, image: &dyn ImageBackend, operation: Operation, fill: u8) {
        match operation {
            Operation::Io(io) => self.transfer(image, io, fill),
            Operation::Seek(offset, what) => {
                if let Ok(found) = image.seek(offset, what) {
                    assert!(found >= offset && found <= image.size(), "{what:?} from {offset} found {found}");
                }
            }
        }
    }

    fn transfer(&mut self, image: &dyn ImageBackend, mut io: ImageIo, fill: u8) {
        // Like a request's payload buffer: data only for reads and writes
        // (at most MAX_WRITE); discards and zeroes of any length carry none.
        let data_len = if matches!(io.op, ImageOp::Read | ImageOp::Write) { io.len as usize } else { 0 };
        let buffer = AlignedBuffer::new(data_len.max(4096));
        // SAFETY: the buffer holds at least `data_len` bytes.
        unsafe { std::ptr::write_bytes(buffer.as_ptr(), fill, data_len) };
        let token = Token::new(3, 0, 1);
        let ring = &mut self.ring;
        let mut outcome = image.submit(&mut io, IoContext { ring, token, buffer: buffer.as_ptr() });
        let mut completions = 0;
        let result = loop {
            if let Poll::Ready(result) = outcome {
                break result;
            }
            completions += 1;
            assert!(completions < MAX_COMPLETIONS, "{io:?} never ends");
            // A wait may end before the completion is there (io_uring_enter: EBUSY).
            ring.submit(1);
            ring.reap(&mut self.completions);
            let [completion] = self.completions[..] else {
                assert!(self.completions.is_empty(), "{io:?}: one operation in flight, one completion at a time");
                continue;
            };
            let result = completion.result;
            outcome = image.complete(&mut io, result, IoContext { ring, token, buffer: buffer.as_ptr() });
        };
        let whole = match io.op {
            ImageOp::Read | ImageOp::Write => io.len as i32,
            _ => 0,
        };
        assert!(result == whole || result < 0, "{io:?} gave {result}");
    }
}

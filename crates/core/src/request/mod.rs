//! The request core: what each request means (the behaviour contract),
//! shared by both transports. A transport hands in a decoded request and a
//! `Carrier` (its ring, its token, the request's payload buffer); the core
//! answers at once, or starts image I/O on the backend and answers when it
//! completes. Requests flow one way: transport → here → image backend.

pub mod attributes;
mod bounded;
pub mod counters;
pub mod init;
mod operations;
pub mod passthrough;

use crate::faults::Faults;
use crate::image::{ImageBackend, ImageIo, ImageOp, IoContext};
use crate::latch::Latch;
use crate::os_error::describe_errno;
use crate::protocol::abi::WriteOut;
use crate::protocol::{Malformed, Reply, Request};
use crate::runtime::control::Phase;
use crate::runtime::ring::Ring;
use crate::runtime::token::Token;
use crate::status::Status;
use attributes::Attributes;
use bounded::Bounded;
use counters::{Counters, OpClass};
use init::Negotiated;
use passthrough::Passthrough;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::Poll;

/// What the transport does next for a request.
#[derive(Debug)]
pub enum Outcome {
    Reply(Reply),
    /// FORGET, INTERRUPT: the kernel expects no answer.
    NoReply,
    /// Image I/O is under way; its completion comes back on the carrier's
    /// token and goes to `RequestCore::resume`.
    Pending,
}

/// What a transport does with a request that arrived, in the present phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// `RequestCore::begin`.
    Serve,
    /// Kept by the transport and admitted again when the phase changes.
    Hold,
    /// `RequestCore::refuse`: EIO.
    Refuse,
}

/// Which transport carried a request, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Legacy,
    Ring,
}

/// What a request's image I/O needs from the transport that carries it.
pub struct Carrier<'a> {
    pub ring: &'a mut Ring,
    /// Completions of the request's image I/O come back with this token.
    pub token: Token,
    /// The request's payload buffer (WRITE data arrived here; READ data goes
    /// here), page-aligned, large enough for the largest request.
    pub buffer: *mut u8,
    /// The operation in progress, kept by the transport's slot.
    pub io: &'a mut Option<ImageIo>,
}

pub struct Settings {
    pub allow_other: bool,
    pub ring_wanted: bool,
    /// Present when passthrough is wanted and the backend allows it.
    pub passthrough: Option<Passthrough>,
    pub uid: u32,
    pub gid: u32,
    pub faults: Faults,
    /// I/O threads: each counts in a shard of its own.
    pub threads: usize,
}

pub struct RequestCore {
    image: Arc<dyn ImageBackend>,
    attributes: Attributes,
    ring_wanted: bool,
    passthrough: Option<Passthrough>,
    faults: Faults,
    pub counters: Counters,
    pub status: Arc<Status>,
    /// Set when INIT was answered; a second INIT is a protocol violation.
    pub init: Latch<Negotiated>,
    /// Set once INIT's reply was written, so the kernel processed it: ring
    /// entries may register and the image may be registered for passthrough.
    pub init_replied: Latch<()>,
    /// (warning, errno) pairs reported already.
    reported: Mutex<Vec<(&'static str, i32)>>,
    /// SEEK_DATA / SEEK_HOLE, asked with a deadline.
    seeks: Bounded,
}

impl RequestCore {
    pub fn new(image: Arc<dyn ImageBackend>, settings: Settings, status: Arc<Status>) -> Self {
        let attributes = Attributes::new(&*image, settings.allow_other, settings.uid, settings.gid);
        Self {
            image,
            attributes,
            ring_wanted: settings.ring_wanted,
            passthrough: settings.passthrough,
            faults: settings.faults,
            counters: Counters::new(settings.threads),
            status,
            init: Latch::default(),
            init_replied: Latch::default(),
            reported: Mutex::new(Vec::new()),
            seeks: Bounded::default(),
        }
    }

    pub fn image(&self) -> &dyn ImageBackend {
        &*self.image
    }

    pub fn negotiated(&self) -> Option<Negotiated> {
        self.init.get()
    }

    /// The backing id OPEN hands out when the kernel serves the data
    /// itself: passthrough wanted, negotiated, and the image registered.
    pub fn passthrough_backing(&self) -> Option<Result<u32, String>> {
        let passthrough = self.passthrough.as_ref()?;
        self.negotiated()?.passthrough().then(|| passthrough.backing_id())
    }

    /// Whether a request that arrived is served, held or refused now. A drain
    /// holds only what moves the image's data, so that a `stat`, `df`,
    /// `close()` or `fsync()` during a stop is answered at once; once
    /// unmounted, what moves data fails, held or new, so that nobody keeps
    /// the detached mount alive waiting; a halted export answers everything
    /// at once (EIO, `begin`).
    pub fn admission(&self, decoded: &Result<Request, Malformed>, phase: Phase) -> Admission {
        // Running (every request but those of a stop) serves, halted or not.
        if phase == Phase::Running || self.status.is_halted() {
            return Admission::Serve;
        }
        let moves_data = decoded.as_ref().is_ok_and(|request| request.operation.moves_data());
        match phase {
            Phase::Paused if moves_data => Admission::Hold,
            Phase::Detached if moves_data => Admission::Refuse,
            Phase::Stopping => Admission::Refuse,
            Phase::Running | Phase::Paused | Phase::Detached => Admission::Serve,
        }
    }

    /// A request that just arrived. Returns its `unique` and what to do, or
    /// None when it cannot even be answered (a broken header: the export
    /// halted).
    pub fn begin(&self, decoded: Result<Request, Malformed>, via: Via, carrier: Carrier) -> Option<(u64, Outcome)> {
        let request = match decoded {
            Ok(request) => request,
            Err(malformed) => {
                let (unique, reply) = self.malformed(malformed)?;
                self.counters.local().request_started(via);
                return Some((unique, Outcome::Reply(reply)));
            }
        };
        self.counters.local().request_started(via);
        let outcome = if self.status.is_halted() { Self::failed(&request) } else { self.handle(&request, carrier) };
        Some((request.header.unique, outcome))
    }

    /// A request that is not served (stopping, detached, halted): EIO, as
    /// the kernel would answer at unmount.
    pub fn refuse(&self, decoded: Result<Request, Malformed>, via: Via) -> Option<(u64, Outcome)> {
        let request = decoded.ok()?;
        self.counters.local().request_started(via);
        Some((request.header.unique, Self::failed(&request)))
    }

    fn failed(request: &Request) -> Outcome {
        if request.operation.expects_reply() {
            Outcome::Reply(Reply::error(libc::EIO))
        } else {
            Outcome::NoReply
        }
    }

    /// A completion arrived on the carrier's token.
    pub fn resume(&self, result: i32, carrier: Carrier) -> Outcome {
        let Some(mut io) = carrier.io.take() else { return Outcome::NoReply };
        let context = IoContext { ring: carrier.ring, token: carrier.token, buffer: carrier.buffer };
        match self.image.complete(&mut io, result, context) {
            Poll::Ready(result) => Outcome::Reply(self.finish(&io, result)),
            Poll::Pending => {
                *carrier.io = Some(io);
                Outcome::Pending
            }
        }
    }

    /// Starts a request's image I/O; replies at once when the backend did it
    /// inline.
    fn start(&self, mut io: ImageIo, carrier: Carrier) -> Outcome {
        let context = IoContext { ring: carrier.ring, token: carrier.token, buffer: carrier.buffer };
        match self.image.submit(&mut io, context) {
            Poll::Ready(result) => Outcome::Reply(self.finish(&io, result)),
            Poll::Pending => {
                *carrier.io = Some(io);
                Outcome::Pending
            }
        }
    }

    /// The reply to a finished image operation. Once halted every answer is
    /// EIO, even for work that was in flight and succeeded: the export
    /// cannot be trusted any more.
    fn finish(&self, io: &ImageIo, result: i32) -> Reply {
        if self.status.is_halted() {
            return Reply::error(libc::EIO);
        }
        let result = if self.faults.fails(io.offset, io.len) { -libc::EIO } else { result };
        self.counters.local().latency(OpClass::of(io.op), io.started.elapsed());
        if result < 0 {
            self.image_error(io, -result);
            return Reply::error(-result);
        }
        let shard = self.counters.local();
        match io.op {
            ImageOp::Read => {
                shard.bytes_read.fetch_add(result as u64, Ordering::Relaxed);
                Reply::with_data(result as u32)
            }
            ImageOp::Write => {
                shard.bytes_written.fetch_add(result as u64, Ordering::Relaxed);
                Reply::with_args(&WriteOut { size: result as u32, padding: 0 })
            }
            ImageOp::Flush | ImageOp::Discard | ImageOp::WriteZeroes | ImageOp::Allocate => Reply::ok(),
        }
    }

    /// Counts a failed image operation; the first failure of each errno is
    /// also reported (a dying disk must not flood the log).
    fn image_error(&self, io: &ImageIo, errno: i32) {
        self.report_once("image-error", errno, || {
            let reason = self.image.failure_reason(io).map(|r| format!(" ({r})")).unwrap_or_default();
            format!(
                "Image {} failed at offset {} (length {}): {}{reason}; the request gets that error, \
                 and further errno {errno} failures are counted, not logged",
                io.op.name(),
                io.offset,
                io.len,
                describe_errno(errno)
            )
        });
    }

    /// The kernel refused a reply (other than for an interrupted request):
    /// the caller never got its answer. Counted; the first of each errno is
    /// reported.
    pub fn reply_failed(&self, errno: i32) {
        self.report_once("reply-error", errno, || {
            format!(
                "Writing a reply to /dev/fuse failed: {}; further errno {errno} failures are counted, not logged",
                describe_errno(errno)
            )
        });
    }

    fn report_once(&self, kind: &'static str, errno: i32, message: impl FnOnce() -> String) {
        self.counters.local().errors.fetch_add(1, Ordering::Relaxed);
        let mut seen = self.reported.lock().unwrap();
        if seen.contains(&(kind, errno)) {
            return;
        }
        seen.push((kind, errno));
        drop(seen);
        self.status.warn(kind, message());
    }

    /// A request that could not be decoded. `Some(reply)` when it can still
    /// be answered, `None` when the stream cannot be trusted (halted).
    fn malformed(&self, malformed: Malformed) -> Option<(u64, Reply)> {
        self.counters.local().errors.fetch_add(1, Ordering::Relaxed);
        match malformed {
            Malformed::Arguments { unique } => Some((unique, Reply::error(libc::EINVAL))),
            Malformed::Header => {
                self.status.halt("malformed request header from the kernel: the request stream cannot be trusted");
                None
            }
        }
    }
}

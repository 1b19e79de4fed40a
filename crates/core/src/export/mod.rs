//! What a request does to the image: the behaviour contract, shared by both
//! transports. Requests come in decoded; image I/O goes out as `ImageIo`
//! for the transport to put on its ring; replies come back as `Reply`.

pub mod attributes;
pub mod counters;
pub mod init;
pub mod io;

use crate::faults::Faults;
use crate::image::Image;
use crate::protocol::abi::*;
use crate::protocol::{Malformed, Operation, Reply, Request};
use attributes::Attributes;
use counters::Counters;
use crate::latch::Latch;
use init::Negotiated;
use io::{ImageIo, IoKind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Something JavaScript must hear about; never a single request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The kernel connection ended: unmounted (from outside, or by us once
    /// the last user closed the file), or aborted.
    Disconnected,
    /// A fatal error: no more requests are taken.
    Halted(String),
    /// Something the user should know that does not stop the export;
    /// `kind` names it for scripts.
    Warning { kind: &'static str, message: String },
}

pub type EventSink = Box<dyn Fn(Event) + Send + Sync>;

/// The next thing a transport does for a request.
#[derive(Debug)]
pub enum Step {
    Reply(Reply),
    Io(ImageIo),
    /// FORGET, INTERRUPT: the kernel expects no answer.
    NoReply,
}

pub struct ExportSettings {
    pub allow_other: bool,
    pub ring_wanted: bool,
    pub uid: u32,
    pub gid: u32,
    /// Test-only fault injection.
    pub faults: Faults,
    /// I/O threads: each counts in a shard of its own.
    pub threads: usize,
}

pub struct Export {
    image: Image,
    attributes: Attributes,
    ring_wanted: bool,
    faults: Faults,
    pub counters: Counters,
    /// Set when INIT was answered; a second INIT is a protocol violation.
    pub init: Latch<Negotiated>,
    halted: AtomicBool,
    unmounted: AtomicBool,
    halt_reason: Mutex<Option<String>>,
    reported_errnos: Mutex<Vec<i32>>,
    events: EventSink,
}

const FALLOC_FL_KEEP_SIZE: i32 = 0x01;
const FALLOC_FL_PUNCH_HOLE: i32 = 0x02;
const FALLOC_FL_ZERO_RANGE: i32 = 0x10;

impl Export {
    pub fn new(image: Image, settings: ExportSettings, events: EventSink) -> Self {
        let attributes = Attributes::new(&image, settings.allow_other, settings.uid, settings.gid);
        Self {
            image,
            attributes,
            ring_wanted: settings.ring_wanted,
            faults: settings.faults,
            counters: Counters::new(settings.threads),
            init: Latch::default(),
            halted: AtomicBool::new(false),
            unmounted: AtomicBool::new(false),
            halt_reason: Mutex::new(None),
            reported_errnos: Mutex::new(Vec::new()),
            events,
        }
    }

    pub fn image(&self) -> &Image {
        &self.image
    }

    pub fn is_halted(&self) -> bool {
        self.halted.load(Ordering::Acquire)
    }

    pub fn halt_reason(&self) -> Option<String> {
        self.halt_reason.lock().unwrap().clone()
    }

    /// Stops taking requests for good and tells JavaScript why. Only the
    /// first reason is kept.
    pub fn halt(&self, reason: impl Into<String>) {
        if self.halted.swap(true, Ordering::AcqRel) {
            return;
        }
        let reason = reason.into();
        *self.halt_reason.lock().unwrap() = Some(reason.clone());
        (self.events)(Event::Halted(reason));
    }

    pub fn warn(&self, kind: &'static str, message: impl Into<String>) {
        (self.events)(Event::Warning { kind, message: message.into() });
    }

    /// Counts a failed image operation; the first failure of each errno is
    /// also reported (a dying disk must not flood the log).
    fn image_error(&self, io: &ImageIo, errno: i32) {
        self.counters.local().errors.fetch_add(1, Ordering::Relaxed);
        let mut seen = self.reported_errnos.lock().unwrap();
        if seen.contains(&errno) {
            return;
        }
        seen.push(errno);
        drop(seen);
        let what = crate::image::describe(&std::io::Error::from_raw_os_error(errno));
        self.warn(
            "image-error",
            format!(
                "Image {} failed at offset {} (length {}): {what}; the request gets that error, \
                 and further errno {errno} failures are counted, not logged",
                io.kind.name(),
                io.offset,
                io.len
            ),
        );
    }

    /// The connection is gone; reported once however many threads see it.
    pub fn connection_lost(&self) {
        if !self.unmounted.swap(true, Ordering::AcqRel) {
            (self.events)(Event::Disconnected);
        }
    }

    pub fn connection_is_lost(&self) -> bool {
        self.unmounted.load(Ordering::Acquire)
    }

    /// A request that could not be decoded. `Some(reply)` when it can still
    /// be answered, `None` when the stream cannot be trusted (halted).
    pub fn malformed(&self, malformed: Malformed) -> Option<(u64, Reply)> {
        self.counters.local().errors.fetch_add(1, Ordering::Relaxed);
        match malformed {
            Malformed::Arguments { unique } => Some((unique, Reply::error(libc::EINVAL))),
            Malformed::Header => {
                self.halt("malformed request header from the kernel: the request stream cannot be trusted");
                None
            }
        }
    }

    /// The first step of a request.
    pub fn handle(&self, request: &Request) -> Step {
        if let Some(limit) = self.faults.halt_after_requests {
            let seen = self.counters.snapshot();
            if seen.legacy_requests + seen.ring_requests > limit {
                self.halt(format!("injected transport fault after {limit} requests"));
                return Step::Reply(Reply::error(libc::EIO));
            }
        }
        let reply = match request.operation {
            Operation::Init { arg, flags } => self.init(&arg, flags),
            Operation::Lookup => Reply::error(libc::ENOENT),
            Operation::Getattr => Reply::with_args(&self.attributes.attr_out(&self.image)),
            Operation::Setattr(set) => self.setattr(&set),
            Operation::Open(open) => self.open(&open),
            Operation::Read(read) => return self.read(&read),
            Operation::Write(write) => return self.write(&write),
            Operation::Release => Reply::ok(),
            Operation::Flush | Operation::Fsync(_) => return Step::Io(ImageIo::new(IoKind::Sync, 0, 0)),
            Operation::Fallocate(fallocate) => return self.fallocate(&fallocate),
            Operation::Lseek(lseek) => self.lseek(&lseek),
            Operation::Forget | Operation::Interrupt => return Step::NoReply,
            Operation::Destroy => Reply::ok(),
            Operation::Unsupported(_) => Reply::error(libc::ENOSYS),
        };
        Step::Reply(reply)
    }

    /// A completion of a request's image I/O: the reply, or the rest of a
    /// short transfer.
    pub fn complete(&self, io: &mut ImageIo, result: i32) -> Step {
        let result = if self.faults.fails(io.offset, io.len) { -libc::EIO } else { result };
        if !io.advance(result) {
            return Step::Io(*io);
        }
        if result < 0 && io.done == 0 {
            self.image_error(io, -result);
            return Step::Reply(Reply::error(-result));
        }
        let reply = match io.kind {
            IoKind::Read => {
                self.counters.local().bytes_read.fetch_add(io.done, Ordering::Relaxed);
                Reply::with_data(io.done as u32)
            }
            IoKind::Write => {
                self.counters.local().bytes_written.fetch_add(io.done, Ordering::Relaxed);
                self.image.grew_to(io.offset + io.done);
                Reply::with_args(&WriteOut { size: io.done as u32, padding: 0 })
            }
            IoKind::Sync => Reply::ok(),
            IoKind::Fallocate { mode } => {
                if mode & FALLOC_FL_KEEP_SIZE == 0 {
                    self.image.grew_to(io.offset.saturating_add(io.len));
                }
                Reply::ok()
            }
        };
        Step::Reply(reply)
    }

    fn init(&self, arg: &InitIn, offered: u64) -> Reply {
        match init::negotiate(arg, offered, self.ring_wanted) {
            Err(errno) => {
                self.halt(format!("the kernel speaks FUSE {}.{}, which this export does not", arg.major, arg.minor));
                Reply::error(errno)
            }
            Ok((out, negotiated)) => {
                if !self.init.set(negotiated) {
                    self.halt("a second INIT arrived on a running export");
                    return Reply::error(libc::EPROTO);
                }
                Reply::with_args(&out)
            }
        }
    }

    pub fn negotiated(&self) -> Option<Negotiated> {
        self.init.get()
    }

    fn setattr(&self, set: &SetattrIn) -> Reply {
        if let Err(errno) = self.attributes.check(set) {
            return Reply::error(errno);
        }
        if set.valid & fattr::SIZE != 0 {
            if let Err(e) = self.image.truncate(set.size) {
                return Reply::error(e.raw_os_error().unwrap_or(libc::EIO));
            }
        }
        self.attributes.apply(set);
        Reply::with_args(&self.attributes.attr_out(&self.image))
    }

    fn open(&self, open: &OpenIn) -> Reply {
        if open.flags & libc::O_TRUNC as u32 != 0 && self.image.growable() {
            if let Err(e) = self.image.truncate(0) {
                return Reply::error(e.raw_os_error().unwrap_or(libc::EIO));
            }
        }
        Reply::with_args(&OpenOut { fh: 0, open_flags: FOPEN_DIRECT_IO | FOPEN_PARALLEL_DIRECT_WRITES, passthrough: 0 })
    }

    fn read(&self, read: &ReadIn) -> Step {
        let size = self.image.size();
        if read.offset >= size || read.size == 0 {
            return Step::Reply(Reply::with_data(0));
        }
        let len = u64::from(read.size.min(MAX_WRITE)).min(size - read.offset);
        Step::Io(ImageIo::new(IoKind::Read, read.offset, len))
    }

    fn write(&self, write: &WriteIn) -> Step {
        if !self.image.writable() {
            return Step::Reply(Reply::error(libc::EACCES));
        }
        let mut len = u64::from(write.size);
        if !self.image.growable() {
            // Past the end of a fixed-size image a write is short: 0 bytes
            // written is how `dd` learns ENOSPC.
            len = len.min(self.image.size().saturating_sub(write.offset));
        }
        if len == 0 {
            return Step::Reply(Reply::with_args(&WriteOut { size: 0, padding: 0 }));
        }
        Step::Io(ImageIo::new(IoKind::Write, write.offset, len))
    }

    fn fallocate(&self, fallocate: &FallocateIn) -> Step {
        if !self.image.writable() {
            return Step::Reply(Reply::error(libc::EACCES));
        }
        let mode = fallocate.mode as i32;
        let (offset, len) = (fallocate.offset, fallocate.length);
        let end = offset.saturating_add(len);
        let size = self.image.size();
        let refuse = |errno| Step::Reply(Reply::error(errno));
        if mode == 0 {
            // Preallocation only makes sense where it grows the image.
            if offset < size {
                return refuse(libc::EOPNOTSUPP);
            }
            return Step::Io(ImageIo::new(IoKind::Fallocate { mode }, offset, len));
        }
        if mode & FALLOC_FL_PUNCH_HOLE != 0 {
            if mode != FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE {
                return refuse(libc::EINVAL);
            }
            if offset >= size {
                return Step::Reply(Reply::ok());
            }
            return Step::Io(ImageIo::new(IoKind::Fallocate { mode }, offset, end.min(size) - offset));
        }
        if mode & !FALLOC_FL_KEEP_SIZE == FALLOC_FL_ZERO_RANGE {
            let len = if mode & FALLOC_FL_KEEP_SIZE != 0 { end.min(size).saturating_sub(offset) } else { len };
            if len == 0 {
                return Step::Reply(Reply::ok());
            }
            return Step::Io(ImageIo::new(IoKind::Fallocate { mode }, offset, len));
        }
        refuse(libc::EOPNOTSUPP)
    }

    fn lseek(&self, lseek: &LseekIn) -> Reply {
        if lseek.whence != libc::SEEK_DATA as u32 && lseek.whence != libc::SEEK_HOLE as u32 {
            return Reply::error(libc::EINVAL);
        }
        match self.image.seek(lseek.offset, lseek.whence as i32) {
            Ok(offset) => Reply::with_args(&LseekOut { offset }),
            Err(e) => Reply::error(e.raw_os_error().unwrap_or(libc::EIO)),
        }
    }
}

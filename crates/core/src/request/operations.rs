//! Each opcode of the behaviour contract: what it does to the export.

use super::attributes::Attributes;
use super::init::{self, Wanted};
use super::{Carrier, Outcome, RequestCore};
use crate::image::{ImageIo, ImageOp, Seek};
use crate::protocol::abi::*;
use crate::protocol::{Operation, Reply, Request};

use libc::{FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE};

/// How long SEEK_DATA / SEEK_HOLE may hold an I/O thread (`bounded.rs`).
const SEEK_DEADLINE: std::time::Duration = std::time::Duration::from_secs(3);

fn reply(reply: Reply) -> Outcome {
    Outcome::Reply(reply)
}

fn errno_of(error: std::io::Error) -> Reply {
    Reply::error(error.raw_os_error().unwrap_or(libc::EIO))
}

impl RequestCore {
    pub(super) fn handle(&self, request: &Request, carrier: Carrier) -> Outcome {
        if let Some(limit) = self.faults.halt_after_requests() {
            let seen = self.counters.snapshot();
            if seen.legacy_requests + seen.ring_requests > limit {
                self.status.halt(format!("injected transport fault after {limit} requests"));
                return reply(Reply::error(libc::EIO));
            }
        }
        // With passthrough the kernel may have grown the image behind our
        // back. Asked only for these rare requests: the question locks INIT's latch.
        let size_matters = matches!(
            request.operation,
            Operation::Getattr | Operation::Setattr(_) | Operation::Fallocate(_) | Operation::Lseek(_)
        );
        if size_matters && self.passthrough_backing().is_some_and(|backing| backing.is_ok()) {
            self.image.sync_size();
        }
        match request.operation {
            Operation::Init { arg, flags } => reply(self.init(&arg, flags)),
            Operation::Lookup => reply(Reply::error(libc::ENOENT)),
            Operation::Getattr => reply(Reply::with_args(&self.attributes.attr_out(&*self.image))),
            Operation::Setattr(set) => reply(self.setattr(&set)),
            Operation::Open(open) => reply(self.open(&open)),
            Operation::Read(read) => self.read(&read, carrier),
            Operation::Write(write) => self.write(&write, carrier),
            Operation::Statfs => reply(Reply::with_args(&Attributes::statfs_out(&*self.image))),
            Operation::Release | Operation::Destroy => reply(Reply::ok()),
            Operation::Flush | Operation::Fsync(_) => self.start(ImageIo::new(ImageOp::Flush, 0, 0), carrier),
            Operation::Fallocate(fallocate) => self.fallocate(&fallocate, carrier),
            Operation::Lseek(lseek) => reply(self.lseek(&lseek)),
            Operation::Forget | Operation::Interrupt => Outcome::NoReply,
            Operation::Unsupported(_) => reply(Reply::error(libc::ENOSYS)),
        }
    }

    fn init(&self, arg: &InitIn, offered: u64) -> Reply {
        let wanted = Wanted { io_uring: self.ring_wanted, passthrough: self.passthrough.is_some() };
        match init::negotiate(arg, offered, wanted) {
            Err(errno) => {
                self.status
                    .halt(format!("the kernel speaks FUSE {}.{}, which this export does not", arg.major, arg.minor));
                Reply::error(errno)
            }
            Ok((out, negotiated)) => {
                if !self.init.set(negotiated) {
                    self.status.halt("a second INIT arrived on a running export");
                    return Reply::error(libc::EPROTO);
                }
                Reply::with_args(&out)
            }
        }
    }

    fn setattr(&self, set: &SetattrIn) -> Reply {
        if let Err(errno) = self.attributes.check(set) {
            return Reply::error(errno);
        }
        if set.valid & fattr::SIZE != 0 {
            if let Err(e) = self.image.resize(set.size) {
                return errno_of(e);
            }
        }
        self.attributes.apply(set);
        Reply::with_args(&self.attributes.attr_out(&*self.image))
    }

    fn open(&self, open: &OpenIn) -> Reply {
        if open.flags & libc::O_TRUNC as u32 != 0 && self.image.growable() {
            if let Err(e) = self.image.resize(0) {
                return errno_of(e);
            }
        }
        if let Some(Ok(backing_id)) = self.passthrough_backing() {
            // No DIRECT_IO: with it the kernel would still send READ and WRITE.
            return Reply::with_args(&OpenOut { fh: 0, open_flags: FOPEN_PASSTHROUGH, passthrough: backing_id });
        }
        Reply::with_args(&OpenOut { fh: 0, open_flags: FOPEN_DIRECT_IO | FOPEN_PARALLEL_DIRECT_WRITES, passthrough: 0 })
    }

    fn read(&self, read: &ReadIn, carrier: Carrier) -> Outcome {
        let size = self.image.size();
        if read.offset >= size || read.size == 0 {
            return reply(Reply::with_data(0));
        }
        let len = u64::from(read.size.min(MAX_WRITE)).min(size - read.offset);
        self.start(ImageIo::new(ImageOp::Read, read.offset, len), carrier)
    }

    fn write(&self, write: &WriteIn, carrier: Carrier) -> Outcome {
        if !self.image.writable() {
            return reply(Reply::error(libc::EACCES));
        }
        let mut len = u64::from(write.size);
        if !self.image.growable() {
            // Past the end of a fixed-size image a write is short: 0 bytes
            // written is how `dd` learns ENOSPC.
            len = len.min(self.image.size().saturating_sub(write.offset));
        }
        if len == 0 {
            return reply(Reply::with_args(&WriteOut { size: 0, padding: 0 }));
        }
        self.start(ImageIo::new(ImageOp::Write, write.offset, len), carrier)
    }

    fn fallocate(&self, fallocate: &FallocateIn, carrier: Carrier) -> Outcome {
        if !self.image.writable() {
            return reply(Reply::error(libc::EACCES));
        }
        let mode = fallocate.mode as i32;
        let (offset, len) = (fallocate.offset, fallocate.length);
        let end = offset.saturating_add(len);
        let size = self.image.size();
        let io = if mode == 0 {
            // Preallocation only makes sense where it grows the image.
            if offset < size {
                return reply(Reply::error(libc::EOPNOTSUPP));
            }
            ImageIo::new(ImageOp::Allocate, offset, len)
        } else if mode & FALLOC_FL_PUNCH_HOLE != 0 {
            if mode != FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE {
                return reply(Reply::error(libc::EINVAL));
            }
            if offset >= size {
                return reply(Reply::ok());
            }
            ImageIo::new(ImageOp::Discard, offset, end.min(size) - offset)
        } else if mode & !FALLOC_FL_KEEP_SIZE == FALLOC_FL_ZERO_RANGE {
            let len = if mode & FALLOC_FL_KEEP_SIZE != 0 { end.min(size).saturating_sub(offset) } else { len };
            if len == 0 {
                return reply(Reply::ok());
            }
            ImageIo::new(ImageOp::WriteZeroes, offset, len)
        } else {
            return reply(Reply::error(libc::EOPNOTSUPP));
        };
        self.start(io, carrier)
    }

    fn lseek(&self, lseek: &LseekIn) -> Reply {
        let what = match lseek.whence as i32 {
            libc::SEEK_DATA => Seek::Data,
            libc::SEEK_HOLE => Seek::Hole,
            _ => return Reply::error(libc::EINVAL),
        };
        let (image, offset) = (self.image.clone(), lseek.offset);
        match self.seeks.ask(SEEK_DEADLINE, move || image.seek(offset, what)) {
            Some(Ok(offset)) => Reply::with_args(&LseekOut { offset }),
            Some(Err(e)) => errno_of(e),
            // Too slow (a server that does not answer): every byte is data.
            None => match self.image.size() {
                size if offset >= size => Reply::error(libc::ENXIO),
                size => Reply::with_args(&LseekOut { offset: what.all_data(offset, size) }),
            },
        }
    }
}

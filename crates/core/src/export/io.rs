//! One request's image I/O: the SQE that performs it on the thread's ring,
//! straight into or out of the request's payload buffer, and what its
//! completion means.

use crate::image::Image;
use io_uring::{opcode, squeue, types};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoKind {
    Read,
    Write,
    /// fdatasync: FSYNC and FLUSH.
    Sync,
    Fallocate { mode: i32 },
}

impl IoKind {
    pub fn name(&self) -> &'static str {
        match self {
            IoKind::Read => "read",
            IoKind::Write => "write",
            IoKind::Sync => "sync",
            IoKind::Fallocate { .. } => "fallocate",
        }
    }
}

/// An image operation in progress. Transfers may complete in pieces; `done`
/// counts what is already transferred.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageIo {
    pub kind: IoKind,
    pub offset: u64,
    pub len: u64,
    pub done: u64,
}

impl ImageIo {
    pub fn new(kind: IoKind, offset: u64, len: u64) -> Self {
        Self { kind, offset, len, done: 0 }
    }

    /// The SQE for the (rest of the) operation. `payload` is the start of the
    /// request's payload buffer, which must stay put until the completion.
    pub fn sqe(&self, image: &Image, payload: *mut u8) -> squeue::Entry {
        let offset = self.offset + self.done;
        let remaining = self.len - self.done;
        match self.kind {
            IoKind::Read | IoKind::Write => {
                // `done < len <= payload size`, checked where the I/O was built.
                let buffer = payload.wrapping_add(self.done as usize);
                let fd = types::Fd(image.fd_for_transfer(offset, remaining, buffer));
                if self.kind == IoKind::Read {
                    opcode::Read::new(fd, buffer, remaining as u32).offset(offset).build()
                } else {
                    opcode::Write::new(fd, buffer, remaining as u32).offset(offset).build()
                }
            }
            IoKind::Sync => opcode::Fsync::new(types::Fd(image.fd())).flags(types::FsyncFlags::DATASYNC).build(),
            IoKind::Fallocate { mode } => {
                opcode::Fallocate::new(types::Fd(image.fd()), self.len).offset(self.offset).mode(mode).build()
            }
        }
    }

    /// Performs a transfer on a memory-backed image right away: a copy that
    /// cannot wait for a device, where io_uring would hand it to a kernel
    /// worker thread (two context switches a request). None: use the ring.
    pub fn perform_in_memory(&self, image: &Image, payload: *mut u8) -> Option<i32> {
        if !image.is_memory_backed() || !matches!(self.kind, IoKind::Read | IoKind::Write) {
            return None;
        }
        let buffer = payload.wrapping_add(self.done as usize);
        let (offset, len) = ((self.offset + self.done) as libc::off_t, (self.len - self.done) as usize);
        // SAFETY: `buffer` has `len` bytes of the request's payload buffer.
        let result = unsafe {
            if self.kind == IoKind::Read {
                libc::pread(image.fd(), buffer.cast(), len, offset)
            } else {
                libc::pwrite(image.fd(), buffer.cast(), len, offset)
            }
        };
        Some(if result < 0 { -std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO) } else { result as i32 })
    }

    /// Accounts a completion. Returns true when the operation is over (done,
    /// failed, or at end of file), false when the rest must be submitted.
    pub fn advance(&mut self, result: i32) -> bool {
        match self.kind {
            IoKind::Read | IoKind::Write if result > 0 => {
                self.done += result as u64;
                self.done >= self.len
            }
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_transfers_continue_where_they_stopped() {
        let mut io = ImageIo::new(IoKind::Read, 4096, 8192);
        assert!(!io.advance(4096));
        assert_eq!(io.done, 4096);
        assert!(io.advance(4096));
    }

    #[test]
    fn end_of_file_and_errors_end_a_transfer() {
        let mut io = ImageIo::new(IoKind::Read, 0, 8192);
        assert!(io.advance(0));
        let mut io = ImageIo::new(IoKind::Write, 0, 8192);
        assert!(io.advance(-libc::ENOSPC));
        assert_eq!(io.done, 0);
    }
}

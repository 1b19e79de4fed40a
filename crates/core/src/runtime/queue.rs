//! A thread's io_uring: FUSE commands and image I/O share it, and every SQE
//! pushed is counted until its completion comes back.

use io_uring::{cqueue, squeue, IoUring};
use std::io;

pub type Ring = IoUring<squeue::Entry128, cqueue::Entry>;

pub struct Queue {
    ring: Ring,
    /// SQEs whose completion has not been seen yet.
    outstanding: usize,
}

impl Queue {
    pub fn new(entries: u32) -> io::Result<Self> {
        let ring = IoUring::builder().setup_cqsize(entries * 4).build(entries)?;
        Ok(Self { ring, outstanding: 0 })
    }

    /// Queues one SQE, submitting first if the submission queue is full.
    pub fn push(&mut self, entry: impl Into<squeue::Entry128>) {
        let entry = entry.into();
        loop {
            // SAFETY: every buffer an SQE points to is owned by a slot or
            // entry that stays alive and untouched until its completion.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                self.outstanding += 1;
                return;
            }
            self.submit(0);
        }
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// Submits what is queued and waits for `want` completions.
    pub fn submit(&mut self, want: usize) {
        loop {
            match self.ring.submit_and_wait(want) {
                Ok(_) => return,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                // Completion queue full: the caller reaps, then we go on.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return,
                Err(e) => panic!("io_uring_enter failed: {e}"),
            }
        }
    }

    /// Takes the completions that are ready.
    pub fn reap(&mut self, into: &mut Vec<(u64, i32)>) {
        into.clear();
        into.extend(self.ring.completion().map(|cqe| (cqe.user_data(), cqe.result())));
        self.outstanding -= into.len();
    }
}

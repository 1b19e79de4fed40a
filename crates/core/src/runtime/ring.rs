//! A thread's io_uring. Every SQE pushed is counted until its last
//! completion comes back: memory an SQE points to may only be reused after
//! that.

use super::provided_buffers::ProvidedBuffers;
use super::token::Token;
use io_uring::{cqueue, squeue, IoUring, Probe};
use std::io;
use std::os::fd::{AsRawFd, RawFd};

/// IORING_ENTER_GETEVENTS.
const ENTER_GETEVENTS: u32 = 1;
/// How long a thread waits before it enters again when the kernel was short
/// of memory for the ring's work.
const SHORT_OF_MEMORY_PAUSE: std::time::Duration = std::time::Duration::from_millis(1);

pub struct Ring {
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    /// SQEs whose completion has not been seen yet.
    outstanding: usize,
    /// Where the thread's wake-up read lands. Kept with the ring, not on
    /// the loop's stack, so that it lives (or is leaked) with the ring.
    wake_target: Box<u64>,
    /// Completions this thread finished itself (`Ring::complete_local`),
    /// delivered by the next `reap` as if the kernel had posted them.
    local: Vec<Completion>,
    injected_enter_failures: u32,
}

/// One completion as the ring reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    pub token: Token,
    pub result: i32,
    pub flags: u32,
}

impl Completion {
    pub const fn new(token: Token, result: i32) -> Self {
        Self { token, result, flags: 0 }
    }

    /// A multishot SQE stays armed and will complete again.
    pub fn more(&self) -> bool {
        cqueue::more(self.flags)
    }

    /// The provided buffer the kernel filled, for a read that selected one.
    pub fn buffer(&self) -> Option<u16> {
        cqueue::buffer_select(self.flags)
    }
}

impl Ring {
    /// 128-byte SQEs, so that URING_CMD fits; room for `entries` at once.
    /// The calling thread is the only one that may submit.
    pub fn new(entries: u32) -> io::Result<Self> {
        Self::build(entries, false)
    }

    /// A ring that another thread will submit on, once it has called
    /// `adopt`. Buffers may be registered before.
    pub fn for_another_thread(entries: u32) -> io::Result<Self> {
        Self::build(entries, true)
    }

    /// Task work (a descriptor became readable, a transfer finished) is
    /// deferred until the thread asks for completions, rather than
    /// interrupting whatever system call the thread is in; wake-ups that
    /// come meanwhile are handled in one go.
    fn build(entries: u32, disabled: bool) -> io::Result<Self> {
        let entries = entries.next_power_of_two();
        let mut builder = IoUring::builder();
        builder.setup_cqsize(entries * 4).setup_single_issuer().setup_defer_taskrun();
        if disabled {
            builder.setup_r_disabled();
        }
        let ring = builder.build(entries)?;
        Ok(Self { ring, outstanding: 0, wake_target: Box::new(0), local: Vec::new(), injected_enter_failures: 0 })
    }

    /// Makes the calling thread the submitter of a ring made
    /// `for_another_thread`.
    pub fn adopt(&self) -> io::Result<()> {
        self.ring.submitter().register_enable_rings()
    }

    /// Queues one SQE whose completion comes back with `token`, submitting
    /// first if the submission queue is full.
    pub fn push(&mut self, entry: impl Into<squeue::Entry128>, token: Token) {
        let entry = entry.into().user_data(token.user_data());
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

    /// Whether `reap` would return something now.
    pub fn has_completions(&mut self) -> bool {
        !self.local.is_empty() || !self.ring.completion().is_empty()
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// The 8 bytes the wake-up read writes into.
    pub(super) fn wake_target(&mut self) -> *mut u8 {
        (&mut *self.wake_target as *mut u64).cast()
    }

    /// Counts a completion that arrives without an SQE of ours (posted by
    /// another thread).
    pub(super) fn expect_completion(&mut self) {
        self.outstanding += 1;
    }

    /// A completion that this very thread produced for a counted token.
    pub(super) fn push_local(&mut self, token: Token, result: i32) {
        self.local.push(Completion::new(token, result));
    }

    /// Whether the kernel knows `opcode` (IORING_OP_*).
    pub fn supports(&self, opcode: u8) -> bool {
        let mut probe = Probe::new();
        self.ring.submitter().register_probe(&mut probe).is_ok() && probe.is_supported(opcode)
    }

    /// Lets SQEs that select a buffer from `buffers.group()` take them.
    /// `buffers` must stay alive as long as the ring.
    pub fn register_provided_buffers(&mut self, buffers: &ProvidedBuffers) -> io::Result<()> {
        // SAFETY: the entries are page-aligned, hold `capacity` entries and
        // live as long as the ring (the caller's promise).
        unsafe {
            self.ring.submitter().register_buf_ring_with_flags(
                buffers.address(),
                buffers.capacity(),
                buffers.group(),
                0,
            )
        }
    }

    /// Submits what is queued and waits for `want` completions. A full
    /// completion queue (EBUSY) returns at once: the thread's loop reaps next.
    /// A kernel short of memory (EAGAIN, ENOMEM) consumed nothing: the same
    /// SQEs go in again after a pause. Never waits while local completions
    /// are pending.
    pub fn submit(&mut self, want: usize) {
        let want = if self.local.is_empty() { want } else { 0 };
        loop {
            let entered = match self.injected_enter_failures.checked_sub(1) {
                Some(left) => {
                    self.injected_enter_failures = left;
                    Err(io::Error::from_raw_os_error(libc::ENOMEM))
                }
                None => self.enter(want),
            };
            match entered.map_err(|e| e.raw_os_error()) {
                Ok(_) | Err(Some(libc::EBUSY)) => return,
                Err(Some(libc::EINTR)) => continue,
                Err(Some(libc::EAGAIN | libc::ENOMEM)) => std::thread::sleep(SHORT_OF_MEMORY_PAUSE),
                // A ring we set up wrongly: the thread's panic halts the export with this.
                Err(errno) => panic!("io_uring_enter failed: {}", io::Error::from_raw_os_error(errno.unwrap_or(0))),
            }
        }
    }

    fn enter(&mut self, want: usize) -> io::Result<usize> {
        // Deferred task work runs only when completions are asked for.
        if want > 0 {
            return self.ring.submit_and_wait(want);
        }
        let queued = self.ring.submission().len() as u32;
        // SAFETY: no argument is passed.
        unsafe { self.ring.submitter().enter::<libc::sigset_t>(queued, 0, ENTER_GETEVENTS, None) }
    }

    /// The next `count` enters fail with ENOMEM (the test suite's knob,
    /// `Faults::enter_failures`; zero in the build users get).
    pub fn fail_next_enters(&mut self, count: u32) {
        self.injected_enter_failures = count;
    }

    /// Takes the completions that are ready. A multishot SQE stays
    /// outstanding until its completion without `more`.
    pub fn reap(&mut self, into: &mut Vec<Completion>) {
        into.clear();
        into.extend(self.ring.completion().map(|cqe| Completion {
            token: Token::from_user_data(cqe.user_data()),
            result: cqe.result(),
            flags: cqe.flags(),
        }));
        into.append(&mut self.local);
        self.outstanding -= into.iter().filter(|completion| !completion.more()).count();
    }
}

impl AsRawFd for Ring {
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}

//! A thread's io_uring, shared by the tenants (exports) the thread serves.
//! Every SQE pushed is counted, per tenant, until its last completion comes
//! back: memory an SQE points to may only be reused after that, so a tenant
//! may only leave the thread once its count is zero.

use super::provided_buffers::ProvidedBuffers;
use super::token::{Token, RUNTIME_TENANT};
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
    /// SQEs whose completion has not been seen yet, by tenant.
    outstanding_by_tenant: Vec<usize>,
    /// The tenant whose SQEs are pushed now (`serve`).
    tenant: u16,
    /// Provided-buffer groups registered, and by which tenant.
    buffer_groups: Vec<(u16, u16)>,
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
    /// 128-byte SQEs, so that URING_CMD fits; room for `entries` at once
    /// (more are submitted in turns), and four times that many completions
    /// before the kernel keeps the rest aside (in memory it may fail to
    /// find). The calling thread is the only one that may submit.
    ///
    /// Task work (a descriptor became readable, a transfer finished) is
    /// deferred until the thread asks for completions, rather than
    /// interrupting whatever system call the thread is in; wake-ups that
    /// come meanwhile are handled in one go.
    pub fn new(entries: u32) -> io::Result<Self> {
        Self::with_completion_room(entries, entries * 4)
    }

    /// The same with room for `completions` (rounded up to a power of two).
    pub fn with_completion_room(entries: u32, completions: u32) -> io::Result<Self> {
        let entries = entries.next_power_of_two();
        let ring = IoUring::builder()
            .setup_cqsize(completions.next_power_of_two())
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(entries)?;
        Ok(Self {
            ring,
            outstanding_by_tenant: Vec::new(),
            tenant: RUNTIME_TENANT,
            buffer_groups: Vec::new(),
            wake_target: Box::new(0),
            local: Vec::new(),
            injected_enter_failures: 0,
        })
    }

    /// SQEs pushed from now on are `tenant`'s.
    pub(super) fn serve(&mut self, tenant: u16) {
        self.tenant = tenant;
    }

    /// Queues one SQE whose completion comes back with `token`, submitting
    /// first if the submission queue is full.
    pub fn push(&mut self, entry: impl Into<squeue::Entry128>, token: Token) {
        let entry = entry.into().user_data(token.with_tenant(self.tenant).user_data());
        loop {
            // SAFETY: every buffer an SQE points to is owned by a slot or
            // entry that stays alive and untouched until its completion.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                self.count_one();
                return;
            }
            self.submit(0);
        }
    }

    /// Cancels the SQE of the serving tenant pushed with `target`; the
    /// cancellation's own completion comes back with `token`.
    pub fn cancel(&mut self, target: Token, token: Token) {
        let target = target.with_tenant(self.tenant).user_data();
        self.push(io_uring::opcode::AsyncCancel::new(target).build(), token);
    }

    fn count_one(&mut self) {
        let tenant = self.tenant as usize;
        if self.outstanding_by_tenant.len() <= tenant {
            self.outstanding_by_tenant.resize(tenant + 1, 0);
        }
        self.outstanding_by_tenant[tenant] += 1;
    }

    /// Whether `reap` would return something now.
    pub fn has_completions(&mut self) -> bool {
        !self.local.is_empty() || !self.ring.completion().is_empty()
    }

    /// SQEs of every tenant whose completion has not been seen yet.
    pub fn outstanding(&self) -> usize {
        self.outstanding_by_tenant.iter().sum()
    }

    pub(super) fn outstanding_of(&self, tenant: u16) -> usize {
        self.outstanding_by_tenant.get(tenant as usize).copied().unwrap_or(0)
    }

    /// The 8 bytes the wake-up read writes into.
    pub(super) fn wake_target(&mut self) -> *mut u8 {
        (&mut *self.wake_target as *mut u64).cast()
    }

    /// Counts a completion of the serving tenant that arrives without an
    /// SQE (posted by another thread); returns the token it will carry.
    pub(super) fn expect_completion(&mut self, token: Token) -> Token {
        self.count_one();
        token.with_tenant(self.tenant)
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

    /// A buffer group no tenant of this ring uses.
    pub fn free_buffer_group(&self) -> u16 {
        (0..=u16::MAX).find(|group| self.buffer_groups.iter().all(|(_, used)| used != group)).unwrap_or(u16::MAX)
    }

    /// Lets SQEs that select a buffer from `buffers.group()` take them, until
    /// the serving tenant leaves. `buffers` must stay alive as long.
    pub fn register_provided_buffers(&mut self, buffers: &ProvidedBuffers) -> io::Result<()> {
        // SAFETY: the entries are page-aligned, hold `capacity` entries and
        // live until the tenant leaves (the caller's promise), when they are
        // unregistered.
        unsafe {
            self.ring.submitter().register_buf_ring_with_flags(
                buffers.address(),
                buffers.capacity(),
                buffers.group(),
                0,
            )
        }?;
        self.buffer_groups.push((self.tenant, buffers.group()));
        Ok(())
    }

    /// `tenant` leaves the ring, with none of its SQEs outstanding: the
    /// kernel forgets its buffer groups, so that their memory may go.
    pub(super) fn release(&mut self, tenant: u16) {
        debug_assert_eq!(self.outstanding_of(tenant), 0);
        let (leaving, staying) = self.buffer_groups.iter().partition(|(owner, _)| *owner == tenant);
        self.buffer_groups = staying;
        for (_, group) in leaving {
            // A failure would mean the kernel never knew the group.
            let _ = self.ring.submitter().unregister_buf_ring(group);
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

    /// Takes the completions that are ready, with their tenant's stamp
    /// (`Token::tenant`). A multishot SQE stays outstanding until its
    /// completion without `more`.
    pub fn reap(&mut self, into: &mut Vec<Completion>) {
        into.clear();
        into.extend(self.ring.completion().map(|cqe| Completion {
            token: Token::from_user_data(cqe.user_data()),
            result: cqe.result(),
            flags: cqe.flags(),
        }));
        into.append(&mut self.local);
        for completion in into.iter().filter(|completion| !completion.more()) {
            self.outstanding_by_tenant[completion.token.tenant() as usize] -= 1;
        }
    }
}

impl AsRawFd for Ring {
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}

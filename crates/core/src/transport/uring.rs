//! FUSE-over-io_uring: ring entries registered with the kernel (REGISTER),
//! each parked until the kernel puts a request into it, answered in place
//! and re-armed in one step (COMMIT_AND_FETCH). A request's image I/O goes on
//! the same ring, straight into or out of the entry's payload buffer.

use crate::export::io::ImageIo;
use crate::export::Export;
use crate::image::describe;
use crate::protocol::abi::*;
use crate::protocol::request::decode_ring_entry;
use crate::protocol::Reply;
use crate::runtime::buffer::AlignedBuffer;
use crate::runtime::queue::Queue;
use crate::runtime::request::{self, Outcome};
use crate::runtime::token::{encode, Tag};
use io_uring::{opcode, squeue, types};
use crate::latch::Latch;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use vm_memory::ByteValued;

const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";

/// The kernel's switch: Some(true) when FUSE-over-io_uring may be used,
/// Some(false) when it is switched off, None when this kernel lacks it.
pub fn kernel_switch() -> Option<bool> {
    let value = std::fs::read_to_string(ENABLE_URING).ok()?;
    Some(value.trim() == "Y" || value.trim() == "1")
}

pub const HOW_TO_ENABLE: &str = "switch it on as root with: echo Y > /sys/module/fuse/parameters/enable_uring \
    (needs Linux >= 6.14 built with CONFIG_FUSE_IO_URING)";

/// Shared by the I/O threads while the ring queues register: REGISTER may
/// only follow INIT's reply, and its failure makes the kernel fall back to
/// /dev/fuse for good.
pub struct RingSetup {
    /// `--io-uring on`: a failure halts instead of falling back.
    required: bool,
    init_replied: AtomicBool,
    threads_left: AtomicUsize,
    failed: AtomicBool,
    /// Ok once every thread submitted its REGISTERs, or the first failure.
    pub outcome: Latch<Result<(), String>>,
}

impl RingSetup {
    pub fn new(required: bool, threads_with_queues: usize) -> Self {
        Self {
            required,
            init_replied: AtomicBool::new(false),
            threads_left: AtomicUsize::new(threads_with_queues),
            failed: AtomicBool::new(false),
            outcome: Latch::default(),
        }
    }

    pub fn init_replied(&self) {
        self.init_replied.store(true, Ordering::Release);
    }

    /// Whether REGISTER may go out now.
    pub fn may_register(&self, export: &Export) -> bool {
        self.init_replied.load(Ordering::Acquire) && export.negotiated().is_some_and(|n| n.over_io_uring())
    }

    pub fn thread_registered(&self) {
        if self.threads_left.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.outcome.set(Ok(()));
        }
    }

    /// A REGISTER failed: the kernel serves this mount over /dev/fuse from
    /// now on. Reported once.
    pub fn register_failed(&self, export: &Export, reason: String) {
        if self.failed.swap(true, Ordering::AcqRel) {
            return;
        }
        let started = !self.outcome.set(Err(reason.clone()));
        if self.required {
            export.halt(format!("FUSE-over-io_uring failed: {reason}"));
        } else if started {
            export.warn("ring-fallback", format!("FUSE-over-io_uring failed: {reason}; the kernel now serves over /dev/fuse"));
        }
    }
}

/// The kernel makes one queue per possible CPU, and the ring only starts
/// once every one of them has an entry.
pub fn possible_cpus() -> usize {
    std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|list| count_cpu_list(&list))
        // SAFETY: sysconf has no side effects.
        .unwrap_or_else(|| unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) }.max(1) as usize)
}

/// Counts CPUs in the kernel's list format ("0-3,6,8-9"). The kernel's
/// queue ids run up to the highest possible CPU, so that is what counts.
fn count_cpu_list(list: &str) -> Option<usize> {
    let mut highest = None;
    for part in list.trim().split(',') {
        let last = part.rsplit('-').next()?.trim().parse::<usize>().ok()?;
        highest = highest.max(Some(last));
    }
    highest.map(|h| h + 1)
}

/// The payload buffer the kernel insists on: room for the largest request.
pub fn payload_size(negotiated_max_write: u32, max_pages: u16) -> usize {
    (negotiated_max_write as usize).max(max_pages as usize * 4096).max(8192)
}

/// What to do with a request that arrives in an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Serve,
    /// Paused (draining): hold it until resumed.
    Defer,
    /// Stopping: answer EIO, as the kernel would at unmount.
    Refuse,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    Register,
    CommitAndFetch,
}

struct Entry {
    header: Box<UringReqHeader>,
    payload: AlignedBuffer,
    iov: Box<[libc::iovec; 2]>,
    commit_id: u64,
    unique: u64,
    io: Option<ImageIo>,
    last: Command,
}

// SAFETY: the raw pointers in `iov` point into the entry's own boxes.
unsafe impl Send for Entry {}

impl Entry {
    fn new(payload_size: usize) -> Self {
        let mut header = Box::new(UringReqHeader::default());
        let payload = AlignedBuffer::new(payload_size);
        let iov = Box::new([
            libc::iovec {
                iov_base: (&mut *header as *mut UringReqHeader).cast(),
                iov_len: std::mem::size_of::<UringReqHeader>(),
            },
            libc::iovec { iov_base: payload.as_ptr().cast(), iov_len: payload_size },
        ]);
        Self { header, payload, iov, commit_id: 0, unique: 0, io: None, last: Command::Register }
    }
}

/// What a completion meant for the ring as a whole.
#[derive(Debug, PartialEq, Eq)]
pub enum RingEvent {
    None,
    /// The connection is gone (unmounted or aborted).
    Disconnected,
    /// REGISTER was refused: the kernel falls back to /dev/fuse.
    RegisterFailed(String),
    /// Any other error: the transport cannot go on.
    Fatal(String),
}

pub struct RingQueue {
    /// The kernel's queue id: the CPU whose requests land here.
    qid: u16,
    /// Our channel number in this thread's tokens.
    channel: u16,
    fd: RawFd,
    entries: Vec<Entry>,
    /// Entries holding a request that arrived while paused.
    deferred: Vec<u32>,
}

impl RingQueue {
    pub fn new(qid: u16, channel: u16, fd: RawFd, depth: usize, payload_size: usize) -> Self {
        let entries = (0..depth).map(|_| Entry::new(payload_size)).collect();
        Self { qid, channel, fd, entries, deferred: Vec::new() }
    }

    pub fn qid(&self) -> u16 {
        self.qid
    }

    /// Hands every entry to the kernel.
    pub fn register(&mut self, queue: &mut Queue) {
        for index in 0..self.entries.len() {
            self.submit(queue, index as u32, Command::Register);
        }
    }

    fn submit(&mut self, queue: &mut Queue, index: u32, command: Command) {
        let entry = &mut self.entries[index as usize];
        let request = UringCmdReq { flags: 0, commit_id: entry.commit_id, qid: self.qid, padding: [0; 6] };
        let mut cmd = [0u8; 80];
        cmd[..std::mem::size_of::<UringCmdReq>()].copy_from_slice(request.as_slice());
        let (op, iov) = match command {
            Command::Register => (URING_CMD_REGISTER, Some(entry.iov.as_ptr() as u64)),
            Command::CommitAndFetch => (URING_CMD_COMMIT_AND_FETCH, None),
        };
        let mut sqe = opcode::UringCmd80::new(types::Fd(self.fd), op).cmd(cmd);
        if let Some(addr) = iov {
            sqe = sqe.addr(Some(addr));
        }
        let mut sqe = sqe.build().user_data(encode(Tag::RingCommand, self.channel, index));
        if command == Command::Register {
            sqe = with_len(sqe, 2);
        }
        entry.last = command;
        queue.push(sqe);
    }

    /// Takes up requests held while paused, or refuses them when stopping.
    pub fn refresh(&mut self, queue: &mut Queue, export: &Export, admission: Admission) {
        if admission == Admission::Defer || self.deferred.is_empty() {
            return;
        }
        for index in std::mem::take(&mut self.deferred) {
            self.admit(queue, export, index, admission);
        }
    }

    /// A REGISTER or COMMIT_AND_FETCH completed: a request, or an error.
    pub fn on_command(
        &mut self,
        queue: &mut Queue,
        export: &Export,
        index: u32,
        result: i32,
        admission: Admission,
    ) -> RingEvent {
        let entry = &mut self.entries[index as usize];
        if result < 0 {
            return match -result {
                libc::EAGAIN | libc::EINTR => {
                    let last = entry.last;
                    self.submit(queue, index, last);
                    RingEvent::None
                }
                libc::ENOTCONN | libc::ECONNABORTED | libc::ENODEV => RingEvent::Disconnected,
                errno => {
                    let what = describe(&io::Error::from_raw_os_error(errno));
                    match entry.last {
                        Command::Register => RingEvent::RegisterFailed(format!(
                            "REGISTER of ring queue {} failed: {what} (errno {errno})",
                            self.qid
                        )),
                        Command::CommitAndFetch => RingEvent::Fatal(format!(
                            "COMMIT_AND_FETCH on ring queue {} failed: {what} (errno {errno})",
                            self.qid
                        )),
                    }
                }
            };
        }
        entry.commit_id = entry.header.ring_ent_in_out.commit_id;
        self.admit(queue, export, index, admission);
        RingEvent::None
    }

    fn admit(&mut self, queue: &mut Queue, export: &Export, index: u32, admission: Admission) {
        let entry = &mut self.entries[index as usize];
        let decoded = decode_ring_entry(&entry.header);
        let step = match admission {
            Admission::Defer => return self.deferred.push(index),
            Admission::Serve => request::begin(export, decoded, true),
            Admission::Refuse => request::refuse(export, decoded, true),
        };
        let Some((unique, step)) = step else {
            // The header could not be read: the export halted; the entry
            // stays with us until the connection ends.
            return;
        };
        entry.unique = unique;
        let payload = entry.payload.as_ptr();
        let token = encode(Tag::ImageIo, self.channel, index);
        let outcome = request::drive(queue, export, step, &mut entry.io, payload, token);
        self.follow(queue, export, index, outcome);
    }

    /// The image I/O of an entry's request completed.
    pub fn on_image_io(&mut self, queue: &mut Queue, export: &Export, index: u32, result: i32) {
        let entry = &mut self.entries[index as usize];
        let payload = entry.payload.as_ptr();
        let token = encode(Tag::ImageIo, self.channel, index);
        let outcome = request::resume(queue, export, &mut entry.io, result, payload, token);
        self.follow(queue, export, index, outcome);
    }

    fn follow(&mut self, queue: &mut Queue, export: &Export, index: u32, outcome: Outcome) {
        let reply = match outcome {
            Outcome::InProgress => return,
            Outcome::Reply(reply) => reply,
            // Only /dev/fuse carries requests without replies; should one
            // come here, the entry still has to go back to the kernel.
            Outcome::NoReply => Reply::error(libc::ENOSYS),
        };
        self.commit(index, reply);
        export.counters.local().request_finished();
        self.submit(queue, index, Command::CommitAndFetch);
    }

    /// Writes the reply into the entry: out-header in the header, arguments
    /// (or READ data, already there) at the start of the payload.
    fn commit(&mut self, index: u32, reply: Reply) {
        let entry = &mut self.entries[index as usize];
        let out = reply.out_header(entry.unique);
        entry.header.in_out[..OUT_HEADER_SIZE].copy_from_slice(out.as_slice());
        let args = reply.args();
        if !args.is_empty() {
            // SAFETY: fixed arguments are at most a few hundred bytes, far
            // below the payload buffer's size.
            unsafe { std::ptr::copy_nonoverlapping(args.as_ptr(), entry.payload.as_ptr(), args.len()) };
        }
        entry.header.ring_ent_in_out.payload_sz = reply.body_len();
    }
}

/// The io-uring crate has no `len` setter for URING_CMD: REGISTER needs the
/// iovec count at byte 24 of the SQE.
fn with_len(sqe: squeue::Entry128, len: u32) -> squeue::Entry128 {
    // SAFETY: Entry128 is a repr(C) 128-byte SQE; `len` is the u32 at offset 24.
    unsafe {
        let mut bytes: [u8; 128] = std::mem::transmute(sqe);
        bytes[24..28].copy_from_slice(&len.to_ne_bytes());
        std::mem::transmute(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn possible_cpus_are_counted_up_to_the_highest_id() {
        assert_eq!(count_cpu_list("0-1\n"), Some(2));
        assert_eq!(count_cpu_list("0"), Some(1));
        assert_eq!(count_cpu_list("0-3,6,8-9"), Some(10));
        assert_eq!(count_cpu_list("garbage"), None);
    }

    #[test]
    fn the_payload_buffer_fits_the_largest_request() {
        assert_eq!(payload_size(1 << 20, 256), 1 << 20);
        assert_eq!(payload_size(4096, 1), 8192);
        assert_eq!(payload_size(128 << 10, 256), 1 << 20);
    }

    #[test]
    fn register_sqes_carry_the_iovec_count_at_byte_24() {
        let sqe = opcode::UringCmd80::new(types::Fd(3), URING_CMD_REGISTER).addr(Some(0x1000)).build();
        let bytes: [u8; 128] = unsafe { std::mem::transmute(with_len(sqe, 2)) };
        assert_eq!(bytes[0], 46, "IORING_OP_URING_CMD");
        assert_eq!(&bytes[24..28], &2u32.to_ne_bytes());
        assert_eq!(&bytes[16..24], &0x1000u64.to_ne_bytes(), "addr");
    }

    #[test]
    fn commit_frames_the_reply_in_header_and_payload() {
        let mut queue = RingQueue::new(1, 1, -1, 1, 8192);
        queue.entries[0].unique = 99;
        queue.commit(0, Reply::with_args(&WriteOut { size: 4096, padding: 0 }));
        let entry = &queue.entries[0];
        let out: OutHeader = read_struct(&entry.header.in_out).unwrap();
        assert_eq!((out.len, out.error, out.unique), (24, 0, 99));
        assert_eq!(entry.header.ring_ent_in_out.payload_sz, 8);
        assert_eq!(entry.payload.bytes(0, 4), 4096u32.to_ne_bytes());
        let mut queue = RingQueue::new(1, 1, -1, 1, 8192);
        queue.commit(0, Reply::error(libc::EIO));
        assert_eq!(queue.entries[0].header.ring_ent_in_out.payload_sz, 0);
    }
}

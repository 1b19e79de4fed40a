//! One of the kernel's FUSE-over-io_uring queues (one per possible CPU):
//! entries registered with the kernel (REGISTER), each parked until the
//! kernel puts a request into it, answered in place and re-armed in one step
//! (COMMIT_AND_FETCH). A request's image I/O goes on the same ring, straight
//! into or out of the entry's payload buffer.

use super::kind;
use crate::image::ImageIo;
use crate::os_error::describe_errno;
use crate::protocol::abi::*;
use crate::protocol::request::decode_ring_entry;
use crate::protocol::Reply;
use crate::request::{Admission, Carrier, Outcome, RequestCore, Via};
use crate::runtime::buffer::AlignedBuffer;
use crate::runtime::control::Phase;
use crate::runtime::ring::Ring;
use crate::runtime::token::Token;
use io_uring::{opcode, squeue, types};
use std::os::fd::RawFd;
use vm_memory::ByteValued;

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

/// What a completion meant for the queue as a whole.
#[derive(Debug, PartialEq, Eq)]
pub enum QueueEvent {
    None,
    /// The connection is gone (unmounted or aborted).
    Disconnected,
    /// REGISTER was refused: the kernel falls back to /dev/fuse.
    RegisterFailed(String),
    /// Any other error: the transport cannot go on.
    Fatal(String),
}

pub struct FuseQueue {
    /// The kernel's queue id: the CPU whose requests land here.
    qid: u16,
    /// Our channel number in this thread's tokens.
    channel: u16,
    fd: RawFd,
    entries: Vec<Entry>,
    /// Entries holding a request that must wait (draining).
    held: Vec<u32>,
}

impl FuseQueue {
    pub fn new(qid: u16, channel: u16, fd: RawFd, depth: usize, payload_size: usize) -> Self {
        let entries = (0..depth).map(|_| Entry::new(payload_size)).collect();
        Self { qid, channel, fd, entries, held: Vec::new() }
    }

    pub fn qid(&self) -> u16 {
        self.qid
    }

    /// Hands every entry to the kernel.
    pub fn register(&mut self, ring: &mut Ring) {
        for index in 0..self.entries.len() {
            self.submit(ring, index as u32, Command::Register);
        }
    }

    fn submit(&mut self, ring: &mut Ring, index: u32, command: Command) {
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
        let mut sqe = sqe.build();
        if command == Command::Register {
            sqe = with_len(sqe, 2);
        }
        entry.last = command;
        ring.push(sqe, Token::new(kind::RING_COMMAND, self.channel, index));
    }

    /// Admits held requests again: those that must still wait stay held.
    pub fn admit_held(&mut self, ring: &mut Ring, core: &RequestCore, phase: Phase) {
        for index in std::mem::take(&mut self.held) {
            self.admit(ring, core, index, phase);
        }
    }

    /// A REGISTER or COMMIT_AND_FETCH completed: a request, or an error.
    pub fn on_command(
        &mut self,
        ring: &mut Ring,
        core: &RequestCore,
        index: u32,
        result: i32,
        phase: Phase,
    ) -> QueueEvent {
        let entry = &mut self.entries[index as usize];
        if result < 0 {
            return match -result {
                libc::EAGAIN | libc::EINTR => {
                    let last = entry.last;
                    self.submit(ring, index, last);
                    QueueEvent::None
                }
                libc::ENOTCONN | libc::ECONNABORTED | libc::ENODEV => QueueEvent::Disconnected,
                errno => {
                    let what = describe_errno(errno);
                    match entry.last {
                        Command::Register => QueueEvent::RegisterFailed(format!(
                            "REGISTER of ring queue {} failed: {what} (errno {errno})",
                            self.qid
                        )),
                        Command::CommitAndFetch => QueueEvent::Fatal(format!(
                            "COMMIT_AND_FETCH on ring queue {} failed: {what} (errno {errno})",
                            self.qid
                        )),
                    }
                }
            };
        }
        entry.commit_id = entry.header.ring_ent_in_out.commit_id;
        self.admit(ring, core, index, phase);
        QueueEvent::None
    }

    fn admit(&mut self, ring: &mut Ring, core: &RequestCore, index: u32, phase: Phase) {
        let decoded = decode_ring_entry(&self.entries[index as usize].header);
        let started = match core.admission(&decoded, phase) {
            Admission::Hold => return self.held.push(index),
            Admission::Serve => core.begin(decoded, Via::Ring, self.carrier(ring, index)),
            Admission::Refuse => core.refuse(decoded, Via::Ring),
        };
        let Some((unique, outcome)) = started else {
            // The header could not be read: the export halted; the entry
            // stays with us until the connection ends.
            return;
        };
        self.entries[index as usize].unique = unique;
        self.follow(ring, core, index, outcome);
    }

    /// The image I/O of an entry's request completed.
    pub fn on_image_io(&mut self, ring: &mut Ring, core: &RequestCore, index: u32, result: i32) {
        let outcome = core.resume(result, self.carrier(ring, index));
        self.follow(ring, core, index, outcome);
    }

    fn carrier<'a>(&'a mut self, ring: &'a mut Ring, index: u32) -> Carrier<'a> {
        let entry = &mut self.entries[index as usize];
        Carrier {
            ring,
            token: Token::new(kind::IMAGE_IO, self.channel, index),
            buffer: entry.payload.as_ptr(),
            io: &mut entry.io,
        }
    }

    fn follow(&mut self, ring: &mut Ring, core: &RequestCore, index: u32, outcome: Outcome) {
        let reply = match outcome {
            Outcome::Pending => return,
            Outcome::Reply(reply) => reply,
            // Only /dev/fuse carries requests without replies; should one
            // come here, the entry still has to go back to the kernel.
            Outcome::NoReply => Reply::error(libc::ENOSYS),
        };
        self.commit(index, reply);
        core.counters.local().request_finished();
        self.submit(ring, index, Command::CommitAndFetch);
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
    fn register_sqes_carry_the_iovec_count_at_byte_24() {
        let sqe = opcode::UringCmd80::new(types::Fd(3), URING_CMD_REGISTER).addr(Some(0x1000)).build();
        let bytes: [u8; 128] = unsafe { std::mem::transmute(with_len(sqe, 2)) };
        assert_eq!(bytes[0], 46, "IORING_OP_URING_CMD");
        assert_eq!(&bytes[24..28], &2u32.to_ne_bytes());
        assert_eq!(&bytes[16..24], &0x1000u64.to_ne_bytes(), "addr");
    }

    #[test]
    fn commit_frames_the_reply_in_header_and_payload() {
        let mut queue = FuseQueue::new(1, 1, -1, 1, 8192);
        queue.entries[0].unique = 99;
        queue.commit(0, Reply::with_args(&WriteOut { size: 4096, padding: 0 }));
        let entry = &queue.entries[0];
        let out: OutHeader = read_struct(&entry.header.in_out).unwrap();
        assert_eq!((out.len, out.error, out.unique), (24, 0, 99));
        assert_eq!(entry.header.ring_ent_in_out.payload_sz, 8);
        assert_eq!(entry.payload.bytes(0, 4), 4096u32.to_ne_bytes());
        let mut queue = FuseQueue::new(1, 1, -1, 1, 8192);
        queue.commit(0, Reply::error(libc::EIO));
        assert_eq!(queue.entries[0].header.ring_ent_in_out.payload_sz, 0);
    }
}

//! The classic transport: requests read from a /dev/fuse descriptor (one
//! cloned fd per I/O thread), replies written back to the same fd, both as
//! SQEs on the thread's ring. One multishot read stays armed: every free
//! slot's buffer is provided to it, and each wake-up of the descriptor
//! drains every pending request into them, one completion each, without an
//! SQE or a system call per request. Replies leave with the thread's next
//! submit. The read stays armed while paused and detached (requests are
//! held or answered as `RequestCore::admission` says) and while halted (they
//! are answered EIO), so that the end of the connection is always seen.

use super::kind;
use crate::image::ImageIo;
use crate::os_error::describe_errno;
use crate::protocol::abi::{MAX_WRITE, OUT_HEADER_SIZE, WRITE_HEADER_SIZE};
use crate::protocol::reply::MAX_ARGS;
use crate::protocol::request::decode_message;
use crate::protocol::{Operation, Reply, Request};
use crate::request::{Admission, Carrier, Outcome, RequestCore, Via};
use crate::runtime::buffer::{AlignedBuffer, PAGE};
use crate::runtime::control::Phase;
use crate::runtime::provided_buffers::ProvidedBuffers;
use crate::runtime::ring::{Completion, Ring};
use crate::runtime::token::Token;
use io_uring::{opcode, squeue, types};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use vm_memory::ByteValued;

/// A request is read so that WRITE data (after the 80-byte headers) starts
/// exactly on a page: the image writes it with O_DIRECT where it landed.
const READ_OFFSET: usize = PAGE - WRITE_HEADER_SIZE;
/// The kernel wants room for the largest WRITE (headers + max_write).
const READ_LEN: usize = WRITE_HEADER_SIZE + MAX_WRITE as usize;
/// READ data goes to the same page-aligned spot.
const PAYLOAD_OFFSET: usize = PAGE;
/// Out-header plus the largest fixed reply argument.
const REPLY_HEAD_LEN: usize = OUT_HEADER_SIZE + MAX_ARGS;

/// Requests one thread keeps in flight on its descriptor.
pub const SLOTS_PER_CHANNEL: usize = 32;

struct Slot {
    buffer: AlignedBuffer,
    unique: u64,
    /// Bytes of the request read into the buffer.
    len: usize,
    /// INIT's reply must be written before ring queues may register.
    is_init: bool,
    io: Option<ImageIo>,
    reply_head: [u8; REPLY_HEAD_LEN],
    iov: [libc::iovec; 2],
}

// SAFETY: the iovecs point into the slot's own buffers.
unsafe impl Send for Slot {}

impl Slot {
    fn new() -> Self {
        let empty = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 };
        Self {
            buffer: AlignedBuffer::new(PAYLOAD_OFFSET + MAX_WRITE as usize),
            unique: 0,
            len: 0,
            is_init: false,
            io: None,
            reply_head: [0; REPLY_HEAD_LEN],
            iov: [empty; 2],
        }
    }

    fn payload(&self) -> *mut u8 {
        // SAFETY: PAYLOAD_OFFSET is inside the buffer.
        unsafe { self.buffer.as_ptr().add(PAYLOAD_OFFSET) }
    }

    /// Where a request is read to.
    fn read_target(&self) -> *mut u8 {
        // SAFETY: READ_OFFSET + READ_LEN is the buffer's size.
        unsafe { self.buffer.as_ptr().add(READ_OFFSET) }
    }
}

pub struct LegacyChannel {
    channel: u16,
    fd: OwnedFd,
    slots: Vec<Slot>,
    /// The read target of every slot not in use, offered to the read.
    buffers: ProvidedBuffers,
    /// Slots whose buffer is offered and not yet filled.
    provided: usize,
    /// Whether the kernel keeps a read armed after it completes
    /// (IORING_OP_READ_MULTISHOT, Linux 6.7); otherwise every read
    /// takes one offered buffer and ends.
    multishot: bool,
    /// The read is outstanding.
    armed: bool,
    cancelling: bool,
    /// Slots holding a request that must wait (draining).
    held: Vec<u32>,
}

impl LegacyChannel {
    /// Offers every slot's buffer to reads on `fd` through `ring`.
    pub fn new(channel: u16, fd: OwnedFd, ring: &mut Ring) -> io::Result<Self> {
        let buffers = ProvidedBuffers::new(SLOTS_PER_CHANNEL as u16, ring.free_buffer_group());
        ring.register_provided_buffers(&buffers)?;
        let mut legacy = Self {
            channel,
            fd,
            slots: (0..SLOTS_PER_CHANNEL).map(|_| Slot::new()).collect(),
            buffers,
            provided: 0,
            multishot: ring.supports(opcode::ReadMulti::CODE),
            armed: false,
            cancelling: false,
            held: Vec::new(),
        };
        for slot in 0..SLOTS_PER_CHANNEL as u32 {
            legacy.release(slot);
        }
        Ok(legacy)
    }

    /// Admits held requests again (those that must still wait stay held),
    /// then keeps the read armed while the connection lives, the thread is
    /// not stopping and a buffer is offered (and cancels it when stopping).
    pub fn prepare(&mut self, ring: &mut Ring, core: &RequestCore, phase: Phase) {
        for slot in std::mem::take(&mut self.held) {
            self.admit(ring, core, slot, phase);
        }
        let read_wanted = phase != Phase::Stopping && !core.status.is_disconnected();
        match (read_wanted, self.armed) {
            (true, false) if self.provided > 0 => {
                ring.push(self.read(), self.read_token());
                self.armed = true;
            }
            (false, true) if !self.cancelling => {
                ring.cancel(self.read_token(), Token::new(kind::CANCEL, self.channel, 0));
                self.cancelling = true;
            }
            _ => {}
        }
    }

    fn read(&self) -> squeue::Entry {
        let fd = types::Fd(self.fd.as_raw_fd());
        let group = self.buffers.group();
        if self.multishot {
            opcode::ReadMulti::new(fd, 0, group).build()
        } else {
            let read = opcode::Read::new(fd, std::ptr::null_mut(), READ_LEN as u32).buf_group(group).build();
            read.flags(squeue::Flags::BUFFER_SELECT)
        }
    }

    /// The slot a request lands in is the buffer's, known at its completion.
    fn read_token(&self) -> Token {
        Token::new(kind::FUSE_READ, self.channel, 0)
    }

    /// A read of /dev/fuse completed; a multishot read stays armed while
    /// its completions say `more`.
    pub fn on_read(&mut self, ring: &mut Ring, core: &RequestCore, completion: Completion, phase: Phase) {
        if !completion.more() {
            self.armed = false;
            self.cancelling = false;
        }
        let slot = completion.buffer().map(u32::from);
        if let Some(slot) = slot {
            self.provided -= 1;
            if completion.result < 0 {
                self.release(slot);
            }
        }
        let result = completion.result;
        if result < 0 {
            match -result {
                // ENOBUFS: every slot is in use; re-armed once one is free.
                libc::EAGAIN | libc::EINTR | libc::ENOENT | libc::ECANCELED | libc::ENOBUFS => {}
                // ECONNABORTED: the connection ended while a request was
                // being read (the kernel's `fpq->connected` check after the copy).
                libc::ENODEV | libc::ECONNABORTED => core.status.disconnected(),
                errno => core.status.halt(format!("reading /dev/fuse failed: {}", describe_errno(errno))),
            }
            return;
        }
        let Some(slot) = slot else {
            return core.status.halt("a read of /dev/fuse completed without a buffer");
        };
        self.slots[slot as usize].len = result as usize;
        self.admit(ring, core, slot, phase);
    }

    /// Offers a slot that is done with its request to the read again.
    fn release(&mut self, slot: u32) {
        let target = self.slots[slot as usize].read_target();
        self.buffers.provide(target, READ_LEN as u32, slot as u16);
        self.provided += 1;
    }

    fn admit(&mut self, ring: &mut Ring, core: &RequestCore, slot: u32, phase: Phase) {
        let entry = &self.slots[slot as usize];
        let decoded = decode_message(entry.buffer.bytes(READ_OFFSET, entry.len));
        let started = match core.admission(&decoded, phase) {
            Admission::Hold => return self.held.push(slot),
            Admission::Serve => core.begin(decoded, Via::Legacy, self.carrier(ring, slot)),
            Admission::Refuse => core.refuse(decoded, Via::Legacy),
        };
        let Some((unique, outcome)) = started else {
            self.release(slot);
            return;
        };
        let entry = &mut self.slots[slot as usize];
        entry.unique = unique;
        entry.is_init = matches!(decoded, Ok(Request { operation: Operation::Init { .. }, .. }));
        self.follow(ring, core, slot, outcome);
    }

    /// The image I/O of a slot's request completed.
    pub fn on_image_io(&mut self, ring: &mut Ring, core: &RequestCore, slot: u32, result: i32) {
        let outcome = core.resume(result, self.carrier(ring, slot));
        self.follow(ring, core, slot, outcome);
    }

    /// A reply was written, or refused: ENOENT when the caller was
    /// interrupted and the kernel forgot the request, ENODEV when the
    /// connection is gone. Returns true when it was INIT's reply.
    pub fn on_reply(&mut self, core: &RequestCore, slot: u32, result: i32) -> bool {
        match -result {
            libc::ENODEV => core.status.disconnected(),
            errno if errno > 0 && errno != libc::ENOENT => core.reply_failed(errno),
            _ => {}
        }
        core.counters.local().request_finished();
        self.release(slot);
        std::mem::take(&mut self.slots[slot as usize].is_init)
    }

    fn carrier<'a>(&'a mut self, ring: &'a mut Ring, slot: u32) -> Carrier<'a> {
        let entry = &mut self.slots[slot as usize];
        Carrier {
            ring,
            token: Token::new(kind::IMAGE_IO, self.channel, slot),
            buffer: entry.payload(),
            io: &mut entry.io,
        }
    }

    fn follow(&mut self, ring: &mut Ring, core: &RequestCore, slot: u32, outcome: Outcome) {
        match outcome {
            Outcome::Reply(reply) => self.send_reply(ring, slot, reply),
            Outcome::NoReply => {
                core.counters.local().request_finished();
                self.release(slot);
            }
            Outcome::Pending => {}
        }
    }

    fn send_reply(&mut self, ring: &mut Ring, slot_index: u32, reply: Reply) {
        let slot = &mut self.slots[slot_index as usize];
        let header = reply.out_header(slot.unique);
        let args = reply.args();
        slot.reply_head[..OUT_HEADER_SIZE].copy_from_slice(header.as_slice());
        slot.reply_head[OUT_HEADER_SIZE..OUT_HEADER_SIZE + args.len()].copy_from_slice(args);
        slot.iov[0] =
            libc::iovec { iov_base: slot.reply_head.as_mut_ptr().cast(), iov_len: OUT_HEADER_SIZE + args.len() };
        slot.iov[1] = libc::iovec { iov_base: slot.payload().cast(), iov_len: reply.data_len() as usize };
        let count = if reply.data_len() > 0 { 2 } else { 1 };
        let write = opcode::Writev::new(types::Fd(self.fd.as_raw_fd()), slot.iov.as_ptr(), count).build();
        ring.push(write, Token::new(kind::REPLY, self.channel, slot_index));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_data_lands_on_a_page_and_the_largest_request_fits_the_slot() {
        let slot = Slot::new();
        let target = slot.read_target() as usize;
        assert_eq!((target + WRITE_HEADER_SIZE) % PAGE, 0);
        assert_eq!(target + WRITE_HEADER_SIZE, slot.payload() as usize);
        assert_eq!(READ_OFFSET + READ_LEN, slot.buffer.len());
    }
}

//! The classic transport: requests read from a /dev/fuse descriptor (one
//! cloned fd per I/O thread), replies written back to the same fd, both as
//! SQEs on the thread's ring. One read is armed at a time; many requests can
//! be in flight in the other slots while their image I/O runs. The read
//! stays armed while paused (requests are held until resumed) and while
//! halted (they are answered EIO), so that the end of the connection is
//! always seen.

use crate::export::io::ImageIo;
use crate::export::{Export, Step};
use crate::image::describe;
use crate::protocol::abi::{MAX_WRITE, OUT_HEADER_SIZE, WRITE_HEADER_SIZE};
use crate::protocol::request::decode_message;
use crate::protocol::{Operation, Reply, Request};
use crate::runtime::request::{self, Outcome};
use crate::runtime::buffer::{AlignedBuffer, PAGE};
use crate::runtime::queue::Queue;
use crate::runtime::token::{encode, Tag};
use crate::transport::uring::Admission;
use io_uring::{opcode, types};
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
const REPLY_HEAD_LEN: usize = OUT_HEADER_SIZE + 104;

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
}

pub struct LegacyChannel {
    index: u16,
    fd: OwnedFd,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// The slot whose read is outstanding.
    armed: Option<u32>,
    cancelling: bool,
    /// Slots holding a request that arrived while paused.
    deferred: Vec<u32>,
}

impl LegacyChannel {
    pub fn new(index: u16, fd: OwnedFd) -> Self {
        let slots = (0..SLOTS_PER_CHANNEL).map(|_| Slot::new()).collect();
        let free = (0..SLOTS_PER_CHANNEL as u32).rev().collect();
        Self { index, fd, slots, free, armed: None, cancelling: false, deferred: Vec::new() }
    }

    /// Keeps one read outstanding while the connection is read (`accept`),
    /// cancels it when not, and takes up requests held while paused.
    pub fn refresh(&mut self, queue: &mut Queue, export: &Export, accept: bool, admission: Admission) {
        if admission != Admission::Defer {
            for slot in std::mem::take(&mut self.deferred) {
                self.admit(queue, export, slot, admission);
            }
        }
        match (accept, self.armed) {
            (true, None) => {
                let Some(slot) = self.free.pop() else { return };
                let buffer = self.slots[slot as usize].buffer.as_ptr();
                // SAFETY: READ_OFFSET + READ_LEN is the buffer's size.
                let target = unsafe { buffer.add(READ_OFFSET) };
                let read = opcode::Read::new(types::Fd(self.fd.as_raw_fd()), target, READ_LEN as u32)
                    .build()
                    .user_data(encode(Tag::FuseRead, self.index, slot));
                queue.push(read);
                self.armed = Some(slot);
            }
            (false, Some(slot)) if !self.cancelling => {
                let cancel = opcode::AsyncCancel::new(encode(Tag::FuseRead, self.index, slot))
                    .build()
                    .user_data(encode(Tag::Cancel, self.index, slot));
                queue.push(cancel);
                self.cancelling = true;
            }
            _ => {}
        }
    }

    /// A read of /dev/fuse completed.
    pub fn on_read(&mut self, queue: &mut Queue, export: &Export, slot: u32, result: i32, admission: Admission) {
        self.armed = None;
        self.cancelling = false;
        if result < 0 {
            self.free.push(slot);
            match -result {
                libc::EAGAIN | libc::EINTR | libc::ENOENT | libc::ECANCELED => {}
                libc::ENODEV => export.connection_lost(),
                errno => export.halt(format!("reading /dev/fuse failed: {}", describe(&io::Error::from_raw_os_error(errno)))),
            }
            return;
        }
        self.slots[slot as usize].len = result as usize;
        self.admit(queue, export, slot, admission);
    }

    fn admit(&mut self, queue: &mut Queue, export: &Export, slot: u32, admission: Admission) {
        let message = self.slots[slot as usize].buffer.bytes(READ_OFFSET, self.slots[slot as usize].len);
        let decoded = decode_message(message);
        let started = match admission {
            Admission::Defer => return self.deferred.push(slot),
            Admission::Serve => request::begin(export, decoded, false),
            Admission::Refuse => request::refuse(export, decoded, false),
        };
        let Some((unique, step)) = started else {
            self.free.push(slot);
            return;
        };
        let entry = &mut self.slots[slot as usize];
        entry.unique = unique;
        entry.is_init = matches!(decoded, Ok(Request { operation: Operation::Init { .. }, .. }));
        self.run(queue, export, slot, step);
    }

    /// The image I/O of a slot's request completed.
    pub fn on_image_io(&mut self, queue: &mut Queue, export: &Export, slot_index: u32, result: i32) {
        let slot = &mut self.slots[slot_index as usize];
        let token = encode(Tag::ImageIo, self.index, slot_index);
        let payload = slot.payload();
        let outcome = request::resume(queue, export, &mut slot.io, result, payload, token);
        self.follow(queue, export, slot_index, outcome);
    }

    /// A reply was written (or refused: ENOENT when the caller was
    /// interrupted). Returns true when it was INIT's reply.
    pub fn on_reply(&mut self, export: &Export, slot: u32, result: i32) -> bool {
        if result == -libc::ENODEV {
            export.connection_lost();
        }
        export.counters.local().request_finished();
        self.free.push(slot);
        std::mem::take(&mut self.slots[slot as usize].is_init)
    }

    fn run(&mut self, queue: &mut Queue, export: &Export, slot_index: u32, step: Step) {
        let slot = &mut self.slots[slot_index as usize];
        let token = encode(Tag::ImageIo, self.index, slot_index);
        let payload = slot.payload();
        let outcome = request::drive(queue, export, step, &mut slot.io, payload, token);
        self.follow(queue, export, slot_index, outcome);
    }

    fn follow(&mut self, queue: &mut Queue, export: &Export, slot_index: u32, outcome: Outcome) {
        match outcome {
            Outcome::Reply(reply) => self.send_reply(queue, slot_index, reply),
            Outcome::NoReply => {
                export.counters.local().request_finished();
                self.free.push(slot_index);
            }
            Outcome::InProgress => {}
        }
    }

    fn send_reply(&mut self, queue: &mut Queue, slot_index: u32, reply: Reply) {
        let slot = &mut self.slots[slot_index as usize];
        let header = reply.out_header(slot.unique);
        let args = reply.args();
        slot.reply_head[..OUT_HEADER_SIZE].copy_from_slice(header.as_slice());
        slot.reply_head[OUT_HEADER_SIZE..OUT_HEADER_SIZE + args.len()].copy_from_slice(args);
        slot.iov[0] = libc::iovec {
            iov_base: slot.reply_head.as_mut_ptr().cast(),
            iov_len: OUT_HEADER_SIZE + args.len(),
        };
        slot.iov[1] = libc::iovec { iov_base: slot.payload().cast(), iov_len: reply.data_len() as usize };
        let count = if reply.data_len() > 0 { 2 } else { 1 };
        let write = opcode::Writev::new(types::Fd(self.fd.as_raw_fd()), slot.iov.as_ptr(), count)
            .build()
            .user_data(encode(Tag::Reply, self.index, slot_index));
        queue.push(write);
    }
}

//! One I/O thread: its ring, its transport channels, and the loop that
//! turns completions into the next step of each request.

use super::control::Control;
use super::queue::Queue;
use super::token::{decode, encode, Tag};
use crate::export::Export;
use crate::transport::legacy::LegacyChannel;
use io_uring::{opcode, types};
use std::os::fd::AsRawFd;
use std::sync::Arc;

pub struct Worker {
    thread: usize,
    queue: Queue,
    export: Arc<Export>,
    control: Arc<Control>,
    legacy: Vec<LegacyChannel>,
    wake_buffer: Box<u64>,
    wake_armed: bool,
    wake_cancelled: bool,
}

impl Worker {
    pub fn new(thread: usize, queue: Queue, export: Arc<Export>, control: Arc<Control>, legacy: Vec<LegacyChannel>) -> Self {
        Self { thread, queue, export, control, legacy, wake_buffer: Box::new(0), wake_armed: false, wake_cancelled: false }
    }

    pub fn run(mut self) {
        let mut completions = Vec::with_capacity(256);
        loop {
            self.refresh();
            if self.control.is_stopping() && self.queue.outstanding() == 0 {
                return;
            }
            self.queue.submit(1);
            self.queue.reap(&mut completions);
            for &(user_data, result) in &completions {
                self.dispatch(user_data, result);
            }
        }
    }

    /// Whether new requests are taken right now.
    fn accepting(&self) -> bool {
        !self.control.is_paused()
            && !self.control.is_stopping()
            && !self.export.is_halted()
            && !self.export.connection_is_lost()
    }

    fn refresh(&mut self) {
        let accept = self.accepting();
        for channel in &mut self.legacy {
            channel.refresh(&mut self.queue, accept);
        }
        let stopping = self.control.is_stopping();
        let wake = encode(Tag::Wake, 0, 0);
        if !self.wake_armed && !stopping {
            let fd = types::Fd(self.control.waker(self.thread).as_raw_fd());
            let read = opcode::Read::new(fd, (&mut *self.wake_buffer as *mut u64).cast(), 8).build().user_data(wake);
            self.queue.push(read);
            self.wake_armed = true;
        } else if self.wake_armed && stopping && !self.wake_cancelled {
            self.queue.push(opcode::AsyncCancel::new(wake).build().user_data(encode(Tag::Cancel, 0, 0)));
            self.wake_cancelled = true;
        }
    }

    fn dispatch(&mut self, user_data: u64, result: i32) {
        let Some((tag, channel, slot)) = decode(user_data) else { return };
        let export = &*self.export;
        let queue = &mut self.queue;
        match tag {
            Tag::FuseRead => self.legacy[channel as usize].on_read(queue, export, slot, result),
            Tag::ImageIo => self.legacy[channel as usize].on_image_io(queue, export, slot, result),
            Tag::Reply => self.legacy[channel as usize].on_reply(export, slot, result),
            Tag::Wake => self.wake_armed = false,
            Tag::Cancel | Tag::RingCommand => {}
        }
    }
}

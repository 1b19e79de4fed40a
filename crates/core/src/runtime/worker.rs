//! One I/O thread: its ring, its transport channels, and the loop that
//! turns completions into the next step of each request.

use super::control::Control;
use super::queue::Queue;
use super::token::{decode, encode, Tag};
use crate::export::Export;
use crate::transport::legacy::LegacyChannel;
use crate::transport::uring::{Admission, RingEvent, RingQueue, RingSetup};
use io_uring::{opcode, types};
use std::os::fd::AsRawFd;
use std::sync::Arc;

/// Token channel of the thread's /dev/fuse descriptor; ring queues follow.
const LEGACY_CHANNEL: u16 = 0;

pub struct Worker {
    thread: usize,
    queue: Queue,
    export: Arc<Export>,
    control: Arc<Control>,
    legacy: LegacyChannel,
    rings: Vec<RingQueue>,
    ring_setup: Option<Arc<RingSetup>>,
    registered: bool,
    wake_buffer: Box<u64>,
    wake_armed: bool,
    wake_cancelled: bool,
    completions: Vec<(u64, i32)>,
}

/// The token channel of a thread's n-th ring queue.
pub fn ring_channel(n: usize) -> u16 {
    LEGACY_CHANNEL + 1 + n as u16
}

impl Worker {
    pub fn new(
        thread: usize,
        queue: Queue,
        export: Arc<Export>,
        control: Arc<Control>,
        legacy: LegacyChannel,
        rings: Vec<RingQueue>,
        ring_setup: Option<Arc<RingSetup>>,
    ) -> Self {
        Self {
            thread,
            queue,
            export,
            control,
            legacy,
            rings,
            ring_setup,
            registered: false,
            wake_buffer: Box::new(0),
            wake_armed: false,
            wake_cancelled: false,
            completions: Vec::with_capacity(256),
        }
    }

    pub fn run(mut self) {
        self.pin_to_queue_cpu();
        loop {
            self.refresh();
            if self.control.is_stopping() && self.queue.outstanding() == 0 {
                return;
            }
            self.queue.submit(1);
            self.process_completions();
        }
    }

    /// A thread that serves the queue of one CPU runs on that CPU: the
    /// kernel routes a caller's requests to its own CPU's queue.
    fn pin_to_queue_cpu(&self) {
        let Some(first) = self.rings.first() else { return };
        if self.rings.iter().any(|r| r.qid() != first.qid()) {
            return;
        }
        // SAFETY: cpu_set_t is plain data; CPU_SET stays within it.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(first.qid() as usize, &mut set);
            // An offline CPU refuses: then the thread simply floats.
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }

    fn process_completions(&mut self) {
        let mut completions = std::mem::take(&mut self.completions);
        self.queue.reap(&mut completions);
        for &(user_data, result) in &completions {
            self.dispatch(user_data, result);
        }
        self.completions = completions;
    }

    /// What happens to a request that arrives right now.
    fn admission(&self) -> Admission {
        if self.control.is_stopping() {
            Admission::Refuse
        } else if self.control.is_paused() {
            Admission::Defer
        } else {
            Admission::Serve
        }
    }

    fn refresh(&mut self) {
        let export = &*self.export;
        let admission = self.admission();
        let accept = admission != Admission::Refuse && !export.connection_is_lost();
        self.legacy.refresh(&mut self.queue, export, accept, admission);
        for ring in &mut self.rings {
            ring.refresh(&mut self.queue, export, admission);
        }
        self.register_rings();
        self.arm_wake();
    }

    /// REGISTERs every entry of this thread's ring queues once INIT's reply
    /// is out. Submitted at once so that a refusal is seen before `start()`
    /// reports the transport.
    fn register_rings(&mut self) {
        let Some(setup) = self.ring_setup.clone() else { return };
        if self.registered || self.rings.is_empty() || !setup.may_register(&self.export) {
            return;
        }
        self.registered = true;
        for ring in &mut self.rings {
            ring.register(&mut self.queue);
        }
        self.queue.submit(0);
        self.process_completions();
        setup.thread_registered();
    }

    fn arm_wake(&mut self) {
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
        let admission = self.admission();
        let export = &*self.export;
        let queue = &mut self.queue;
        let ring = (channel as usize).wrapping_sub(1);
        match tag {
            Tag::FuseRead => self.legacy.on_read(queue, export, slot, result, admission),
            Tag::ImageIo if channel == LEGACY_CHANNEL => self.legacy.on_image_io(queue, export, slot, result),
            Tag::ImageIo => self.rings[ring].on_image_io(queue, export, slot, result),
            Tag::Reply => {
                let was_init = self.legacy.on_reply(export, slot, result);
                if let (true, Some(setup)) = (was_init, &self.ring_setup) {
                    setup.init_replied();
                    self.control.wake_all();
                }
            }
            Tag::RingCommand => {
                match self.rings[ring].on_command(queue, export, slot, result, admission) {
                    RingEvent::None => {}
                    RingEvent::Disconnected => export.connection_lost(),
                    RingEvent::RegisterFailed(reason) => {
                        if let Some(setup) = &self.ring_setup {
                            setup.register_failed(export, reason);
                        }
                    }
                    RingEvent::Fatal(reason) => export.halt(reason),
                }
            }
            Tag::Wake => self.wake_armed = false,
            Tag::Cancel => {}
        }
    }
}

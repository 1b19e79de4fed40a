//! What one I/O thread serves: its /dev/fuse descriptor and the kernel FUSE
//! queues dealt to it. It is the owner of every SQE the thread's ring
//! carries for them, and routes each completion by its token's channel.

use super::fuse_queue::{FuseQueue, QueueEvent};
use super::kind;
use super::legacy::LegacyChannel;
use super::uring_setup::RingSetup;
use crate::image::ThreadImage;
use crate::request::RequestCore;
use crate::runtime::control::Phase;
use crate::runtime::ring::{Completion, Ring};
use crate::runtime::thread::{Next, Owner};
use std::sync::Arc;

/// Token channel of the thread's /dev/fuse descriptor; FUSE queues follow.
const LEGACY_CHANNEL: u16 = 0;

/// Token channel of the image backend's own SQEs (NBD's sockets), when it
/// has a part on this thread; the runtime keeps `u16::MAX`.
pub const IMAGE_CHANNEL: u16 = u16::MAX - 1;

/// The token channel of a thread's n-th FUSE queue.
pub fn queue_channel(n: usize) -> u16 {
    LEGACY_CHANNEL + 1 + n as u16
}

pub struct ThreadTransports {
    core: Arc<RequestCore>,
    legacy: LegacyChannel,
    queues: Vec<FuseQueue>,
    /// Present when FUSE-over-io_uring is wanted.
    ring_setup: Option<Arc<RingSetup>>,
    registration: Registration,
    /// The image backend's part on this thread, if it has one.
    image: Option<Box<dyn ThreadImage>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Registration {
    /// Until INIT's reply is out.
    Waiting,
    /// REGISTERs submitted; immediate refusals are reaped on the next turn.
    Submitted,
    Done,
}

impl ThreadTransports {
    pub fn new(
        core: Arc<RequestCore>,
        legacy: LegacyChannel,
        queues: Vec<FuseQueue>,
        ring_setup: Option<Arc<RingSetup>>,
        image: Option<Box<dyn ThreadImage>>,
    ) -> Self {
        let registration = if queues.is_empty() { Registration::Done } else { Registration::Waiting };
        Self { core, legacy, queues, ring_setup, registration, image }
    }

    /// The image backend's notices are warnings; its fatal error halts the
    /// export.
    fn image_outcome(core: &RequestCore, image: &mut dyn ThreadImage, outcome: Result<(), String>) {
        for notice in image.take_notices() {
            core.status.warn(notice.kind, notice.message);
        }
        if let Err(reason) = outcome {
            core.status.halt(reason);
        }
    }

    /// The CPU whose queue this thread serves alone, if it serves one CPU:
    /// the kernel routes a caller's requests to its own CPU's queue, so the
    /// thread runs best there.
    pub fn queue_cpu(&self) -> Option<usize> {
        let first = self.queues.first()?.qid();
        self.queues.iter().all(|q| q.qid() == first).then_some(first as usize)
    }

    /// REGISTERs every entry of this thread's queues once INIT's reply is
    /// out; the thread's loop then submits them at once and comes back, so
    /// that a refusal is seen before `start()` reports the transport.
    fn register(&mut self, ring: &mut Ring) -> Next {
        let Some(setup) = &self.ring_setup else { return Next::Wait };
        match self.registration {
            Registration::Waiting if setup.may_register(&self.core) => {
                for queue in &mut self.queues {
                    queue.register(ring);
                }
                self.registration = Registration::Submitted;
                Next::Poll
            }
            Registration::Submitted => {
                setup.thread_registered();
                self.registration = Registration::Done;
                Next::Wait
            }
            _ => Next::Wait,
        }
    }
}

impl Owner for ThreadTransports {
    fn prepare(&mut self, ring: &mut Ring, phase: Phase) -> Next {
        if let Some(image) = &mut self.image {
            let outcome = image.prepare(ring, phase);
            Self::image_outcome(&self.core, image.as_mut(), outcome);
        }
        self.legacy.prepare(ring, &self.core, phase);
        for queue in &mut self.queues {
            queue.admit_held(ring, &self.core, phase);
        }
        self.register(ring)
    }

    fn complete(&mut self, ring: &mut Ring, completion: Completion, phase: Phase) {
        let Completion { token, result, .. } = completion;
        let core = &*self.core;
        let slot = token.slot();
        let queue = (token.channel() as usize).wrapping_sub(1);
        if token.channel() == IMAGE_CHANNEL {
            if let Some(image) = &mut self.image {
                let outcome = image.complete(ring, token, result);
                Self::image_outcome(core, image.as_mut(), outcome);
            }
            return;
        }
        match (token.kind(), token.channel()) {
            (kind::FUSE_READ, _) => self.legacy.on_read(ring, core, completion, phase),
            (kind::IMAGE_IO, LEGACY_CHANNEL) => self.legacy.on_image_io(ring, core, slot, result),
            (kind::IMAGE_IO, _) => self.queues[queue].on_image_io(ring, core, slot, result),
            (kind::REPLY, _) => {
                let was_init = self.legacy.on_reply(core, slot, result);
                // Written, so the kernel has processed INIT's reply.
                if was_init && core.init_replied.set(()) {
                    if let Some(setup) = &self.ring_setup {
                        setup.wake_to_register();
                    }
                }
            }
            (kind::RING_COMMAND, _) => match self.queues[queue].on_command(ring, core, slot, result, phase) {
                QueueEvent::None => {}
                QueueEvent::Disconnected => core.status.disconnected(),
                QueueEvent::RegisterFailed(reason) => {
                    if let Some(setup) = &self.ring_setup {
                        setup.register_failed(core, reason);
                    }
                }
                QueueEvent::Fatal(reason) => core.status.halt(reason),
            },
            _ => {}
        }
    }
}

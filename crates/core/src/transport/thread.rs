//! What one I/O thread serves of one export: its /dev/fuse descriptor, the
//! kernel FUSE queues dealt to it, the image backend's part. It is the
//! owner (a guest of the thread) of every SQE the thread's ring carries
//! for them, and routes each completion by its token's channel; the REGISTER step (`registration.rs`) and the
//! backend's part (`image_part.rs`) have homes of their own.

use super::fuse_queue::{FuseQueue, QueueEvent};
use super::image_part::ImagePart;
use super::kind;
use super::legacy::LegacyChannel;
use super::registration::Registration;
use super::uring_setup::RingSetup;
use crate::image::ThreadImage;
use crate::request::counters::Counters;
use crate::request::RequestCore;
use crate::runtime::control::Phase;
use crate::runtime::ring::{Completion, Ring};
use crate::runtime::thread::{Next, Owner};
use crate::runtime::token::CHANNEL_MAX;
use std::sync::Arc;

/// Token channel of the thread's /dev/fuse descriptor; FUSE queues follow.
const LEGACY_CHANNEL: u16 = 0;

/// Token channel of the image backend's own SQEs (NBD's sockets), when it
/// has a part on this thread.
pub const IMAGE_CHANNEL: u16 = CHANNEL_MAX;

/// The token channel of a thread's n-th FUSE queue.
pub fn queue_channel(n: usize) -> u16 {
    LEGACY_CHANNEL + 1 + n as u16
}

pub struct ThreadTransports {
    core: Arc<RequestCore>,
    /// Which of the export's counter shards this thread counts in.
    shard: usize,
    legacy: LegacyChannel,
    queues: Vec<FuseQueue>,
    registration: Registration,
    image: Option<ImagePart>,
}

impl ThreadTransports {
    pub fn new(
        core: Arc<RequestCore>,
        shard: usize,
        legacy: LegacyChannel,
        queues: Vec<FuseQueue>,
        ring_setup: Option<Arc<RingSetup>>,
        image: Option<Box<dyn ThreadImage>>,
    ) -> Self {
        let registration = Registration::new(ring_setup, &queues);
        Self { core, shard, legacy, queues, registration, image: image.map(ImagePart::new) }
    }
}

impl Owner for ThreadTransports {
    fn prepare(&mut self, ring: &mut Ring, phase: Phase) -> Next {
        Counters::bind_current_thread(self.shard);
        if let Some(image) = &mut self.image {
            image.prepare(ring, phase, &self.core);
        }
        self.legacy.prepare(ring, &self.core, phase);
        for queue in &mut self.queues {
            queue.admit_held(ring, &self.core, phase);
        }
        self.registration.advance(&mut self.queues, ring, &self.core)
    }

    fn complete(&mut self, ring: &mut Ring, completion: Completion, phase: Phase) {
        Counters::bind_current_thread(self.shard);
        let Completion { token, result, .. } = completion;
        let core = &*self.core;
        let slot = token.slot();
        let queue = (token.channel() as usize).wrapping_sub(1);
        if token.channel() == IMAGE_CHANNEL {
            if let Some(image) = &mut self.image {
                image.complete(ring, token, result, core);
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
                    self.registration.init_replied();
                }
            }
            (kind::RING_COMMAND, _) => match self.queues[queue].on_command(ring, core, slot, result, phase) {
                QueueEvent::None => {}
                QueueEvent::Disconnected => core.status.disconnected(),
                QueueEvent::RegisterFailed(reason) => self.registration.failed(core, reason),
                QueueEvent::Fatal(reason) => core.status.halt(reason),
            },
            _ => {}
        }
    }
}

//! FUSE-over-io_uring's REGISTER step on one I/O thread: every entry of the
//! thread's queues is registered once INIT's reply is out (the kernel takes
//! none before), and the thread's loop comes straight back so that an
//! immediate refusal is seen before `start()` reports the transport.

use super::fuse_queue::FuseQueue;
use super::uring_setup::RingSetup;
use crate::request::RequestCore;
use crate::runtime::ring::Ring;
use crate::runtime::thread::Next;
use std::sync::Arc;

pub struct Registration {
    /// Present when FUSE-over-io_uring is wanted.
    setup: Option<Arc<RingSetup>>,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Until INIT's reply is out.
    Waiting,
    /// REGISTERs submitted; immediate refusals are reaped on the next turn.
    Submitted,
    Done,
}

impl Registration {
    /// A thread with no queues has nothing to register.
    pub fn new(setup: Option<Arc<RingSetup>>, queues: &[FuseQueue]) -> Self {
        let state = if queues.is_empty() { State::Done } else { State::Waiting };
        Self { setup, state }
    }

    /// Before the thread waits: REGISTERs `queues` when their time has come.
    pub fn advance(&mut self, queues: &mut [FuseQueue], ring: &mut Ring, core: &RequestCore) -> Next {
        let Some(setup) = &self.setup else { return Next::Wait };
        match self.state {
            State::Waiting if setup.may_register(core) => {
                for queue in queues {
                    queue.register(ring);
                }
                self.state = State::Submitted;
                Next::Poll
            }
            State::Submitted => {
                setup.thread_registered();
                self.state = State::Done;
                Next::Wait
            }
            _ => Next::Wait,
        }
    }

    /// INIT's reply was written: the kernel has processed it, every thread
    /// may register.
    pub fn init_replied(&self) {
        if let Some(setup) = &self.setup {
            setup.wake_to_register();
        }
    }

    /// The kernel refused a REGISTER.
    pub fn failed(&self, core: &RequestCore, reason: String) {
        if let Some(setup) = &self.setup {
            setup.register_failed(core, reason);
        }
    }
}

//! One I/O thread's loop: submit, wait, and hand each completion back to
//! the owner that pushed its SQE. The loop knows no transport and no image
//! backend; it knows the phase, its wake-up eventfd and the `Owner` interface.

use super::control::{Control, Phase};
use super::poll::AdaptivePoll;
use super::ring::{Completion, Ring};
use super::token::{Token, RUNTIME_CHANNEL};
use io_uring::{opcode, types};
use std::mem::ManuallyDrop;
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

/// Whoever puts SQEs on a thread's ring gets their completions back here.
pub trait Owner {
    /// Called before the thread waits: arm reads, take up held requests.
    /// `Next::Poll` asks for another turn without waiting (to see at once
    /// whether what was just submitted was refused).
    fn prepare(&mut self, ring: &mut Ring, phase: Phase) -> Next;

    /// A completion of an SQE this owner pushed.
    fn complete(&mut self, ring: &mut Ring, completion: Completion, phase: Phase);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Wait,
    Poll,
}

const WAKE: Token = Token::new(1, RUNTIME_CHANNEL, 0);
const CANCEL_WAKE: Token = Token::new(2, RUNTIME_CHANNEL, 0);

/// Serves until stopped and every SQE has completed, so that no memory the
/// kernel may write into is released while an SQE still points at it.
/// Before sleeping it busy-polls for up to `poll_max` (see `AdaptivePoll`).
pub fn serve(ring: &mut Ring, owner: &mut dyn Owner, control: &Control, thread: usize, poll_max: Duration) {
    let mut poll = AdaptivePoll::new(poll_max);
    let waker = types::Fd(control.waker(thread).as_raw_fd());
    let (mut wake_armed, mut wake_cancelled) = (false, false);
    let mut completions = Vec::with_capacity(256);
    loop {
        let phase = control.phase();
        let next = owner.prepare(ring, phase);
        let stopping = phase == Phase::Stopping;
        if !wake_armed && !stopping {
            let target = ring.wake_target();
            ring.push(opcode::Read::new(waker, target, 8).build(), WAKE);
            wake_armed = true;
        } else if wake_armed && stopping && !wake_cancelled {
            ring.push(opcode::AsyncCancel::new(WAKE.user_data()).build(), CANCEL_WAKE);
            wake_cancelled = true;
        }
        if stopping && ring.outstanding() == 0 {
            return;
        }
        match next {
            Next::Wait => poll.wait(ring),
            Next::Poll => ring.submit(0),
        }
        ring.reap(&mut completions);
        for &completion in &completions {
            if completion.token == WAKE {
                wake_armed = false;
            } else if completion.token.channel() != RUNTIME_CHANNEL {
                owner.complete(ring, completion, phase);
            }
        }
    }
}

/// Runs `body` on `state`. If it panics, `state` is leaked, never dropped:
/// its ring may still have SQEs in flight and its buffers may be registered
/// with the kernel, which can write into them until the connection ends.
/// Freeing them would let the kernel write into freed memory; keeping them
/// costs only memory in a process that is about to halt anyway.
pub fn contain_panic<T>(state: T, body: impl FnOnce(&mut T)) -> Result<T, String> {
    let mut state = ManuallyDrop::new(state);
    match catch_unwind(AssertUnwindSafe(|| body(&mut state))) {
        Ok(()) => Ok(ManuallyDrop::into_inner(state)),
        Err(panic) => Err(panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    #[test]
    fn a_panic_leaks_the_state_instead_of_dropping_it() {
        let witness = Rc::new(());
        let state = witness.clone();
        let outcome = contain_panic(state, |_| panic!("boom"));
        assert_eq!(outcome.err().as_deref(), Some("boom"));
        assert_eq!(Rc::strong_count(&witness), 2, "the state was dropped during the unwind");
        let outcome = contain_panic(witness.clone(), |_| {});
        drop(outcome);
        assert_eq!(Rc::strong_count(&witness), 2);
    }
}

//! How the binding steers an export's part on each of its I/O threads:
//! pause (drain), detach (after the unmount), then stop.
//! Each thread sleeps in io_uring_enter; an eventfd read on its ring wakes it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

/// What the threads are asked to do with requests that arrive now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    Running = 0,
    /// Draining: hold new requests that move data; in-flight ones finish.
    Paused = 1,
    /// Unmounted (lazily): the file may still be open somewhere, but no data
    /// moves any more; what was held, and what comes, fails.
    Detached = 2,
    /// Finish what is in flight, refuse the rest, then end the threads.
    Stopping = 3,
}

/// One I/O thread's wake-up: an eventfd its ring keeps a read armed on.
pub struct Waker(OwnedFd);

impl Waker {
    pub fn new() -> io::Result<Self> {
        // SAFETY: eventfd returns a fresh descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is ours.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: an 8-byte write to our eventfd; it cannot block short of
        // 2^64 wake-ups.
        unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}

impl AsRawFd for Waker {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

/// One export's phase, and the wake-ups of the threads that serve it.
pub struct Control {
    phase: AtomicU8,
    wakers: Vec<Arc<Waker>>,
}

impl Control {
    pub fn new(wakers: Vec<Arc<Waker>>) -> Self {
        Self { phase: AtomicU8::new(Phase::Running as u8), wakers }
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Running,
            1 => Phase::Paused,
            2 => Phase::Detached,
            _ => Phase::Stopping,
        }
    }

    pub fn pause(&self) {
        self.move_to(Phase::Paused);
    }

    pub fn detach(&self) {
        self.move_to(Phase::Detached);
    }

    pub fn stop(&self) {
        self.move_to(Phase::Stopping);
    }

    /// Phases only move forward: a late pause does not undo a detach or a stop.
    fn move_to(&self, phase: Phase) {
        let _ = self.phase.fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
            (current < phase as u8).then_some(phase as u8)
        });
        self.wake_all();
    }

    /// Makes every thread look at the phase (and whatever else changed) again.
    pub fn wake_all(&self) {
        for waker in &self.wakers {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_only_move_forward() {
        let control = Control::new(vec![Arc::new(Waker::new().unwrap())]);
        control.pause();
        assert_eq!(control.phase(), Phase::Paused);
        control.detach();
        control.pause();
        assert_eq!(control.phase(), Phase::Detached);
        control.stop();
        control.pause();
        control.detach();
        assert_eq!(control.phase(), Phase::Stopping);
    }
}

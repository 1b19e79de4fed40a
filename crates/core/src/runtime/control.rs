//! How the binding steers the I/O threads: pause (drain), detach (after the
//! unmount), then stop.
//! Each thread sleeps in io_uring_enter; an eventfd read on its ring wakes it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU8, Ordering};

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

pub struct Control {
    phase: AtomicU8,
    wakers: Vec<OwnedFd>,
}

impl Control {
    pub fn new(threads: usize) -> io::Result<Self> {
        let wakers = (0..threads)
            .map(|_| {
                // SAFETY: eventfd returns a fresh descriptor or -1.
                let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                // SAFETY: fd is ours.
                Ok(unsafe { OwnedFd::from_raw_fd(fd) })
            })
            .collect::<io::Result<_>>()?;
        Ok(Self { phase: AtomicU8::new(Phase::Running as u8), wakers })
    }

    pub fn waker(&self, thread: usize) -> &OwnedFd {
        &self.wakers[thread]
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
            let one: u64 = 1;
            // SAFETY: an 8-byte write to our eventfd; it cannot block short of
            // 2^64 wake-ups.
            unsafe { libc::write(waker.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_only_move_forward() {
        let control = Control::new(1).unwrap();
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

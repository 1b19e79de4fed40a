//! How the binding steers the I/O threads: pause (drain), resume, stop.
//! Each thread sleeps in io_uring_enter; an eventfd read on its ring wakes it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

pub struct Control {
    paused: AtomicBool,
    stopping: AtomicBool,
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
        Ok(Self { paused: AtomicBool::new(false), stopping: AtomicBool::new(false), wakers })
    }

    pub fn waker(&self, thread: usize) -> &OwnedFd {
        &self.wakers[thread]
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Stop fetching new requests; the ones in flight finish.
    pub fn pause(&self) {
        self.paused.store(true, Ordering::Release);
        self.wake_all();
    }

    pub fn resume(&self) {
        self.paused.store(false, Ordering::Release);
        self.wake_all();
    }

    /// Finish what is in flight, then end the threads.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.wake_all();
    }

    pub fn wake_all(&self) {
        for waker in &self.wakers {
            let one: u64 = 1;
            // SAFETY: an 8-byte write to our eventfd; it cannot block short of
            // 2^64 wake-ups.
            unsafe { libc::write(waker.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }
}

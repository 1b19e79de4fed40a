//! Busy-polling before an I/O thread sleeps. Waking a sleeping thread costs
//! tens of microseconds on a virtual machine's idle CPU, more than a FUSE
//! round trip on a memory-backed image: at iodepth 1, every request paid it
//! twice (the request arriving, the image transfer finishing). A thread whose
//! next completion tends to come soon instead asks the ring for it in a loop,
//! yielding the CPU to anything runnable between tries, for at most a
//! window; then it sleeps.
//!
//! The window adapts much as QEMU's iothreads adapt theirs (poll-max-ns):
//! it doubles while what came after a sleep came within the maximum, stays
//! while polling catches the completions, and halves after each wait longer
//! than the maximum, down to nothing, so that an idle export stops spinning
//! after a few waits while one late completion under load costs little.

use super::ring::Ring;
use std::time::{Duration, Instant};

/// Where a window starts growing from.
const FIRST_WINDOW: Duration = Duration::from_micros(4);

pub struct AdaptivePoll {
    max: Duration,
    window: Duration,
}

impl AdaptivePoll {
    /// `max`: the longest window; zero never polls.
    pub fn new(max: Duration) -> Self {
        Self { max, window: Duration::ZERO }
    }

    /// A new longest window (the thread's guests changed).
    pub fn set_max(&mut self, max: Duration) {
        self.max = max;
        self.window = self.window.min(max);
    }

    /// Submits what is queued and returns once a completion is ready.
    pub fn wait(&mut self, ring: &mut Ring) {
        if self.max.is_zero() {
            ring.submit(1);
            return;
        }
        let start = Instant::now();
        let caught = !self.window.is_zero() && Self::poll(ring, start + self.window);
        if !caught {
            ring.submit(1);
        }
        self.window = next_window(self.window, self.max, start.elapsed(), caught);
    }

    /// Whether a completion came before `deadline`.
    fn poll(ring: &mut Ring, deadline: Instant) -> bool {
        loop {
            // Runs deferred task work, which is what posts the completions.
            ring.submit(0);
            if ring.has_completions() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            // SAFETY: no arguments; it only lets another runnable thread in.
            unsafe { libc::sched_yield() };
        }
    }
}

/// The window after a wait of `waited` (polling and sleeping) that polling
/// for `window` did or did not catch.
fn next_window(window: Duration, max: Duration, waited: Duration, caught: bool) -> Duration {
    if caught {
        window
    } else if waited > max {
        let half = window / 2;
        if half < FIRST_WINDOW {
            Duration::ZERO
        } else {
            half
        }
    } else if window.is_zero() {
        FIRST_WINDOW.min(max)
    } else {
        (window * 2).min(max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_micros(100);
    const fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn the_window_grows_while_completions_come_within_the_maximum() {
        let mut window = Duration::ZERO;
        let mut seen = Vec::new();
        for _ in 0..7 {
            window = next_window(window, MAX, us(70), false);
            seen.push(window.as_micros());
        }
        assert_eq!(seen, [4, 8, 16, 32, 64, 100, 100]);
    }

    #[test]
    fn a_window_that_catches_completions_stays() {
        assert_eq!(next_window(us(64), MAX, us(30), true), us(64));
    }

    #[test]
    fn long_waits_shrink_the_window_to_nothing() {
        let mut window = MAX;
        let mut seen = Vec::new();
        for _ in 0..6 {
            window = next_window(window, MAX, us(5_000), false);
            seen.push(window.as_micros());
        }
        assert_eq!(seen, [50, 25, 12, 6, 0, 0]);
    }

    #[test]
    fn a_small_maximum_caps_the_first_window() {
        assert_eq!(next_window(Duration::ZERO, us(2), us(1), false), us(2));
    }
}

//! A discard frees clusters, and a freed cluster may soon hold other data.
//! A write that looked its cluster up before the discard and lands after it
//! would then overwrite that other data (imago's `discard_*_unsafe` caveat).
//! So writes between their lookup and their data landing are counted, and a
//! discard waits until none is in flight; writes that start meanwhile wait
//! for the discard. Allocations on the workers count the same way.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

#[derive(Default)]
pub struct DiscardGuard {
    writers: AtomicUsize,
    discards: AtomicUsize,
}

const NAP: Duration = Duration::from_micros(50);

impl DiscardGuard {
    /// Counts a write in; false (and not counted) while a discard runs.
    pub fn try_enter_write(&self) -> bool {
        self.writers.fetch_add(1, SeqCst);
        if self.discards.load(SeqCst) == 0 {
            return true;
        }
        self.leave_write();
        false
    }

    pub fn leave_write(&self) {
        self.writers.fetch_sub(1, SeqCst);
    }

    /// On a worker: waits for running discards, then counts the write in.
    pub fn enter_write_waiting(&self) {
        while !self.try_enter_write() {
            std::thread::sleep(NAP);
        }
    }

    /// On a worker: returns once no discard runs.
    pub fn wait_for_discards(&self) {
        while self.discards.load(SeqCst) > 0 {
            std::thread::sleep(NAP);
        }
    }

    /// On a worker: runs `discard` once no counted write is in flight. Those
    /// are ring transfers and running allocations, which end on their own.
    pub fn discard<T>(&self, discard: impl FnOnce() -> T) -> T {
        self.discards.fetch_add(1, SeqCst);
        while self.writers.load(SeqCst) > 0 {
            std::thread::sleep(NAP);
        }
        let result = discard();
        self.discards.fetch_sub(1, SeqCst);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    #[test]
    fn a_discard_waits_for_writes_in_flight_and_new_writes_wait_for_it() {
        let guard = Arc::new(DiscardGuard::default());
        assert!(guard.try_enter_write());
        let discarded = Arc::new(AtomicBool::new(false));
        let (g, d) = (guard.clone(), discarded.clone());
        let discard = std::thread::spawn(move || g.discard(|| d.store(true, SeqCst)));
        while guard.discards.load(SeqCst) == 0 {
            std::thread::yield_now();
        }
        std::thread::sleep(Duration::from_millis(20));
        assert!(!discarded.load(SeqCst), "the discard ran while a write was in flight");
        assert!(!guard.try_enter_write(), "a new write started during a discard");
        guard.leave_write();
        discard.join().unwrap();
        assert!(discarded.load(SeqCst));
        assert!(guard.try_enter_write());
    }
}

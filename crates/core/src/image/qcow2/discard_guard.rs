//! A discard frees clusters, and a freed cluster may soon hold other data.
//! A transfer that looked its cluster up before the discard and runs after
//! it would then touch that other data (imago's `discard_*_unsafe` caveat):
//! a write would overwrite it, a read would return it as its own. So reads
//! and writes between their lookup and their data landing are counted, and
//! a discard waits until none is in flight; transfers that start meanwhile
//! wait for the discard. Allocations and compressed reads on the workers
//! count the same way.
//!
//! The transfers' side is two atomics, with no lock: discards are rare.
//! Whoever waits (a discard for the transfers, a transfer for the
//! discards) sleeps on a condition variable, woken by the last one out.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Condvar, Mutex};

#[derive(Default)]
pub struct DiscardGuard {
    /// Reads and writes between their lookup and their data landing.
    transfers: AtomicUsize,
    /// Discards waiting or running.
    discards: AtomicUsize,
    /// Held only to wait and to wake: counts change outside it, and a
    /// change that may end a wait takes it before waking, so that no wake-up
    /// falls between a waiter's check and its sleep.
    sleep: Mutex<()>,
    woken: Condvar,
}

impl DiscardGuard {
    /// Counts a transfer in; false (and not counted) while a discard waits or runs.
    pub fn try_enter(&self) -> bool {
        self.transfers.fetch_add(1, SeqCst);
        if self.discards.load(SeqCst) == 0 {
            return true;
        }
        self.leave();
        false
    }

    pub fn leave(&self) {
        if self.transfers.fetch_sub(1, SeqCst) == 1 && self.discards.load(SeqCst) > 0 {
            self.wake();
        }
    }

    /// On a worker: waits for discards, then counts the transfer in.
    pub fn enter_waiting(&self) {
        while !self.try_enter() {
            self.wait_for_discards();
        }
    }

    /// On a worker: returns once no discard waits or runs.
    pub fn wait_for_discards(&self) {
        self.wait_while(|| self.discards.load(SeqCst) > 0);
    }

    /// On a worker: runs `discard` once no counted transfer is in flight.
    /// Those are ring transfers and running jobs, which end on their own.
    pub fn discard<T>(&self, discard: impl FnOnce() -> T) -> T {
        self.discards.fetch_add(1, SeqCst);
        self.wait_while(|| self.transfers.load(SeqCst) > 0);
        let result = discard();
        self.discards.fetch_sub(1, SeqCst);
        self.wake();
        result
    }

    fn wait_while(&self, busy: impl Fn() -> bool) {
        let mut sleep = self.sleep.lock().unwrap();
        while busy() {
            sleep = self.woken.wait(sleep).unwrap();
        }
    }

    fn wake(&self) {
        let _sleep = self.sleep.lock().unwrap();
        self.woken.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn a_discard_waits_for_transfers_in_flight_and_new_transfers_wait_for_it() {
        let guard = Arc::new(DiscardGuard::default());
        assert!(guard.try_enter());
        let discarded = Arc::new(AtomicBool::new(false));
        let (g, d) = (guard.clone(), discarded.clone());
        let discard = std::thread::spawn(move || g.discard(|| d.store(true, SeqCst)));
        while guard.discards.load(SeqCst) == 0 {
            std::thread::yield_now();
        }
        std::thread::sleep(Duration::from_millis(20));
        assert!(!discarded.load(SeqCst), "the discard ran while a transfer was in flight");
        assert!(!guard.try_enter(), "a new transfer started during a discard");
        let (g, entered) = (guard.clone(), Arc::new(AtomicBool::new(false)));
        let e = entered.clone();
        let waiting = std::thread::spawn(move || {
            g.enter_waiting();
            e.store(true, SeqCst);
            g.leave();
        });
        guard.leave();
        discard.join().unwrap();
        assert!(discarded.load(SeqCst));
        waiting.join().unwrap();
        assert!(entered.load(SeqCst), "the waiting transfer went on after the discard");
        assert!(guard.try_enter());
    }
}

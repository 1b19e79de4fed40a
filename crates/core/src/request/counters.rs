//! Per-export counters, bumped on the hot path and summed by `stats()`.
//! Each I/O thread counts in a shard of its own, on its own cache line, so
//! that counting never bounces a line between CPUs.

use super::Via;
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// One thread's counts. `in_flight` may wrap in a shard (a request is
/// finished where it started, but the sum is what means something).
#[derive(Default)]
#[repr(align(128))]
pub struct Shard {
    pub legacy_requests: AtomicU64,
    pub ring_requests: AtomicU64,
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
    pub errors: AtomicU64,
    in_flight: AtomicU64,
}

impl Shard {
    pub fn request_started(&self, via: Via) {
        let counter = if via == Via::Ring { &self.ring_requests } else { &self.legacy_requests };
        counter.fetch_add(1, Relaxed);
        self.in_flight.fetch_add(1, Relaxed);
    }

    pub fn request_finished(&self) {
        self.in_flight.fetch_sub(1, Relaxed);
    }
}

thread_local! {
    /// The shard of the current thread; threads that are not I/O threads
    /// share the last one.
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

pub struct Counters {
    shards: Box<[Shard]>,
}

/// A consistent-enough copy of the counters for reporting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub legacy_requests: u64,
    pub ring_requests: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub errors: u64,
    pub in_flight: u64,
}

impl Counters {
    /// Counters for `threads` I/O threads (plus one shard for the rest).
    pub fn new(threads: usize) -> Self {
        Self { shards: (0..=threads).map(|_| Shard::default()).collect() }
    }

    /// Makes the calling thread count in shard `index` from now on.
    pub fn bind_current_thread(index: usize) {
        SHARD.with(|shard| shard.set(index));
    }

    /// The calling thread's shard.
    pub fn local(&self) -> &Shard {
        let index = SHARD.with(Cell::get).min(self.shards.len() - 1);
        &self.shards[index]
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut total = Snapshot::default();
        for shard in self.shards.iter() {
            total.legacy_requests += shard.legacy_requests.load(Relaxed);
            total.ring_requests += shard.ring_requests.load(Relaxed);
            total.bytes_read += shard.bytes_read.load(Relaxed);
            total.bytes_written += shard.bytes_written.load(Relaxed);
            total.errors += shard.errors.load(Relaxed);
            total.in_flight = total.in_flight.wrapping_add(shard.in_flight.load(Relaxed));
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_add_up_even_when_a_request_ends_elsewhere() {
        let counters = std::sync::Arc::new(Counters::new(2));
        let c = counters.clone();
        std::thread::spawn(move || {
            Counters::bind_current_thread(0);
            c.local().request_started(Via::Ring);
            c.local().bytes_read.fetch_add(4096, Relaxed);
        })
        .join()
        .unwrap();
        counters.local().request_started(Via::Legacy);
        assert_eq!(counters.snapshot().in_flight, 2);
        counters.local().request_finished();
        counters.local().request_finished();
        let total = counters.snapshot();
        assert_eq!((total.ring_requests, total.legacy_requests, total.bytes_read, total.in_flight), (1, 1, 4096, 0));
    }
}

//! Per-export counters, bumped on the hot path and summed by `stats()`.
//! Each I/O thread counts in a shard of its own, on its own cache line, so
//! that counting never bounces a line between CPUs.

use super::Via;
use crate::image::ImageOp;
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the latency buckets, 25 µs to 2.5 s in 1-2.5-5 steps
/// (Prometheus's own defaults, shifted to what a disk and a network take);
/// one more bucket takes everything slower.
pub const LATENCY_BOUNDS: [Duration; 16] = [
    Duration::from_micros(25),
    Duration::from_micros(50),
    Duration::from_micros(100),
    Duration::from_micros(250),
    Duration::from_micros(500),
    Duration::from_millis(1),
    Duration::from_micros(2500),
    Duration::from_millis(5),
    Duration::from_millis(10),
    Duration::from_millis(25),
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_micros(2_500_000),
];
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS.len() + 1;

/// What a latency is counted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpClass {
    Read = 0,
    Write = 1,
    /// Flush, discard, write-zeroes, allocate.
    Other = 2,
}

impl OpClass {
    pub const ALL: [OpClass; 3] = [OpClass::Read, OpClass::Write, OpClass::Other];

    pub fn of(op: ImageOp) -> Self {
        match op {
            ImageOp::Read => OpClass::Read,
            ImageOp::Write => OpClass::Write,
            _ => OpClass::Other,
        }
    }

    pub fn name(self) -> &'static str {
        ["read", "write", "other"][self as usize]
    }
}

/// One class's latencies: how many fell in each bucket (not cumulative),
/// and their sum.
#[derive(Default)]
struct Latencies {
    buckets: [AtomicU64; LATENCY_BUCKETS],
    sum_ns: AtomicU64,
}

/// A copy of one class's latencies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatencySnapshot {
    pub buckets: [u64; LATENCY_BUCKETS],
    pub sum_ns: u64,
}

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
    /// By `OpClass`.
    latencies: [Latencies; 3],
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

    /// An image operation of `class` took `took`.
    pub fn latency(&self, class: OpClass, took: Duration) {
        let latencies = &self.latencies[class as usize];
        let bucket = LATENCY_BOUNDS.partition_point(|bound| *bound < took);
        latencies.buckets[bucket].fetch_add(1, Relaxed);
        latencies.sum_ns.fetch_add(took.as_nanos().min(u64::MAX as u128) as u64, Relaxed);
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
    /// Image operations' latencies, by `OpClass`.
    pub latencies: [LatencySnapshot; 3],
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
            for (sum, latencies) in total.latencies.iter_mut().zip(&shard.latencies) {
                for (count, bucket) in sum.buckets.iter_mut().zip(&latencies.buckets) {
                    *count += bucket.load(Relaxed);
                }
                sum.sum_ns += latencies.sum_ns.load(Relaxed);
            }
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

    #[test]
    fn a_latency_lands_in_the_first_bucket_whose_bound_it_does_not_exceed() {
        let counters = Counters::new(1);
        let shard = counters.local();
        shard.latency(OpClass::Read, Duration::from_micros(25));
        shard.latency(OpClass::Read, Duration::from_micros(26));
        shard.latency(OpClass::Write, Duration::from_secs(10));
        let total = counters.snapshot();
        let read = total.latencies[OpClass::Read as usize];
        assert_eq!((read.buckets[0], read.buckets[1]), (1, 1));
        assert_eq!(read.sum_ns, 51_000);
        assert_eq!(total.latencies[OpClass::Write as usize].buckets[LATENCY_BUCKETS - 1], 1);
        assert_eq!(total.latencies[OpClass::Other as usize], LatencySnapshot::default());
    }
}

//! A ring of provided buffers (IORING_REGISTER_PBUF_RING): a multishot
//! read takes the next buffer for each of its completions, and the owner
//! hands a buffer back once it is done with it. Where each buffer lies is
//! the owner's choice, so a transport keeps its own layout.

use super::buffer::{AlignedBuffer, PAGE};
use io_uring::types::BufRingEntry;
use std::sync::atomic::{AtomicU16, Ordering};

pub struct ProvidedBuffers {
    /// The `io_uring_buf` entries the kernel reads; the first entry's last
    /// field doubles as the tail.
    entries: AlignedBuffer,
    capacity: u16,
    tail: u16,
    group: u16,
}

impl ProvidedBuffers {
    /// Room for `capacity` buffers (a power of two), known to the ring as
    /// buffer group `group` once registered (`Ring::register_provided_buffers`).
    pub fn new(capacity: u16, group: u16) -> Self {
        assert!(capacity.is_power_of_two(), "a buffer ring holds a power of two entries");
        let bytes = (capacity as usize * std::mem::size_of::<BufRingEntry>()).div_ceil(PAGE) * PAGE;
        Self { entries: AlignedBuffer::zeroed(bytes), capacity, tail: 0, group }
    }

    /// Offers `len` bytes at `addr` as buffer `id`. The caller offers at
    /// most `capacity` buffers that the kernel has not taken yet, and keeps
    /// each alive and untouched until it comes back in a completion.
    pub fn provide(&mut self, addr: *mut u8, len: u32, id: u16) {
        let index = (self.tail & (self.capacity - 1)) as usize;
        // SAFETY: `index` is below `capacity`, and the entries hold `capacity`.
        let entry = unsafe { &mut *self.base().add(index) };
        entry.set_addr(addr as u64);
        entry.set_len(len);
        entry.set_bid(id);
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail field is a naturally aligned u16 of the first entry;
        // the release store publishes the entry written above to the kernel.
        unsafe { AtomicU16::from_ptr(BufRingEntry::tail(self.base()).cast_mut()) }.store(self.tail, Ordering::Release);
    }

    pub fn capacity(&self) -> u16 {
        self.capacity
    }

    pub fn group(&self) -> u16 {
        self.group
    }

    pub(super) fn address(&self) -> u64 {
        self.entries.as_ptr() as u64
    }

    fn base(&self) -> *mut BufRingEntry {
        self.entries.as_ptr().cast()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(buffers: &ProvidedBuffers, index: usize) -> (u64, u32, u16) {
        // SAFETY: the test reads an entry within the ring.
        let entry = unsafe { &*buffers.base().add(index) };
        (entry.addr(), entry.len(), entry.bid())
    }

    fn published_tail(buffers: &ProvidedBuffers) -> u16 {
        // SAFETY: the tail field of the first entry.
        unsafe { *BufRingEntry::tail(buffers.base()) }
    }

    #[test]
    fn provided_buffers_fill_the_ring_in_order_and_wrap() {
        let mut buffers = ProvidedBuffers::new(4, 9);
        for id in 0..6u16 {
            buffers.provide((0x1000 * (id as usize + 1)) as *mut u8, 100 + id as u32, id);
        }
        assert_eq!(published_tail(&buffers), 6);
        // The fifth and sixth went where the first and second were.
        assert_eq!(entry(&buffers, 0), (0x5000, 104, 4));
        assert_eq!(entry(&buffers, 1), (0x6000, 105, 5));
        assert_eq!(entry(&buffers, 3), (0x4000, 103, 3));
        assert_eq!(buffers.address() % PAGE as u64, 0, "the kernel wants the ring page-aligned");
    }

    #[test]
    fn the_tail_wraps_around_u16() {
        let mut buffers = ProvidedBuffers::new(2, 0);
        buffers.tail = u16::MAX;
        buffers.provide(std::ptr::null_mut(), 1, 1);
        assert_eq!((published_tail(&buffers), entry(&buffers, 1).2), (0, 1));
    }
}

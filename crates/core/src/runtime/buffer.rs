//! Page-aligned buffers: O_DIRECT image I/O reads into and writes from the
//! very bytes the kernel handed us, so they must be aligned.

use std::alloc::{alloc, alloc_zeroed, dealloc, handle_alloc_error, Layout};
use std::sync::OnceLock;

pub const PAGE: usize = 4096;

pub struct AlignedBuffer {
    ptr: *mut u8,
    layout: Layout,
}

// SAFETY: a buffer has one owner (a legacy slot, a ring entry, a test),
// which alone lends out its pointer, to one request or one SQE at a time;
// moving the owner to another thread moves that exclusive use with it. It
// is not Sync: `as_ptr(&self)` hands out a pointer to write through.
unsafe impl Send for AlignedBuffer {}

impl AlignedBuffer {
    /// Pages are left untouched (and so unbacked) until the kernel or the
    /// image fills them.
    pub fn new(len: usize) -> Self {
        Self::allocate(len, alloc)
    }

    /// A buffer that reads as zeroes.
    pub fn zeroed(len: usize) -> Self {
        Self::allocate(len, alloc_zeroed)
    }

    fn allocate(len: usize, allocator: unsafe fn(Layout) -> *mut u8) -> Self {
        let layout = Layout::from_size_align(len.max(PAGE), PAGE).expect("buffer layout");
        // SAFETY: layout has a non-zero size.
        let ptr = unsafe { allocator(layout) };
        if ptr.is_null() {
            handle_alloc_error(layout);
        }
        Self { ptr, layout }
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    pub fn len(&self) -> usize {
        self.layout.size()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes `[start, start + len)`, as written by the kernel or image.
    pub fn bytes(&self, start: usize, len: usize) -> &[u8] {
        assert!(start + len <= self.len());
        // SAFETY: in bounds (checked); the memory came from the kernel or from
        // our own writes before it is looked at.
        unsafe { std::slice::from_raw_parts(self.ptr.add(start), len) }
    }
}

/// Zeroes for the process, allocated once and never written: what a
/// write-zeroes writes where the storage cannot zero a range itself (tmpfs,
/// an NBD server without WRITE_ZEROES, a qcow2 v2 image), a chunk at a time.
pub struct Zeroes(AlignedBuffer);

// SAFETY: nothing writes to the buffer after `alloc_zeroed`: `Zeroes`
// hands out only a `*const u8` and a shared slice of it.
unsafe impl Sync for Zeroes {}

impl Zeroes {
    /// The most zeroes one write takes.
    pub const LEN: usize = 1 << 20;

    pub fn shared() -> &'static Zeroes {
        static ZEROES: OnceLock<Zeroes> = OnceLock::new();
        ZEROES.get_or_init(|| Zeroes(AlignedBuffer::zeroed(Self::LEN)))
    }

    pub fn as_ptr(&self) -> *const u8 {
        self.0.as_ptr()
    }

    /// The first `len` zeroes (at most `LEN`).
    pub fn slice(&self, len: usize) -> &[u8] {
        self.0.bytes(0, len.min(Self::LEN))
    }
}

impl Drop for AlignedBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_page_aligned() {
        let buffer = AlignedBuffer::new(10);
        assert_eq!(buffer.as_ptr() as usize % PAGE, 0);
        assert_eq!(buffer.len(), PAGE);
    }
}

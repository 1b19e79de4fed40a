//! Page-aligned buffers: O_DIRECT image I/O reads into and writes from the
//! very bytes the kernel handed us, so they must be aligned.

use std::alloc::{alloc, alloc_zeroed, dealloc, handle_alloc_error, Layout};

pub const PAGE: usize = 4096;

pub struct AlignedBuffer {
    ptr: *mut u8,
    layout: Layout,
}

// SAFETY: plain memory; whoever holds the buffer decides who writes it.
unsafe impl Send for AlignedBuffer {}
// SAFETY: shared only to be read (the zero buffer of write-zeroes).
unsafe impl Sync for AlignedBuffer {}

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

//! The FUSE wire structures. The classic ones come from fuse-backend-rs; what
//! its 7.33 ABI lacks (newer INIT flags, the io_uring entry header) is defined
//! here from `include/uapi/linux/fuse.h`.

pub use fuse_backend_rs::abi::fuse_abi::Kstatfs;
pub use fuse_backend_rs::abi::fuse_abi::{
    Attr, AttrOut, FallocateIn, FsOptions, FsyncIn, InHeader, InitIn, InitOut, LseekIn, LseekOut, OpenIn, OpenOut,
    OutHeader, ReadIn, SetattrIn, StatfsOut, WriteIn, WriteOut,
};
use vm_memory::ByteValued;

/// Opcodes this export answers or must recognise.
pub mod opcode {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const INTERRUPT: u32 = 36;
    pub const DESTROY: u32 = 38;
    pub const BATCH_FORGET: u32 = 42;
    pub const FALLOCATE: u32 = 43;
    pub const LSEEK: u32 = 46;
}

/// INIT flags as 64-bit values (`flags | flags2 << 32`).
pub mod init_flag {
    use super::FsOptions;
    pub const ASYNC_READ: u64 = FsOptions::ASYNC_READ.bits();
    pub const ATOMIC_O_TRUNC: u64 = FsOptions::ATOMIC_O_TRUNC.bits();
    pub const BIG_WRITES: u64 = FsOptions::BIG_WRITES.bits();
    pub const ASYNC_DIO: u64 = FsOptions::ASYNC_DIO.bits();
    pub const MAX_PAGES: u64 = FsOptions::MAX_PAGES.bits();
    pub const INIT_EXT: u64 = FsOptions::INIT_EXT.bits();
    pub const DIRECT_IO_ALLOW_MMAP: u64 = 1 << 36;
    pub const PASSTHROUGH: u64 = 1 << 37;
    pub const OVER_IO_URING: u64 = 1 << 41;
}

pub const FOPEN_DIRECT_IO: u32 = 1 << 0;
pub const FOPEN_PARALLEL_DIRECT_WRITES: u32 = 1 << 6;
/// The kernel serves reads, writes and mmap from the backing file itself.
pub const FOPEN_PASSTHROUGH: u32 = 1 << 7;

pub mod fattr {
    pub const MODE: u32 = 1 << 0;
    pub const UID: u32 = 1 << 1;
    pub const GID: u32 = 1 << 2;
    pub const SIZE: u32 = 1 << 3;
    pub const FH: u32 = 1 << 6;
    pub const LOCKOWNER: u32 = 1 << 9;
    pub const KILL_SUIDGID: u32 = 1 << 11;
}

/// The protocol version we speak; the kernel's minor is answered with the
/// smaller of the two.
pub const KERNEL_MAJOR: u32 = 7;
pub const KERNEL_MINOR: u32 = 45;
/// INIT_EXT (and so flags2) exists from 7.36 on.
pub const MINOR_WITH_INIT_EXT: u32 = 36;

pub const IN_HEADER_SIZE: usize = std::mem::size_of::<InHeader>();
pub const OUT_HEADER_SIZE: usize = std::mem::size_of::<OutHeader>();

/// The largest request payload we negotiate (MAX_PAGES = 256).
pub const MAX_PAGES: u16 = 256;
pub const MAX_WRITE: u32 = MAX_PAGES as u32 * 4096;
/// In-header plus the largest opcode argument that precedes WRITE data.
pub const WRITE_HEADER_SIZE: usize = IN_HEADER_SIZE + std::mem::size_of::<WriteIn>();

/// The header a ring entry carries (`struct fuse_uring_req_header`).
pub const URING_IN_OUT_HEADER_SIZE: usize = 128;
pub const URING_OP_IN_SIZE: usize = 128;

/// `struct fuse_uring_ent_in_out`.
#[repr(C)]
#[derive(Debug, Default, Copy, Clone, PartialEq, Eq)]
pub struct UringEntInOut {
    pub flags: u64,
    pub commit_id: u64,
    pub payload_sz: u32,
    pub padding: u32,
    pub reserved: u64,
}
// SAFETY: plain old data with no padding holes.
unsafe impl ByteValued for UringEntInOut {}

/// `struct fuse_uring_req_header`: 288 bytes, the first iovec of an entry.
#[repr(C)]
#[derive(Copy, Clone)]
pub struct UringReqHeader {
    pub in_out: [u8; URING_IN_OUT_HEADER_SIZE],
    pub op_in: [u8; URING_OP_IN_SIZE],
    pub ring_ent_in_out: UringEntInOut,
}
// SAFETY: plain old data with no padding holes.
unsafe impl ByteValued for UringReqHeader {}

impl Default for UringReqHeader {
    fn default() -> Self {
        Self {
            in_out: [0; URING_IN_OUT_HEADER_SIZE],
            op_in: [0; URING_OP_IN_SIZE],
            ring_ent_in_out: UringEntInOut::default(),
        }
    }
}

/// `struct fuse_uring_cmd_req`, placed in the SQE's command area.
#[repr(C)]
#[derive(Debug, Default, Copy, Clone)]
pub struct UringCmdReq {
    pub flags: u64,
    pub commit_id: u64,
    pub qid: u16,
    pub padding: [u8; 6],
}
// SAFETY: plain old data with no padding holes.
unsafe impl ByteValued for UringCmdReq {}

pub const URING_CMD_REGISTER: u32 = 1;
pub const URING_CMD_COMMIT_AND_FETCH: u32 = 2;

/// Reads a wire structure from the start of `bytes`, whatever their alignment.
pub fn read_struct<T: ByteValued>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: ByteValued types are valid for any bit pattern, and the length
    // was checked above.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_the_kernel_abi() {
        assert_eq!(IN_HEADER_SIZE, 40);
        assert_eq!(OUT_HEADER_SIZE, 16);
        assert_eq!(std::mem::size_of::<UringEntInOut>(), 32);
        assert_eq!(std::mem::size_of::<UringReqHeader>(), 288);
        assert_eq!(std::mem::size_of::<UringCmdReq>(), 24);
        assert_eq!(std::mem::size_of::<InitOut>(), 64);
        assert_eq!(std::mem::size_of::<AttrOut>(), 104);
        assert_eq!(std::mem::size_of::<SetattrIn>(), 88);
        assert_eq!(WRITE_HEADER_SIZE, 80);
    }

    #[test]
    fn init_flags_have_their_kernel_values() {
        assert_eq!(init_flag::INIT_EXT, 1 << 30);
        assert_eq!(init_flag::MAX_PAGES, 1 << 22);
        assert_eq!(init_flag::ASYNC_DIO, 1 << 15);
    }
}

//! Where requests arrive and replies leave: mounting, the legacy /dev/fuse
//! transport, FUSE-over-io_uring, and what one I/O thread serves of them.
//! Requests go down to the request core; completions come back from the
//! runtime through `thread::ThreadTransports`.

pub mod fuse_queue;
mod image_part;
pub mod legacy;
pub mod mount;
mod registration;
pub mod thread;
pub mod uring_setup;

/// What a transport's SQE was for: the `kind` of its token.
mod kind {
    /// A read of /dev/fuse into a legacy slot.
    pub const FUSE_READ: u8 = 1;
    /// A reply written to /dev/fuse from a legacy slot.
    pub const REPLY: u8 = 2;
    /// Image I/O for a request (legacy slot or ring entry).
    pub const IMAGE_IO: u8 = 3;
    /// REGISTER or COMMIT_AND_FETCH of a ring entry.
    pub const RING_COMMAND: u8 = 4;
    /// An ASYNC_CANCEL of the armed /dev/fuse read.
    pub const CANCEL: u8 = 5;
}

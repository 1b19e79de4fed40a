//! How requests reach us and replies leave: mounting, the legacy /dev/fuse
//! transport, and (next) FUSE-over-io_uring.

pub mod legacy;
pub mod mount;
pub mod uring;

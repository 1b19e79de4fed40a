//! fuse-export's core: a disk image exported as one regular file through
//! FUSE. Requests never leave Rust; JavaScript sees the export, its counters
//! and its events.

pub mod export;
pub mod faults;
pub mod image;
pub mod latch;
pub mod protocol;
pub mod runtime;
pub mod server;
pub mod transport;

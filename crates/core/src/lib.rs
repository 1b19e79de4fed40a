//! fuse-export's core: a disk image exported as one regular file through
//! FUSE. Requests never leave Rust; JavaScript sees the export, its counters
//! and its events.
//!
//! Layers, each importing only from those below it (checked by
//! `tests/layers.rs`):
//!
//! ```text
//! server      one export's life: open, mount, threads, INIT, stop
//! transport   where requests arrive and replies leave (/dev/fuse, io_uring)
//! request     what each request means: the behaviour contract
//! image       where the bytes live: the backend interface, raw files
//! runtime     a thread, its io_uring, completions routed to their owner
//! protocol    FUSE bytes in, typed requests; replies out (pure)
//! status, faults, latch, os_error: small shared pieces at the bottom
//! ```

pub mod faults;
pub mod image;
pub mod latch;
pub mod os_error;
pub mod protocol;
pub mod request;
pub mod runtime;
pub mod server;
pub mod status;
pub mod transport;

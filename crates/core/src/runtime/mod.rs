//! The bottom layer beside all others: an I/O thread, its io_uring, its
//! completions routed by token back to their owner. It names no transport
//! and no image backend.

pub mod buffer;
pub mod control;
pub mod poll;
pub mod provided_buffers;
pub mod remote;
pub mod ring;
pub mod thread;
pub mod token;

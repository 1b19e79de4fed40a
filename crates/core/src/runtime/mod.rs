//! The bottom layer beside all others: I/O threads shared by exports, each
//! with its io_uring, completions routed by token back to their owner. It
//! names no transport and no image backend.

pub mod affinity;
pub mod buffer;
pub mod control;
pub mod poll;
pub mod pool;
pub mod provided_buffers;
pub mod remote;
pub mod ring;
pub mod thread;
pub mod token;

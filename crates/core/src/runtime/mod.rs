//! I/O threads: each owns one io_uring that carries both its transport's
//! commands and its requests' image I/O.

pub mod buffer;
pub mod control;
pub mod queue;
pub mod request;
pub mod token;
pub mod worker;

//! The FUSE protocol: bytes in, typed requests; replies out. Pure code, no
//! kernel needed, so every encoding is unit-tested.

pub mod abi;
pub mod reply;
pub mod request;

pub use reply::Reply;
pub use request::{Malformed, Operation, Request};

//! What the fuzz targets share: a private folder on tmpfs for the image
//! files they make, a reader of the fuzzer's bytes, and a driver that runs
//! one backend operation to its end on a ring, as the request core does.

mod backend;
mod input;
mod private_dir;
pub mod qcow2_file;

pub use backend::{open, Driver, Operation};
pub use input::Input;
pub use private_dir::PrivateDir;

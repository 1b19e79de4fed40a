//! Which transport serves, and why: asked before mounting (the switch and
//! the kernel's offer), settled after INIT and REGISTER (what really happened).

use super::Switch;
use crate::transport::uring_setup::{self, HOW_TO_ENABLE};

/// Whether to ask for FUSE-over-io_uring, and why.
pub fn ring_decision(switch: Switch) -> Result<(bool, String), String> {
    let kernel = uring_setup::kernel_switch();
    match (switch, kernel) {
        (Switch::Off, _) => Ok((false, "--io-uring off".into())),
        (_, Some(true)) => Ok((true, "the kernel offers FUSE-over-io_uring".into())),
        (Switch::On, Some(false)) => {
            Err(format!("--io-uring on, but FUSE-over-io_uring is switched off in this kernel: {HOW_TO_ENABLE}"))
        }
        (Switch::On, None) => Err(format!("--io-uring on, but this kernel has no FUSE-over-io_uring: {HOW_TO_ENABLE}")),
        (Switch::Auto, Some(false)) => Ok((false, format!("FUSE-over-io_uring is switched off; {HOW_TO_ENABLE}"))),
        (Switch::Auto, None) => Ok((false, "this kernel has no FUSE-over-io_uring (Linux >= 6.14 needed)".into())),
    }
}

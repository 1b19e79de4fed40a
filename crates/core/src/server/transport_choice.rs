//! Which transport serves, and whether the kernel serves the data itself
//! (passthrough), and why: asked before mounting (the switches, the
//! kernel's offer, the image), settled after INIT (what really happened).

use super::Switch;
use crate::image::ImageBackend;
use crate::transport::mount::running_as_root;
use crate::transport::uring_setup::{self, HOW_TO_ENABLE};
use std::os::fd::RawFd;

pub const PASSTHROUGH_KERNEL: &str = "Linux >= 6.9 built with CONFIG_FUSE_PASSTHROUGH";

/// The image descriptor to register for passthrough, if it is to be
/// tried; otherwise why not (`--passthrough on` fails with that reason).
pub fn passthrough_decision(switch: Switch, image: &dyn ImageBackend) -> Result<Result<RawFd, String>, String> {
    let refused = |why: String| match switch {
        Switch::On => Err(format!("--passthrough on, but {why}")),
        _ => Ok(Err(why)),
    };
    if switch == Switch::Off {
        return Ok(Err("--passthrough off".into()));
    }
    if !running_as_root() {
        return refused("FUSE passthrough needs CAP_SYS_ADMIN (run as root)".into());
    }
    match image.passthrough_fd() {
        Ok(fd) => Ok(Ok(fd)),
        Err(why) => refused(why),
    }
}

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

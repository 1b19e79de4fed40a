//! FUSE passthrough: once an OPEN names a backing file registered with the
//! kernel, the kernel reads, writes and maps the image itself and those
//! requests never reach us. The image is registered once, on first need,
//! and every OPEN waits for that decision: an open with passthrough and
//! another without cannot coexist (the second fails with EIO).

use std::sync::OnceLock;

/// Registers the image with the kernel (FUSE_DEV_IOC_BACKING_OPEN) and
/// returns its backing id, or why the kernel refused.
pub type Register = Box<dyn Fn() -> Result<u32, String> + Send + Sync>;

pub struct Passthrough {
    register: Register,
    backing: OnceLock<Result<u32, String>>,
}

impl Passthrough {
    pub fn new(register: Register) -> Self {
        Self { register, backing: OnceLock::new() }
    }

    /// The backing id, registering the image on first use. The kernel
    /// accepts it only after it processed INIT's reply.
    pub fn backing_id(&self) -> Result<u32, String> {
        self.backing.get_or_init(|| (self.register)()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[test]
    fn the_image_is_registered_once_and_a_refusal_is_kept() {
        let calls = Arc::new(AtomicU32::new(0));
        let counted = calls.clone();
        let passthrough = Passthrough::new(Box::new(move || Ok(counted.fetch_add(1, Ordering::SeqCst) + 7)));
        assert_eq!(passthrough.backing_id(), Ok(7));
        assert_eq!(passthrough.backing_id(), Ok(7));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let refused = Passthrough::new(Box::new(|| Err("EPERM".into())));
        assert_eq!(refused.backing_id(), Err("EPERM".into()));
    }
}

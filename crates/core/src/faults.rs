//! Test-only fault injection, read once from the environment at start, so
//! that the suite can provoke failures the kernel will not produce on cue.
//! Unset in normal use; every knob is named FUSE_EXPORT_TEST_*.

#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Register ring entries with this payload size (too small: the
    /// kernel refuses REGISTER with EINVAL).
    pub ring_payload_bytes: Option<usize>,
    /// Treat the transport as broken once this many requests arrived.
    pub halt_after_requests: Option<u64>,
}

fn knob<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok()?.parse().ok()
}

impl Faults {
    pub fn from_env() -> Self {
        Self {
            ring_payload_bytes: knob("FUSE_EXPORT_TEST_RING_PAYLOAD_BYTES"),
            halt_after_requests: knob("FUSE_EXPORT_TEST_HALT_AFTER_REQUESTS"),
        }
    }
}

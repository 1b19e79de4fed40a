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
    /// Image I/O touching `[start, end)` completes with EIO ("start:end").
    pub eio_range: Option<(u64, u64)>,
}

impl Faults {
    /// Whether an image transfer of `len` bytes at `offset` hits the range.
    pub fn fails(&self, offset: u64, len: u64) -> bool {
        self.eio_range.is_some_and(|(start, end)| offset < end && offset.saturating_add(len.max(1)) > start)
    }
}

fn knob<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok()?.parse().ok()
}

impl Faults {
    pub fn from_env() -> Self {
        Self {
            ring_payload_bytes: knob("FUSE_EXPORT_TEST_RING_PAYLOAD_BYTES"),
            halt_after_requests: knob("FUSE_EXPORT_TEST_HALT_AFTER_REQUESTS"),
            eio_range: std::env::var("FUSE_EXPORT_TEST_EIO_RANGE").ok().and_then(|range| {
                let (start, end) = range.split_once(':')?;
                Some((start.parse().ok()?, end.parse().ok()?))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eio_range_catches_overlapping_transfers_only() {
        let faults = Faults { eio_range: Some((4096, 8192)), ..Default::default() };
        assert!(faults.fails(4096, 1));
        assert!(faults.fails(0, 4097));
        assert!(!faults.fails(0, 4096));
        assert!(!faults.fails(8192, 4096));
        assert!(!Faults::default().fails(0, u64::MAX));
    }
}

//! Test-only fault injection, so that the suite can provoke failures the
//! kernel will not produce on cue. The knobs (FUSE_EXPORT_TEST_*) exist
//! only in the build made with the `test-faults` feature, which the test
//! script uses; in the build users install, `Faults` is an empty type whose
//! answers are constants, so nothing reads the environment and the hot path
//! carries no check.

#[cfg(feature = "test-faults")]
mod knobs {
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    #[derive(Debug, Clone, Default)]
    pub struct Faults {
        /// Register ring entries with this payload size (too small: the
        /// kernel refuses REGISTER with EINVAL).
        ring_payload_bytes: Option<usize>,
        /// Treat the transport as broken once this many requests arrived.
        halt_after_requests: Option<u64>,
        /// Image I/O touching `[start, end)` completes with EIO ("start:end").
        eio_range: Option<(u64, u64)>,
        /// Once the mountpoint is opened and checked, create this file and
        /// wait (10 s at most) until the test removes it.
        mount_pause: Option<PathBuf>,
        /// The first this many io_uring_enter calls of each I/O thread fail
        /// with ENOMEM, as under memory pressure.
        enter_enomem: Option<u32>,
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
                mount_pause: knob("FUSE_EXPORT_TEST_MOUNT_PAUSE"),
                enter_enomem: knob("FUSE_EXPORT_TEST_ENTER_ENOMEM"),
            }
        }

        pub fn enter_failures(&self) -> u32 {
            self.enter_enomem.unwrap_or(0)
        }

        pub fn ring_payload_bytes(&self) -> Option<usize> {
            self.ring_payload_bytes
        }

        pub fn halt_after_requests(&self) -> Option<u64> {
            self.halt_after_requests
        }

        /// Whether an image transfer of `len` bytes at `offset` hits the range.
        pub fn fails(&self, offset: u64, len: u64) -> bool {
            self.eio_range.is_some_and(|(start, end)| offset < end && offset.saturating_add(len.max(1)) > start)
        }

        pub fn pause_before_mount(&self) {
            let Some(marker) = &self.mount_pause else { return };
            if std::fs::write(marker, b"").is_err() {
                return;
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while marker.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
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
}

#[cfg(not(feature = "test-faults"))]
mod knobs {
    #[derive(Debug, Clone, Default)]
    pub struct Faults;

    impl Faults {
        pub fn from_env() -> Self {
            Self
        }

        #[inline(always)]
        pub fn ring_payload_bytes(&self) -> Option<usize> {
            None
        }

        #[inline(always)]
        pub fn halt_after_requests(&self) -> Option<u64> {
            None
        }

        #[inline(always)]
        pub fn fails(&self, _offset: u64, _len: u64) -> bool {
            false
        }

        #[inline(always)]
        pub fn pause_before_mount(&self) {}

        #[inline(always)]
        pub fn enter_failures(&self) -> u32 {
            0
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_product_build_ignores_the_test_knobs() {
            std::env::set_var("FUSE_EXPORT_TEST_EIO_RANGE", "0:999999999");
            std::env::set_var("FUSE_EXPORT_TEST_RING_PAYLOAD_BYTES", "4096");
            let faults = Faults::from_env();
            assert!(!faults.fails(0, 4096));
            assert_eq!(faults.ring_payload_bytes(), None);
            std::env::remove_var("FUSE_EXPORT_TEST_EIO_RANGE");
            std::env::remove_var("FUSE_EXPORT_TEST_RING_PAYLOAD_BYTES");
        }
    }
}

pub use knobs::Faults;

//! Setting up FUSE-over-io_uring: whether the kernel offers it, how its
//! queues are dealt to the I/O threads, and the registration that every
//! thread takes part in.

use crate::latch::Latch;
use crate::request::RequestCore;
use crate::runtime::control::Control;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";

/// The kernel's switch: Some(true) when FUSE-over-io_uring may be used,
/// Some(false) when it is switched off, None when this kernel lacks it.
pub fn kernel_switch() -> Option<bool> {
    let value = std::fs::read_to_string(ENABLE_URING).ok()?;
    Some(value.trim() == "Y" || value.trim() == "1")
}

pub const HOW_TO_ENABLE: &str = "switch it on as root with: echo Y > /sys/module/fuse/parameters/enable_uring \
    (needs Linux >= 6.14 built with CONFIG_FUSE_IO_URING)";

/// The kernel makes one queue per possible CPU, and the ring only starts
/// once every one of them has an entry.
pub fn possible_cpus() -> usize {
    std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|list| count_cpu_list(&list))
        // SAFETY: sysconf has no side effects.
        .unwrap_or_else(|| unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) }.max(1) as usize)
}

/// Counts CPUs in the kernel's list format ("0-3,6,8-9"). The kernel's
/// queue ids run up to the highest possible CPU, so that is what counts.
fn count_cpu_list(list: &str) -> Option<usize> {
    let mut highest = None;
    for part in list.trim().split(',') {
        let last = part.rsplit('-').next()?.trim().parse::<usize>().ok()?;
        highest = highest.max(Some(last));
    }
    highest.map(|h| h + 1)
}

/// The kernel's queue ids each I/O thread serves: dealt round-robin.
pub fn deal_queues(threads: usize, queues: usize) -> Vec<Vec<u16>> {
    (0..threads).map(|thread| (thread..queues).step_by(threads).map(|qid| qid as u16).collect()).collect()
}

/// The payload buffer the kernel insists on: room for the largest request.
pub fn payload_size(max_write: u32, max_pages: u16) -> usize {
    (max_write as usize).max(max_pages as usize * 4096).max(8192)
}

/// Shared by the I/O threads while the ring queues register: REGISTER may
/// only follow INIT's reply, and its failure makes the kernel fall back to
/// /dev/fuse for good.
pub struct RingSetup {
    /// `--io-uring on`: a failure halts instead of falling back.
    required: bool,
    threads_left: AtomicUsize,
    failed: AtomicBool,
    /// Wakes the threads to register once INIT's reply is out.
    control: Arc<Control>,
    /// Ok once every thread submitted its REGISTERs, or the first failure.
    pub outcome: Latch<Result<(), String>>,
}

impl RingSetup {
    pub fn new(required: bool, threads_with_queues: usize, control: Arc<Control>) -> Self {
        Self {
            required,
            threads_left: AtomicUsize::new(threads_with_queues),
            failed: AtomicBool::new(false),
            control,
            outcome: Latch::default(),
        }
    }

    /// INIT's reply is out: every thread may register its queues now.
    pub fn wake_to_register(&self) {
        self.control.wake_all();
    }

    /// Whether REGISTER may go out now.
    pub fn may_register(&self, core: &RequestCore) -> bool {
        core.init_replied.get().is_some() && core.negotiated().is_some_and(|n| n.over_io_uring())
    }

    pub fn thread_registered(&self) {
        if self.threads_left.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.outcome.set(Ok(()));
        }
    }

    /// A REGISTER failed: the kernel serves this mount over /dev/fuse from
    /// now on. Reported once.
    pub fn register_failed(&self, core: &RequestCore, reason: String) {
        if self.failed.swap(true, Ordering::AcqRel) {
            return;
        }
        let started = !self.outcome.set(Err(reason.clone()));
        if self.required {
            core.status.halt(format!("FUSE-over-io_uring failed: {reason}"));
        } else if started {
            core.status.warn(
                "ring-fallback",
                format!("FUSE-over-io_uring failed: {reason}; the kernel now serves over /dev/fuse"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn possible_cpus_are_counted_up_to_the_highest_id() {
        assert_eq!(count_cpu_list("0-1\n"), Some(2));
        assert_eq!(count_cpu_list("0"), Some(1));
        assert_eq!(count_cpu_list("0-3,6,8-9"), Some(10));
        assert_eq!(count_cpu_list("garbage"), None);
    }

    #[test]
    fn queues_are_dealt_round_robin() {
        assert_eq!(deal_queues(2, 4), vec![vec![0, 2], vec![1, 3]]);
        assert_eq!(deal_queues(3, 2), vec![vec![0], vec![1], vec![]]);
        assert_eq!(deal_queues(1, 0), vec![Vec::<u16>::new()]);
    }

    #[test]
    fn the_payload_buffer_fits_the_largest_request() {
        assert_eq!(payload_size(1 << 20, 256), 1 << 20);
        assert_eq!(payload_size(4096, 1), 8192);
        assert_eq!(payload_size(128 << 10, 256), 1 << 20);
    }
}

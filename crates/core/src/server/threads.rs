//! Starting the I/O threads: one /dev/fuse descriptor each (cloned from the
//! session), the kernel's FUSE queues dealt among them, one ring each sized
//! for everything it will carry, and a panic turned into a halt.

use crate::faults::Faults;
use crate::protocol::abi::{MAX_PAGES, MAX_WRITE};
use crate::request::counters::Counters;
use crate::request::RequestCore;
use crate::runtime::control::Control;
use crate::runtime::ring::Ring;
use crate::runtime::thread::{contain_panic, serve};
use crate::transport::fuse_queue::FuseQueue;
use crate::transport::legacy::{LegacyChannel, SLOTS_PER_CHANNEL};
use crate::transport::mount;
use crate::transport::thread::{queue_channel, ThreadTransports, IMAGE_CHANNEL};
use crate::transport::uring_setup::{self, RingSetup};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

pub struct ThreadPlan<'a> {
    pub threads: usize,
    pub queue_depth: usize,
    /// The longest an idle I/O thread busy-polls before it sleeps.
    pub poll_max: Duration,
    /// Kernel FUSE queues to serve (0: /dev/fuse only).
    pub queues: usize,
    pub core: &'a Arc<RequestCore>,
    pub control: &'a Arc<Control>,
    pub ring_setup: Option<&'a Arc<RingSetup>>,
    pub faults: &'a Faults,
}

pub fn spawn(plan: ThreadPlan, session: OwnedFd) -> Result<Vec<JoinHandle<()>>, String> {
    let mut fds = vec![session];
    for _ in 1..plan.threads {
        fds.push(mount::clone_session(&fds[0]).map_err(|e| format!("Failed to clone /dev/fuse: {e}"))?);
    }
    for fd in &fds {
        mount::set_nonblocking(fd).map_err(|e| format!("Failed to configure /dev/fuse: {e}"))?;
    }
    let payload = plan.faults.ring_payload_bytes().unwrap_or_else(|| uring_setup::payload_size(MAX_WRITE, MAX_PAGES));
    let dealt = uring_setup::deal_queues(plan.threads, plan.queues);
    let mut handles = Vec::with_capacity(plan.threads);
    for (thread, (fd, qids)) in fds.into_iter().zip(dealt).enumerate() {
        let queues: Vec<FuseQueue> = qids
            .iter()
            .enumerate()
            .map(|(n, &qid)| FuseQueue::new(qid, queue_channel(n), fd.as_raw_fd(), plan.queue_depth, payload))
            .collect();
        // Reads and replies of every legacy slot, commands of every ring
        // entry and one image transfer each, plus the runtime's and the
        // image backend's own few.
        let entries = SLOTS_PER_CHANNEL * 2 + queues.len() * plan.queue_depth * 2 + 16;
        let mut ring =
            Ring::for_another_thread(entries as u32).map_err(|e| format!("Failed to create an io_uring: {e}"))?;
        ring.fail_next_enters(plan.faults.enter_failures());
        let legacy = LegacyChannel::new(0, fd, &mut ring)
            .map_err(|e| format!("Failed to offer /dev/fuse read buffers to the io_uring: {e}"))?;
        let transports = ThreadTransports::new(
            plan.core.clone(),
            legacy,
            queues,
            plan.ring_setup.cloned(),
            plan.core.image().attach_thread(thread, IMAGE_CHANNEL),
        );
        let (core, control) = (plan.core.clone(), plan.control.clone());
        let handle = std::thread::Builder::new()
            .name(format!("fuse-export-io{thread}"))
            .spawn(move || {
                Counters::bind_current_thread(thread);
                pin_to(transports.queue_cpu());
                // The halt wakes the other threads (`server::wake_on_halt`).
                let halt = |reason: String| core.status.halt(reason);
                if let Err(e) = ring.adopt() {
                    return halt(format!("I/O thread {thread} could not enable its io_uring: {e}"));
                }
                let served = contain_panic((ring, transports), |(ring, transports)| {
                    serve(ring, transports, &control, thread, plan.poll_max)
                });
                if let Err(panic) = served {
                    halt(format!(
                        "I/O thread {thread} panicked: {panic} (its buffers are kept, not freed, \
                         since the kernel may still write into them)"
                    ));
                }
            })
            .map_err(|e| format!("Failed to start an I/O thread: {e}"))?;
        handles.push(handle);
    }
    Ok(handles)
}

/// Runs the calling thread on `cpu`. An offline CPU refuses: then the
/// thread simply floats.
fn pin_to(cpu: Option<usize>) {
    let Some(cpu) = cpu else { return };
    // SAFETY: cpu_set_t is plain data; CPU_SET stays within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

//! Putting an export on its I/O threads: one /dev/fuse descriptor each
//! (cloned from the session), the kernel's FUSE queues dealt among them, the
//! export's part of each thread (its transports) set up on that thread's
//! ring, and a panic there turned into a halt of this export alone.

use crate::faults::Faults;
use crate::protocol::abi::{MAX_PAGES, MAX_WRITE};
use crate::request::RequestCore;
use crate::runtime::control::Control;
use crate::runtime::pool::{Guest, IoThread, Presence};
use crate::runtime::thread::Owner;
use crate::transport::fuse_queue::FuseQueue;
use crate::transport::legacy::LegacyChannel;
use crate::transport::mount;
use crate::transport::thread::{queue_channel, ThreadTransports, IMAGE_CHANNEL};
use crate::transport::uring_setup::{self, RingSetup};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

pub struct ThreadPlan<'a> {
    pub threads: &'a [Arc<IoThread>],
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

/// Attaches the export to every thread of the plan; the presence counts
/// those it reached, even when a later one refused.
pub fn attach(plan: ThreadPlan, session: OwnedFd, presence: &Arc<Presence>) -> Result<(), String> {
    let count = plan.threads.len();
    let mut fds = vec![session];
    for _ in 1..count {
        fds.push(mount::clone_session(&fds[0]).map_err(|e| format!("Failed to clone /dev/fuse: {e}"))?);
    }
    for fd in &fds {
        mount::set_nonblocking(fd).map_err(|e| format!("Failed to configure /dev/fuse: {e}"))?;
    }
    let payload = plan.faults.ring_payload_bytes().unwrap_or_else(|| uring_setup::payload_size(MAX_WRITE, MAX_PAGES));
    let dealt = uring_setup::deal_queues(count, plan.queues);
    // Channels 1.. are the queues', up to the image backend's.
    let most = IMAGE_CHANNEL as usize - 1;
    if dealt.iter().any(|qids| qids.len() > most) {
        return Err(format!(
            "{} FUSE queues on {count} I/O threads is more than {most} a thread: give the export more threads",
            plan.queues
        ));
    }
    let pending: Vec<_> = plan
        .threads
        .iter()
        .zip(fds.into_iter().zip(dealt))
        .enumerate()
        .map(|(shard, (thread, (fd, qids)))| {
            let guest = Guest {
                setup: setup(&plan, shard, fd, qids.clone(), payload),
                control: plan.control.clone(),
                poll_max: plan.poll_max,
                cpus: qids.iter().map(|&qid| qid as usize).collect(),
                halt: {
                    let core = plan.core.clone();
                    Box::new(move |reason| core.status.halt(reason))
                },
                presence: presence.clone(),
            };
            (thread, thread.attach(guest))
        })
        .collect();
    let mut refused = None;
    for (thread, outcome) in pending {
        let outcome = outcome.recv().unwrap_or_else(|_| Err("it ended".into()));
        if let (Err(why), None) = (outcome, &refused) {
            refused = Some(format!("I/O thread {} refused the export: {why}", thread.name()));
        }
    }
    refused.map_or(Ok(()), Err)
}

/// What runs on the thread: the export's transports there, built on the
/// thread's ring so that their buffers are registered with it.
fn setup(plan: &ThreadPlan, shard: usize, fd: OwnedFd, qids: Vec<u16>, payload: usize) -> crate::runtime::pool::Setup {
    let core = plan.core.clone();
    let ring_setup = plan.ring_setup.cloned();
    let depth = plan.queue_depth;
    let image = plan.core.image().attach_thread(shard, IMAGE_CHANNEL);
    Box::new(move |ring| {
        let queues: Vec<FuseQueue> = qids
            .iter()
            .enumerate()
            .map(|(n, &qid)| FuseQueue::new(qid, queue_channel(n), fd.as_raw_fd(), depth, payload))
            .collect();
        let legacy = LegacyChannel::new(0, fd, ring)
            .map_err(|e| format!("Failed to offer /dev/fuse read buffers to the io_uring: {e}"))?;
        Ok(Box::new(ThreadTransports::new(core, shard, legacy, queues, ring_setup, image)) as Box<dyn Owner + Send>)
    })
}

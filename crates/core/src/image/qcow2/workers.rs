//! Worker threads for what imago does blocking: loading metadata on a
//! cache miss, allocating clusters (copy-on-write, refcounts), reading
//! compressed clusters, flushing, discarding, zeroing. An I/O thread hands
//! a job over with its request's token (`Ring::hand_off`) and goes on
//! serving; the worker posts the job's result into that thread's ring
//! (`Poster::post`), where it completes like any CQE.

use crate::runtime::remote::{Poster, Remote};
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// A job's answer: bytes moved, 0, or a negative errno.
pub type Job<T> = Box<dyn FnOnce(&T) -> i32 + Send>;

pub struct Workers<T: Send + Sync + 'static> {
    sender: Option<Sender<(Job<T>, Remote)>>,
    threads: Vec<JoinHandle<()>>,
}

/// The request's buffer, lent to a worker until its result is posted.
#[derive(Clone, Copy)]
pub struct Lent(pub *mut u8);
// SAFETY: the buffer belongs to the request until its completion, which the
// worker posts only after its last use of the pointer.
unsafe impl Send for Lent {}

impl Lent {
    /// The pointer (a method, so that closures capture the whole `Lent`).
    pub fn get(self) -> *mut u8 {
        self.0
    }
}

impl<T: Send + Sync + 'static> Workers<T> {
    pub fn start(shared: Arc<T>, count: usize, name: &str) -> io::Result<Self> {
        let (sender, receiver) = channel::<(Job<T>, Remote)>();
        let receiver = Arc::new(Mutex::new(receiver));
        let mut threads = Vec::with_capacity(count);
        for n in 0..count {
            let poster = Poster::new()?;
            let (shared, receiver) = (shared.clone(), receiver.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("{name}-{n}"))
                    .spawn(move || serve(&*shared, &receiver, poster))?,
            );
        }
        Ok(Self { sender: Some(sender), threads })
    }

    /// Runs `job` on a worker; its result completes `remote`.
    pub fn run(&self, remote: Remote, job: Job<T>) {
        if let Some(sender) = &self.sender {
            // The workers end only when the sender goes, in drop().
            sender.send((job, remote)).expect("the qcow2 workers are gone");
        }
    }
}

fn serve<T>(shared: &T, receiver: &Mutex<Receiver<(Job<T>, Remote)>>, mut poster: Poster) {
    loop {
        let next = receiver.lock().unwrap().recv();
        let Ok((job, remote)) = next else { return };
        let result = catch_unwind(AssertUnwindSafe(|| job(shared))).unwrap_or(-libc::EIO);
        // Transient failures are retried inside; what is left means the I/O
        // thread's ring is gone, and nobody waits for this completion.
        let _ = poster.post(remote, result);
    }
}

impl<T: Send + Sync + 'static> Drop for Workers<T> {
    fn drop(&mut self) {
        self.sender.take();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

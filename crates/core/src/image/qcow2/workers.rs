//! Worker threads for what imago does blocking: loading metadata on a
//! cache miss, allocating clusters (copy-on-write, refcounts), reading
//! compressed clusters, flushing, discarding, zeroing. An I/O thread hands
//! a job over with its request's token (`Ring::hand_off`) and goes on
//! serving; the worker posts the job's result into that thread's ring
//! (`Poster::post`), where it completes like any CQE.
//!
//! The workers are the process's, shared by every qcow2 image: a job that
//! finds no idle worker starts one (up to `MAX_WORKERS`), and a worker idle
//! for `IDLE_EXIT` ends, as in QEMU's thread pool (which is per iothread),
//! so that a daemon serving many images runs none while their metadata is
//! cached. At most `PER_IMAGE` jobs of one image run at once (as when each
//! image had two workers of its own): imago's metadata work on one image
//! stays as concurrent as it was tested to be, and an image on hung
//! storage holds two workers, not all of them.

use crate::runtime::affinity;
use crate::runtime::remote::{Poster, Remote};
use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

/// A job's answer: bytes moved, 0, or a negative errno.
pub type Job<T> = Box<dyn FnOnce(&T) -> i32 + Send>;

/// The most workers at once (QEMU's thread pool has 64).
const MAX_WORKERS: usize = 64;
/// How long a worker waits for a job before it ends.
const IDLE_EXIT: Duration = Duration::from_secs(10);
/// The most jobs of one image running at once.
const PER_IMAGE: usize = 2;

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

type Task = Box<dyn FnOnce() -> i32 + Send>;

struct Queued {
    /// Which image's (its shared state's address).
    image: usize,
    task: Task,
    remote: Remote,
}

#[derive(Default)]
struct Queue {
    tasks: VecDeque<Queued>,
    /// Jobs running, by image.
    running: HashMap<usize, usize>,
    /// Workers waiting for a task.
    idle: usize,
    workers: usize,
}

impl Queue {
    /// The oldest job whose image has fewer than `PER_IMAGE` running.
    fn take_runnable(&mut self) -> Option<Queued> {
        let running = &self.running;
        let index = self.tasks.iter().position(|q| running.get(&q.image).copied().unwrap_or(0) < PER_IMAGE)?;
        let next = self.tasks.remove(index)?;
        *self.running.entry(next.image).or_default() += 1;
        Some(next)
    }

    fn finished(&mut self, image: usize) {
        if let Some(count) = self.running.get_mut(&image) {
            *count -= 1;
            if *count == 0 {
                self.running.remove(&image);
            }
        }
    }
}

#[derive(Default)]
struct Pool {
    queue: Mutex<Queue>,
    work: Condvar,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(Pool::default)
}

/// Runs `job` on `shared` on a worker; its result completes `remote`. When
/// no worker runs and none can be started (no memory, a thread limit), the
/// job is refused, and `remote` comes back with ENOMEM for the caller to
/// complete: a request must never wait for a worker that cannot come, and
/// the I/O thread must not run a job that may wait for its own transfers.
pub fn run<T: Send + Sync + 'static>(shared: &Arc<T>, remote: Remote, job: Job<T>) -> Result<(), (Remote, i32)> {
    let image = Arc::as_ptr(shared) as usize;
    let shared = shared.clone();
    let task: Task = Box::new(move || job(&shared));
    let pool = pool();
    let mut queue = pool.queue.lock().unwrap();
    if queue.tasks.len() >= queue.idle && queue.workers < MAX_WORKERS {
        match start_worker(pool) {
            Ok(()) => queue.workers += 1,
            Err(()) if queue.workers == 0 => return Err((remote, -libc::ENOMEM)),
            // The running workers take it in turn.
            Err(()) => {}
        }
    }
    queue.tasks.push_back(Queued { image, task, remote });
    pool.work.notify_one();
    Ok(())
}

/// A worker with its poster made first, so that one that could not post
/// is never counted.
fn start_worker(pool: &'static Pool) -> Result<(), ()> {
    let poster = Poster::new().map_err(drop)?;
    std::thread::Builder::new().name("qcow2-worker".into()).spawn(move || serve(pool, poster)).map(drop).map_err(drop)
}

fn serve(pool: &Pool, mut poster: Poster) {
    // Started by an I/O thread, which may be pinned to one CPU: a worker
    // serves every thread, so it runs wherever the process may.
    affinity::run_anywhere();
    let mut queue = pool.queue.lock().unwrap();
    loop {
        let Queued { image, task, remote } = loop {
            if let Some(next) = queue.take_runnable() {
                break next;
            }
            queue.idle += 1;
            let (woken, waited) = pool.work.wait_timeout(queue, IDLE_EXIT).unwrap();
            queue = woken;
            queue.idle -= 1;
            if waited.timed_out() && queue.tasks.is_empty() {
                queue.workers -= 1;
                return;
            }
        };
        drop(queue);
        let result = perform(task);
        // Transient failures are retried inside; what is left means the I/O
        // thread's ring is gone, and nobody waits for this completion.
        let _ = poster.post(remote, result);
        queue = pool.queue.lock().unwrap();
        queue.finished(image);
        // A job of the same image may have waited for this one.
        pool.work.notify_one();
    }
}

fn perform(task: Task) -> i32 {
    catch_unwind(AssertUnwindSafe(task)).unwrap_or(-libc::EIO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::ring::Ring;
    use crate::runtime::token::Token;

    #[test]
    fn no_more_than_two_jobs_of_one_image_run_at_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        #[derive(Default)]
        struct Image {
            running: AtomicUsize,
            most: AtomicUsize,
        }
        let mut ring = Ring::new(64).unwrap();
        let image = Arc::new(Image::default());
        for slot in 0..8 {
            let job: Job<Image> = Box::new(|image| {
                let now = image.running.fetch_add(1, Ordering::SeqCst) + 1;
                image.most.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
                image.running.fetch_sub(1, Ordering::SeqCst);
                0
            });
            run(&image, ring.hand_off(Token::new(1, 0, slot)), job).unwrap();
        }
        let (mut done, mut completions) = (0, Vec::new());
        while done < 8 {
            ring.submit(1);
            ring.reap(&mut completions);
            done += completions.len();
        }
        assert_eq!(image.most.load(Ordering::SeqCst), PER_IMAGE);
    }

    #[test]
    fn jobs_of_several_images_complete_on_their_rings_and_workers_are_shared() {
        let mut ring = Ring::new(64).unwrap();
        let images: Vec<Arc<i32>> = (0..8).map(Arc::new).collect();
        for (slot, image) in images.iter().enumerate() {
            let remote = ring.hand_off(Token::new(1, 0, slot as u32));
            run(image, remote, Box::new(|value: &i32| *value * 10)).unwrap();
        }
        let mut seen = Vec::new();
        let mut completions = Vec::new();
        while seen.len() < images.len() {
            ring.submit(1);
            ring.reap(&mut completions);
            seen.extend(completions.iter().map(|c| (c.token.slot(), c.result)));
        }
        seen.sort();
        assert_eq!(seen, (0..8).map(|n| (n, n as i32 * 10)).collect::<Vec<_>>());
        let workers = pool().queue.lock().unwrap().workers;
        assert!((1..=MAX_WORKERS).contains(&workers), "{workers} workers");
    }
}

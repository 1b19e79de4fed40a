//! Questions to the image that may wait on a server or a disk for as long
//! as those take (SEEK_DATA / SEEK_HOLE: NBD block status, qcow2 tables
//! read through the chain) are asked on a thread of their own, so that the
//! I/O thread, and every request behind it, waits at most a deadline. Past
//! it the caller gives an answer that is always true instead; the question
//! ends (or not) on its own. While `MAX_OUT` questions are still out (a
//! server that stopped answering), the next ones get no thread at all.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// Questions out at once at most: one per I/O thread is plenty, and a dead
/// server cannot make threads pile up past it.
const MAX_OUT: usize = 4;

#[derive(Default)]
pub struct Bounded {
    out: Arc<AtomicUsize>,
}

impl Bounded {
    /// `question`'s answer if it comes within `deadline`.
    pub fn ask<T: Send + 'static>(
        &self,
        deadline: Duration,
        question: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        if self.out.fetch_add(1, Ordering::AcqRel) >= MAX_OUT {
            self.out.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let (answer, answered) = mpsc::sync_channel(1);
        let out = self.out.clone();
        let asked = std::thread::Builder::new().name("fuse-export-ask".into()).spawn(move || {
            // The asker may have stopped waiting: nobody receives then.
            let _ = answer.send(question());
            out.fetch_sub(1, Ordering::AcqRel);
        });
        if asked.is_err() {
            self.out.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        answered.recv_timeout(deadline).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn an_answer_in_time_is_given() {
        assert_eq!(Bounded::default().ask(Duration::from_secs(5), || 42), Some(42));
    }

    #[test]
    fn a_late_answer_is_not_waited_for_and_stuck_questions_get_no_more_threads() {
        let bounded = Bounded::default();
        let (release, stuck) = mpsc::channel::<()>();
        let stuck = Arc::new(std::sync::Mutex::new(stuck));
        let started = Instant::now();
        for _ in 0..MAX_OUT {
            let stuck = stuck.clone();
            let answer = bounded.ask(Duration::from_millis(20), move || stuck.lock().unwrap().recv().ok());
            assert_eq!(answer, None);
        }
        assert_eq!(bounded.ask(Duration::from_secs(5), || 1), None, "no thread while MAX_OUT are stuck");
        assert!(started.elapsed() < Duration::from_secs(2));
        for _ in 0..MAX_OUT {
            release.send(()).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while bounded.ask(Duration::from_secs(1), || 2) != Some(2) {
            assert!(Instant::now() < deadline, "the questions ended, so threads are given again");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

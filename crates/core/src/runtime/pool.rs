//! I/O threads that exports share. A set of them is started once (the
//! daemon's default set, an iothread object, the CLI's `--threads`); an
//! export then attaches a part of itself (a guest) to each thread it is
//! given, and leaves each once its part has stopped and every SQE it pushed
//! has completed. Adding an export starts no thread.

use super::control::{Control, Waker};
use super::ring::Ring;
use super::thread::{self, Owner};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Room for SQEs queued between two submits; more are submitted in turns.
const RING_ENTRIES: u32 = 1024;
/// Room for completions: every parked ring entry of every export on the
/// thread may complete at once (the connections end), and what does not
/// fit goes to a kernel list that can fail to grow. The most the kernel
/// allows (1 MiB of ring).
const RING_COMPLETIONS: u32 = 65536;

/// Builds a guest's owner on its thread, with the thread's ring at hand (to
/// register buffers with it).
pub type Setup = Box<dyn FnOnce(&mut Ring) -> Result<Box<dyn Owner + Send>, String> + Send>;

/// One export's part on one thread, on its way there.
pub struct Guest {
    pub setup: Setup,
    pub control: Arc<Control>,
    /// The longest the thread busy-polls for this guest before it sleeps.
    pub poll_max: Duration,
    /// The CPUs whose kernel FUSE queues the guest serves here: a thread
    /// whose guests all serve one CPU runs on it.
    pub cpus: Vec<usize>,
    /// Called when the guest's code panicked: its export halts with why.
    pub halt: Box<dyn Fn(String) + Send>,
    pub presence: Arc<Presence>,
}

/// On how many threads an export still has a part.
#[derive(Default)]
pub struct Presence(AtomicUsize);

impl Presence {
    pub fn threads(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }

    pub(super) fn arrived(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }

    pub(super) fn left(&self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the thread's loop shares with those who attach to it.
pub struct IoThread {
    name: String,
    pub(super) waker: Arc<Waker>,
    pub(super) inbox: Mutex<Inbox>,
    /// No guest comes any more: the thread ends once its guests have left.
    pub(super) closing: AtomicBool,
}

pub(super) type Reply = mpsc::Sender<Result<(), String>>;

/// Guests on their way in; once the thread has ended, the refusal each
/// later guest gets, and no guest is taken in any more (one lock, so that
/// none is left unanswered).
#[derive(Default)]
pub(super) struct Inbox {
    pub arrivals: Vec<(Guest, Reply)>,
    pub ended: Option<String>,
}

impl Inbox {
    /// The thread ends: guests still on their way are turned back.
    pub fn end(&mut self, thread: &IoThread, why: String) {
        let refusal = format!("I/O thread {thread:?} has ended: {why}");
        for (_, reply) in self.arrivals.drain(..) {
            let _ = reply.send(Err(refusal.clone()));
        }
        self.ended = Some(refusal);
    }
}

impl fmt::Debug for IoThread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl IoThread {
    /// Hands `guest` to the thread; the receiver hears whether it settled in.
    pub fn attach(&self, guest: Guest) -> mpsc::Receiver<Result<(), String>> {
        let (reply, outcome) = mpsc::channel();
        let mut inbox = self.inbox.lock().unwrap();
        match &inbox.ended {
            Some(refusal) => drop(reply.send(Err(refusal.clone()))),
            None => {
                inbox.arrivals.push((guest, reply));
                self.waker.wake();
            }
        }
        outcome
    }

    pub fn waker(&self) -> Arc<Waker> {
        self.waker.clone()
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A set of started I/O threads. Dropping it closes them: each ends once
/// its guests have left (never joined: a guest can stay while someone holds
/// its connection).
pub struct IoThreads {
    threads: Vec<Arc<IoThread>>,
}

impl IoThreads {
    /// Starts `count` threads named `name` and their number. `enter_failures`
    /// is the test suite's fault knob for each ring (zero for users).
    pub fn start(count: usize, name: &str, enter_failures: u32) -> Result<Self, String> {
        if count == 0 {
            return Err("an I/O thread set needs at least one thread".into());
        }
        let mut started = Self { threads: Vec::with_capacity(count) };
        for index in 0..count {
            let waker = Arc::new(Waker::new().map_err(|e| format!("Failed to create an eventfd: {e}"))?);
            let thread = Arc::new(IoThread {
                name: format!("{name}{index}"),
                waker,
                inbox: Mutex::default(),
                closing: AtomicBool::new(false),
            });
            let (ready, ring_made) = mpsc::channel();
            let shared = thread.clone();
            std::thread::Builder::new()
                .name(thread.name.clone())
                .spawn(move || match Ring::with_completion_room(RING_ENTRIES, RING_COMPLETIONS) {
                    Ok(mut ring) => {
                        ring.fail_next_enters(enter_failures);
                        let _ = ready.send(Ok(()));
                        thread::run(&shared, ring);
                    }
                    Err(e) => drop(ready.send(Err(format!("Failed to create an io_uring: {e}")))),
                })
                .map_err(|e| format!("Failed to start an I/O thread: {e}"))?;
            ring_made.recv().map_err(|_| "an I/O thread ended while starting".to_string())??;
            started.threads.push(thread);
        }
        Ok(started)
    }

    pub fn threads(&self) -> &[Arc<IoThread>] {
        &self.threads
    }
}

impl Drop for IoThreads {
    fn drop(&mut self) {
        for thread in &self.threads {
            thread.closing.store(true, Ordering::Release);
            thread.waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::control::Phase;
    use crate::runtime::ring::Completion;
    use crate::runtime::thread::Next;
    use crate::runtime::token::Token;
    use io_uring::opcode;
    use std::time::Instant;

    /// Pushes NOPs tagged with its number, `count` in a row, and notes what
    /// comes back; `panics` on its first completion.
    struct Nops {
        number: u32,
        count: usize,
        pushed: usize,
        seen: Arc<Mutex<Vec<Token>>>,
        panics: bool,
        dropped: Arc<AtomicBool>,
    }

    impl Owner for Nops {
        fn prepare(&mut self, ring: &mut Ring, phase: Phase) -> Next {
            if phase == Phase::Running && self.pushed < self.count && self.pushed == self.seen.lock().unwrap().len() {
                ring.push(opcode::Nop::new().build(), Token::new(1, 2, self.number));
                self.pushed += 1;
            }
            Next::Wait
        }

        fn complete(&mut self, _: &mut Ring, completion: Completion, _: Phase) {
            assert!(!self.panics, "boom");
            self.seen.lock().unwrap().push(completion.token);
        }
    }

    impl Drop for Nops {
        fn drop(&mut self) {
            self.dropped.store(true, Ordering::Release);
        }
    }

    struct Visitor {
        control: Arc<Control>,
        presence: Arc<Presence>,
        seen: Arc<Mutex<Vec<Token>>>,
        halted: Arc<Mutex<Option<String>>>,
        dropped: Arc<AtomicBool>,
    }

    fn visit(thread: &IoThread, number: u32, count: usize, panics: bool) -> Visitor {
        let control = Arc::new(Control::new(vec![thread.waker()]));
        let (seen, halted, dropped) = (Arc::default(), Arc::new(Mutex::new(None)), Arc::new(AtomicBool::new(false)));
        let owner = Nops { number, count, pushed: 0, seen: Arc::clone(&seen), panics, dropped: Arc::clone(&dropped) };
        let noted = Arc::clone(&halted);
        let guest = Guest {
            setup: Box::new(move |_| Ok(Box::new(owner) as Box<dyn Owner + Send>)),
            control: control.clone(),
            poll_max: Duration::ZERO,
            cpus: Vec::new(),
            halt: Box::new(move |why| *noted.lock().unwrap() = Some(why)),
            presence: Arc::default(),
        };
        let presence = guest.presence.clone();
        thread.attach(guest).recv().unwrap().unwrap();
        Visitor { control, presence, seen, halted, dropped }
    }

    fn eventually(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn guests_on_one_thread_get_their_own_completions_and_leave_when_stopped() {
        let threads = IoThreads::start(1, "test-io", 0).unwrap();
        let thread = &threads.threads()[0];
        let (a, b) = (visit(thread, 7, 3, false), visit(thread, 9, 3, false));
        eventually("both saw three completions", || {
            a.seen.lock().unwrap().len() == 3 && b.seen.lock().unwrap().len() == 3
        });
        assert!(a.seen.lock().unwrap().iter().all(|&token| token == Token::new(1, 2, 7)), "tokens come back as pushed");
        assert!(b.seen.lock().unwrap().iter().all(|&token| token == Token::new(1, 2, 9)));
        assert_eq!((a.presence.threads(), b.presence.threads()), (1, 1));
        a.control.stop();
        eventually("a left", || a.presence.threads() == 0 && a.dropped.load(Ordering::Acquire));
        assert_eq!(b.presence.threads(), 1, "b stays");
        b.control.stop();
        eventually("b left", || b.presence.threads() == 0);
    }

    #[test]
    fn a_guest_that_panics_halts_alone_and_is_kept() {
        let threads = IoThreads::start(1, "test-io", 0).unwrap();
        let thread = &threads.threads()[0];
        let bad = visit(thread, 1, 1, true);
        eventually("the bad guest halted", || bad.halted.lock().unwrap().is_some());
        assert!(bad.halted.lock().unwrap().as_deref().unwrap().contains("boom"));
        let good = visit(thread, 2, 3, false);
        eventually("the good guest was served", || good.seen.lock().unwrap().len() == 3);
        bad.control.stop();
        good.control.stop();
        eventually("the good guest left", || good.presence.threads() == 0);
        assert_eq!(bad.presence.threads(), 0, "a poisoned guest is not waited for");
        assert!(!bad.dropped.load(Ordering::Acquire), "its owner is leaked, not dropped");
    }

    #[test]
    fn closed_threads_end_once_their_guests_have_left() {
        let threads = IoThreads::start(2, "test-io", 0).unwrap();
        let kept: Vec<_> = threads.threads().to_vec();
        let guest = visit(&kept[0], 1, 1, false);
        drop(threads);
        eventually("the idle thread ended", || Arc::strong_count(&kept[1]) == 1);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(Arc::strong_count(&kept[0]), 2, "a thread with a guest goes on");
        guest.control.stop();
        eventually("the other thread ended", || Arc::strong_count(&kept[0]) == 1);
        let refused = kept[0].attach(Guest {
            setup: Box::new(|_| unreachable!()),
            control: guest.control.clone(),
            poll_max: Duration::ZERO,
            cpus: Vec::new(),
            halt: Box::new(|_| {}),
            presence: Arc::default(),
        });
        assert!(refused.recv().unwrap().unwrap_err().contains("has ended: it was closed"));
    }
}

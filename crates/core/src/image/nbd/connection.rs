//! One connection to the NBD server: its libnbd handle, whose socket its
//! owner I/O thread polls (`driver.rs`), and the commands in flight on it.
//!
//! A command's completion callback runs inside libnbd (on the thread that
//! drives the handle, under libnbd's lock): it only notes which command
//! ended and how. The owner thread then delivers each result with the
//! request's `Remote`: on its own ring without a system call
//! (`Ring::complete_local`), or, for a command another thread issued on a
//! shared connection, with a `Poster` (IORING_OP_MSG_RING).
//!
//! With a reconnect delay, a connection outlives its handle: when the
//! server goes, the owner keeps the commands that failed with it, puts a
//! new handle in place once the server is back (`replace`) and sends them
//! again (`resend`). Each handle has a generation, and each command notes
//! the one it ran on, so that a failure on a replaced handle is still known
//! for a lost connection's.

use super::durability::Durability;
use super::extents::Extents;
use super::ffi::CompletionCallback;
use super::handle::{Command, Handle};
use crate::runtime::remote::{Poster, Remote};
use crate::runtime::ring::Ring;
use std::ffi::{c_int, c_void};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};

/// Replies read on one read readiness at most, so that a server that
/// keeps the socket full cannot hold the thread from its other work.
const REPLIES_PER_TURN: usize = 64;

// SAFETY: the buffers are a waiting request's; a command carries them only
// to the libnbd call that reads or fills them, on whichever thread sends it.
unsafe impl Send for Command {}

/// A simple reply's header: magic, error and cookie.
const SIMPLE_REPLY_HEADER: u64 = 16;

impl Command {
    /// The most bytes a simple reply to the command takes from the socket:
    /// the header and, for a read, its data (none after an error).
    fn simple_reply_bytes(self) -> u64 {
        match self {
            Command::Read { len, .. } => SIMPLE_REPLY_HEADER + len,
            _ => SIMPLE_REPLY_HEADER,
        }
    }

    fn changes_data(self) -> bool {
        matches!(self, Command::Write { .. } | Command::Zero { .. })
    }

    /// The request's result when the server says yes.
    fn success(self) -> i32 {
        match self {
            Command::Read { len, .. } | Command::Write { len, .. } => len as i32,
            _ => 0,
        }
    }
}

/// A command in flight: who gets its result, and what to send again if
/// the connection is lost meanwhile.
struct InFlight {
    remote: Remote,
    command: Command,
}

/// A command whose callback ran (or that libnbd refused), not yet delivered.
struct Ended {
    slot: u32,
    errno: i32,
    /// Of the handle it ran on.
    generation: u32,
}

#[derive(Default)]
struct Commands {
    slots: Vec<Option<InFlight>>,
    free: Vec<u32>,
    finished: Vec<Ended>,
}

/// What a completion callback needs: where to note the end of its command.
struct Ticket {
    connection: *const Connection,
    slot: u32,
    generation: u32,
}

unsafe extern "C" fn command_ended(user_data: *mut c_void, error: *mut c_int) -> c_int {
    // SAFETY: user_data is the Ticket we boxed; the connection outlives its
    // handle's callbacks (they run only inside libnbd calls on it).
    let ticket = unsafe { &*(user_data as *const Ticket) };
    let errno = if error.is_null() { 0 } else { unsafe { *error } };
    let connection = unsafe { &*ticket.connection };
    let mut commands = connection.lock();
    if let Some(in_flight) = &commands.slots[ticket.slot as usize] {
        connection.replied_bytes.fetch_add(in_flight.command.simple_reply_bytes(), Ordering::Relaxed);
        // Acknowledged when the server says so, not when delivered: a
        // handle lost before the delivery may have lost it already.
        if errno == 0 && in_flight.command.changes_data() {
            connection.durability.acknowledged();
        }
    }
    commands.finished.push(Ended { slot: ticket.slot, errno, generation: ticket.generation });
    1
}

unsafe extern "C" fn free_ticket(user_data: *mut c_void) {
    // SAFETY: boxed in `send`; libnbd calls free exactly once.
    drop(unsafe { Box::from_raw(user_data as *mut Ticket) });
}

/// How a request sees a server error: the server's errno, except that a
/// lost connection is EIO.
pub fn request_errno(errno: i32) -> i32 {
    match errno {
        0 => libc::EIO,
        libc::ENOTCONN | libc::ESHUTDOWN | libc::ECONNRESET | libc::EPIPE | libc::ECONNREFUSED => libc::EIO,
        errno => errno,
    }
}

/// An eventfd that wakes the thread driving a connection: written by
/// threads that issue commands on a connection another thread drives (to
/// look at the direction again) and by the reconnecting helper.
pub struct Kick(OwnedFd);

impl Kick {
    fn new() -> Result<Kick, String> {
        // SAFETY: a fresh eventfd or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(format!("Cannot create an eventfd: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: just created, ours.
        Ok(Kick(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub fn kick(&self) {
        let one: u64 = 1;
        // SAFETY: an 8-byte write to our eventfd.
        unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    pub fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    pub fn try_clone(&self) -> std::io::Result<Kick> {
        self.0.try_clone().map(Kick)
    }
}

/// The handle commands go to now.
struct Current {
    handle: Handle,
    generation: u32,
}

pub struct Connection {
    current: RwLock<Current>,
    commands: Mutex<Commands>,
    kick: Kick,
    /// The most bytes the replies read so far took from the socket (see
    /// `notify`).
    replied_bytes: AtomicU64,
    /// The export's, shared by its connections.
    durability: Arc<Durability>,
    /// Requests of any thread that are under way on this connection, from
    /// their first command to their result: a request made of several
    /// commands (zeroes written chunk by chunk) sends its next one only
    /// after the last came back, so the driver must not end in between.
    requests: AtomicUsize,
    /// The driving thread is stopping: the end of the last request must
    /// wake it, so that it can end.
    driver_stopping: AtomicBool,
}

impl Connection {
    pub fn new(handle: Handle, durability: Arc<Durability>) -> Result<Connection, String> {
        Ok(Connection {
            current: RwLock::new(Current { handle, generation: 0 }),
            commands: Mutex::new(Commands::default()),
            kick: Kick::new()?,
            replied_bytes: AtomicU64::new(0),
            durability,
            requests: AtomicUsize::new(0),
            driver_stopping: AtomicBool::new(false),
        })
    }

    pub fn kick(&self) -> &Kick {
        &self.kick
    }

    fn current(&self) -> RwLockReadGuard<'_, Current> {
        self.current.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `command`; its result comes back to `remote`'s token. Called
    /// on the I/O thread whose ring gave `remote`.
    pub fn issue(&self, command: Command, remote: Remote) {
        let command = match command {
            Command::Flush { .. } => Command::Flush { covers_writes: self.durability.flush_sent() },
            other => other,
        };
        let slot = {
            let mut commands = self.lock();
            let in_flight = InFlight { remote, command };
            match commands.free.pop() {
                Some(slot) => {
                    commands.slots[slot as usize] = Some(in_flight);
                    slot
                }
                None => {
                    commands.slots.push(Some(in_flight));
                    commands.slots.len() as u32 - 1
                }
            }
        };
        self.send(slot, command);
    }

    /// Sends the command of `slot` on the current handle.
    fn send(&self, slot: u32, command: Command) {
        // Held while libnbd may call back, so that the handle is not
        // replaced under a command being queued on it.
        let current = self.current();
        let generation = current.generation;
        let ticket = Box::into_raw(Box::new(Ticket { connection: self, slot, generation }));
        let callback =
            CompletionCallback { callback: Some(command_ended), user_data: ticket.cast(), free: Some(free_ticket) };
        // SAFETY: the buffers stay valid until the completion is delivered
        // (they belong to a request that waits for it).
        if let Err(errno) = unsafe { current.handle.send(command, callback) } {
            // Refused before it was sent (a dead connection, a range the
            // server cannot take): libnbd freed the ticket, never calls back.
            let errno = if current.handle.is_dead() { libc::ENOTCONN } else { errno };
            let mut commands = self.lock();
            commands.finished.retain(|ended| ended.slot != slot);
            commands.finished.push(Ended { slot, errno, generation });
        }
    }

    /// Sends again the commands of `slots`, kept while the server was away.
    pub fn resend(&self, slots: Vec<u32>) {
        for slot in slots {
            let command = self.lock().slots[slot as usize].as_ref().map(|in_flight| in_flight.command);
            if let Some(command) = command {
                self.send(slot, command);
            }
        }
    }

    /// Fails the commands of `slots` (kept for a server that did not come
    /// back in time) with EIO, at the next `deliver`.
    pub fn fail(&self, slots: Vec<u32>) {
        let generation = self.current().generation;
        let mut commands = self.lock();
        commands.finished.extend(slots.into_iter().map(|slot| Ended { slot, errno: libc::EIO, generation }));
    }

    /// Puts `handle` in place of the lost one; the old one is closed. What
    /// the old one acknowledged and no FLUSH covered may be gone with the
    /// server's cache: the next FLUSH says so.
    pub fn replace(&self, handle: Handle) {
        self.durability.connection_replaced();
        let old = {
            let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
            let generation = current.generation.wrapping_add(1);
            std::mem::replace(&mut *current, Current { handle, generation })
        };
        drop(old);
    }

    fn lock(&self) -> MutexGuard<'_, Commands> {
        self.commands.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Delivers the results of the commands that ended. With `keep_lost`,
    /// commands that failed because their connection was lost are not
    /// delivered: their slots are returned, to be sent again.
    pub fn deliver(&self, ring: &mut Ring, poster: &mut Option<Poster>, keep_lost: bool) -> Vec<u32> {
        let finished = std::mem::take(&mut self.lock().finished);
        if finished.is_empty() {
            return Vec::new();
        }
        // Read after the commands' ends: a handle that failed them as it
        // died is dead by the time they are seen.
        let (generation, dead) = {
            let current = self.current();
            (current.generation, current.handle.is_dead())
        };
        let lost = |ended: &Ended| keep_lost && ended.errno != 0 && (ended.generation != generation || dead);
        let (kept, ended): (Vec<Ended>, Vec<Ended>) = finished.into_iter().partition(lost);
        let ended: Vec<(InFlight, i32)> = {
            let mut commands = self.lock();
            ended
                .into_iter()
                .filter_map(|Ended { slot, errno, .. }| {
                    let in_flight = commands.slots[slot as usize].take()?;
                    commands.free.push(slot);
                    Some((in_flight, errno))
                })
                .collect()
        };
        for (in_flight, errno) in ended {
            let errno = match in_flight.command {
                Command::Flush { covers_writes } => self.durability.flush_ended(covers_writes, errno),
                _ => errno,
            };
            let result = if errno == 0 { in_flight.command.success() } else { -request_errno(errno) };
            if let Err(remote) = ring.complete_local(in_flight.remote, result) {
                let poster = poster.get_or_insert_with(Poster::new_patiently);
                // Transient failures are retried inside; what is left means
                // that thread's ring is gone, and nobody waits for this.
                let _ = poster.post(remote, result);
            }
        }
        kept.into_iter().map(|ended| ended.slot).collect()
    }

    pub fn is_dead(&self) -> bool {
        self.current().handle.is_dead()
    }

    /// The current handle's socket, the directions libnbd waits for on it
    /// and the handle's generation; none while the connection is lost.
    pub fn socket(&self) -> Option<(RawFd, u32, u32)> {
        let current = self.current();
        current.handle.socket().map(|(fd, direction)| (fd, direction, current.generation))
    }

    /// Tells the handle of `generation` its socket is ready for `direction`
    /// (a poll on a replaced handle's socket is of no interest).
    ///
    /// Reading, it goes on while replies wait in the socket: libnbd reads
    /// one reply per notification, and a poll on the ring for each of the
    /// others costs a turn of the loop, often a wake-up. Taking them all
    /// at once halved the CPU time per 4 KiB read (DESIGN.md).
    ///
    /// libnbd must not hear of a read with nothing to read: it then waits
    /// inside its reply state, where new commands are only queued, for a
    /// reply that may never come. The socket may be empty though the poll
    /// fired (a synchronous block-status call may have read it meanwhile,
    /// and a readiness was seen to outlive its data). On a metered handle
    /// the bytes waiting are counted once and each reply read takes its
    /// size off (at most what it took, so the count left never exceeds
    /// what is there); otherwise each notification is preceded by a peek.
    pub fn notify(&self, generation: u32, direction: u32) {
        let current = self.current();
        let handle = &current.handle;
        if current.generation != generation || handle.is_dead() {
            return;
        }
        if direction == super::ffi::DIRECTION_WRITE {
            handle.notify_write();
            return;
        }
        // Nothing counted (the end of the stream, or a reply that came
        // since the readiness) is left to the peek.
        let mut waiting = handle.bytes_waiting().filter(|&bytes| bytes > 0);
        for _ in 0..REPLIES_PER_TURN {
            if handle.is_dead() || !waiting.map_or_else(|| handle.readable(), |bytes| bytes > 0) {
                return;
            }
            let before = self.replied_bytes.load(Ordering::Relaxed);
            handle.notify_read();
            if let Some(bytes) = waiting.as_mut() {
                let replied = self.replied_bytes.load(Ordering::Relaxed) - before;
                if replied == 0 {
                    // A reply read in part: the socket is empty now.
                    return;
                }
                *bytes = bytes.saturating_sub(replied);
            }
        }
    }

    /// A request starts on this connection (before its first command).
    pub fn request_started(&self) {
        self.requests.fetch_add(1, Ordering::SeqCst);
    }

    /// A request has its result: no more commands of its will come.
    pub fn request_ended(&self) {
        if self.requests.fetch_sub(1, Ordering::SeqCst) == 1 && self.driver_stopping.load(Ordering::SeqCst) {
            self.kick.kick();
        }
    }

    /// The driving thread stops: it may end once no request is under way.
    /// (Sequentially consistent with `request_ended`: either the last
    /// request sees the flag and kicks, or the driver sees no request.)
    pub fn driver_stops(&self) -> bool {
        self.driver_stopping.store(true, Ordering::SeqCst);
        self.requests.load(Ordering::SeqCst) == 0
    }

    pub fn in_flight(&self) -> i32 {
        self.current().handle.in_flight()
    }

    /// The extents of `base:allocation` from `offset`: (length, flags).
    /// Synchronous (SEEK_DATA / SEEK_HOLE are rare); replies to other
    /// commands read meanwhile are noted as usual and delivered by the
    /// owner, which is kicked afterwards.
    pub fn block_status(&self, offset: u64, count: u64) -> Result<Extents, i32> {
        let extents = self.current().handle.block_status(offset, count);
        self.kick.kick();
        extents.map_err(request_errno)
    }
}

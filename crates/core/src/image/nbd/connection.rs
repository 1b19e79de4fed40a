//! One connection to the NBD server: its libnbd handle, whose socket its
//! owner I/O thread polls (`driver.rs`), and the commands in flight on it.
//!
//! A command's completion callback runs inside libnbd (on the thread that
//! drives the handle, under libnbd's lock): it only notes which command
//! ended and how. The owner thread then delivers each result with the
//! request's `Remote`: on its own ring without a system call
//! (`Ring::complete_local`), or, for a command another thread issued on a
//! shared connection, with a `Poster` (IORING_OP_MSG_RING).

use super::ffi::CompletionCallback;
use super::handle::Handle;
use crate::runtime::remote::{Poster, Remote};
use crate::runtime::ring::Ring;
use std::ffi::{c_int, c_void};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Mutex, MutexGuard};

/// What a command asks of the server. Buffers belong to the request and
/// stay put until its completion is delivered.
#[derive(Debug, Clone, Copy)]
pub enum Command {
    Read { buffer: *mut u8, len: u64, offset: u64 },
    Write { buffer: *const u8, len: u64, offset: u64 },
    Flush,
    Trim { len: u64, offset: u64 },
    Zero { len: u64, offset: u64 },
}

impl Command {
    /// The request's result when the server says yes.
    fn success(self) -> i32 {
        match self {
            Command::Read { len, .. } | Command::Write { len, .. } => len as i32,
            _ => 0,
        }
    }
}

/// A command in flight: who gets its result.
struct InFlight {
    remote: Remote,
    success: i32,
}

#[derive(Default)]
struct Commands {
    slots: Vec<Option<InFlight>>,
    free: Vec<u32>,
    /// (slot, errno) of commands whose callback ran, not yet delivered.
    finished: Vec<(u32, i32)>,
}

/// What a completion callback needs: where to note the end of its command.
struct Ticket {
    connection: *const Connection,
    slot: u32,
}

unsafe extern "C" fn command_ended(user_data: *mut c_void, error: *mut c_int) -> c_int {
    // SAFETY: user_data is the Ticket we boxed; the connection outlives its
    // handle's callbacks (they run only inside libnbd calls on it).
    let ticket = unsafe { &*(user_data as *const Ticket) };
    let errno = if error.is_null() { 0 } else { unsafe { *error } };
    let connection = unsafe { &*ticket.connection };
    connection.lock().finished.push((ticket.slot, errno));
    1
}

unsafe extern "C" fn free_ticket(user_data: *mut c_void) {
    // SAFETY: boxed in `issue`; libnbd calls free exactly once.
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

pub struct Connection {
    handle: Handle,
    commands: Mutex<Commands>,
    /// Written by threads that issue commands on a connection another
    /// thread drives: wakes the owner to look at the direction again.
    kick: OwnedFd,
}

impl Connection {
    pub fn new(handle: Handle) -> Result<Connection, String> {
        // SAFETY: a fresh eventfd or -1.
        let kick = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if kick < 0 {
            return Err(format!("Cannot create an eventfd: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: just created, ours.
        let kick = unsafe { OwnedFd::from_raw_fd(kick) };
        Ok(Connection { handle, commands: Mutex::new(Commands::default()), kick })
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    pub fn kick_fd(&self) -> i32 {
        self.kick.as_raw_fd()
    }

    /// Sends `command`; its result comes back to `remote`'s token. Called
    /// on the I/O thread whose ring gave `remote`.
    pub fn issue(&self, command: Command, remote: Remote) {
        let slot = {
            let mut commands = self.lock();
            let in_flight = InFlight { remote, success: command.success() };
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
        let ticket = Box::into_raw(Box::new(Ticket { connection: self, slot }));
        let callback =
            CompletionCallback { callback: Some(command_ended), user_data: ticket.cast(), free: Some(free_ticket) };
        // SAFETY: the buffers stay valid until the completion is delivered
        // (they belong to a request that waits for it).
        if let Err(errno) = unsafe { self.handle.send(command, callback) } {
            // Refused before it was sent (a dead connection, a range the
            // server cannot take): libnbd freed the ticket, never calls back.
            let mut commands = self.lock();
            commands.finished.retain(|&(s, _)| s != slot);
            commands.finished.push((slot, request_errno(errno)));
        }
    }

    fn lock(&self) -> MutexGuard<'_, Commands> {
        self.commands.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Delivers the results of the commands that ended.
    pub fn deliver(&self, ring: &mut Ring, poster: &mut Option<Poster>) {
        let ended: Vec<(InFlight, i32)> = {
            let mut commands = self.lock();
            if commands.finished.is_empty() {
                return;
            }
            let finished = std::mem::take(&mut commands.finished);
            finished
                .into_iter()
                .filter_map(|(slot, errno)| {
                    let in_flight = commands.slots[slot as usize].take()?;
                    commands.free.push(slot);
                    Some((in_flight, errno))
                })
                .collect()
        };
        for (in_flight, errno) in ended {
            let result = if errno == 0 { in_flight.success } else { -request_errno(errno) };
            if let Err(remote) = ring.complete_local(in_flight.remote, result) {
                let poster = poster.get_or_insert_with(|| Poster::new().expect("a ring to post completions from"));
                if let Err(e) = poster.post(remote, result) {
                    panic!("posting an NBD completion to another I/O thread failed: {e}");
                }
            }
        }
    }

    /// Wakes the thread that drives this connection.
    pub fn kick(&self) {
        let one: u64 = 1;
        // SAFETY: an 8-byte write to our eventfd.
        unsafe { libc::write(self.kick.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    pub fn is_dead(&self) -> bool {
        self.handle.is_dead()
    }

    /// The extents of `base:allocation` from `offset`: (length, flags).
    /// Synchronous (SEEK_DATA / SEEK_HOLE are rare); replies to other
    /// commands read meanwhile are noted as usual and delivered by the
    /// owner, which is kicked afterwards.
    pub fn block_status(&self, offset: u64, count: u64) -> Result<Vec<(u64, u32)>, i32> {
        let extents = self.handle.block_status(offset, count);
        self.kick();
        extents.map_err(request_errno)
    }
}

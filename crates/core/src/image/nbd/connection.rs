//! One connection to the NBD server: a libnbd handle whose socket is
//! polled on its owner I/O thread's ring, and the commands in flight on it.
//!
//! A command's completion callback runs inside libnbd (on the thread that
//! drives the handle, under libnbd's lock): it only notes which command
//! ended and how. The owner thread then delivers each result with the
//! request's `Remote`: on its own ring without a system call
//! (`Ring::complete_local`), or, for a command another thread issued on a
//! shared connection, with a `Poster` (IORING_OP_MSG_RING).

use super::ffi::{self, Api, CompletionCallback, ExtentCallback, RawHandle};
use crate::runtime::control::Phase;
use crate::runtime::remote::{Poster, Remote};
use crate::runtime::ring::Ring;
use crate::runtime::token::Token;
use io_uring::{opcode, types};
use std::ffi::{c_char, c_int, c_void, CStr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    connection.commands.lock().unwrap_or_else(|e| e.into_inner()).finished.push((ticket.slot, errno));
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
    api: &'static Api,
    handle: *mut RawHandle,
    commands: Mutex<Commands>,
    /// Written by threads that issue commands on a connection another
    /// thread drives: wakes the owner to look at the direction again.
    kick: OwnedFd,
}

// SAFETY: libnbd handles are thread-safe (every call takes the handle's
// lock); the rest is behind a Mutex or immutable.
unsafe impl Send for Connection {}
// SAFETY: as above.
unsafe impl Sync for Connection {}

/// What a successful connection learnt about the export.
#[derive(Debug, Clone, Copy)]
pub struct Export {
    pub size: u64,
    pub read_only: bool,
    pub multi_conn: bool,
    pub can_flush: bool,
    pub can_trim: bool,
    pub can_zero: bool,
    pub base_allocation: bool,
}

impl Connection {
    /// Connects to `uri` (as given, secrets and all) and completes the
    /// handshake by `deadline`. The error names `address`.
    pub fn connect(api: &'static Api, uri: &str, address: &str, deadline: Instant) -> Result<(Connection, Export), String> {
        let failed = |why: String| format!("Cannot connect to the NBD server at {address}: {why}");
        // SAFETY: no arguments; NULL on failure.
        let handle = unsafe { (api.nbd_create)() };
        if handle.is_null() {
            return Err(failed(api.last_error().0));
        }
        // SAFETY: a fresh eventfd or -1.
        let kick = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if kick < 0 {
            // SAFETY: the handle is ours.
            unsafe { (api.nbd_close)(handle) };
            return Err(failed(std::io::Error::last_os_error().to_string()));
        }
        let connection = Connection {
            api,
            handle,
            commands: Mutex::new(Commands::default()),
            // SAFETY: just created, ours.
            kick: unsafe { OwnedFd::from_raw_fd(kick) },
        };
        let c_uri = ffi::c_string(uri)?;
        // SAFETY: a valid handle and NUL-terminated strings.
        unsafe {
            (api.nbd_set_handle_name)(handle, c"fuse-export".as_ptr());
            (api.nbd_add_meta_context)(handle, ffi::BASE_ALLOCATION.as_ptr());
            // The URI is the user's own: its TLS key and certificate files
            // (tls-psk-file=, tls-certificates=) may be read.
            (api.nbd_set_uri_allow_local_file)(handle, true);
            if (api.nbd_aio_connect_uri)(handle, c_uri.as_ptr()) < 0 {
                return Err(failed(api.last_error().0));
            }
        }
        // SAFETY (the loop): calls on our valid handle.
        while unsafe { (api.nbd_aio_is_connecting)(handle) } != 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(failed("no answer in time (is the server running and listening there?)".into()));
            }
            let wait = left.min(Duration::from_millis(500)).as_millis() as c_int;
            if unsafe { (api.nbd_poll)(handle, wait.max(1)) } < 0 {
                return Err(failed(api.last_error().0));
            }
        }
        if unsafe { (api.nbd_aio_is_ready)(handle) } == 0 {
            return Err(failed(api.last_error().0));
        }
        let flag = |f: unsafe extern "C" fn(*mut RawHandle) -> c_int| unsafe { f(handle) } > 0;
        // SAFETY: a connected handle.
        let size = unsafe { (api.nbd_get_size)(handle) };
        if size < 0 {
            return Err(failed(api.last_error().0));
        }
        let export = Export {
            size: size as u64,
            read_only: flag(api.nbd_is_read_only),
            multi_conn: flag(api.nbd_can_multi_conn),
            can_flush: flag(api.nbd_can_flush),
            can_trim: flag(api.nbd_can_trim),
            can_zero: flag(api.nbd_can_zero),
            // SAFETY: a connected handle and a NUL-terminated name.
            base_allocation: unsafe { (api.nbd_can_meta_context)(handle, ffi::BASE_ALLOCATION.as_ptr()) } > 0,
        };
        Ok((connection, export))
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
        let (api, h) = (self.api, self.handle);
        // SAFETY: the buffers stay valid until the completion is delivered
        // (they belong to a request that waits for it); the handle is ours.
        let cookie = unsafe {
            match command {
                Command::Read { buffer, len, offset } => (api.nbd_aio_pread)(h, buffer.cast(), len as usize, offset, callback, 0),
                Command::Write { buffer, len, offset } => (api.nbd_aio_pwrite)(h, buffer.cast(), len as usize, offset, callback, 0),
                Command::Flush => (api.nbd_aio_flush)(h, callback, 0),
                Command::Trim { len, offset } => (api.nbd_aio_trim)(h, len, offset, callback, 0),
                Command::Zero { len, offset } => (api.nbd_aio_zero)(h, len, offset, callback, 0),
            }
        };
        if cookie < 0 {
            // Refused before it was sent (a dead connection, a range the
            // server cannot take): libnbd freed the ticket, never calls back.
            let errno = request_errno(api.last_error().1);
            let mut commands = self.lock();
            commands.finished.retain(|&(s, _)| s != slot);
            commands.finished.push((slot, errno));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Commands> {
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
        // SAFETY: our handle; these calls take no lock.
        unsafe { (self.api.nbd_aio_is_dead)(self.handle) != 0 || (self.api.nbd_aio_is_closed)(self.handle) != 0 }
    }

    /// Whether a read would find something (data, the end, an error). A
    /// poll can report data that a synchronous call (`block_status`) has
    /// read since; libnbd must not hear of it then: a read notification
    /// with nothing to read leaves it waiting for a reply before it sends
    /// the next command, which may never come.
    fn readable(&self) -> bool {
        // SAFETY: our handle; a one-byte peek that never blocks.
        let fd = unsafe { (self.api.nbd_aio_get_fd)(self.handle) };
        if fd < 0 {
            return true;
        }
        let mut byte = 0u8;
        let peeked = unsafe { libc::recv(fd, (&mut byte as *mut u8).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
        peeked >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EAGAIN)
    }

    fn in_flight(&self) -> i32 {
        // SAFETY: our handle.
        unsafe { (self.api.nbd_aio_in_flight)(self.handle) }
    }

    /// The extents of `base:allocation` from `offset`: (length, flags).
    /// Synchronous (SEEK_DATA / SEEK_HOLE are rare); replies to other
    /// commands read meanwhile are noted as usual and delivered by the
    /// owner, which is kicked afterwards.
    pub fn block_status(&self, offset: u64, count: u64) -> Result<Vec<(u64, u32)>, i32> {
        let mut extents: Vec<(u64, u32)> = Vec::new();
        let callback = ExtentCallback {
            callback: Some(extents_seen),
            user_data: (&mut extents as *mut Vec<(u64, u32)>).cast(),
            free: None,
        };
        // SAFETY: `extents` outlives the synchronous call.
        let rc = unsafe { (self.api.nbd_block_status)(self.handle, count, offset, callback, 0) };
        self.kick();
        if rc < 0 {
            return Err(request_errno(self.api.last_error().1));
        }
        Ok(extents)
    }
}

unsafe extern "C" fn extents_seen(
    user_data: *mut c_void,
    metacontext: *const c_char,
    _offset: u64,
    entries: *mut u32,
    nr_entries: usize,
    _error: *mut c_int,
) -> c_int {
    // SAFETY: libnbd passes a NUL-terminated context name and nr_entries u32s.
    if metacontext.is_null() || unsafe { CStr::from_ptr(metacontext) } != ffi::BASE_ALLOCATION || entries.is_null() {
        return 0;
    }
    let extents = unsafe { &mut *(user_data as *mut Vec<(u64, u32)>) };
    let entries = unsafe { std::slice::from_raw_parts(entries, nr_entries) };
    extents.extend(entries.chunks_exact(2).map(|pair| (u64::from(pair[0]), pair[1])));
    0
}

impl Drop for Connection {
    fn drop(&mut self) {
        // SAFETY: ours; nothing is in flight once every I/O thread ended.
        unsafe { (self.api.nbd_close)(self.handle) };
    }
}

/// Token kinds on the backend's channel.
const POLL_IN: u8 = 1;
const POLL_OUT: u8 = 2;
const KICKED: u8 = 3;
const CANCEL: u8 = 4;

#[derive(Default)]
struct Armed {
    armed: bool,
    cancelling: bool,
}

impl Armed {
    fn arm(&mut self, ring: &mut Ring, entry: io_uring::squeue::Entry, token: Token) {
        if !self.armed {
            ring.push(entry, token);
            self.armed = true;
            self.cancelling = false;
        }
    }

    fn cancel(&mut self, ring: &mut Ring, token: Token, channel: u16) {
        if self.armed && !self.cancelling {
            ring.push(opcode::AsyncCancel::new(token.user_data()).build(), Token::new(CANCEL, channel, 0));
            self.cancelling = true;
        }
    }
}

/// The owner of a connection on its I/O thread: keeps the socket polled in
/// the direction libnbd wants and tells libnbd when it is ready.
pub struct Driver {
    connection: Arc<Connection>,
    address: String,
    channel: u16,
    read: Armed,
    write: Armed,
    kicked: Armed,
    kick_buffer: Box<u64>,
    poster: Option<Poster>,
    gone_reported: bool,
}

impl Driver {
    pub fn new(connection: Arc<Connection>, address: String, channel: u16) -> Self {
        Self {
            connection,
            address,
            channel,
            read: Armed::default(),
            write: Armed::default(),
            kicked: Armed::default(),
            kick_buffer: Box::new(0),
            poster: None,
            gone_reported: false,
        }
    }

    fn token(&self, kind: u8) -> Token {
        Token::new(kind, self.channel, 0)
    }

    pub fn prepare(&mut self, ring: &mut Ring, phase: Phase) -> Result<(), String> {
        let connection = self.connection.clone();
        connection.deliver(ring, &mut self.poster);
        let dead = connection.is_dead();
        if dead || (phase == Phase::Stopping && connection.in_flight() == 0) {
            let channel = self.channel;
            let (read, write, kicked) = (self.token(POLL_IN), self.token(POLL_OUT), self.token(KICKED));
            self.read.cancel(ring, read, channel);
            self.write.cancel(ring, write, channel);
            self.kicked.cancel(ring, kicked, channel);
            return self.gone(dead);
        }
        let api = connection.api;
        // SAFETY: our handle.
        let (fd, direction) =
            unsafe { ((api.nbd_aio_get_fd)(connection.handle), (api.nbd_aio_get_direction)(connection.handle)) };
        if fd >= 0 {
            if direction & ffi::DIRECTION_READ != 0 {
                let poll = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32).build();
                self.read.arm(ring, poll, self.token(POLL_IN));
            }
            if direction & ffi::DIRECTION_WRITE != 0 {
                let poll = opcode::PollAdd::new(types::Fd(fd), libc::POLLOUT as u32).build();
                self.write.arm(ring, poll, self.token(POLL_OUT));
            }
        }
        let kick = types::Fd(connection.kick.as_raw_fd());
        let read = opcode::Read::new(kick, (&mut *self.kick_buffer as *mut u64).cast(), 8).build();
        self.kicked.arm(ring, read, self.token(KICKED));
        Ok(())
    }

    pub fn complete(&mut self, ring: &mut Ring, token: Token, result: i32) -> Result<(), String> {
        let connection = &self.connection;
        let api = connection.api;
        match token.kind() {
            POLL_IN => {
                self.read.armed = false;
                if result >= 0 && !connection.is_dead() && connection.readable() {
                    // SAFETY: our handle. A failure leaves it dead: seen below.
                    unsafe { (api.nbd_aio_notify_read)(connection.handle) };
                }
            }
            POLL_OUT => {
                self.write.armed = false;
                if result >= 0 && !connection.is_dead() {
                    // SAFETY: as above.
                    unsafe { (api.nbd_aio_notify_write)(connection.handle) };
                }
            }
            KICKED => self.kicked.armed = false,
            _ => {}
        }
        let connection = self.connection.clone();
        connection.deliver(ring, &mut self.poster);
        self.gone(connection.is_dead())
    }

    /// The server went away: reported once.
    fn gone(&mut self, dead: bool) -> Result<(), String> {
        if !dead || self.gone_reported {
            return Ok(());
        }
        self.gone_reported = true;
        Err(format!("the NBD server at {} went away (the connection is closed)", self.address))
    }
}

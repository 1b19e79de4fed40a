//! Remote images over NBD through libnbd, loaded at run time only when an
//! NBD URI is given.
//!
//! Connections: one per I/O thread when the server offers multi-conn (each
//! thread then drives its own socket on its own ring; they ask for simple
//! replies, and block status comes from one more connection, `status.rs`);
//! otherwise one, driven by thread 0, on which the other threads issue
//! their commands too (libnbd locks the handle) and kick thread 0 to poll
//! the new direction; their results come back to them through
//! IORING_OP_MSG_RING. Reads land straight in the request's buffer, writes
//! leave straight from it.
//!
//! A lost server halts the export, or with `--reconnect-delay S` each
//! connection keeps its commands for up to S seconds while a helper
//! thread reconnects (`recovery.rs`, `reconnect.rs`).

mod connection;
mod driver;
mod durability;
pub mod extents;
mod ffi;
mod handle;
mod outages;
mod reconnect;
mod recovery;
mod retry;
mod status;
mod uri;

use super::{
    ImageBackend, ImageError, ImageIo, ImageOp, ImageOptions, IoContext, Notice, Seek, Stage, ThreadImage, Times,
};
use crate::runtime::buffer::Zeroes;
use crate::runtime::control::Phase;
use crate::runtime::ring::Ring;
use crate::runtime::token::Token;
use connection::Connection;
use driver::Driver;
use durability::Durability;
use extents::Extents;
use handle::{Command, Export, Handle, Replies};
use outages::Outages;
use reconnect::Target;
use recovery::Recovery;
use status::StatusConnection;
use std::cell::RefCell;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use uri::{is_uri, percent_decode};

/// A bad address or a server that does not answer fails within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

static NEXT_IMAGE: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    /// The connection this I/O thread issues its commands on, per image:
    /// (image id, connection, whether this thread drives it).
    static HOME: RefCell<Vec<(usize, Arc<Connection>, bool)>> = const { RefCell::new(Vec::new()) };
}

pub struct NbdImage {
    id: usize,
    shown: String,
    /// Where every connection goes, and what it must find there.
    target: Arc<Target>,
    export: Export,
    /// The server offers multi-conn and took a second connection: each
    /// I/O thread gets one of its own.
    multi_conn: bool,
    writable: bool,
    /// How long commands wait for a lost server (0: the export halts).
    reconnect_delay: Duration,
    outages: Arc<Mutex<Outages>>,
    /// Index = the I/O thread that drives it.
    connections: Mutex<Vec<Arc<Connection>>>,
    /// Where block status comes from when the connections above cannot
    /// carry it (simple replies); otherwise each thread asks its own.
    status: Option<StatusConnection>,
    opened: Times,
    /// What the connections' acknowledged writes risk (`durability.rs`).
    durability: Arc<Durability>,
}

impl NbdImage {
    /// The export and what the user should know (a multi-conn server that
    /// turned a second connection away).
    pub fn open(image: &str, options: &ImageOptions) -> Result<(Arc<dyn ImageBackend>, Vec<String>), ImageError> {
        let parsed = uri::parse(image).map_err(ImageError)?;
        if options.growable {
            return Err(ImageError(format!(
                "An NBD export has a fixed size: export {} without --growable",
                parsed.shown
            )));
        }
        let api = ffi::api().map_err(ImageError)?;
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let (first, export) =
            Handle::connect(api, image, &parsed.address, Replies::Structured, deadline).map_err(ImageError)?;
        if export.read_only && options.writable {
            return Err(ImageError(format!(
                "The NBD server at {} serves {} read-only: export it without --writable",
                parsed.address, parsed.shown
            )));
        }
        // With multi-conn every connection sees the same data: the data
        // connections then ask for simple replies (a 4 KiB read costs two
        // system calls fewer) and the first one stays for block status.
        // A server that takes no second connection gets one that does all.
        let mut warnings = Vec::new();
        let simple = export.multi_conn.then(|| Handle::connect(api, image, &parsed.address, Replies::Simple, deadline));
        let simple = match simple {
            Some(Ok(connection)) => Some(connection),
            Some(Err(why)) => {
                warnings.push(format!(
                    "The NBD server at {} offers multi-conn but turned a second connection away ({why}): \
                     one connection serves every I/O thread",
                    parsed.address
                ));
                None
            }
            None => None,
        };
        let target = |replies| {
            Arc::new(Target {
                api,
                uri: image.to_string(),
                address: parsed.address.clone(),
                export,
                writable: options.writable,
                replies,
            })
        };
        let simple_taken = simple.is_some();
        let (data, status, replies) = match simple {
            Some((data, _)) => {
                let status = export.base_allocation.then(|| StatusConnection::new(first, target(Replies::Structured)));
                (data, status, Replies::Simple)
            }
            None => (first, None, Replies::Structured),
        };
        let durability = Arc::<Durability>::default();
        let first = Connection::new(data, durability.clone()).map_err(ImageError)?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let stamp = (now.as_secs(), now.subsec_nanos());
        let image = Arc::new(NbdImage {
            id: NEXT_IMAGE.fetch_add(1, Ordering::Relaxed),
            multi_conn: simple_taken,
            target: target(replies),
            shown: parsed.shown,
            export,
            writable: options.writable,
            reconnect_delay: options.reconnect_delay,
            outages: Arc::default(),
            connections: Mutex::new(vec![Arc::new(first)]),
            status,
            opened: [stamp; 3],
            durability,
        });
        Ok((image, warnings))
    }

    /// This thread's connection and whether it drives it.
    fn home(&self) -> (Arc<Connection>, bool) {
        let found = HOME
            .with(|home| home.borrow().iter().find(|(id, _, _)| *id == self.id).map(|(_, c, owns)| (c.clone(), *owns)));
        found.unwrap_or_else(|| (self.connections.lock().unwrap()[0].clone(), false))
    }

    fn issue(&self, command: Command, context: IoContext) -> Poll<i32> {
        let (connection, owns) = self.home();
        let remote = context.ring.hand_off(context.token);
        connection.issue(command, remote);
        if !owns {
            connection.kick().kick();
        }
        Poll::Pending
    }

    /// The next command of `io`.
    fn next(&self, io: &mut ImageIo, context: IoContext) -> Poll<i32> {
        let (offset, len) = (io.offset + io.done, io.len - io.done);
        let command = match io.op {
            ImageOp::Read => Command::Read { buffer: context.buffer, len, offset },
            ImageOp::Write => Command::Write { buffer: context.buffer, len, offset },
            ImageOp::Flush if !self.export.can_flush => return Poll::Ready(0),
            ImageOp::Flush => Command::Flush { covers_writes: false },
            ImageOp::Discard | ImageOp::WriteZeroes if self.export.can_zero && io.stage == Stage::Idle => {
                Command::Zero { len, offset }
            }
            ImageOp::Discard | ImageOp::WriteZeroes => {
                io.stage = Stage::WritingZeroes;
                Command::Write { buffer: Zeroes::shared().as_ptr(), len: len.min(Zeroes::LEN as u64), offset }
            }
            ImageOp::Allocate => return Poll::Ready(-libc::EOPNOTSUPP),
        };
        self.issue(command, context)
    }

    /// The `base:allocation` extents from `offset`; none when they cannot
    /// be had now.
    fn extents(&self, offset: u64, count: u64) -> Result<Option<Extents>, i32> {
        match &self.status {
            Some(status) => status.extents(offset, count),
            None => self.home().0.block_status(offset, count).map(Some),
        }
    }

    /// SEEK_DATA / SEEK_HOLE from `base:allocation`.
    fn seek_extents(&self, offset: u64, what: Seek) -> io::Result<u64> {
        extents::seek(self.export.size, offset, what, |position, count| self.extents(position, count))
    }
}

impl ImageBackend for NbdImage {
    fn size(&self) -> u64 {
        self.export.size
    }

    fn writable(&self) -> bool {
        self.writable
    }

    fn growable(&self) -> bool {
        false
    }

    fn allocated_bytes(&self) -> u64 {
        self.export.size
    }

    fn times(&self) -> Times {
        self.opened
    }

    fn uses_direct_io(&self) -> bool {
        false
    }

    fn resize(&self, size: u64) -> io::Result<()> {
        if size == self.export.size {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(libc::EINVAL))
        }
    }

    fn seek(&self, offset: u64, what: Seek) -> io::Result<u64> {
        if offset >= self.export.size {
            return Err(io::Error::from_raw_os_error(libc::ENXIO));
        }
        if !self.export.base_allocation {
            return Ok(what.all_data(offset, self.export.size));
        }
        self.seek_extents(offset, what)
    }

    fn submit(&self, io: &mut ImageIo, context: IoContext) -> Poll<i32> {
        let connection = self.home().0;
        connection.request_started();
        let outcome = self.next(io, context);
        if outcome.is_ready() {
            connection.request_ended();
        }
        outcome
    }

    fn complete(&self, io: &mut ImageIo, result: i32, context: IoContext) -> Poll<i32> {
        let outcome = if io.stage != Stage::WritingZeroes || result < 0 {
            Poll::Ready(result)
        } else {
            io.done += result as u64;
            if io.done >= io.len {
                Poll::Ready(0)
            } else {
                self.next(io, context)
            }
        };
        if outcome.is_ready() {
            self.home().0.request_ended();
        }
        outcome
    }

    /// The bytes as the server presents them.
    fn format(&self) -> &'static str {
        "raw"
    }

    fn passthrough_fd(&self) -> Result<std::os::fd::RawFd, String> {
        Err("an NBD image lives on a server: there is no file the kernel could read itself".into())
    }

    fn sync_size(&self) {}

    fn backend_name(&self) -> &'static str {
        "nbd"
    }

    fn shown_name(&self) -> String {
        self.shown.clone()
    }

    /// Thread n drives connection n; with multi-conn each thread gets one
    /// (opened here), otherwise threads past the first share thread 0's.
    fn attach_thread(&self, thread: usize, channel: u16) -> Option<Box<dyn ThreadImage>> {
        let mut connections = self.connections.lock().unwrap();
        let mut notices = Vec::new();
        if self.multi_conn && thread == connections.len() {
            let deadline = Instant::now() + CONNECT_TIMEOUT;
            // The library was loaded by `open`.
            let api = ffi::api().ok()?;
            let target = &self.target;
            let connected = Handle::connect(api, &target.uri, &target.address, target.replies, deadline)
                .and_then(|(handle, _)| Connection::new(handle, self.durability.clone()));
            match connected {
                Ok(connection) => connections.push(Arc::new(connection)),
                Err(why) => notices.push(Notice {
                    kind: "nbd-shared-connection",
                    message: format!(
                        "the NBD server at {} turned the connection of I/O thread {thread} away ({why}): \
                         the threads from {thread} on share thread 0's",
                        target.address
                    ),
                }),
            }
        }
        let (connection, owns) = match connections.get(thread) {
            Some(connection) => (connection.clone(), true),
            None => (connections[0].clone(), false),
        };
        let recovery = (!self.reconnect_delay.is_zero())
            .then(|| Recovery::new(self.target.clone(), self.reconnect_delay, self.outages.clone()));
        let driver = owns.then(|| Driver::new(connection.clone(), self.target.address.clone(), channel, recovery));
        Some(Box::new(NbdThread { image: self.id, connection, driver, homed: false, notices }))
    }
}

/// The backend on one I/O thread: its home connection, and the driver of
/// the connection it owns, if any.
struct NbdThread {
    image: usize,
    connection: Arc<Connection>,
    driver: Option<Driver>,
    homed: bool,
    /// What attaching found that the user should hear of.
    notices: Vec<Notice>,
}

impl ThreadImage for NbdThread {
    fn prepare(&mut self, ring: &mut Ring, phase: Phase) -> Result<(), String> {
        if !self.homed {
            // The first turn of the thread's loop, on the thread itself.
            let home = (self.image, self.connection.clone(), self.driver.is_some());
            HOME.with(|h| h.borrow_mut().push(home));
            self.homed = true;
        }
        match &mut self.driver {
            Some(driver) => driver.prepare(ring, phase),
            None => Ok(()),
        }
    }

    fn complete(&mut self, ring: &mut Ring, token: Token, result: i32) -> Result<(), String> {
        match &mut self.driver {
            Some(driver) => driver.complete(ring, token, result),
            None => Ok(()),
        }
    }

    fn take_notices(&mut self) -> Vec<Notice> {
        let mut notices = std::mem::take(&mut self.notices);
        notices.extend(self.driver.as_mut().map(Driver::take_notices).unwrap_or_default());
        notices
    }
}

impl Drop for NbdThread {
    /// The export leaves the thread, which goes on serving others: its home
    /// connection must not outlive it there (dropped on the thread itself).
    fn drop(&mut self) {
        if self.homed {
            HOME.with(|h| h.borrow_mut().retain(|(image, _, _)| *image != self.image));
        }
    }
}

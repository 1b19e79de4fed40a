//! The qcow2 backend. imago owns the metadata (L1/L2 and refcount tables,
//! allocation, the backing chain); the data of mapped clusters moves on the
//! I/O thread's ring straight into and out of the request's buffer, as the
//! raw backend moves it.
//!
//! A request is served piece by piece: each piece is what one mapping
//! covers (one run of clusters mapped alike). A piece that lies in a file
//! goes on the ring (`ImageIo::piece` remembers its length until its
//! completion); zeroes are written into the buffer; compressed clusters are
//! read (and decompressed) by imago. A write to a cluster that is not yet
//! writable in the top image (unallocated, backing data, zero, compressed)
//! is an allocation: prepare the mapping, write the data, commit; imago
//! copies the rest of the cluster from below.
//!
//! imago blocks its calling thread on cache misses, allocations,
//! decompression, flushes: the I/O thread asks for mappings with metadata
//! reads refused (`storage::without_blocking_reads`), so that a hit answers
//! at once and a miss, like every other blocking call, is handed to a
//! worker (`workers.rs`) that completes later on the request's token.

mod discard_guard;
mod failures;
mod gate;
mod limits;
mod refcount_cover;
mod storage;
mod workers;

use super::probe::{parse_qcow2_header, PROBE_BYTES};
use super::raw::{is_memory_filesystem, DIRECT_ALIGNMENT};
use super::{
    open_failed, times_of, CacheMode, ImageBackend, ImageError, ImageIo, ImageOp, ImageOptions, IoContext, Seek, Stage,
    Times,
};
use crate::os_error::describe;
use crate::runtime::buffer::Zeroes;
use discard_guard::DiscardGuard;
use failures::Failures;
use gate::ChainGate;
use imago::format::builder::FormatDriverBuilder;
use imago::format::PreallocateMode;
use imago::io_buffers::{IoVector, IoVectorMut};
use imago::qcow2::Qcow2;
use imago::{FormatAccess, Mapping};
use io_uring::{opcode, types};
use limits::MetadataBudget;
use std::fs::File;
use std::io;
use std::os::fd::RawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use storage::{is_miss, without_blocking_reads, HostFile};
use workers::{Job, Lent};

/// qcow2 counts its virtual size in 512-byte sectors (QEMU rounds any
/// other size down): a write past the end grows to the next sector
/// boundary, and a truncate to anything else is EINVAL, as in QEMU.
const SECTOR: u64 = 512;

/// How long a SEEK_DATA / SEEK_HOLE may walk the mappings.
const SEEK_WALK_BUDGET: std::time::Duration = std::time::Duration::from_millis(500);

pub struct Qcow2Image {
    shared: Arc<Shared>,
    /// The top image's path, as the logs and the mount table show it.
    path: std::path::PathBuf,
}

/// What the I/O threads and the workers share.
struct Shared {
    access: FormatAccess<HostFile>,
    /// The top image's file (a duplicate descriptor): fsync, stat.
    top: File,
    writable: bool,
    growable: bool,
    /// The top image lives in memory (tmpfs): copies need no ring.
    memory_backed: bool,
    direct: bool,
    /// Growing is one step at a time.
    growing: Mutex<()>,
    /// Discards wait for writes in flight, and writes for discards.
    guard: DiscardGuard,
    /// Why recent requests failed, for the request core's report.
    failures: Failures,
    /// The data clusters live in an external data file.
    external_data: bool,
}

fn errno(error: &io::Error) -> i32 {
    match error.raw_os_error() {
        Some(errno) => errno,
        None if error.kind() == io::ErrorKind::Unsupported => libc::EOPNOTSUPP,
        None => libc::EIO,
    }
}

/// The request's buffer from `done` on, `len` bytes of it.
///
/// # Safety
/// The buffer holds at least `done + len` bytes and belongs to this request
/// until it completes (`IoContext::buffer`'s contract).
unsafe fn piece_of<'a>(buffer: *mut u8, done: u64, len: u64) -> &'a mut [u8] {
    // SAFETY: see above.
    unsafe { std::slice::from_raw_parts_mut(buffer.add(done as usize), len as usize) }
}

/// The first bytes of `path`, for probing.
pub fn read_first_bytes(path: &Path) -> io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    let mut bytes = vec![0u8; PROBE_BYTES];
    let mut filled = 0;
    while filled < bytes.len() {
        match file.read_at(&mut bytes[filled..], filled as u64)? {
            0 => break,
            n => filled += n,
        }
    }
    bytes.truncate(filled);
    Ok(bytes)
}

impl Qcow2Image {
    pub fn open(options: &ImageOptions, first_bytes: &[u8]) -> Result<(Qcow2Image, Vec<String>), ImageError> {
        let path = &options.path;
        let shown = path.display();
        if options.growable && !options.writable {
            return Err(ImageError("--growable needs --writable".into()));
        }
        let unusable = |problem: String| ImageError(format!("Image {shown} is not a usable qcow2 image: {problem}"));
        let header = parse_qcow2_header(first_bytes).map_err(unusable)?;
        let file_size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(u64::MAX);
        let budget = MetadataBudget::default();
        limits::check_header(first_bytes, file_size, options.writable)
            .and_then(|cost| budget.charge(cost))
            .map_err(unusable)?;
        let direct = options.cache == CacheMode::Direct;
        let top =
            HostFile::open_path(path, options.writable, direct).map_err(|e| open_failed(path, options.writable, &e))?;
        if options.writable {
            let uncovered = refcount_cover::uncovered_metadata(&top, &header)
                .map_err(|e| ImageError(format!("Failed to read image {shown}: {}", describe(&e))))?;
            if let Some(problem) = uncovered {
                return Err(ImageError(format!(
                    "Image {shown} cannot be exported writable: {problem}, so its refcounts are corrupt; \
                     repair it with `qemu-img check -r all`, or export it without --writable"
                )));
            }
        }
        let memory_backed = is_memory_filesystem(top.file());
        let top_file = top
            .file()
            .try_clone()
            .map_err(|e| ImageError(format!("Failed to open image {shown}: {}", describe(&e))))?;
        let mut warnings = Vec::new();
        if direct && !memory_backed && top.direct_fd().is_none() {
            warnings.push(format!("The filesystem of {shown} refuses O_DIRECT; using the page cache instead"));
        }
        let uses_direct = top.direct_fd().is_some() && !memory_backed;
        let gate = ChainGate::new(path.clone(), options.writable, direct && !memory_backed, budget);
        let qcow2 = Qcow2::<HostFile>::builder(top)
            .write(options.writable)
            .open(gate)
            .map_err(|e| ImageError(format!("Failed to open qcow2 image {shown}: {}", chain_message(&e))))?;
        let shared = Arc::new(Shared {
            access: FormatAccess::new(qcow2),
            top: top_file,
            writable: options.writable,
            growable: options.growable,
            memory_backed,
            direct: uses_direct,
            growing: Mutex::new(()),
            guard: DiscardGuard::default(),
            failures: Failures::default(),
            external_data: header.external_data_file,
        });
        Ok((Qcow2Image { shared, path: path.clone() }, warnings))
    }

    /// Hands `job` to a worker; its result completes the request's token.
    fn hand_off(&self, io: &mut ImageIo, stage: Stage, context: &mut IoContext, job: Job<Shared>) -> Poll<i32> {
        io.stage = stage;
        if let Err((remote, result)) = workers::run(&self.shared, context.ring.hand_off(context.token), job) {
            // Refused: the request fails on this thread's next reap.
            let _ = context.ring.complete_local(remote, result);
        }
        Poll::Pending
    }

    /// The next pieces of a read or write: done inline, put on the ring, or
    /// handed to a worker.
    fn step(&self, io: &mut ImageIo, context: &mut IoContext) -> Poll<i32> {
        while io.done < io.len {
            let (mapping, len) = match self.look_up(io, context) {
                Ok(found) => found,
                Err(outcome) => return outcome,
            };
            // Each arm leaves the discard guard once it is done with the
            // mapping (`look_up` entered it).
            let image = &*self.shared;
            let moved = match (io.op, mapping) {
                (_, Mapping::Raw { storage, offset: host, writable, .. })
                    if io.op == ImageOp::Read || (writable && len > 0) =>
                {
                    self.transfer(io, context, storage, host, len)
                }
                (ImageOp::Read, Mapping::Zero { .. } | Mapping::Eof { .. }) => {
                    image.guard.leave();
                    let len = if len == 0 { io.len - io.done } else { len };
                    // SAFETY: the request's buffer, `done + len <= io.len`.
                    unsafe { piece_of(context.buffer, io.done, len) }.fill(0);
                    Ok(len)
                }
                (ImageOp::Read, _) => return self.read_decoded(io, context, len),
                _ => return self.allocate(io, context),
            };
            match moved {
                Ok(moved) => io.done += moved,
                Err(outcome) => return outcome,
            }
        }
        Poll::Ready(io.done as i32)
    }

    /// The mapping of the next piece of `io`, the discard guard entered
    /// (counted from here until the data lands, or until this thread hands
    /// the piece on: a discard must not free the cluster this lookup found
    /// while its transfer is due). A lookup that must wait goes to a worker.
    fn look_up(&self, io: &mut ImageIo, context: &mut IoContext) -> Result<(Mapping<'_, HostFile>, u64), Poll<i32>> {
        let image = &*self.shared;
        let (offset, remaining) = (io.offset + io.done, io.len - io.done);
        if !image.guard.try_enter() {
            let job: Job<Shared> = Box::new(|image| {
                image.guard.wait_for_discards();
                0
            });
            return Err(self.hand_off(io, Stage::Waiting, context, job));
        }
        let lookup = if io.stage == Stage::Warmed {
            io.stage = Stage::Idle;
            image.access.get_mapping(offset, remaining)
        } else {
            without_blocking_reads(|| image.access.get_mapping(offset, remaining))
        };
        match lookup {
            Ok((mapping, len)) => Ok((mapping, len.min(remaining))),
            Err(e) if is_miss(&e) => {
                image.guard.leave();
                let request = io.offset;
                let job: Job<Shared> = Box::new(move |image| {
                    image.answer(request, image.access.get_mapping(offset, remaining).map(|_| 0))
                });
                Err(self.hand_off(io, Stage::Warming, context, job))
            }
            Err(e) => {
                image.guard.leave();
                Err(Poll::Ready(image.failed(io.offset, &e)))
            }
        }
    }

    /// Data that lies in a host file as it is: copied on a memory-backed
    /// image (done at once), else an SQE that reads into or writes from the
    /// request's buffer (Pending; the guard is left on its completion).
    fn transfer(
        &self,
        io: &mut ImageIo,
        context: &mut IoContext,
        storage: &HostFile,
        host: u64,
        len: u64,
    ) -> Result<u64, Poll<i32>> {
        let image = &*self.shared;
        let buffer = context.buffer.wrapping_add(io.done as usize);
        if image.memory_backed {
            let copied = image.copy_in_memory(io.op, storage, host, len, buffer);
            image.guard.leave();
            let offset = io.offset + io.done;
            return match copied {
                Ok(read) if read < len => Err(Poll::Ready(image.short_read(io.offset, offset, len, read))),
                Ok(moved) => Ok(moved),
                Err(e) => Err(Poll::Ready(image.failed(io.offset, &e))),
            };
        }
        let fd = types::Fd(image.fd_for(storage, host, len, buffer));
        let entry = if io.op == ImageOp::Read {
            opcode::Read::new(fd, buffer, len as u32).offset(host).build()
        } else {
            opcode::Write::new(fd, buffer, len as u32).offset(host).build()
        };
        io.piece = len;
        io.stage = Stage::OnRing;
        context.ring.push(entry, context.token);
        Err(Poll::Pending)
    }

    /// Compressed data (or anything else imago must decode): read by imago
    /// on a worker, counted in the discard guard again while it runs.
    fn read_decoded(&self, io: &mut ImageIo, context: &mut IoContext, len: u64) -> Poll<i32> {
        self.shared.guard.leave();
        let (request, offset) = (io.offset, io.offset + io.done);
        let buffer = Lent(context.buffer.wrapping_add(io.done as usize));
        let job: Job<Shared> = Box::new(move |image| {
            // SAFETY: the request's buffer, lent until this job's result is posted.
            let piece = unsafe { piece_of(buffer.get(), 0, len) };
            let mut vector = IoVectorMut::new();
            vector.push(piece);
            image.guard.enter_waiting();
            let read = image.access.readv(vector, offset).map(|()| len);
            image.guard.leave();
            image.answer(request, read)
        });
        self.hand_off(io, Stage::HandedOff, context, job)
    }

    /// A write where the top image has no writable cluster: the allocation
    /// (and the write) on a worker, which counts itself in when it runs.
    fn allocate(&self, io: &mut ImageIo, context: &mut IoContext) -> Poll<i32> {
        self.shared.guard.leave();
        let (request, offset, remaining) = (io.offset, io.offset + io.done, io.len - io.done);
        let buffer = Lent(context.buffer.wrapping_add(io.done as usize));
        let job: Job<Shared> =
            Box::new(move |image| image.answer(request, image.allocate(offset, remaining, buffer.get())));
        self.hand_off(io, Stage::HandedOff, context, job)
    }
}

impl Shared {
    /// A job's answer: its result, or the errno of its failure, whose
    /// reason is noted for the report.
    fn answer(&self, request: u64, result: io::Result<u64>) -> i32 {
        result.map_or_else(|e| self.failed(request, &e), |n| n as i32)
    }

    /// The errno for the request at `request` failing with `error`, whose
    /// reason (imago's words, the file and the offset) is noted.
    fn failed(&self, request: u64, error: &io::Error) -> i32 {
        self.failures.note(request, chain_message(error));
        -errno(error)
    }

    /// A ring read of the cluster at guest `offset` came back short: its
    /// mapping points past the end of its file (a truncated copy, or a
    /// corrupt L2 entry). EIO, never zeroes; the reason names the file and
    /// both offsets.
    fn short_read(&self, request: u64, offset: u64, wanted: u64, read: u64) -> i32 {
        let reason = match self.access.get_mapping(offset, wanted) {
            Ok((Mapping::Raw { storage, offset: host, .. }, _)) => {
                let size = storage.file().metadata().map_or(0, |m| m.len());
                format!(
                    "guest offset {offset} maps to host offset {host} of {}, which ends at {size} bytes \
                     ({read} of {wanted} bytes read): the file is truncated or an L2 entry is corrupt",
                    storage.path().display()
                )
            }
            _ => format!("guest offset {offset}: {read} of {wanted} bytes read (the mapping changed meanwhile)"),
        };
        self.failures.note(request, reason);
        -libc::EIO
    }

    fn fd_for(&self, storage: &HostFile, host_offset: u64, len: u64, buffer: *const u8) -> RawFd {
        let aligned = |v: u64| v.is_multiple_of(DIRECT_ALIGNMENT);
        match storage.direct_fd() {
            Some(fd) if self.direct && aligned(host_offset) && aligned(len) && aligned(buffer as u64) => fd,
            _ => storage.fd(),
        }
    }

    /// Grows the virtual size to at least `end`. New space reads as zeroes,
    /// whatever the backing file holds there.
    fn grow_to(&self, end: u64) -> io::Result<()> {
        let end = end.next_multiple_of(SECTOR);
        let _one_at_a_time = self.growing.lock().unwrap();
        if end <= self.access.size() {
            return Ok(());
        }
        match self.access.resize_grow(end, PreallocateMode::Zero) {
            Err(e) if e.kind() == io::ErrorKind::Unsupported => self.access.resize_grow(end, PreallocateMode::None),
            other => other,
        }
    }

    /// Bytes copied: for a read, fewer than `len` where the file ends.
    fn copy_in_memory(&self, op: ImageOp, storage: &HostFile, host: u64, len: u64, buffer: *mut u8) -> io::Result<u64> {
        // SAFETY: the request's buffer at the piece, `len` bytes of it.
        let piece = unsafe { piece_of(buffer, 0, len) };
        if op == ImageOp::Read {
            let mut filled = 0;
            while filled < piece.len() {
                match storage.file().read_at(&mut piece[filled..], host + filled as u64)? {
                    0 => break,
                    n => filled += n,
                }
            }
            return Ok(filled as u64);
        }
        storage.write_all_at(piece, host)?;
        Ok(len)
    }

    /// A write where the top image has no writable cluster yet: imago
    /// allocates (copying the rest of the cluster from below), the data is
    /// written, then the mapping is committed. On a worker, one prepared
    /// mapping at a time, released before the next is prepared.
    fn allocate(&self, offset: u64, len: u64, data: *mut u8) -> io::Result<u64> {
        self.guard.enter_waiting();
        let allocated = self.allocate_counted(offset, len, data);
        self.guard.leave();
        allocated
    }

    fn allocate_counted(&self, offset: u64, len: u64, data: *mut u8) -> io::Result<u64> {
        let mapping = self.access.prepare_data_mapping(offset, len, true)?;
        let mapped = mapping.length();
        // SAFETY: the request's buffer at the piece, `mapped <= len` bytes.
        let data = unsafe { piece_of(data, 0, mapped) };
        mapping.storage().write_all_at(data, mapping.offset())?;
        self.access.commit_data_mapping(mapping)?;
        Ok(mapped)
    }

    /// Zeroes through imago where the format can record them, by writing
    /// zeroes where it cannot (qcow2 v2).
    fn zero(&self, offset: u64, len: u64, discard: bool) -> io::Result<()> {
        let recorded = if discard {
            // SAFETY: imago's caveat is mappings held across the discard.
            // Ours are held by reads and writes from their lookup until
            // their data lands, and the guard runs the discard only while
            // none is; a read racing a discard of its own range sees the
            // old data or zeroes, never a reused cluster's.
            self.guard.discard(|| unsafe { self.access.discard_to_zero_unsafe(offset, len) })
        } else {
            self.access.write_zeroes(offset, len)
        };
        match recorded {
            Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                let mut done = 0;
                while done < len {
                    let chunk = (len - done).min(Zeroes::LEN as u64) as usize;
                    let mut vector = IoVector::new();
                    vector.push(Zeroes::shared().slice(chunk));
                    self.access.writev(vector, offset + done)?;
                    done += chunk as u64;
                }
                Ok(())
            }
            other => other,
        }
    }

    /// Everything acknowledged becomes durable: the metadata is written
    /// back after the data it points to (allocations commit only once their
    /// data is written), then imago syncs the qcow2 file and the external
    /// data file. With an external data file, its data is synced first, so
    /// that no durable table names data that is not.
    fn flush(&self) -> io::Result<()> {
        if self.external_data {
            self.access.sync()?;
        }
        self.access.flush()?;
        self.access.sync()
    }

    /// Flush, discard, zeroes, preallocation: on a worker.
    fn other(&self, op: ImageOp, offset: u64, len: u64) -> io::Result<()> {
        let end = offset + len;
        match op {
            ImageOp::Flush => self.flush(),
            ImageOp::Discard => self.zero(offset, len.min(self.access.size().saturating_sub(offset)), true),
            ImageOp::WriteZeroes => self.grow_to(end).and_then(|()| self.zero(offset, len, false)),
            ImageOp::Allocate => self.grow_to(end),
            ImageOp::Read | ImageOp::Write => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        }
    }
}

impl Drop for Qcow2Image {
    fn drop(&mut self) {
        // Metadata caches written back when the image goes without a stop
        // (a start given up half-way, a test): imago does it when the last
        // handle goes too, but a job may hold one a moment longer. A stop
        // closes the image explicitly and reports the result.
        if self.shared.writable {
            let _ = self.shared.access.flush();
        }
    }
}

/// imago's error with the context it gathered ("Backing file ...: ...").
fn chain_message(error: &io::Error) -> String {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        let text = inner.to_string();
        if !message.contains(&text) {
            message = format!("{message}: {text}");
        }
        source = inner.source();
    }
    message
}

impl ImageBackend for Qcow2Image {
    fn format(&self) -> &'static str {
        "qcow2"
    }

    fn size(&self) -> u64 {
        self.shared.access.size()
    }

    fn writable(&self) -> bool {
        self.shared.writable
    }

    fn growable(&self) -> bool {
        self.shared.growable
    }

    fn allocated_bytes(&self) -> u64 {
        self.shared.top.metadata().map(|m| m.blocks() * 512).unwrap_or(0)
    }

    fn times(&self) -> Times {
        times_of(&self.shared.top)
    }

    fn uses_direct_io(&self) -> bool {
        self.shared.direct
    }

    fn resize(&self, size: u64) -> io::Result<()> {
        if !size.is_multiple_of(SECTOR) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        match size.cmp(&self.shared.access.size()) {
            std::cmp::Ordering::Equal => Ok(()),
            std::cmp::Ordering::Greater => self.shared.grow_to(size),
            // Shrinking needs every mapping quiesced (imago wants `&mut`).
            std::cmp::Ordering::Less => Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP)),
        }
    }

    fn seek(&self, offset: u64, what: Seek) -> io::Result<u64> {
        let access = &self.shared.access;
        let size = access.size();
        if offset >= size {
            return Err(io::Error::from_raw_os_error(libc::ENXIO));
        }
        let mut at = offset;
        // A hostile image can map a huge disk in tiny pieces: past the
        // budget every byte left is data (a true answer), instead of a walk
        // that takes minutes.
        let budget = std::time::Instant::now() + SEEK_WALK_BUDGET;
        while at < size {
            if std::time::Instant::now() >= budget {
                return Ok(what.all_data(at, size));
            }
            let (mapping, len) = access.get_mapping(at, size - at)?;
            let data = matches!(mapping, Mapping::Raw { .. } | Mapping::Special { .. });
            if matches!(mapping, Mapping::Eof { .. }) || len == 0 {
                break;
            }
            if data == (what == Seek::Data) {
                return Ok(at);
            }
            at += len;
        }
        match what {
            Seek::Data => Err(io::Error::from_raw_os_error(libc::ENXIO)),
            Seek::Hole => Ok(size),
        }
    }

    fn passthrough_fd(&self) -> Result<RawFd, String> {
        Err("a qcow2 image's clusters are mapped by the export, not a plain file the kernel could serve".into())
    }

    fn sync_size(&self) {}

    fn shown_name(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }

    fn close(&self) -> io::Result<()> {
        if !self.shared.writable {
            return Ok(());
        }
        self.shared.flush()
    }

    fn failure_reason(&self, io: &ImageIo) -> Option<String> {
        self.shared.failures.take(io.offset)
    }

    fn submit(&self, io: &mut ImageIo, mut context: IoContext) -> Poll<i32> {
        match io.op {
            ImageOp::Read => self.step(io, &mut context),
            ImageOp::Write => {
                let end = io.offset + io.len;
                if end > self.shared.access.size() {
                    // Growing writes metadata: on a worker, then the write goes on.
                    let request = io.offset;
                    let job: Job<Shared> = Box::new(move |image| image.answer(request, image.grow_to(end).map(|()| 0)));
                    return self.hand_off(io, Stage::Waiting, &mut context, job);
                }
                self.step(io, &mut context)
            }
            op => {
                let (offset, len) = (io.offset, io.len);
                let job: Job<Shared> =
                    Box::new(move |image| image.answer(offset, image.other(op, offset, len).map(|()| 0)));
                self.hand_off(io, Stage::HandedOff, &mut context, job)
            }
        }
    }

    fn complete(&self, io: &mut ImageIo, result: i32, mut context: IoContext) -> Poll<i32> {
        let stage = std::mem::take(&mut io.stage);
        if stage == Stage::OnRing {
            self.shared.guard.leave();
        }
        if result < 0 {
            return Poll::Ready(result);
        }
        match (stage, io.op) {
            (_, ImageOp::Flush | ImageOp::Discard | ImageOp::WriteZeroes | ImageOp::Allocate) => {
                return Poll::Ready(result)
            }
            (Stage::Warming, _) => io.stage = Stage::Warmed,
            (Stage::Waiting, _) => {}
            (Stage::HandedOff, _) => io.done += result as u64,
            (_, ImageOp::Read) if (result as u64) < io.piece => {
                return Poll::Ready(self.shared.short_read(io.offset, io.offset + io.done, io.piece, result as u64));
            }
            (_, ImageOp::Read) => io.done += io.piece,
            (_, ImageOp::Write) if result == 0 => return Poll::Ready(-libc::EIO),
            (_, ImageOp::Write) => io.done += (result as u64).min(io.piece),
        }
        self.step(io, &mut context)
    }
}

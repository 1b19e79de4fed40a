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
//! imago blocks its calling thread on cache misses and allocations; those
//! run on the I/O thread for now (see docs/DESIGN.md).

mod gate;
mod storage;

use super::probe::{parse_qcow2_header, PROBE_BYTES};
use super::raw::{is_memory_filesystem, DIRECT_ALIGNMENT};
use super::{CacheMode, ImageBackend, ImageError, ImageIo, ImageOp, ImageOptions, IoContext, Seek, Times};
use crate::os_error::describe;
use gate::ChainGate;
use imago::format::builder::FormatDriverBuilder;
use imago::format::PreallocateMode;
use imago::io_buffers::{IoVector, IoVectorMut};
use imago::qcow2::Qcow2;
use imago::{FormatAccess, Mapping};
use io_uring::{opcode, types};
use std::io;
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::Mutex;
use std::task::Poll;
use storage::HostFile;

/// `ImageIo::stage`: a piece is on the ring.
const ON_RING: u8 = 1;

/// Zeroes written per call where the image cannot record zeroes itself.
const ZERO_CHUNK: usize = 1 << 20;

pub struct Qcow2Image {
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
/// The buffer holds at least `io.len` bytes and belongs to this request
/// until it completes (`IoContext::buffer`'s contract).
unsafe fn piece_of<'a>(buffer: *mut u8, done: u64, len: u64) -> &'a mut [u8] {
    // SAFETY: see above; `done + len <= io.len`.
    unsafe { std::slice::from_raw_parts_mut(buffer.add(done as usize), len as usize) }
}

/// Whether the first bytes of `path` are a qcow2 header; for probing.
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
        if let Some(problem) = header.table_past_end(file_size) {
            return Err(unusable(problem));
        }
        let direct = options.cache == CacheMode::Direct;
        let top = HostFile::open_path(path, options.writable, direct).map_err(|e| {
            let hint = match (e.raw_os_error(), options.writable) {
                (Some(libc::EACCES | libc::EROFS | libc::EPERM), true) => {
                    " (it cannot be opened for writing: export it without --writable, or fix its permissions)"
                }
                (Some(libc::ENOENT), _) => " (no such file: give the path of an existing image)",
                _ => "",
            };
            if e.kind() == io::ErrorKind::ResourceBusy {
                ImageError(format!("Image {shown} is in use: {e}; stop that user first, or export a copy"))
            } else {
                ImageError(format!("Failed to open image {shown}: {}{hint}", describe(&e)))
            }
        })?;
        let memory_backed = is_memory_filesystem(top.file());
        let top_file = top.file().try_clone().map_err(|e| ImageError(format!("Failed to open image {shown}: {}", describe(&e))))?;
        let mut warnings = Vec::new();
        if direct && !memory_backed && top.direct_fd().is_none() {
            warnings.push(format!("The filesystem of {shown} refuses O_DIRECT; using the page cache instead"));
        }
        let uses_direct = top.direct_fd().is_some() && !memory_backed;
        let gate = ChainGate::new(path.clone(), direct && !memory_backed);
        let qcow2 = Qcow2::<HostFile>::builder(top)
            .write(options.writable)
            .open(gate.clone())
            .map_err(|e| ImageError(format!("Failed to open qcow2 image {shown}: {}", chain_message(&e))))?;
        let access = FormatAccess::new(qcow2);
        let image = Qcow2Image {
            access,
            top: top_file,
            writable: options.writable,
            growable: options.growable,
            memory_backed,
            direct: uses_direct,
            growing: Mutex::new(()),
        };
        Ok((image, warnings))
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
        let _one_at_a_time = self.growing.lock().unwrap();
        if end <= self.access.size() {
            return Ok(());
        }
        match self.access.resize_grow(end, PreallocateMode::Zero) {
            Err(e) if e.kind() == io::ErrorKind::Unsupported => self.access.resize_grow(end, PreallocateMode::None),
            other => other,
        }
    }

    /// The next piece of a read or write: done inline, or put on the ring.
    fn step(&self, io: &mut ImageIo, context: &mut IoContext) -> Poll<i32> {
        while io.done < io.len {
            let offset = io.offset + io.done;
            let remaining = io.len - io.done;
            let (mapping, len) = match self.access.get_mapping(offset, remaining) {
                Ok(found) => found,
                Err(e) => return Poll::Ready(-errno(&e)),
            };
            let len = len.min(remaining);
            let result = match (io.op, mapping) {
                (_, Mapping::Raw { storage, offset: host, writable, .. })
                    if io.op == ImageOp::Read || (writable && len > 0) =>
                {
                    if self.memory_backed {
                        self.copy_in_memory(io, storage, host, len, context.buffer)
                    } else {
                        let buffer = context.buffer.wrapping_add(io.done as usize);
                        let fd = types::Fd(self.fd_for(storage, host, len, buffer));
                        let entry = if io.op == ImageOp::Read {
                            opcode::Read::new(fd, buffer, len as u32).offset(host).build()
                        } else {
                            opcode::Write::new(fd, buffer, len as u32).offset(host).build()
                        };
                        io.piece = len;
                        io.stage = ON_RING;
                        context.ring.push(entry, context.token);
                        return Poll::Pending;
                    }
                }
                (ImageOp::Read, Mapping::Zero { .. } | Mapping::Eof { .. }) => {
                    let len = if len == 0 { remaining } else { len };
                    // SAFETY: the request's buffer, `done + len <= io.len`.
                    unsafe { piece_of(context.buffer, io.done, len) }.fill(0);
                    Ok(len)
                }
                (ImageOp::Read, Mapping::Special { layer, offset: guest, .. }) => {
                    // SAFETY: the request's buffer, `done + len <= io.len`.
                    let piece = unsafe { piece_of(context.buffer, io.done, len) };
                    let mut vector = IoVectorMut::new();
                    vector.push(piece);
                    layer.readv(vector, guest).map(|()| len)
                }
                (ImageOp::Read, _) => Err(io::Error::other("an unknown kind of qcow2 mapping")),
                _ => self.allocate(io, context.buffer),
            };
            match result {
                Ok(moved) => io.done += moved,
                Err(e) => return Poll::Ready(-errno(&e)),
            }
        }
        Poll::Ready(io.done as i32)
    }

    fn copy_in_memory(&self, io: &ImageIo, storage: &HostFile, host: u64, len: u64, buffer: *mut u8) -> io::Result<u64> {
        // SAFETY: the request's buffer, `done + len <= io.len`.
        let piece = unsafe { piece_of(buffer, io.done, len) };
        if io.op == ImageOp::Read {
            let mut filled = 0;
            while filled < piece.len() {
                match storage.file().read_at(&mut piece[filled..], host + filled as u64)? {
                    0 => break,
                    n => filled += n,
                }
            }
            piece[filled..].fill(0);
        } else {
            storage.write_all_at(piece, host)?;
        }
        Ok(len)
    }

    /// A write where the top image has no writable cluster yet: imago
    /// allocates (copying the rest of the cluster from below), the data is
    /// written, then the mapping is committed. One prepared mapping at a
    /// time per thread, released before anything else is prepared.
    fn allocate(&self, io: &ImageIo, buffer: *mut u8) -> io::Result<u64> {
        let offset = io.offset + io.done;
        let mapping = self.access.prepare_data_mapping(offset, io.len - io.done, true)?;
        let len = mapping.length();
        // SAFETY: the request's buffer, `done + len <= io.len`.
        let data = unsafe { piece_of(buffer, io.done, len) };
        mapping.storage().write_all_at(data, mapping.offset())?;
        self.access.commit_data_mapping(mapping)?;
        Ok(len)
    }

    /// Zeroes through imago where the format can record them, by writing
    /// zeroes where it cannot (qcow2 v2).
    fn zero(&self, offset: u64, len: u64, discard: bool) -> io::Result<()> {
        let recorded = if discard {
            // SAFETY: imago's caveat is that mappings held concurrently may
            // go stale; ours live only for a piece's transfer, and a discard
            // racing a write to the same range has no defined outcome.
            unsafe { self.access.discard_to_zero_unsafe(offset, len) }
        } else {
            self.access.write_zeroes(offset, len)
        };
        match recorded {
            Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                let zeroes = vec![0u8; ZERO_CHUNK.min(len as usize)];
                let mut done = 0;
                while done < len {
                    let chunk = (len - done).min(ZERO_CHUNK as u64) as usize;
                    let mut vector = IoVector::new();
                    vector.push(&zeroes[..chunk]);
                    self.access.writev(vector, offset + done)?;
                    done += chunk as u64;
                }
                Ok(())
            }
            other => other,
        }
    }

    /// Everything but reads and writes: rare, done inline.
    fn other(&self, io: &mut ImageIo, context: &mut IoContext) -> Poll<i32> {
        let end = io.offset + io.len;
        let result = match io.op {
            ImageOp::Flush => match self.access.flush() {
                // Metadata written back; the file's fdatasync goes on the ring.
                Ok(()) => {
                    let fd = types::Fd(self.top.as_raw_fd());
                    io.stage = ON_RING;
                    context.ring.push(opcode::Fsync::new(fd).flags(types::FsyncFlags::DATASYNC).build(), context.token);
                    return Poll::Pending;
                }
                Err(e) => Err(e),
            },
            ImageOp::Discard => self.zero(io.offset, io.len.min(self.access.size().saturating_sub(io.offset)), true),
            ImageOp::WriteZeroes => self.grow_to(end).and_then(|()| self.zero(io.offset, io.len, false)),
            ImageOp::Allocate => self.grow_to(end),
            ImageOp::Read | ImageOp::Write => unreachable!("reads and writes go through step()"),
        };
        Poll::Ready(result.map_or_else(|e| -errno(&e), |()| 0))
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
        self.access.size()
    }

    fn writable(&self) -> bool {
        self.writable
    }

    fn growable(&self) -> bool {
        self.growable
    }

    fn allocated_bytes(&self) -> u64 {
        self.top.metadata().map(|m| m.blocks() * 512).unwrap_or(0)
    }

    fn times(&self) -> Times {
        match self.top.metadata() {
            Ok(m) => [
                (m.atime() as u64, m.atime_nsec() as u32),
                (m.mtime() as u64, m.mtime_nsec() as u32),
                (m.ctime() as u64, m.ctime_nsec() as u32),
            ],
            Err(_) => [(0, 0); 3],
        }
    }

    fn uses_direct_io(&self) -> bool {
        self.direct
    }

    fn resize(&self, size: u64) -> io::Result<()> {
        match size.cmp(&self.access.size()) {
            std::cmp::Ordering::Equal => Ok(()),
            std::cmp::Ordering::Greater => self.grow_to(size),
            // Shrinking needs every mapping quiesced (imago wants `&mut`).
            std::cmp::Ordering::Less => Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP)),
        }
    }

    fn seek(&self, offset: u64, what: Seek) -> io::Result<u64> {
        let size = self.access.size();
        if offset >= size {
            return Err(io::Error::from_raw_os_error(libc::ENXIO));
        }
        let mut at = offset;
        while at < size {
            let (mapping, len) = self.access.get_mapping(at, size - at)?;
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

    fn submit(&self, io: &mut ImageIo, mut context: IoContext) -> Poll<i32> {
        match io.op {
            ImageOp::Read => self.step(io, &mut context),
            ImageOp::Write => {
                let end = io.offset + io.len;
                if end > self.access.size() {
                    if let Err(e) = self.grow_to(end) {
                        return Poll::Ready(-errno(&e));
                    }
                }
                self.step(io, &mut context)
            }
            _ => self.other(io, &mut context),
        }
    }

    fn complete(&self, io: &mut ImageIo, result: i32, mut context: IoContext) -> Poll<i32> {
        io.stage = 0;
        if result < 0 {
            return Poll::Ready(result);
        }
        match io.op {
            ImageOp::Read => {
                // Short: the file ends inside the cluster; the rest reads as zeroes.
                let read = result as u64;
                if read < io.piece {
                    // SAFETY: the request's buffer, within the piece.
                    unsafe { piece_of(context.buffer, io.done + read, io.piece - read) }.fill(0);
                }
                io.done += io.piece;
            }
            ImageOp::Write if result == 0 => return Poll::Ready(-libc::EIO),
            ImageOp::Write => io.done += (result as u64).min(io.piece),
            _ => return Poll::Ready(0),
        }
        self.step(io, &mut context)
    }
}

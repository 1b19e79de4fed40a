//! The raw backend: a regular file or a block device, read and written
//! through the I/O thread's ring straight into and out of the request's
//! buffer; on tmpfs and ramfs, copied by the thread itself.

use super::lock;
use super::probe::QCOW2_MAGIC;
use super::{
    open_failed, times_of, CacheMode, ImageBackend, ImageError, ImageIo, ImageOp, ImageOptions, IoContext, Seek, Stage,
    Times,
};
use crate::os_error::describe;
use crate::runtime::buffer::Zeroes;
use io_uring::{opcode, squeue, types};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Poll;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    BlockDevice,
}

/// O_DIRECT wants offsets, lengths and buffers aligned to the logical block
/// size; 4 KiB covers every device and filesystem we meet.
pub(super) const DIRECT_ALIGNMENT: u64 = 4096;

use libc::{FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE};

pub struct RawImage {
    path: std::path::PathBuf,
    /// tmpfs or ramfs: the data lives in memory, so a transfer is a copy
    /// that never waits for a device.
    memory_backed: bool,
    /// Page-cache descriptor: unaligned I/O, fsync, fallocate, lseek.
    file: File,
    /// O_DIRECT descriptor for aligned I/O, when the cache mode asks for it
    /// and the filesystem allows it.
    direct: Option<File>,
    kind: Kind,
    size: AtomicU64,
    writable: bool,
    growable: bool,
    /// The filesystem answered EOPNOTSUPP to FALLOC_FL_ZERO_RANGE once
    /// (tmpfs does): write zeroes from then on, as QEMU does.
    zero_range_refused: AtomicBool,
    /// The format was probed, not named: a write may not plant a qcow2
    /// header in the first sector (QEMU's rule), or the next probe would
    /// follow whatever backing file that header names.
    probed: bool,
}

/// The ioctl request type is c_ulong on glibc and c_int on musl.
const BLKGETSIZE64: libc::Ioctl = 0x8008_1272_u32 as libc::Ioctl;

/// statfs's f_type of ramfs (`linux/magic.h`; the libc crate has TMPFS_MAGIC only).
const RAMFS_MAGIC: i64 = 0x8584_58f6;

pub(super) fn is_memory_filesystem(file: &File) -> bool {
    // SAFETY: statfs is plain data filled by fstatfs.
    let mut stats: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and a valid out pointer.
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut stats) } < 0 {
        return false;
    }
    let kind = stats.f_type as i64;
    // libc's TMPFS_MAGIC is a c_long on some targets, a c_uint on others.
    #[allow(clippy::unnecessary_cast)]
    let tmpfs = libc::TMPFS_MAGIC as i64;
    kind == tmpfs || kind == RAMFS_MAGIC
}

fn block_device_size(file: &File) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 into `size`.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

impl RawImage {
    pub fn open(options: &ImageOptions, probed: bool) -> Result<(RawImage, Vec<String>), ImageError> {
        let path = &options.path;
        let shown = path.display();
        let file = lock::open_locked(path, options.writable).map_err(|e| open_failed(path, options.writable, &e))?;
        let meta =
            file.metadata().map_err(|e| ImageError(format!("Failed to stat image {shown}: {}", describe(&e))))?;
        let kind = if meta.file_type().is_block_device() {
            Kind::BlockDevice
        } else if meta.is_file() {
            Kind::File
        } else {
            return Err(ImageError(format!("Image {shown} is neither a regular file nor a block device")));
        };
        let size = match kind {
            Kind::File => meta.len(),
            Kind::BlockDevice => block_device_size(&file).map_err(|e| {
                ImageError(format!("Failed to read the size of block device {shown}: {}", describe(&e)))
            })?,
        };
        if options.growable && kind == Kind::BlockDevice {
            return Err(ImageError(format!("Block device {shown} cannot grow: export it without --growable")));
        }
        if options.growable && !options.writable {
            return Err(ImageError("--growable needs --writable".into()));
        }
        let mut warnings = Vec::new();
        let memory_backed = kind == Kind::File && is_memory_filesystem(&file);
        let direct = match options.cache {
            CacheMode::Writeback => None,
            CacheMode::Direct => match lock::open_direct(path, options.writable) {
                // tmpfs keeps its data in the page cache: O_DIRECT would only
                // add alignment rules and a detour.
                Ok(_) if memory_backed => None,
                Ok(direct) => Some(direct),
                Err(e) => {
                    warnings.push(format!(
                        "The filesystem of {shown} refuses O_DIRECT ({}); using the page cache instead",
                        describe(&e)
                    ));
                    None
                }
            },
        };
        let image = RawImage {
            path: path.clone(),
            memory_backed,
            file,
            direct,
            kind,
            size: AtomicU64::new(size),
            writable: options.writable,
            growable: options.growable,
            zero_range_refused: AtomicBool::new(false),
            probed,
        };
        Ok((image, warnings))
    }

    /// The descriptor for one transfer: O_DIRECT when everything is aligned.
    fn fd_for_transfer(&self, offset: u64, len: u64, buffer: *const u8) -> RawFd {
        let aligned = |v: u64| v.is_multiple_of(DIRECT_ALIGNMENT);
        match &self.direct {
            Some(direct) if aligned(offset) && aligned(len) && aligned(buffer as u64) => direct.as_raw_fd(),
            _ => self.file.as_raw_fd(),
        }
    }

    /// Whether `io` would make the first bytes of a probed image the qcow2
    /// magic. The bytes it does not cover are read from the image.
    fn plants_qcow2_header(&self, io: &ImageIo, buffer: *const u8) -> bool {
        let magic_len = QCOW2_MAGIC.len() as u64;
        if !self.probed || io.op != ImageOp::Write || io.offset >= magic_len {
            return false;
        }
        let mut first = [0u8; 4];
        // A short read leaves zeroes, which are not the magic either.
        let _ = std::os::unix::fs::FileExt::read_at(&self.file, &mut first, 0);
        let covered = io.offset..(io.offset + io.len).min(magic_len);
        for at in covered {
            // SAFETY: `at - offset < len`, within the request's buffer.
            first[at as usize] = unsafe { *buffer.add((at - io.offset) as usize) };
        }
        first == QCOW2_MAGIC
    }

    fn grew_to(&self, end: u64) {
        self.size.fetch_max(end, Ordering::AcqRel);
    }

    /// The SQE for the rest of `io`.
    fn sqe(&self, io: &ImageIo, buffer: *mut u8) -> squeue::Entry {
        let file = types::Fd(self.file.as_raw_fd());
        let offset = io.offset + io.done;
        let remaining = io.len - io.done;
        match (io.op, io.stage) {
            (ImageOp::Read | ImageOp::Write, _) => {
                // `done < len <= buffer size`, checked where the I/O was built.
                let buffer = buffer.wrapping_add(io.done as usize);
                let fd = types::Fd(self.fd_for_transfer(offset, remaining, buffer));
                if io.op == ImageOp::Read {
                    opcode::Read::new(fd, buffer, remaining as u32).offset(offset).build()
                } else {
                    opcode::Write::new(fd, buffer, remaining as u32).offset(offset).build()
                }
            }
            (ImageOp::WriteZeroes, Stage::WritingZeroes) => {
                let len = remaining.min(Zeroes::LEN as u64) as u32;
                opcode::Write::new(file, Zeroes::shared().as_ptr(), len).offset(offset).build()
            }
            (ImageOp::Flush, _) => opcode::Fsync::new(file).flags(types::FsyncFlags::DATASYNC).build(),
            (ImageOp::Discard, _) => self.fallocate(io, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE),
            (ImageOp::WriteZeroes, _) => self.fallocate(io, FALLOC_FL_ZERO_RANGE),
            (ImageOp::Allocate, _) => self.fallocate(io, 0),
        }
    }

    fn fallocate(&self, io: &ImageIo, mode: i32) -> squeue::Entry {
        opcode::Fallocate::new(types::Fd(self.file.as_raw_fd()), io.len).offset(io.offset).mode(mode).build()
    }

    /// A copy to or from memory that cannot wait for a device, where
    /// io_uring would hand it to a kernel worker thread (two context
    /// switches a request).
    fn transfer_in_memory(&self, io: &ImageIo, buffer: *mut u8) -> i32 {
        let buffer = buffer.wrapping_add(io.done as usize);
        let (offset, len) = ((io.offset + io.done) as libc::off_t, (io.len - io.done) as usize);
        // SAFETY: `buffer` has `len` bytes of the request's payload buffer.
        let result = unsafe {
            if io.op == ImageOp::Read {
                libc::pread(self.file.as_raw_fd(), buffer.cast(), len, offset)
            } else {
                libc::pwrite(self.file.as_raw_fd(), buffer.cast(), len, offset)
            }
        };
        if result < 0 {
            -io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
        } else {
            result as i32
        }
    }

    /// Accounts one completion of `io`: the final result, or None when the
    /// rest still has to be done.
    fn advance(&self, io: &mut ImageIo, result: i32) -> Option<i32> {
        match io.op {
            ImageOp::Read | ImageOp::Write if result > 0 => {
                io.done += result as u64;
                if io.op == ImageOp::Write {
                    self.grew_to(io.offset + io.done);
                }
                (io.done >= io.len).then_some(io.done as i32)
            }
            // End of file, or a failure after part of the transfer: what
            // was done is the answer.
            ImageOp::Read | ImageOp::Write => Some(if io.done > 0 { io.done as i32 } else { result }),
            ImageOp::WriteZeroes if io.stage == Stage::Idle && result == -libc::EOPNOTSUPP => {
                self.zero_range_refused.store(true, Ordering::Relaxed);
                io.stage = Stage::WritingZeroes;
                None
            }
            ImageOp::WriteZeroes if io.stage == Stage::WritingZeroes && result >= 0 => {
                if result == 0 {
                    return Some(-libc::EIO);
                }
                io.done += result as u64;
                self.grew_to(io.offset + io.done);
                (io.done >= io.len).then_some(0)
            }
            _ if result < 0 => Some(result),
            ImageOp::WriteZeroes | ImageOp::Allocate => {
                self.grew_to(io.offset + io.len);
                Some(0)
            }
            ImageOp::Flush | ImageOp::Discard => Some(0),
        }
    }

    fn next(&self, io: &mut ImageIo, context: IoContext) -> Poll<i32> {
        if self.memory_backed && matches!(io.op, ImageOp::Read | ImageOp::Write) {
            loop {
                let result = self.transfer_in_memory(io, context.buffer);
                if let Some(done) = self.advance(io, result) {
                    return Poll::Ready(done);
                }
            }
        }
        context.ring.push(self.sqe(io, context.buffer), context.token);
        Poll::Pending
    }
}

impl ImageBackend for RawImage {
    fn format(&self) -> &'static str {
        "raw"
    }

    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    fn writable(&self) -> bool {
        self.writable
    }

    fn growable(&self) -> bool {
        self.growable
    }

    fn allocated_bytes(&self) -> u64 {
        match (self.kind, self.file.metadata()) {
            (Kind::File, Ok(meta)) => meta.blocks() * 512,
            _ => self.size(),
        }
    }

    fn times(&self) -> Times {
        times_of(&self.file)
    }

    fn uses_direct_io(&self) -> bool {
        self.direct.is_some()
    }

    fn resize(&self, size: u64) -> io::Result<()> {
        if self.kind == Kind::BlockDevice {
            return if size == self.size() { Ok(()) } else { Err(io::Error::from_raw_os_error(libc::EINVAL)) };
        }
        self.file.set_len(size)?;
        self.size.store(size, Ordering::Release);
        Ok(())
    }

    fn seek(&self, offset: u64, what: Seek) -> io::Result<u64> {
        let size = self.size();
        if offset >= size {
            return Err(io::Error::from_raw_os_error(libc::ENXIO));
        }
        if self.kind == Kind::BlockDevice {
            return Ok(if what == Seek::Data { offset } else { size });
        }
        let whence = if what == Seek::Data { libc::SEEK_DATA } else { libc::SEEK_HOLE };
        // SAFETY: lseek on a descriptor we own; pread/pwrite never use its offset.
        let found = unsafe { libc::lseek(self.file.as_raw_fd(), offset as libc::off_t, whence) };
        if found < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((found as u64).min(size))
    }

    fn passthrough_fd(&self) -> Result<RawFd, String> {
        // FUSE_DEV_IOC_BACKING_OPEN answers EINVAL for anything but a
        // regular file: asking would only turn into a warning (auto) or a
        // cryptic failure (on).
        if self.kind == Kind::BlockDevice {
            return Err("the kernel passes through to regular files only, not to a block device".into());
        }
        // The kernel would write past the end of a fixed-size file and grow
        // it, where the contract says such a write is short.
        if self.writable && !self.growable {
            return Err("a fixed-size writable image must refuse writes past its end, which passthrough would let \
                        through: export it read-only or --growable to use passthrough"
                .into());
        }
        // Nor would it refuse a write that plants a qcow2 header.
        if self.writable && self.probed {
            return Err("a writable image probed as raw must refuse writes that would make it look like qcow2, \
                        which passthrough would let through: name its format with --format raw to use passthrough"
                .into());
        }
        Ok(self.file.as_raw_fd())
    }

    fn sync_size(&self) {
        if let (Kind::File, Ok(meta)) = (self.kind, self.file.metadata()) {
            self.size.store(meta.len(), Ordering::Release);
        }
    }

    fn shown_name(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }

    fn submit(&self, io: &mut ImageIo, context: IoContext) -> Poll<i32> {
        if self.plants_qcow2_header(io, context.buffer) {
            return Poll::Ready(-libc::EPERM);
        }
        if io.op == ImageOp::WriteZeroes && self.zero_range_refused.load(Ordering::Relaxed) {
            io.stage = Stage::WritingZeroes;
        }
        self.next(io, context)
    }

    fn complete(&self, io: &mut ImageIo, result: i32, context: IoContext) -> Poll<i32> {
        match self.advance(io, result) {
            Some(done) => Poll::Ready(done),
            None => self.next(io, context),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::path::PathBuf;

    fn temp_image(bytes: &[u8]) -> PathBuf {
        let path = std::env::temp_dir().join(format!("fuse-export-image-{}-{}", std::process::id(), bytes.len()));
        File::create(&path).unwrap().write_all(bytes).unwrap();
        path
    }

    #[test]
    fn a_missing_image_is_named_in_the_error() {
        let options = ImageOptions {
            path: "/nonexistent/disk.img".into(),
            writable: false,
            growable: false,
            cache: CacheMode::Writeback,
            format: crate::image::FormatChoice::Raw,
            ..Default::default()
        };
        let err = RawImage::open(&options, false).err().unwrap();
        assert!(err.0.contains("/nonexistent/disk.img"), "{}", err.0);
    }

    #[test]
    fn growable_without_writable_is_refused() {
        let path = temp_image(&[0; 10]);
        let options = ImageOptions {
            path: path.clone(),
            writable: false,
            growable: true,
            cache: CacheMode::Writeback,
            format: crate::image::FormatChoice::Raw,
            ..Default::default()
        };
        assert!(RawImage::open(&options, false).err().unwrap().0.contains("--writable"));
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn seeking_past_the_end_is_enxio_and_holes_stop_at_the_end() {
        let path = temp_image(&[1; 8192]);
        let options = ImageOptions {
            path: path.clone(),
            writable: false,
            growable: false,
            cache: CacheMode::Writeback,
            format: crate::image::FormatChoice::Raw,
            ..Default::default()
        };
        let (image, _) = RawImage::open(&options, false).unwrap();
        assert_eq!(image.seek(0, Seek::Data).unwrap(), 0);
        assert_eq!(image.seek(0, Seek::Hole).unwrap(), 8192);
        assert_eq!(image.seek(8192, Seek::Data).unwrap_err().raw_os_error(), Some(libc::ENXIO));
        std::fs::remove_file(path).unwrap();
    }
}

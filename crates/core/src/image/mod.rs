//! Image backends: a raw file or a block device, opened once, read and
//! written through the I/O threads' rings.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// How the image is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    /// O_DIRECT for aligned requests: no double caching under a guest or a
    /// filesystem that caches already.
    Direct,
    /// Through the host page cache.
    Writeback,
}

#[derive(Debug, Clone)]
pub struct ImageOptions {
    pub path: PathBuf,
    pub writable: bool,
    pub growable: bool,
    pub cache: CacheMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    File,
    BlockDevice,
}

/// O_DIRECT wants offsets, lengths and buffers aligned to the logical block
/// size; 4 KiB covers every device and filesystem we meet.
pub const DIRECT_ALIGNMENT: u64 = 4096;

pub struct Image {
    /// tmpfs or ramfs: the data lives in memory, so a transfer is a copy
    /// that never waits for a device.
    memory_backed: bool,
    /// Page-cache descriptor: unaligned I/O, fsync, fallocate, lseek.
    file: File,
    /// O_DIRECT descriptor for aligned I/O, when the cache mode asks for it
    /// and the filesystem allows it.
    direct: Option<File>,
    kind: ImageKind,
    size: AtomicU64,
    writable: bool,
    growable: bool,
}

/// An OS error as people read it: "No such file or directory", without
/// Rust's "(os error 2)" suffix.
pub fn describe(error: &io::Error) -> String {
    let text = error.to_string();
    match text.find(" (os error") {
        Some(cut) => text[..cut].to_string(),
        None => text,
    }
}

/// What went wrong while opening: the message names the path and the fix.
#[derive(Debug)]
pub struct ImageError(pub String);

impl std::fmt::Display for ImageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The ioctl request type is c_ulong on glibc and c_int on musl.
const BLKGETSIZE64: libc::Ioctl = 0x8008_1272_u32 as libc::Ioctl;

fn open_file(path: &Path, writable: bool, extra_flags: i32) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(writable)
        .custom_flags(libc::O_CLOEXEC | extra_flags)
        .open(path)
}

const TMPFS_MAGIC: i64 = 0x0102_1994;
const RAMFS_MAGIC: i64 = 0x8584_58f6;

fn is_memory_filesystem(file: &File) -> bool {
    // SAFETY: statfs is plain data filled by fstatfs.
    let mut stats: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and a valid out pointer.
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut stats) } < 0 {
        return false;
    }
    matches!(stats.f_type as i64, TMPFS_MAGIC | RAMFS_MAGIC)
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

impl Image {
    /// Opens the image. Warnings (such as an O_DIRECT fallback) are returned
    /// for the caller to log.
    pub fn open(options: &ImageOptions) -> Result<(Image, Vec<String>), ImageError> {
        let path = &options.path;
        let shown = path.display();
        let file = open_file(path, options.writable, 0).map_err(|e| {
            let hint = match (e.raw_os_error(), options.writable) {
                (Some(libc::EACCES | libc::EROFS | libc::EPERM), true) => {
                    " (it cannot be opened for writing: export it without --writable, or fix its permissions)"
                }
                (Some(libc::ENOENT), _) => " (no such file: give the path of an existing image)",
                _ => "",
            };
            ImageError(format!("Failed to open image {shown}: {}{hint}", describe(&e)))
        })?;
        let meta = file.metadata().map_err(|e| ImageError(format!("Failed to stat image {shown}: {}", describe(&e))))?;
        let kind = if meta.file_type().is_block_device() {
            ImageKind::BlockDevice
        } else if meta.is_file() {
            ImageKind::File
        } else {
            return Err(ImageError(format!("Image {shown} is neither a regular file nor a block device")));
        };
        let size = match kind {
            ImageKind::File => meta.len(),
            ImageKind::BlockDevice => block_device_size(&file)
                .map_err(|e| ImageError(format!("Failed to read the size of block device {shown}: {}", describe(&e))))?,
        };
        if options.growable && kind == ImageKind::BlockDevice {
            return Err(ImageError(format!("Block device {shown} cannot grow: export it without --growable")));
        }
        if options.growable && !options.writable {
            return Err(ImageError("--growable needs --writable".into()));
        }
        let mut warnings = Vec::new();
        let memory_backed = kind == ImageKind::File && is_memory_filesystem(&file);
        let direct = match options.cache {
            CacheMode::Writeback => None,
            CacheMode::Direct => match open_file(path, options.writable, libc::O_DIRECT) {
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
        let image = Image {
            memory_backed,
            file,
            direct,
            kind,
            size: AtomicU64::new(size),
            writable: options.writable,
            growable: options.growable,
        };
        Ok((image, warnings))
    }

    pub fn writable(&self) -> bool {
        self.writable
    }

    pub fn growable(&self) -> bool {
        self.growable
    }

    pub fn is_memory_backed(&self) -> bool {
        self.memory_backed
    }

    pub fn uses_direct_io(&self) -> bool {
        self.direct.is_some()
    }

    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    /// Records that data now reaches `end` (a write or fallocate past EOF).
    pub fn grew_to(&self, end: u64) {
        self.size.fetch_max(end, Ordering::AcqRel);
    }

    /// The descriptor for metadata work and unaligned I/O.
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// The descriptor for one transfer: O_DIRECT when everything is aligned.
    pub fn fd_for_transfer(&self, offset: u64, len: u64, buffer: *const u8) -> RawFd {
        let aligned = |v: u64| v.is_multiple_of(DIRECT_ALIGNMENT);
        match &self.direct {
            Some(direct) if aligned(offset) && aligned(len) && aligned(buffer as u64) => direct.as_raw_fd(),
            _ => self.file.as_raw_fd(),
        }
    }

    pub fn metadata(&self) -> io::Result<std::fs::Metadata> {
        self.file.metadata()
    }

    /// Bytes the image occupies on its storage.
    pub fn allocated_bytes(&self) -> u64 {
        match (self.kind, self.file.metadata()) {
            (ImageKind::File, Ok(meta)) => meta.blocks() * 512,
            _ => self.size(),
        }
    }

    /// Changes the image's length (SETATTR size, O_TRUNC).
    pub fn truncate(&self, size: u64) -> io::Result<()> {
        if self.kind == ImageKind::BlockDevice {
            return if size == self.size() { Ok(()) } else { Err(io::Error::from_raw_os_error(libc::EINVAL)) };
        }
        self.file.set_len(size)?;
        self.size.store(size, Ordering::Release);
        Ok(())
    }

    /// SEEK_DATA / SEEK_HOLE following the image's own allocation.
    pub fn seek(&self, offset: u64, whence: i32) -> io::Result<u64> {
        let size = self.size();
        if offset >= size {
            return Err(io::Error::from_raw_os_error(libc::ENXIO));
        }
        if self.kind == ImageKind::BlockDevice {
            return Ok(if whence == libc::SEEK_DATA { offset } else { size });
        }
        // SAFETY: lseek on a descriptor we own; pread/pwrite never use its offset.
        let found = unsafe { libc::lseek(self.file.as_raw_fd(), offset as libc::off_t, whence) };
        if found < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((found as u64).min(size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

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
        };
        let err = Image::open(&options).err().unwrap();
        assert!(err.0.contains("/nonexistent/disk.img"), "{}", err.0);
    }

    #[test]
    fn growable_without_writable_is_refused() {
        let path = temp_image(&[0; 10]);
        let options = ImageOptions { path: path.clone(), writable: false, growable: true, cache: CacheMode::Writeback };
        assert!(Image::open(&options).err().unwrap().0.contains("--writable"));
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn seeking_past_the_end_is_enxio_and_holes_stop_at_the_end() {
        let path = temp_image(&[1; 8192]);
        let options = ImageOptions { path: path.clone(), writable: false, growable: false, cache: CacheMode::Writeback };
        let (image, _) = Image::open(&options).unwrap();
        assert_eq!(image.seek(0, libc::SEEK_DATA).unwrap(), 0);
        assert_eq!(image.seek(0, libc::SEEK_HOLE).unwrap(), 8192);
        assert_eq!(image.seek(8192, libc::SEEK_DATA).unwrap_err().raw_os_error(), Some(libc::ENXIO));
        std::fs::remove_file(path).unwrap();
    }
}

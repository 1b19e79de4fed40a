//! The files under a qcow2 image, as imago's `Storage`: imago does its
//! metadata I/O through it (blocking, on the page-cache descriptor), and the
//! export reads the descriptors out of the mappings imago returns, to move
//! the data of mapped clusters on the I/O thread's ring.

use crate::image::lock;
use imago::io_buffers::{IoVector, IoVectorMut};
use imago::storage::drivers::CommonStorageHelper;
use imago::{Storage, StorageOpenOptions};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

thread_local! {
    /// Set on an I/O thread while it asks imago for a mapping: a metadata
    /// read (a cache miss) then fails with WouldBlock instead of blocking
    /// the thread's ring, and the lookup is handed to a worker. imago's
    /// cache inserts nothing for a failed load, so nothing is left behind.
    static INLINE_ONLY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `lookup` with metadata reads refused (see `INLINE_ONLY`). The
/// flag is cleared even if `lookup` panics: the I/O thread survives that
/// (only the export halts) and serves other exports' lookups after.
pub fn without_blocking_reads<T>(lookup: impl FnOnce() -> T) -> T {
    struct Cleared;
    impl Drop for Cleared {
        fn drop(&mut self) {
            INLINE_ONLY.with(|flag| flag.set(false));
        }
    }
    INLINE_ONLY.with(|flag| flag.set(true));
    let _cleared = Cleared;
    lookup()
}

/// Whether `error` is a refused metadata read: a cache miss to hand off.
pub fn is_miss(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::WouldBlock
}

#[derive(Debug)]
pub struct HostFile {
    path: PathBuf,
    /// Page-cache descriptor: metadata, unaligned data, fsync.
    file: File,
    /// O_DIRECT descriptor for aligned data transfers, when wanted and allowed.
    direct: Option<File>,
    helper: CommonStorageHelper,
}

fn retry_eintr(mut call: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        let result = call();
        if result >= 0 {
            return Ok(result as usize);
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EINTR) {
            return Err(error);
        }
    }
}

/// Whether a read ending at `end`, past a file of `size` bytes, stops
/// within the file's last, partial 512-byte sector. QEMU writes a compressed
/// cluster to the byte but counts its length in sectors, so the read of the
/// last compressed cluster of a file may go up to 511 bytes past its end:
/// those read as zeroes, as in QEMU. Anything further is a table or a
/// cluster the file does not hold.
fn within_last_partial_sector(size: u64, end: u64) -> bool {
    !size.is_multiple_of(512) && end <= size.next_multiple_of(512)
}

/// The error for a read of metadata or compressed data past the end of its
/// file: never zeroes, which would be wrong bytes given without a word.
fn past_end(path: &Path, offset: u64, len: u64, size: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!(
            "{}: {len} bytes at offset {offset} lie past the end of the file ({size} bytes): \
             the file is truncated or a table entry is corrupt",
            path.display()
        ),
    )
}

impl HostFile {
    /// Opens `path`, locked as QEMU locks an image it opens the same way.
    pub fn open_path(path: &Path, writable: bool, direct: bool) -> io::Result<HostFile> {
        let file = lock::open_locked(path, writable)?;
        let direct = if direct { lock::open_direct(path, writable).ok() } else { None };
        Ok(HostFile { path: path.to_path_buf(), file, direct, helper: CommonStorageHelper::default() })
    }

    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    pub fn direct_fd(&self) -> Option<RawFd> {
        self.direct.as_ref().map(|f| f.as_raw_fd())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// A blocking write of `data` at `offset`, for the allocating path.
    pub fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(&self.file, data, offset)
    }
}

impl std::fmt::Display for HostFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.path.display())
    }
}

impl Storage for HostFile {
    fn open(opts: StorageOpenOptions) -> io::Result<Self> {
        let path = opts.get_filename().ok_or_else(|| io::Error::other("no file name given"))?;
        HostFile::open_path(path, opts.get_writable(), opts.get_direct())
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn resolve_relative_path<P: AsRef<Path>>(&self, relative: P) -> io::Result<PathBuf> {
        let relative = relative.as_ref();
        if relative.is_absolute() {
            return Ok(relative.to_path_buf());
        }
        let folder = self.path.parent().unwrap_or(Path::new("."));
        Ok(folder.join(relative))
    }

    fn get_filename(&self) -> Option<PathBuf> {
        Some(self.path.clone())
    }

    unsafe fn pure_readv(&self, mut bufv: IoVectorMut<'_>, mut offset: u64) -> io::Result<()> {
        if INLINE_ONLY.with(|flag| flag.get()) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let (start, len) = (offset, bufv.len());
        while !bufv.is_empty() {
            // SAFETY: the iovecs describe `bufv`'s buffers, alive for the call.
            let iovec = unsafe { bufv.as_iovec() };
            let read = retry_eintr(|| unsafe {
                libc::preadv(self.fd(), iovec.as_ptr(), iovec.len() as libc::c_int, offset as libc::off_t)
            })? as u64;
            if read == 0 {
                let size = self.size()?;
                if within_last_partial_sector(size, offset + bufv.len()) {
                    bufv.fill(0);
                    break;
                }
                return Err(past_end(&self.path, start, len, size));
            }
            bufv = bufv.split_tail_at(read);
            offset += read;
        }
        Ok(())
    }

    unsafe fn pure_writev(&self, mut bufv: IoVector<'_>, mut offset: u64) -> io::Result<()> {
        while !bufv.is_empty() {
            // SAFETY: the iovecs describe `bufv`'s buffers, alive for the call.
            let iovec = unsafe { bufv.as_iovec() };
            let written = retry_eintr(|| unsafe {
                libc::pwritev(self.fd(), iovec.as_ptr(), iovec.len() as libc::c_int, offset as libc::off_t)
            })? as u64;
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            bufv = bufv.split_tail_at(written);
            offset += written;
        }
        Ok(())
    }

    unsafe fn pure_discard(&self, offset: u64, length: u64) -> io::Result<()> {
        // Giving the space back is a courtesy: a filesystem that cannot is fine.
        // SAFETY: a valid descriptor and plain integers.
        unsafe {
            libc::fallocate(
                self.fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                length as libc::off_t,
            )
        };
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    unsafe fn invalidate_cache(&self) -> io::Result<()> {
        Ok(())
    }

    fn get_storage_helper(&self) -> &CommonStorageHelper {
        &self.helper
    }

    fn resize(&self, new_size: u64, _prealloc_mode: imago::storage::PreallocateMode) -> io::Result<()> {
        self.file.set_len(new_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_reads_are_refused_while_a_lookup_must_not_block() {
        let path = std::env::temp_dir().join(format!("fuse-export-hostfile-{}", std::process::id()));
        std::fs::write(&path, [7u8; 4096]).unwrap();
        let file = HostFile::open_path(&path, false, false).unwrap();
        let read = |file: &HostFile| {
            let mut buffer = vec![0u8; 512];
            let mut vector = IoVectorMut::new();
            vector.push(&mut buffer[..]);
            // SAFETY: a plain buffer of ours.
            unsafe { file.pure_readv(vector, 0) }.map(|()| buffer[0])
        };
        let refused = without_blocking_reads(|| read(&file)).unwrap_err();
        assert!(is_miss(&refused));
        assert_eq!(read(&file).unwrap(), 7, "outside a lookup the read is done");
        drop(file);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_read_past_the_end_fails_but_within_the_last_partial_sector() {
        let path = std::env::temp_dir().join(format!("fuse-export-hostfile-end-{}", std::process::id()));
        std::fs::write(&path, [7u8; 1000]).unwrap();
        let file = HostFile::open_path(&path, false, false).unwrap();
        let read = |offset: u64, len: usize| {
            let mut buffer = vec![1u8; len];
            let mut vector = IoVectorMut::new();
            vector.push(&mut buffer[..]);
            // SAFETY: a plain buffer of ours.
            unsafe { file.pure_readv(vector, offset) }.map(|()| buffer)
        };
        let compressed_tail = read(900, 124).unwrap();
        assert_eq!((compressed_tail[99], compressed_tail[100]), (7, 0), "up to the sector's end: zeroes");
        let error = read(512, 1024).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        assert!(error.to_string().contains("1024 bytes at offset 512 lie past the end of the file (1000 bytes)"));
        assert!(read(4096, 512).is_err(), "wholly past the end");
        drop(file);
        std::fs::remove_file(path).unwrap();
    }
}

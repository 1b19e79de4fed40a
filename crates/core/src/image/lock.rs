//! Image locks that QEMU understands. QEMU (block/file-posix.c) takes
//! open-file-description locks on single bytes of every image it opens:
//! byte `100 + i` while it holds permission `i`, byte `200 + i` while it
//! does *not* share permission `i` with others (all read locks), and refuses
//! to open when another holder's bytes conflict with its own. Taking the
//! same bytes the same way makes a running QEMU (or qemu-img, or a second
//! export) and us refuse each other, while readers share.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Opens an image file as QEMU does: for reading (and writing), locked
/// against the users it would conflict with (the error then has kind
/// ResourceBusy and names the holder).
pub fn open_locked(path: &Path, writable: bool) -> io::Result<File> {
    let file = open(path, writable, 0)?;
    let access = if writable { Access::ReadWrite } else { Access::ReadOnly };
    acquire(&file, access).map_err(|holder| io::Error::new(io::ErrorKind::ResourceBusy, holder))?;
    Ok(file)
}

/// A second descriptor of an image opened with `open_locked`, with
/// O_DIRECT, for aligned transfers (the locks are the first one's).
pub fn open_direct(path: &Path, writable: bool) -> io::Result<File> {
    open(path, writable, libc::O_DIRECT)
}

fn open(path: &Path, writable: bool, extra_flags: i32) -> io::Result<File> {
    OpenOptions::new().read(true).write(writable).custom_flags(libc::O_CLOEXEC | extra_flags).open(path)
}

const PERM_BASE: i64 = 100;
const SHARED_BASE: i64 = 200;

/// QEMU's permission bits (`BLK_PERM_*`), by bit number.
const CONSISTENT_READ: i64 = 0;
const WRITE: i64 = 1;
const WRITE_UNCHANGED: i64 = 2;
const RESIZE: i64 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads and wants nobody to write meanwhile (qemu-img's default).
    ReadOnly,
    /// Reads and writes, and shares neither writing nor resizing.
    ReadWrite,
}

impl Access {
    /// (permissions held, permissions not shared), as bit numbers.
    fn bits(self) -> (&'static [i64], &'static [i64]) {
        match self {
            Access::ReadOnly => (&[CONSISTENT_READ], &[WRITE, RESIZE]),
            Access::ReadWrite => (&[CONSISTENT_READ, WRITE, WRITE_UNCHANGED, RESIZE], &[WRITE, RESIZE]),
        }
    }
}

fn name(bit: i64) -> &'static str {
    match bit {
        CONSISTENT_READ => "consistent read",
        WRITE => "write",
        WRITE_UNCHANGED => "write unchanged",
        _ => "resize",
    }
}

fn flock(kind: i32, byte: i64) -> libc::flock {
    // SAFETY: flock is plain data.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = kind as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock.l_start = byte;
    lock.l_len = 1;
    lock
}

fn set(file: &File, byte: i64) -> std::io::Result<()> {
    let mut lock = flock(libc::F_RDLCK, byte);
    // SAFETY: a valid descriptor and a valid flock.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &mut lock) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether another open file description holds a lock on `byte`.
fn taken_by_other(file: &File, byte: i64) -> std::io::Result<bool> {
    let mut lock = flock(libc::F_WRLCK, byte);
    // SAFETY: a valid descriptor and a valid flock.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut lock) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(lock.l_type != libc::F_UNLCK as libc::c_short)
}

/// Locks `file` for `access`, or says who is in the way. The locks last
/// as long as the descriptor stays open.
pub fn acquire(file: &File, access: Access) -> Result<(), String> {
    let (held, unshared) = access.bits();
    let failed = |e: std::io::Error| format!("its lock bytes cannot be locked: {e}");
    for &bit in held {
        set(file, PERM_BASE + bit).map_err(failed)?;
    }
    for &bit in unshared {
        set(file, SHARED_BASE + bit).map_err(failed)?;
    }
    for &bit in held {
        if taken_by_other(file, SHARED_BASE + bit).map_err(failed)? {
            return Err(format!(
                "another process (a running QEMU, qemu-img, or another export) holds it and does not share \
                 its \"{}\" permission",
                name(bit)
            ));
        }
    }
    for &bit in unshared {
        if taken_by_other(file, PERM_BASE + bit).map_err(failed)? {
            return Err(format!(
                "another process (a running QEMU, qemu-img, or another export) holds its \"{}\" permission",
                name(bit)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    fn open(path: &std::path::Path) -> File {
        OpenOptions::new().read(true).write(true).open(path).unwrap()
    }

    #[test]
    fn readers_share_and_a_writer_is_refused_both_ways() {
        let path = std::env::temp_dir().join(format!("fuse-export-lock-{}", std::process::id()));
        std::fs::write(&path, [0u8; 512]).unwrap();
        let (first, second, third) = (open(&path), open(&path), open(&path));
        acquire(&first, Access::ReadOnly).unwrap();
        acquire(&second, Access::ReadOnly).unwrap();
        assert!(acquire(&third, Access::ReadWrite).unwrap_err().contains("write"));
        drop((first, second, third));
        let (writer, reader) = (open(&path), open(&path));
        acquire(&writer, Access::ReadWrite).unwrap();
        assert!(acquire(&reader, Access::ReadOnly).is_err());
        std::fs::remove_file(path).unwrap();
    }
}

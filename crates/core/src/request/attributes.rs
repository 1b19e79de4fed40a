//! The exported file's attributes and the SETATTR rules for them.

use crate::image::ImageBackend;
use crate::protocol::abi::{fattr, Attr, AttrOut, Kstatfs, SetattrIn, StatfsOut};
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

/// The kernel may cache attributes this long; writes through the mount keep
/// its idea of the size current by themselves.
const ATTR_VALID_SECONDS: u64 = 1;
const BLOCK_SIZE: u32 = 4096;
/// What `statvfs` reports as the longest name, as for any Linux file system.
const NAME_MAX: u32 = 255;

pub struct Attributes {
    permissions: AtomicU32,
    uid: AtomicU32,
    gid: AtomicU32,
    /// (seconds, nanoseconds) of atime, mtime and ctime at start.
    times: [(u64, u32); 3],
    allow_other: bool,
    writable: bool,
}

impl Attributes {
    pub fn new(image: &dyn ImageBackend, allow_other: bool, uid: u32, gid: u32) -> Self {
        let writable = image.writable();
        let times = image.times();
        Self {
            permissions: AtomicU32::new(if writable { 0o600 } else { 0o400 }),
            uid: AtomicU32::new(uid),
            gid: AtomicU32::new(gid),
            times,
            allow_other,
            writable,
        }
    }

    pub fn attr_out(&self, image: &dyn ImageBackend) -> AttrOut {
        let [atime, mtime, ctime] = self.times;
        let attr = Attr {
            ino: 1,
            size: image.size(),
            blocks: image.allocated_bytes().div_ceil(512),
            atime: atime.0,
            mtime: mtime.0,
            ctime: ctime.0,
            atimensec: atime.1,
            mtimensec: mtime.1,
            ctimensec: ctime.1,
            mode: libc::S_IFREG | self.permissions.load(Relaxed),
            nlink: 1,
            uid: self.uid.load(Relaxed),
            gid: self.gid.load(Relaxed),
            rdev: 0,
            blksize: BLOCK_SIZE,
            flags: 0,
        };
        AttrOut { attr_valid: ATTR_VALID_SECONDS, attr_valid_nsec: 0, dummy: 0, attr }
    }

    /// `df` on the mountpoint: a file system that holds exactly the image,
    /// full (nothing can be created in it), as the virtual size counts.
    pub fn statfs_out(image: &dyn ImageBackend) -> StatfsOut {
        let blocks = image.size().div_ceil(u64::from(BLOCK_SIZE));
        StatfsOut {
            st: Kstatfs {
                blocks,
                files: 1,
                bsize: BLOCK_SIZE,
                frsize: BLOCK_SIZE,
                namelen: NAME_MAX,
                ..Default::default()
            },
        }
    }

    /// Checks a SETATTR against the rules; the size change, if any, is the
    /// caller's. Returns the errno that refuses it.
    pub fn check(&self, set: &SetattrIn) -> Result<(), i32> {
        let mut supported = fattr::MODE | fattr::SIZE | fattr::FH | fattr::LOCKOWNER | fattr::KILL_SUIDGID;
        if self.allow_other {
            supported |= fattr::UID | fattr::GID;
        }
        if set.valid & !supported != 0 {
            return Err(libc::ENOTSUP);
        }
        if set.valid & fattr::SIZE != 0 && !self.writable {
            return Err(libc::EACCES);
        }
        if set.valid & fattr::MODE != 0 {
            let permissions = set.mode & 0o7777;
            if !self.allow_other && permissions & 0o077 != 0 {
                return Err(libc::EPERM);
            }
            if !self.writable && permissions & 0o222 != 0 {
                return Err(libc::EROFS);
            }
        }
        Ok(())
    }

    /// Applies the mode and ownership parts of a checked SETATTR.
    pub fn apply(&self, set: &SetattrIn) {
        if set.valid & fattr::MODE != 0 {
            self.permissions.store(set.mode & 0o7777, Relaxed);
        }
        if set.valid & fattr::UID != 0 {
            self.uid.store(set.uid, Relaxed);
        }
        if set.valid & fattr::GID != 0 {
            self.gid.store(set.gid, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attributes(allow_other: bool, writable: bool) -> Attributes {
        Attributes {
            permissions: AtomicU32::new(0o600),
            uid: AtomicU32::new(0),
            gid: AtomicU32::new(0),
            times: [(0, 0); 3],
            allow_other,
            writable,
        }
    }

    fn set(valid: u32, mode: u32) -> SetattrIn {
        SetattrIn { valid, mode, ..Default::default() }
    }

    #[test]
    fn group_and_other_bits_need_allow_other() {
        assert_eq!(attributes(false, true).check(&set(fattr::MODE, 0o644)), Err(libc::EPERM));
        assert_eq!(attributes(true, true).check(&set(fattr::MODE, 0o644)), Ok(()));
        assert_eq!(attributes(false, true).check(&set(fattr::MODE, 0o600)), Ok(()));
    }

    #[test]
    fn a_read_only_export_refuses_write_bits_and_truncation() {
        assert_eq!(attributes(true, false).check(&set(fattr::MODE, 0o600)), Err(libc::EROFS));
        assert_eq!(attributes(true, false).check(&set(fattr::MODE, 0o400)), Ok(()));
        assert_eq!(attributes(true, false).check(&set(fattr::SIZE, 0)), Err(libc::EACCES));
    }

    #[test]
    fn ownership_needs_allow_other_and_times_are_unsupported() {
        assert_eq!(attributes(false, true).check(&set(fattr::UID, 0)), Err(libc::ENOTSUP));
        assert_eq!(attributes(true, true).check(&set(fattr::UID | fattr::GID, 0)), Ok(()));
        assert_eq!(attributes(true, true).check(&set(1 << 4, 0)), Err(libc::ENOTSUP));
    }
}

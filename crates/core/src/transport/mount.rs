//! Mounting a FUSE connection on a regular file: mount(2) as root, the
//! setuid `fusermount3` helper (as libfuse does) for everyone else.

use crate::image::describe;
use crate::protocol::abi::MAX_WRITE;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// The filesystem type our mounts show in /proc/self/mountinfo.
pub const FS_TYPE: &str = "fuse.fuse-export";
const SUBTYPE: &str = "fuse-export";

pub struct MountRequest<'a> {
    pub mountpoint: &'a Path,
    /// Shown as the mount's source: the image path.
    pub fsname: &'a str,
    pub allow_other: bool,
    pub read_only: bool,
}

#[derive(Debug)]
pub enum MountError {
    /// allow_other was refused (user_allow_other missing in /etc/fuse.conf).
    AllowOtherRefused(String),
    Failed(String),
}

impl std::fmt::Display for MountError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MountError::AllowOtherRefused(m) | MountError::Failed(m) => f.write_str(m),
        }
    }
}

pub fn running_as_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn cstring(bytes: &[u8]) -> CString {
    CString::new(bytes).unwrap_or_else(|_| CString::new("?").unwrap())
}

/// Mounts and returns the session's /dev/fuse descriptor.
pub fn mount(request: &MountRequest) -> Result<OwnedFd, MountError> {
    if running_as_root() {
        mount_directly(request)
    } else {
        mount_with_fusermount(request)
    }
}

fn open_dev_fuse() -> io::Result<OwnedFd> {
    // SAFETY: plain open(2) of a constant path.
    let fd = unsafe { libc::open(c"/dev/fuse".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn mount_directly(request: &MountRequest) -> Result<OwnedFd, MountError> {
    let fuse = open_dev_fuse().map_err(|e| {
        MountError::Failed(format!("Failed to open /dev/fuse: {} (is the fuse module loaded? try: modprobe fuse)", describe(&e)))
    })?;
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let mut data = format!(
        "fd={},rootmode=100000,user_id={uid},group_id={gid},default_permissions,max_read={MAX_WRITE}",
        fuse.as_raw_fd()
    );
    if request.allow_other {
        data.push_str(",allow_other");
    }
    let mut flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOATIME;
    if request.read_only {
        flags |= libc::MS_RDONLY;
    }
    let source = cstring(request.fsname.as_bytes());
    let target = cstring(request.mountpoint.as_os_str().as_bytes());
    let fstype = cstring(FS_TYPE.as_bytes());
    let data = cstring(data.as_bytes());
    // SAFETY: every pointer is a valid NUL-terminated string for the call.
    let rc = unsafe { libc::mount(source.as_ptr(), target.as_ptr(), fstype.as_ptr(), flags, data.as_ptr().cast()) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(MountError::Failed(format!("Failed to mount on {}: {}", request.mountpoint.display(), describe(&e))));
    }
    Ok(fuse)
}

/// Escapes a value for fusermount3's comma-separated option list.
fn escape_option(value: &str) -> String {
    value.replace('\\', "\\\\").replace(',', "\\,")
}

fn mount_with_fusermount(request: &MountRequest) -> Result<OwnedFd, MountError> {
    let (ours, theirs) = UnixStream::pair()
        .map_err(|e| MountError::Failed(format!("Failed to create a socket for fusermount3: {e}")))?;
    let mut options = format!(
        "nosuid,nodev,noatime,default_permissions,max_read={MAX_WRITE},subtype={SUBTYPE},fsname={}",
        escape_option(request.fsname)
    );
    if request.allow_other {
        options.push_str(",allow_other");
    }
    options.push_str(if request.read_only { ",ro" } else { ",rw" });
    let their_fd = theirs.as_raw_fd();
    let mut command = Command::new("fusermount3");
    command
        .arg("-o")
        .arg(&options)
        .arg("--")
        .arg(request.mountpoint)
        .env("_FUSE_COMMFD", their_fd.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: only async-signal-safe fcntl between fork and exec.
    unsafe {
        command.pre_exec(move || {
            // The helper must inherit its end of the socket.
            if libc::fcntl(their_fd, libc::F_SETFD, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn().map_err(|e| {
        MountError::Failed(format!("Failed to run fusermount3: {e} (install the fuse3 package, or run as root)"))
    })?;
    drop(theirs);
    let received = receive_fd(&ours);
    let output = child
        .wait_with_output()
        .map_err(|e| MountError::Failed(format!("Failed to wait for fusermount3: {e}")))?;
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    match received {
        Ok(fd) if output.status.success() => Ok(fd),
        _ if stderr.contains("user_allow_other") => Err(MountError::AllowOtherRefused(format!(
            "fusermount3 refused allow_other: {stderr} (add 'user_allow_other' to /etc/fuse.conf, or use --allow-other off)"
        ))),
        Ok(_) | Err(_) => Err(MountError::Failed(format!(
            "fusermount3 could not mount on {}: {}",
            request.mountpoint.display(),
            if stderr.is_empty() { "no reason given".to_string() } else { stderr }
        ))),
    }
}

/// Receives the /dev/fuse descriptor fusermount3 sends back (SCM_RIGHTS).
fn receive_fd(socket: &UnixStream) -> io::Result<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    let mut control = [0u64; 8];
    // SAFETY: msghdr is plain data; every pointer set below outlives recvmsg.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = &mut iov;
    message.msg_iovlen = 1;
    message.msg_control = control.as_mut_ptr().cast();
    // usize on glibc, u32 on musl.
    message.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: see above.
    let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut message, libc::MSG_CMSG_CLOEXEC) };
    if n <= 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "fusermount3 sent no descriptor"));
    }
    // SAFETY: walking the control buffer recvmsg filled.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&message);
        if cmsg.is_null() || (*cmsg).cmsg_level != libc::SOL_SOCKET || (*cmsg).cmsg_type != libc::SCM_RIGHTS {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "fusermount3 sent no descriptor"));
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>());
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Unmounts; `lazy` detaches even while the mount is busy or dead.
pub fn unmount(mountpoint: &Path, lazy: bool) -> Result<(), String> {
    if running_as_root() {
        let target = cstring(mountpoint.as_os_str().as_bytes());
        let flags = if lazy { libc::MNT_DETACH } else { 0 };
        // SAFETY: valid NUL-terminated path.
        if unsafe { libc::umount2(target.as_ptr(), flags) } < 0 {
            let e = io::Error::last_os_error();
            return Err(format!("Failed to unmount {}: {}", mountpoint.display(), describe(&e)));
        }
        return Ok(());
    }
    let mut command = Command::new("fusermount3");
    command.arg("-u").arg("-q");
    if lazy {
        command.arg("-z");
    }
    let output = command
        .arg("--")
        .arg(mountpoint)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("Failed to run fusermount3 -u: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "fusermount3 -u {} failed: {}",
            mountpoint.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(())
}

const FUSE_DEV_IOC_CLONE: libc::Ioctl = 0x8004_e500_u32 as libc::Ioctl;

/// A second descriptor on the same connection, so that each I/O thread reads
/// its own queue of requests and replies where they came from.
pub fn clone_session(session: &OwnedFd) -> io::Result<OwnedFd> {
    let clone = open_dev_fuse()?;
    let mut source: u32 = session.as_raw_fd() as u32;
    // SAFETY: the ioctl reads one u32, the session descriptor.
    if unsafe { libc::ioctl(clone.as_raw_fd(), FUSE_DEV_IOC_CLONE, &mut source) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(clone)
}

/// Replies and reads never block a thread: io_uring polls a non-blocking fd.
pub fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fusermount_option_values_are_escaped() {
        assert_eq!(escape_option("/img/a,b\\c"), "/img/a\\,b\\\\c");
    }
}

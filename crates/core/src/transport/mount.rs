//! Mounting a FUSE connection on a regular file: as root with the mount
//! API (fsopen, fsmount, move_mount) onto the very file that was checked,
//! the setuid `fusermount3` helper (as libfuse does) for everyone else.

use crate::faults::Faults;
use crate::os_error::describe;
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

/// A mounted FUSE connection.
pub struct Mounted {
    /// The /dev/fuse descriptor of the session.
    pub session: OwnedFd,
    /// Its number under /sys/fs/fuse/connections, when the mount told us.
    pub connection: Option<u32>,
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

/// A path or option for the kernel; a NUL byte inside would cut it short.
fn cstring(what: &str, bytes: &[u8]) -> Result<CString, MountError> {
    CString::new(bytes).map_err(|_| {
        MountError::Failed(format!(
            "{what} {:?} contains a NUL byte, which no path may",
            String::from_utf8_lossy(bytes)
        ))
    })
}

/// Mounts and returns the session.
pub fn mount(request: &MountRequest, faults: &Faults) -> Result<Mounted, MountError> {
    cstring("Mountpoint", request.mountpoint.as_os_str().as_bytes())?;
    cstring("Image path", request.fsname.as_bytes())?;
    if running_as_root() {
        mount_directly(request, faults)
    } else {
        let session = mount_with_fusermount(request)?;
        Ok(Mounted { session, connection: None })
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

/// Opens the mountpoint itself, never a symlink in its place, and checks
/// that descriptor: the mount then lands on exactly this file even if the
/// path is swapped meanwhile (by someone who can write its folder).
fn open_mountpoint(mountpoint: &Path) -> Result<OwnedFd, MountError> {
    let shown = mountpoint.display();
    let path = cstring("Mountpoint", mountpoint.as_os_str().as_bytes())?;
    // SAFETY: a valid NUL-terminated path.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(MountError::Failed(format!("Failed to open the mountpoint {shown}: {}", describe(&e))));
    }
    // SAFETY: fd is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: plain data filled by fstat on our descriptor.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut stat) } < 0 {
        let e = io::Error::last_os_error();
        return Err(MountError::Failed(format!("Failed to stat the mountpoint {shown}: {}", describe(&e))));
    }
    match stat.st_mode & libc::S_IFMT {
        libc::S_IFREG => Ok(fd),
        libc::S_IFLNK => Err(MountError::Failed(format!(
            "The mountpoint {shown} is now a symbolic link (it changed after it was checked); refusing to mount through it"
        ))),
        _ => Err(MountError::Failed(format!("{shown} is not a regular file (the mountpoint must be an existing regular file)"))),
    }
}

/// The mount API's constants (linux/mount.h).
mod mount_api {
    pub const FSOPEN_CLOEXEC: libc::c_uint = 0x1;
    pub const FSCONFIG_SET_FLAG: libc::c_uint = 0;
    pub const FSCONFIG_SET_STRING: libc::c_uint = 1;
    pub const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
    pub const FSMOUNT_CLOEXEC: libc::c_uint = 0x1;
    pub const MOUNT_ATTR_RDONLY: libc::c_uint = 0x1;
    pub const MOUNT_ATTR_NOSUID: libc::c_uint = 0x2;
    pub const MOUNT_ATTR_NODEV: libc::c_uint = 0x4;
    pub const MOUNT_ATTR_NOATIME: libc::c_uint = 0x10;
    pub const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
    pub const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
}

/// A descriptor a syscall returned, or the error it set.
fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor the syscall gave us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// One fsconfig(2) call: a flag when `value` is None, else a string.
fn fs_config(context: &OwnedFd, key: &str, value: Option<&str>) -> Result<(), MountError> {
    let key_c = cstring("Mount option", key.as_bytes())?;
    let value_c = value.map(|v| cstring("Mount option value", v.as_bytes())).transpose()?;
    let (command, value_ptr) = match &value_c {
        Some(v) => (mount_api::FSCONFIG_SET_STRING, v.as_ptr()),
        None => (mount_api::FSCONFIG_SET_FLAG, std::ptr::null()),
    };
    // SAFETY: valid NUL-terminated strings (or null for a flag) for the call.
    let rc = unsafe { libc::syscall(libc::SYS_fsconfig, context.as_raw_fd(), command, key_c.as_ptr(), value_ptr, 0) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(MountError::Failed(format!("The kernel refused the FUSE mount option {key}: {}", describe(&e))));
    }
    Ok(())
}

fn mount_directly(request: &MountRequest, faults: &Faults) -> Result<Mounted, MountError> {
    let target = open_mountpoint(request.mountpoint)?;
    faults.pause_before_mount();
    let fuse = open_dev_fuse().map_err(|e| {
        MountError::Failed(format!(
            "Failed to open /dev/fuse: {} (is the fuse module loaded? try: modprobe fuse)",
            describe(&e)
        ))
    })?;
    let failed = |step: &str, e: io::Error| {
        MountError::Failed(format!("Failed to mount on {} ({step}): {}", request.mountpoint.display(), describe(&e)))
    };
    // SAFETY: a constant NUL-terminated file system name.
    let context = owned(unsafe { libc::syscall(libc::SYS_fsopen, c"fuse".as_ptr(), mount_api::FSOPEN_CLOEXEC) })
        .map_err(|e| failed("fsopen, which needs Linux >= 5.2", e))?;
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let options = [
        ("source", Some(request.fsname.to_string())),
        ("subtype", Some(SUBTYPE.to_string())),
        ("fd", Some(fuse.as_raw_fd().to_string())),
        ("rootmode", Some("100000".to_string())),
        ("user_id", Some(uid.to_string())),
        ("group_id", Some(gid.to_string())),
        ("default_permissions", None),
        ("max_read", Some(MAX_WRITE.to_string())),
    ];
    for (key, value) in &options {
        fs_config(&context, key, value.as_deref())?;
    }
    if request.allow_other {
        fs_config(&context, "allow_other", None)?;
    }
    if request.read_only {
        fs_config(&context, "ro", None)?;
    }
    // SAFETY: fsconfig on our context descriptor, no pointers.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            context.as_raw_fd(),
            mount_api::FSCONFIG_CMD_CREATE,
            std::ptr::null::<u8>(),
            std::ptr::null::<u8>(),
            0,
        )
    };
    if rc < 0 {
        return Err(failed("creating the FUSE superblock", io::Error::last_os_error()));
    }
    let mut attributes = mount_api::MOUNT_ATTR_NOSUID | mount_api::MOUNT_ATTR_NODEV | mount_api::MOUNT_ATTR_NOATIME;
    if request.read_only {
        attributes |= mount_api::MOUNT_ATTR_RDONLY;
    }
    // SAFETY: fsmount on our context descriptor, no pointers.
    let mount =
        owned(unsafe { libc::syscall(libc::SYS_fsmount, context.as_raw_fd(), mount_api::FSMOUNT_CLOEXEC, attributes) })
            .map_err(|e| failed("fsmount", e))?;
    let flags = mount_api::MOVE_MOUNT_F_EMPTY_PATH | mount_api::MOVE_MOUNT_T_EMPTY_PATH;
    // SAFETY: empty paths with both descriptors, as the flags say.
    let rc = unsafe {
        libc::syscall(libc::SYS_move_mount, mount.as_raw_fd(), c"".as_ptr(), target.as_raw_fd(), c"".as_ptr(), flags)
    };
    if rc < 0 {
        return Err(failed("move_mount", io::Error::last_os_error()));
    }
    Ok(Mounted { session: fuse, connection: connection_of(&mount) })
}

/// The connection's number: the minor of the mount's device.
fn connection_of(mount: &OwnedFd) -> Option<u32> {
    dev_of(mount).map(|(_, minor)| minor)
}

/// The device (major, minor) of what `fd` names, asked with DONT_SYNC and an
/// empty mask, so that FUSE answers from the superblock instead of sending
/// a GETATTR that nobody serves (yet, or any more).
fn dev_of(fd: &OwnedFd) -> Option<(u32, u32)> {
    // SAFETY: plain data filled by statx on our descriptor.
    let mut stat: libc::statx = unsafe { std::mem::zeroed() };
    let flags = libc::AT_EMPTY_PATH | libc::AT_STATX_DONT_SYNC;
    // SAFETY: an empty path with AT_EMPTY_PATH names the descriptor itself.
    let rc = unsafe { libc::statx(fd.as_raw_fd(), c"".as_ptr(), flags, 0, &mut stat) };
    (rc == 0).then_some((stat.stx_dev_major, stat.stx_dev_minor))
}

/// Whether connection `connection`'s mount is still on `mountpoint`: after
/// an abort the dead mount stays there until unmounted. Asked without
/// following a symlink and without a request to the (dead) server.
pub fn mounted_here(mountpoint: &Path, connection: u32) -> bool {
    let Ok(path) = cstring("Mountpoint", mountpoint.as_os_str().as_bytes()) else { return false };
    // SAFETY: a valid NUL-terminated path; the descriptor is checked below.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
    let Ok(fd) = owned(fd.into()) else { return false };
    // A FUSE superblock's device is anonymous (major 0), and its minor is
    // unique while the superblock lives.
    dev_of(&fd) == Some((0, connection))
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
    let output =
        child.wait_with_output().map_err(|e| MountError::Failed(format!("Failed to wait for fusermount3: {e}")))?;
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
        let target = cstring("Mountpoint", mountpoint.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
        // Never through a symlink planted in the mountpoint's place.
        let flags = libc::UMOUNT_NOFOLLOW | if lazy { libc::MNT_DETACH } else { 0 };
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

const FUSE_CONNECTIONS: &str = "/sys/fs/fuse/connections";

/// Aborts a FUSE connection through the fusectl file system, mounting it
/// first where the system did not (as root; systemd mounts it at boot).
pub fn abort_connection(connection: u32) -> Result<(), String> {
    let control = format!("{FUSE_CONNECTIONS}/{connection}/abort");
    let abort = || std::fs::write(&control, "1");
    let mut result = abort();
    if result.as_ref().is_err_and(|e| e.kind() == io::ErrorKind::NotFound) && running_as_root() && mount_fusectl() {
        result = abort();
    }
    result.map_err(|e| {
        let hint = if e.kind() == io::ErrorKind::NotFound {
            format!(" (is the fusectl file system mounted? mount -t fusectl none {FUSE_CONNECTIONS})")
        } else {
            String::new()
        };
        format!("Failed to abort the FUSE connection through {control}: {}{hint}", describe(&e))
    })
}

/// Mounts fusectl on /sys/fs/fuse/connections; false when that fails or
/// it was there already.
fn mount_fusectl() -> bool {
    let Ok(target) = CString::new(FUSE_CONNECTIONS) else { return false };
    // SAFETY: constant NUL-terminated strings for the call.
    unsafe { libc::mount(c"fusectl".as_ptr(), target.as_ptr(), c"fusectl".as_ptr(), 0, std::ptr::null()) == 0 }
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

/// `_IOW(229, 1, struct fuse_backing_map)`: registers a backing file.
const FUSE_DEV_IOC_BACKING_OPEN: libc::Ioctl = 0x4010_e501_u32 as libc::Ioctl;

#[repr(C)]
struct BackingMap {
    fd: i32,
    flags: u32,
    padding: u64,
}

/// Registers `file` with the connection for FUSE passthrough; returns the
/// backing id an OPEN reply names. Needs CAP_SYS_ADMIN, and INIT's reply
/// processed with passthrough negotiated.
pub fn backing_open(session: &OwnedFd, file: RawFd) -> io::Result<u32> {
    let map = BackingMap { fd: file, flags: 0, padding: 0 };
    // SAFETY: the ioctl reads one fuse_backing_map.
    let id = unsafe { libc::ioctl(session.as_raw_fd(), FUSE_DEV_IOC_BACKING_OPEN, &map) };
    if id < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(id as u32)
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
    fn a_mountpoint_that_is_a_symlink_or_not_a_file_is_refused_by_its_descriptor() {
        let dir = std::env::temp_dir().join(format!("fuse-export-mountpoint-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("file");
        std::fs::write(&file, b"").unwrap();
        let link = dir.join("link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(open_mountpoint(&file).is_ok());
        let refused = open_mountpoint(&link).err().unwrap().to_string();
        assert!(refused.contains("symbolic link"), "{refused}");
        let refused = open_mountpoint(&dir).err().unwrap().to_string();
        assert!(refused.contains("not a regular file"), "{refused}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn paths_with_a_nul_byte_are_refused_before_anything_is_mounted() {
        let request = MountRequest {
            mountpoint: Path::new("/tmp/a\0b"),
            fsname: "disk.img",
            allow_other: false,
            read_only: true,
        };
        let refused = mount(&request, &Faults::from_env()).err().unwrap().to_string();
        assert!(refused.contains("NUL byte"), "{refused}");
        let request =
            MountRequest { mountpoint: Path::new("/tmp/x"), fsname: "a\0b", allow_other: false, read_only: true };
        assert!(mount(&request, &Faults::from_env()).err().unwrap().to_string().contains("Image path"));
    }

    #[test]
    fn fusermount_option_values_are_escaped() {
        assert_eq!(escape_option("/img/a,b\\c"), "/img/a\\,b\\\\c");
    }
}

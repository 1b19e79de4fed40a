//! Starting QEMU's programs as the export's children: the descriptors they
//! are handed (the listening socket, the secrets' pipes) at fixed numbers
//! and nothing else of ours; killed by the kernel when the thread that
//! started them ends, even by `kill -9` of the exporter; in a process group
//! of their own, so that a Ctrl-C reaches the exporter only, which stops
//! them in order; and, with `--ca-file`, in a mount namespace of their own
//! where that CA is the system's trust store.

use std::ffi::CString;
use std::io;
use std::io::Read;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// Where QEMU's TLS library (GnuTLS, through libcurl) finds the trusted
/// CAs on Debian: a private CA is bound over it in the child's namespace.
const SYSTEM_CA_DIR: &str = "/etc/ssl/certs";
/// Above any descriptor the child is handed, while they are moved.
const SCRATCH_FD: RawFd = 64;

/// The name of the Debian package that ships `program`.
fn package_of(program: &str) -> &'static str {
    match program {
        "qemu-nbd" | "qemu-img" => "qemu-utils",
        _ => "qemu-system-common",
    }
}

/// A missing program's message names the package to install.
pub fn spawn_failed(program: &str, error: &io::Error) -> String {
    if error.kind() == io::ErrorKind::NotFound {
        format!(
            "{program} is missing: images of this kind are served through QEMU's block layer; \
             install Debian's {} package",
            package_of(program)
        )
    } else {
        format!("Failed to start {program}: {}", crate::os_error::describe(error))
    }
}

/// How a child is set up between fork and exec.
pub struct Handover {
    /// (descriptor of ours, the number the child gets it as).
    pub descriptors: Vec<(RawFd, RawFd)>,
    /// A directory whose `ca-certificates.crt` becomes the child's trust store.
    pub trusted_ca_dir: Option<CString>,
}

/// Prepares `command` to run with `handover`, tied to the calling thread.
pub fn hand_over(command: &mut Command, handover: Handover) -> io::Result<()> {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    let uid_map = CString::new(format!("{uid} {uid} 1")).expect("no NUL in digits");
    let gid_map = CString::new(format!("{0} {0} 1", unsafe { libc::getgid() })).expect("no NUL in digits");
    let highest = handover.descriptors.iter().map(|(_, to)| *to).max().unwrap_or(2);
    let Handover { descriptors, trusted_ca_dir } = handover;
    let system_ca = CString::new(SYSTEM_CA_DIR).expect("no NUL");
    command.process_group(0);
    // SAFETY: the closure makes only async-signal-safe system calls, on
    // memory prepared before the fork.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The exporter died before the line above took effect.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            move_descriptors(&descriptors)?;
            if libc::syscall(libc::SYS_close_range, highest + 1, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) != 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some(dir) = &trusted_ca_dir {
                private_mounts(&uid_map, &gid_map)?;
                check(libc::mount(
                    dir.as_ptr(),
                    system_ca.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ))?;
            }
            Ok(())
        });
    }
    Ok(())
}

fn check(result: libc::c_int) -> io::Result<()> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Puts each descriptor at its number without one overwriting another
/// still to be moved: first all above SCRATCH_FD, then down into place.
unsafe fn move_descriptors(descriptors: &[(RawFd, RawFd)]) -> io::Result<()> {
    let mut scratch = [0 as RawFd; 8];
    for (slot, (from, _)) in scratch.iter_mut().zip(descriptors) {
        *slot = libc::fcntl(*from, libc::F_DUPFD, SCRATCH_FD);
        check(*slot)?;
    }
    for (slot, (_, to)) in scratch.iter().zip(descriptors) {
        check(libc::dup2(*slot, *to))?;
    }
    Ok(())
}

/// A mount namespace of the child's own; without root, inside a user
/// namespace that maps the user to itself.
unsafe fn private_mounts(uid_map: &CString, gid_map: &CString) -> io::Result<()> {
    if libc::unshare(libc::CLONE_NEWNS) != 0 {
        check(libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS))?;
        write_proc(c"/proc/self/setgroups", c"deny")?;
        write_proc(c"/proc/self/uid_map", uid_map)?;
        write_proc(c"/proc/self/gid_map", gid_map)?;
    }
    let root = c"/";
    check(libc::mount(
        std::ptr::null(),
        root.as_ptr(),
        std::ptr::null(),
        libc::MS_REC | libc::MS_PRIVATE,
        std::ptr::null(),
    ))
}

unsafe fn write_proc(path: &std::ffi::CStr, text: &std::ffi::CStr) -> io::Result<()> {
    let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
    check(fd)?;
    let bytes = text.to_bytes();
    let written = libc::write(fd, bytes.as_ptr().cast(), bytes.len());
    libc::close(fd);
    if written != bytes.len() as isize {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs a short-lived QEMU tool (qemu-img) with the secrets' pipes at
/// their numbers and returns what it printed; a failure carries its
/// message.
pub fn run_tool(
    program: &str,
    args: &[String],
    secrets: &[OwnedFd],
    trusted_ca_dir: Option<&Path>,
) -> Result<String, String> {
    let mut command = Command::new(program);
    command.args(args).stdin(Stdio::null());
    let descriptors = super::secrets::handover(secrets).collect();
    let trusted_ca_dir = trusted_ca_dir.map(c_path).transpose().map_err(|e| e.to_string())?;
    hand_over(&mut command, Handover { descriptors, trusted_ca_dir }).map_err(|e| spawn_failed(program, &e))?;
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|e| spawn_failed(program, &e))?;
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let errors = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stderr.by_ref().take(MAX_TOOL_OUTPUT).read_to_end(&mut text);
        text
    });
    // A hostile image can make QEMU print without end (`qemu-img map` of
    // millions of fragments): what exceeds the cap is not read, the tool
    // is stopped.
    let mut stdout = Vec::new();
    let read = child.stdout.take().expect("stdout is piped").take(MAX_TOOL_OUTPUT + 1).read_to_end(&mut stdout);
    let overflowed = stdout.len() as u64 > MAX_TOOL_OUTPUT;
    if overflowed {
        let _ = child.kill();
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    let stderr = errors.join().unwrap_or_default();
    read.map_err(|e| format!("{program}: {e}"))?;
    if overflowed {
        return Err(format!("{program} printed more than {} MiB", MAX_TOOL_OUTPUT >> 20));
    }
    if status.success() {
        Ok(String::from_utf8_lossy(&stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&stderr).trim().to_string())
    }
}

/// The most a QEMU tool's answer may hold (a map, an info): beyond it the
/// answer is refused.
const MAX_TOOL_OUTPUT: u64 = 64 << 20;

pub fn c_path(path: &Path) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Result<String, String> {
        run_tool("sh", &["-c".into(), script.into()], &[], None)
    }

    #[test]
    fn a_tool_gives_its_output_or_its_error_and_never_more_than_the_cap() {
        assert_eq!(sh("echo fine").unwrap(), "fine\n");
        assert_eq!(sh("echo broken >&2; exit 3").unwrap_err(), "broken");
        let flood = sh("head -c 70000000 /dev/zero").unwrap_err();
        assert!(flood.contains("more than 64 MiB"), "{flood}");
        assert!(run_tool("no-such-tool-here", &[], &[], None).unwrap_err().contains("no-such-tool-here is missing"));
    }
}

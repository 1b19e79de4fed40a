//! The export's qemu-nbd: started, watched and restarted by a supervisor
//! thread of its own (the kernel kills the child when that thread ends, so
//! it lives exactly as long as the export), stopped with the export.
//!
//! It gets its listening socket by socket activation (LISTEN_FDS): the
//! socket is ours, in a private 0700 directory, and outlives every child,
//! so that a restarted child serves the same address and the NBD backend's
//! reconnection finds it. It is ready when its pid file appears: qemu-nbd
//! writes it once the image is open. What it prints goes to the export's
//! log as notices.

use super::process::{hand_over, spawn_failed, Handover};
use super::secrets::Secrets;
use crate::image::Notice;
use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const PROGRAM: &str = "qemu-nbd";
/// Opening an image may take long (a LUKS key derivation, a slow server).
const OPEN_TIMEOUT: Duration = Duration::from_secs(120);
/// How often a starting child is looked at.
const START_POLL: Duration = Duration::from_millis(5);
/// A child that ends is started again after this, doubled for each child
/// that ends within a minute of its start, up to RESTART_MAX.
const RESTART_FIRST: Duration = Duration::from_millis(100);
const RESTART_MAX: Duration = Duration::from_secs(5);
/// A stop waits this long for qemu-nbd to end on SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// The lines of the child's stderr kept for an error message.
const KEPT_LINES: usize = 20;
/// The child's descriptor of the listening socket (SD_LISTEN_FDS_START).
const LISTEN_FD: i32 = 3;

/// What qemu-nbd runs with: everything but the socket and the pid file.
pub struct ChildSpec {
    pub args: Vec<OsString>,
    pub secrets: Secrets,
    /// A directory whose `ca-certificates.crt` the child trusts (--ca-file).
    pub trusted_ca_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Starting,
    Running(u32),
    Failed(String),
    Stopping,
    Stopped,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    notices: Mutex<Vec<Notice>>,
    /// The last lines the child printed.
    lines: Mutex<VecDeque<String>>,
}

impl Shared {
    fn set(&self, state: State) {
        *self.state.lock().unwrap() = state;
        self.changed.notify_all();
    }

    fn stopping(&self) -> bool {
        matches!(*self.state.lock().unwrap(), State::Stopping | State::Stopped)
    }

    fn notice(&self, kind: &'static str, message: String) {
        self.notices.lock().unwrap().push(Notice { kind, message });
    }

    /// Sleeps for `pause` unless a stop comes first; whether it did.
    fn pause_unless_stopped(&self, pause: Duration) -> bool {
        let state = self.state.lock().unwrap();
        let (state, _) =
            self.changed.wait_timeout_while(state, pause, |s| !matches!(s, State::Stopping | State::Stopped)).unwrap();
        matches!(*state, State::Stopping | State::Stopped)
    }
}

pub struct QemuNbd {
    shared: Arc<Shared>,
    supervisor: Mutex<Option<JoinHandle<()>>>,
    dir: PrivateDir,
}

impl QemuNbd {
    /// Starts qemu-nbd and waits until it has opened the image; what it
    /// printed meanwhile comes back as warnings. The error is its own
    /// message.
    pub fn start(spec: ChildSpec) -> Result<(QemuNbd, Vec<String>), String> {
        let dir = PrivateDir::create()?;
        let listener = UnixListener::bind(dir.socket())
            .map_err(|e| format!("Failed to make qemu-nbd's socket: {}", crate::os_error::describe(&e)))?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::Starting),
            changed: Condvar::new(),
            notices: Mutex::default(),
            lines: Mutex::default(),
        });
        let pid_file = dir.path.join("qemu-nbd.pid");
        let supervisor = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("qemu-nbd".into())
                .spawn(move || supervise(&shared, &spec, listener.into(), &pid_file))
                .map_err(|e| format!("Failed to start qemu-nbd's supervisor: {e}"))?
        };
        let child = QemuNbd { shared, supervisor: Mutex::new(Some(supervisor)), dir };
        let state = child.shared.changed.wait_while(child.shared.state.lock().unwrap(), |s| *s == State::Starting);
        let state = state.unwrap().clone();
        if let State::Failed(why) = state {
            child.stop();
            return Err(why);
        }
        let warnings = child.take_notices().into_iter().map(|n| n.message).collect();
        Ok((child, warnings))
    }

    /// The socket the child serves NBD on.
    pub fn socket(&self) -> PathBuf {
        self.dir.socket()
    }

    /// What happened since the last call: lines it printed, restarts.
    pub fn take_notices(&self) -> Vec<Notice> {
        std::mem::take(&mut *self.shared.notices.lock().unwrap())
    }

    /// Ends the child (SIGTERM: qemu-nbd flushes and closes the image;
    /// SIGKILL if it will not) and its supervisor. Idempotent.
    pub fn stop(&self) {
        let Some(supervisor) = self.supervisor.lock().unwrap().take() else { return };
        let state = self.shared.state.lock().unwrap();
        if matches!(*state, State::Failed(_) | State::Stopped) {
            // The supervisor has returned.
            drop(state);
            let _ = supervisor.join();
            return;
        }
        let running = if let State::Running(pid) = *state { Some(pid) } else { None };
        // Signals go out under the lock: the supervisor reaps a child only
        // after it marked the state, so `pid` is still our child's.
        let signal = |state: &State, signal| {
            if let (Some(pid), State::Running(_) | State::Stopping) = (running, state) {
                // SAFETY: see above.
                unsafe { libc::kill(pid as libc::pid_t, signal) };
            }
        };
        signal(&state, libc::SIGTERM);
        let mut state = state;
        if *state != State::Stopped {
            *state = State::Stopping;
        }
        self.shared.changed.notify_all();
        let (state, waited) =
            self.shared.changed.wait_timeout_while(state, STOP_GRACE, |s| *s != State::Stopped).unwrap();
        if waited.timed_out() {
            signal(&state, libc::SIGKILL);
        }
        drop(state);
        let _ = supervisor.join();
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts the child, again whenever it ends, until a stop.
fn supervise(shared: &Arc<Shared>, spec: &ChildSpec, listener: OwnedFd, pid_file: &Path) {
    let mut pause = RESTART_FIRST;
    let mut first = true;
    loop {
        let started = Instant::now();
        let (mut child, reader) =
            match spawn(spec, &listener, pid_file, shared).and_then(|c| wait_ready(shared, c, pid_file)) {
                Ok(running) => running,
                Err(why) if first => return shared.set(State::Failed(why)),
                Err(why) => {
                    shared.notice("qemu-nbd-failed", format!("qemu-nbd did not start again: {why}"));
                    if shared.pause_unless_stopped(pause) {
                        return shared.set(State::Stopped);
                    }
                    pause = (pause * 2).min(RESTART_MAX);
                    continue;
                }
            };
        if !first {
            shared.notice("qemu-nbd-restarted", format!("qemu-nbd serves the image again (pid {})", child.id()));
        }
        first = false;
        {
            let mut state = shared.state.lock().unwrap();
            if *state == State::Stopping {
                // SAFETY: not reaped yet: our child.
                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            } else {
                *state = State::Running(child.id());
                shared.changed.notify_all();
            }
        }
        wait_unreaped(child.id());
        let stopping = {
            let mut state = shared.state.lock().unwrap();
            let stopping = *state == State::Stopping;
            *state = if stopping { State::Stopped } else { State::Starting };
            shared.changed.notify_all();
            stopping
        };
        let status = child.wait();
        let _ = reader.join();
        if stopping {
            return;
        }
        let why = ended(status, shared);
        pause = if started.elapsed() > Duration::from_secs(60) { RESTART_FIRST } else { (pause * 2).min(RESTART_MAX) };
        shared.notice("qemu-nbd-exited", format!("{why}; starting it again in {} ms", pause.as_millis()));
        if shared.pause_unless_stopped(pause) {
            return shared.set(State::Stopped);
        }
    }
}

/// Blocks until child `pid` has ended, leaving it unreaped (its number
/// stays ours until `Child::wait`).
fn wait_unreaped(pid: u32) {
    loop {
        // SAFETY: a zeroed siginfo_t is valid for waitid to fill.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let flags = libc::WEXITED | libc::WNOWAIT;
        if unsafe { libc::waitid(libc::P_PID, pid, &mut info, flags) } == 0
            || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR)
        {
            return;
        }
    }
}

/// How the child ended, with its last words.
fn ended(status: std::io::Result<ExitStatus>, shared: &Shared) -> String {
    let last: Vec<String> = shared.lines.lock().unwrap().iter().cloned().collect();
    let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
    if last.is_empty() {
        format!("qemu-nbd ended ({status})")
    } else {
        format!("qemu-nbd ended ({status}): {}", last.join("; "))
    }
}

/// One child, and the thread that turns its stderr into notices.
fn spawn(
    spec: &ChildSpec,
    listener: &OwnedFd,
    pid_file: &Path,
    shared: &Arc<Shared>,
) -> Result<(Child, JoinHandle<()>), String> {
    let _ = std::fs::remove_file(pid_file);
    shared.lines.lock().unwrap().clear();
    // LISTEN_PID must be the child's own pid, known only once it runs: the
    // shell sets it to its pid and becomes qemu-nbd, keeping it.
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg("LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" \"$@\"")
        .arg(PROGRAM)
        .args(&spec.args)
        .arg(format!("--pid-file={}", pid_file.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let pipes = spec.secrets.pipes().map_err(|e| format!("Failed to hand qemu-nbd its secrets: {e}"))?;
    let mut descriptors = vec![(listener.as_raw_fd(), LISTEN_FD)];
    descriptors.extend(super::secrets::handover(&pipes));
    let trusted_ca_dir =
        spec.trusted_ca_dir.as_deref().map(super::process::c_path).transpose().map_err(|e| e.to_string())?;
    hand_over(&mut command, Handover { descriptors, trusted_ca_dir }).map_err(|e| spawn_failed(PROGRAM, &e))?;
    let mut child = command.spawn().map_err(|e| spawn_failed(PROGRAM, &e))?;
    let stderr = child.stderr.take().expect("stderr is piped");
    let shared = shared.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let line = line.trim_start_matches("qemu-nbd: ").to_string();
            let mut kept = shared.lines.lock().unwrap();
            if kept.len() == KEPT_LINES {
                kept.pop_front();
            }
            kept.push_back(line.clone());
            drop(kept);
            shared.notice("qemu-nbd", format!("qemu-nbd: {line}"));
        }
    });
    Ok((child, reader))
}

/// Waits for the pid file (the image is open) or the child's end; the
/// error is what the child printed.
fn wait_ready(
    shared: &Shared,
    (mut child, reader): (Child, JoinHandle<()>),
    pid_file: &Path,
) -> Result<(Child, JoinHandle<()>), String> {
    let deadline = Instant::now() + OPEN_TIMEOUT;
    loop {
        if pid_file.exists() {
            return Ok((child, reader));
        }
        let exited = child.try_wait().map_err(|e| e.to_string())?;
        let gave_up = exited.is_none() && (Instant::now() > deadline || shared.stopping());
        if gave_up {
            let _ = child.kill();
            let _ = child.wait();
        }
        if exited.is_some() || gave_up {
            let _ = reader.join();
            let lines: Vec<String> = shared.lines.lock().unwrap().iter().cloned().collect();
            shared.notices.lock().unwrap().retain(|n| n.kind != "qemu-nbd");
            return Err(match (gave_up, lines.is_empty()) {
                (true, _) if shared.stopping() => "stopped while qemu-nbd was opening the image".into(),
                (true, _) => format!("qemu-nbd did not open the image within {} s", OPEN_TIMEOUT.as_secs()),
                (false, true) => format!("qemu-nbd ended ({})", exited.expect("exited")),
                (false, false) => lines.join("; "),
            });
        }
        std::thread::sleep(START_POLL);
    }
}

/// A 0700 directory under the temporary directory, removed with its files.
pub struct PrivateDir {
    path: PathBuf,
}

impl PrivateDir {
    pub fn create() -> Result<PrivateDir, String> {
        use std::os::unix::fs::DirBuilderExt;
        let base = std::env::temp_dir();
        sweep_orphans(&base);
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        for _ in 0..100 {
            let number = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = base.join(format!("{DIR_PREFIX}{}-{number}", std::process::id()));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(PrivateDir { path }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(format!(
                        "Failed to make a private directory in {}: {}",
                        base.display(),
                        crate::os_error::describe(&e)
                    ))
                }
            }
        }
        Err(format!("Failed to make a private directory in {}", base.display()))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn socket(&self) -> PathBuf {
        self.path.join("nbd.sock")
    }
}

/// What names the private directories: the prefix, then the owner's pid.
const DIR_PREFIX: &str = "fuse-export-qemu-";

/// Removes the private directories of exporters that were killed (`kill
/// -9` leaves them): theirs whose pid is gone. Their children died with
/// them.
fn sweep_orphans(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let owner = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)).and_then(|rest| rest.split('-').next());
        let Some(pid) = owner.and_then(|p| p.parse::<libc::pid_t>().ok()) else { continue };
        // SAFETY: signal 0 only asks whether the process exists.
        let gone =
            unsafe { libc::kill(pid, 0) } != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

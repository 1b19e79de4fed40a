//! Starting and stopping one export: open the image, mount, start the I/O
//! threads, wait for INIT; later pause, unmount and join.

use crate::export::counters::Snapshot;
use crate::export::{EventSink, Export, ExportSettings};
use crate::image::{Image, ImageOptions};
use crate::runtime::control::Control;
use crate::runtime::queue::Queue;
use crate::runtime::worker::Worker;
use crate::transport::legacy::{LegacyChannel, SLOTS_PER_CHANNEL};
use crate::transport::mount::{self, MountError, MountRequest};
use std::os::fd::OwnedFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switch {
    On,
    Off,
    Auto,
}

#[derive(Debug, Clone)]
pub struct StartOptions {
    pub image: ImageOptions,
    pub mountpoint: PathBuf,
    pub allow_other: Switch,
    pub io_uring: Switch,
    pub threads: usize,
    pub queue_depth: u32,
}

/// What the export ended up with, for the `ready` event.
#[derive(Debug, Clone)]
pub struct StartInfo {
    pub size: u64,
    pub transport: &'static str,
    pub threads: usize,
    pub ring_queues: usize,
    pub queue_depth: u32,
    pub allow_other: bool,
    pub direct_io: bool,
    /// Things the user should know (fallbacks taken).
    pub warnings: Vec<String>,
}

pub struct Server {
    export: Arc<Export>,
    control: Arc<Control>,
    threads: Vec<JoinHandle<()>>,
    mountpoint: PathBuf,
    info: StartInfo,
}

/// How long the kernel may take to send INIT after mount(2).
const INIT_TIMEOUT: Duration = Duration::from_secs(10);

impl Server {
    pub fn start(options: StartOptions, events: EventSink) -> Result<Server, String> {
        if options.threads == 0 {
            return Err("--threads must be at least 1".into());
        }
        if options.io_uring == Switch::On {
            return Err("--io-uring on: this build serves FUSE over /dev/fuse only; use --io-uring auto or off".into());
        }
        let (image, mut warnings) = Image::open(&options.image).map_err(|e| e.0)?;
        let fsname = options.image.path.to_string_lossy().into_owned();
        let (session, allow_other) = mount_with_policy(&options, &fsname, image.writable(), &mut warnings)?;
        let size = image.size();
        let direct_io = image.uses_direct_io();
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let settings = ExportSettings { allow_other, ring_wanted: false, uid, gid };
        let export = Arc::new(Export::new(image, settings, events));
        let info = StartInfo {
            size,
            transport: "legacy",
            threads: options.threads,
            ring_queues: 0,
            queue_depth: options.queue_depth,
            allow_other,
            direct_io,
            warnings,
        };
        let mut server = Server {
            export,
            control: Arc::new(Control::new(options.threads).map_err(|e| format!("Failed to create eventfds: {e}"))?),
            threads: Vec::new(),
            mountpoint: options.mountpoint.clone(),
            info,
        };
        if let Err(e) = server.spawn_threads(session).and_then(|_| server.await_init()) {
            server.abandon();
            return Err(e);
        }
        Ok(server)
    }

    fn spawn_threads(&mut self, session: OwnedFd) -> Result<(), String> {
        mount::set_nonblocking(&session).map_err(|e| format!("Failed to configure /dev/fuse: {e}"))?;
        let mut fds = Vec::with_capacity(self.info.threads);
        for _ in 1..self.info.threads {
            fds.push(mount::clone_session(&session).map_err(|e| format!("Failed to clone /dev/fuse: {e}"))?);
        }
        fds.insert(0, session);
        for fd in &fds[1..] {
            mount::set_nonblocking(fd).map_err(|e| format!("Failed to configure /dev/fuse: {e}"))?;
        }
        for (thread, fd) in fds.into_iter().enumerate() {
            let queue = Queue::new((SLOTS_PER_CHANNEL * 2 + 8) as u32)
                .map_err(|e| format!("Failed to create an io_uring: {e}"))?;
            let channel = LegacyChannel::new(0, fd);
            let worker = Worker::new(thread, queue, self.export.clone(), self.control.clone(), vec![channel]);
            let export = self.export.clone();
            let handle = std::thread::Builder::new()
                .name(format!("fuse-export-io{thread}"))
                .spawn(move || {
                    if let Err(panic) = catch_unwind(AssertUnwindSafe(|| worker.run())) {
                        let what = panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default();
                        export.halt(format!("I/O thread {thread} panicked: {what}"));
                    }
                })
                .map_err(|e| format!("Failed to start an I/O thread: {e}"))?;
            self.threads.push(handle);
        }
        Ok(())
    }

    fn await_init(&self) -> Result<(), String> {
        match self.export.init.wait(INIT_TIMEOUT) {
            Some(_) if !self.export.is_halted() => Ok(()),
            _ => Err(self
                .export
                .halt_reason()
                .unwrap_or_else(|| "the kernel did not send INIT after mounting".to_string())),
        }
    }

    /// Undoes a start that failed half-way.
    fn abandon(&mut self) {
        let _ = mount::unmount(&self.mountpoint, true);
        self.control.stop();
        self.join();
    }

    pub fn info(&self) -> &StartInfo {
        &self.info
    }

    pub fn stats(&self) -> Snapshot {
        self.export.counters.snapshot()
    }

    pub fn halt(&self, reason: &str) {
        self.export.halt(reason);
        self.control.wake_all();
    }

    pub fn pause(&self) {
        self.control.pause();
    }

    pub fn resume(&self) {
        self.control.resume();
    }

    /// Unmounts unless the connection is gone already (unmounted from
    /// outside). Lazy: callers that still hold the file open keep working
    /// until they close it.
    pub fn unmount(&self) -> Result<(), String> {
        if self.export.connection_is_lost() {
            return Ok(());
        }
        mount::unmount(&self.mountpoint, true)
    }

    /// Ends the threads after their requests finished; the descriptors close
    /// with them, which ends the connection for anyone still holding it.
    pub fn stop(&mut self) {
        self.control.stop();
        self.join();
    }

    fn join(&mut self) {
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Mounts with allow_other as the switch says: `auto` falls back to a mount
/// without it and says so.
fn mount_with_policy(
    options: &StartOptions,
    fsname: &str,
    writable: bool,
    warnings: &mut Vec<String>,
) -> Result<(OwnedFd, bool), String> {
    let request = |allow_other| MountRequest {
        mountpoint: &options.mountpoint,
        fsname,
        allow_other,
        read_only: !writable,
    };
    match options.allow_other {
        Switch::Off => mount::mount(&request(false)).map(|fd| (fd, false)).map_err(|e| e.to_string()),
        Switch::On => mount::mount(&request(true)).map(|fd| (fd, true)).map_err(|e| e.to_string()),
        Switch::Auto => match mount::mount(&request(true)) {
            Ok(fd) => Ok((fd, true)),
            Err(MountError::AllowOtherRefused(why)) => {
                warnings.push(format!("allow_other is not permitted, mounting without it: {why}"));
                mount::mount(&request(false)).map(|fd| (fd, false)).map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        },
    }
}

//! One export from start to stop. The story, step by step, and the file
//! that does each:
//!
//! 1. **open**: the image backend opens the image (`image::open`, raw in
//!    `image/raw.rs`), before mounting, so the mountpoint may be the image.
//! 2. **mount**: `transport/mount.rs` opens the mountpoint once, checks that
//!    descriptor and mounts onto it (root), or asks fusermount3 (others);
//!    either way we hold the session's /dev/fuse descriptor.
//! 3. **threads**: the export is given I/O threads that were started
//!    before it (`runtime/pool.rs`), which other exports may share.
//!    `server/threads.rs` clones that descriptor once per thread, deals the
//!    kernel's FUSE queues among them, and attaches the export's part of
//!    each (its `transport/thread.rs` owner) to that thread's loop
//!    (`runtime/thread.rs`), on that thread's ring.
//! 4. **INIT**: the kernel's first request arrives on /dev/fuse
//!    (`transport/legacy.rs`); `request/init.rs` negotiates; `start()` waits
//!    for it (`await_init`).
//! 5. **REGISTER**: once INIT's reply is out, every thread hands its queues'
//!    entries to the kernel (`transport/fuse_queue.rs`,
//!    `transport/uring_setup.rs`); `settle_transport` says which transport
//!    serves, and why.
//!    With passthrough wanted, `settle_passthrough` registers the image
//!    with the kernel (`transport/mount.rs` `backing_open`); OPEN then
//!    hands out its backing id (`request/passthrough.rs`) and reads and
//!    writes go from the kernel straight to the image.
//! 6. **serve**: requests arrive in legacy slots or ring entries, go to the
//!    request core (`request/`), whose image I/O runs on the same ring; the
//!    reply leaves by the way the request came.
//! 7. **drain**: `pause()`: requests that move data are held, the rest
//!    answered, in-flight ones finish; TypeScript watches the in-flight
//!    counter (`RequestCore::admission` decides per request).
//! 8. **unmount**: `unmount()` detaches lazily and fails what was held; the
//!    connection ends when the last user closes the file (or on
//!    `abort_connection()`), and the threads report it
//!    (`Event::Disconnected`).
//! 9. **stop**: `stop()` tells the threads to finish; the export leaves
//!    each once every SQE it pushed there has completed, so no memory the
//!    kernel may write into is freed early. How long to wait and when to abort is TypeScript's
//!    decision (`ts/lifecycle/export.ts`).

mod threads;
mod transport_choice;

use crate::faults::Faults;
use crate::image::{self, ImageOptions};
use crate::os_error::describe;
use crate::request::counters::Snapshot;
use crate::request::passthrough::Passthrough;
use crate::request::{RequestCore, Settings};
use crate::runtime::control::Control;
use crate::runtime::pool::{IoThread, Presence};
use crate::status::{Event, EventSink, Status};
use crate::transport::mount::{self, MountError, MountRequest, Mounted};
use crate::transport::uring_setup::{self, RingSetup, HOW_TO_ENABLE};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use threads::ThreadPlan;

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
    pub passthrough: Switch,
    /// The I/O threads that serve the export, shared with other exports.
    pub threads: Vec<Arc<IoThread>>,
    pub queue_depth: u32,
    /// The longest an idle I/O thread busy-polls for its next completion
    /// before it sleeps (zero: never).
    pub poll_max: Duration,
}

/// What the export ended up with, for the `ready` event.
#[derive(Debug, Clone)]
pub struct StartInfo {
    /// "raw" or "qcow2".
    pub format: &'static str,
    /// The image as it may be shown: a path, or an NBD URI without secrets.
    pub image: String,
    /// "file", "nbd" or "qemu".
    pub backend: &'static str,
    /// The version of the program that serves the image (qemu-nbd's).
    pub backend_version: Option<String>,
    /// The virtual size.
    pub size: u64,
    pub transport: &'static str,
    /// Why that transport: the kernel's offer, the switch, a fallback.
    pub transport_reason: String,
    pub threads: usize,
    pub ring_queues: usize,
    pub queue_depth: u32,
    pub allow_other: bool,
    pub direct_io: bool,
    /// The kernel reads and writes the image itself (FUSE passthrough).
    pub passthrough: bool,
    /// Why passthrough is used or not.
    pub passthrough_reason: String,
    /// Things the user should know (fallbacks taken).
    pub warnings: Vec<String>,
}

pub struct Server {
    core: Arc<RequestCore>,
    control: Arc<Control>,
    ring_setup: Option<Arc<RingSetup>>,
    ring_required: bool,
    /// Passthrough is to be tried once INIT is through.
    passthrough_wanted: bool,
    passthrough_required: bool,
    /// On how many I/O threads the export still has a part.
    presence: Arc<Presence>,
    /// The image was closed by the first stop.
    stopped: bool,
    mountpoint: PathBuf,
    /// The connection's number under /sys/fs/fuse/connections.
    connection: Option<u32>,
    info: StartInfo,
}

/// How long the kernel may take to send INIT after mounting.
const INIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a start given up waits for the export to leave its threads.
const ABANDON_WAIT: Duration = Duration::from_secs(10);
/// How long `start()` waits for the ring queues to register.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(5);

impl Server {
    pub fn start(options: StartOptions, events: EventSink) -> Result<Server, String> {
        if options.threads.is_empty() {
            return Err("an export needs at least one I/O thread".into());
        }
        let (ring_wanted, transport_reason) = transport_choice::ring_decision(options.io_uring)?;
        let (image, mut warnings) = image::open(&options.image).map_err(|e| e.0)?;
        let passthrough_fd = transport_choice::passthrough_decision(options.passthrough, &*image)?;
        let faults = Faults::from_env();
        let fsname = image.shown_name();
        let (mounted, allow_other) = mount_with_policy(&options, &fsname, image.writable(), &faults, &mut warnings)?;
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let info = StartInfo {
            format: image.format(),
            image: image.shown_name(),
            backend: image.backend_name(),
            backend_version: image.backend_version(),
            size: image.size(),
            transport: "legacy",
            transport_reason,
            threads: options.threads.len(),
            ring_queues: 0,
            queue_depth: options.queue_depth,
            allow_other,
            direct_io: image.uses_direct_io(),
            passthrough: false,
            passthrough_reason: passthrough_fd.clone().err().unwrap_or_default(),
            warnings,
        };
        let passthrough = match passthrough_fd {
            Ok(image_fd) => {
                // A descriptor of our own on the connection, for the
                // registration that follows INIT.
                let session = mount::clone_session(&mounted.session)
                    .map_err(|e| format!("Failed to clone /dev/fuse: {}", describe(&e)))?;
                Some(Passthrough::new(Box::new(move || {
                    mount::backing_open(&session, image_fd).map_err(|e| {
                        format!("the kernel refused to register the image for passthrough: {}", describe(&e))
                    })
                })))
            }
            Err(_) => None,
        };
        let control = Arc::new(Control::new(options.threads.iter().map(|thread| thread.waker()).collect()));
        let status = Arc::new(Status::new(wake_on_halt(events, control.clone())));
        let passthrough_wanted = passthrough.is_some();
        let settings = Settings {
            allow_other,
            ring_wanted,
            passthrough,
            uid,
            gid,
            faults: faults.clone(),
            threads: options.threads.len(),
        };
        let core = Arc::new(RequestCore::new(image, settings, status));
        let queues = if ring_wanted { uring_setup::possible_cpus() } else { 0 };
        let ring_setup = ring_wanted.then(|| {
            Arc::new(RingSetup::new(options.io_uring == Switch::On, options.threads.len().min(queues), control.clone()))
        });
        let mut server = Server {
            core,
            control,
            ring_setup,
            ring_required: options.io_uring == Switch::On,
            passthrough_wanted,
            passthrough_required: options.passthrough == Switch::On,
            presence: Arc::default(),
            stopped: false,
            mountpoint: options.mountpoint.clone(),
            connection: mounted.connection,
            info,
        };
        let plan = ThreadPlan {
            threads: &options.threads,
            queue_depth: options.queue_depth as usize,
            poll_max: options.poll_max,
            queues,
            core: &server.core,
            control: &server.control,
            ring_setup: server.ring_setup.as_ref(),
            faults: &faults,
        };
        let started = threads::attach(plan, mounted.session, &server.presence)
            .and_then(|_| server.await_init())
            .and_then(|_| server.settle_transport())
            .and_then(|_| server.settle_passthrough());
        if let Err(e) = started {
            server.abandon();
            return Err(e);
        }
        Ok(server)
    }

    fn await_init(&self) -> Result<(), String> {
        let status = &self.core.status;
        match self.core.init.wait(INIT_TIMEOUT) {
            Some(_) if !status.is_halted() => Ok(()),
            _ => Err(status.halt_reason().unwrap_or_else(|| "the kernel did not send INIT after mounting".to_string())),
        }
    }

    /// Decides which transport serves, once INIT and REGISTER are through.
    fn settle_transport(&mut self) -> Result<(), String> {
        if self.connection.is_none() {
            // Mounted by fusermount3: our own mount's device number names
            // the connection (a GETATTR our threads answer).
            self.connection = std::fs::metadata(&self.mountpoint).ok().map(|m| libc::minor(m.dev()));
        }
        let Some(setup) = &self.ring_setup else { return Ok(()) };
        let negotiated = self.core.negotiated().is_some_and(|n| n.over_io_uring());
        if !negotiated {
            if self.ring_required {
                return Err(format!("--io-uring on, but the kernel did not offer FUSE-over-io_uring: {HOW_TO_ENABLE}"));
            }
            self.info.transport_reason = "the kernel did not offer FUSE-over-io_uring in INIT".into();
            return Ok(());
        }
        match setup.outcome.wait(REGISTER_TIMEOUT) {
            Some(Ok(())) => {
                self.info.transport = "io_uring";
                self.info.ring_queues = uring_setup::possible_cpus();
                Ok(())
            }
            Some(Err(reason)) if !self.ring_required => {
                self.info.transport_reason = format!("FUSE-over-io_uring failed ({reason}); serving over /dev/fuse");
                self.info.warnings.push(self.info.transport_reason.clone());
                Ok(())
            }
            Some(Err(reason)) => Err(format!("FUSE-over-io_uring failed: {reason}")),
            None => Err("the ring queues did not register in time".into()),
        }
    }

    /// Registers the image for passthrough once the kernel processed INIT's
    /// reply, so that the ready event says what serves the data.
    fn settle_passthrough(&mut self) -> Result<(), String> {
        if !self.passthrough_wanted {
            return Ok(());
        }
        if !self.core.negotiated().is_some_and(|n| n.passthrough()) {
            self.info.passthrough_reason =
                format!("the kernel did not offer FUSE passthrough in INIT ({})", transport_choice::PASSTHROUGH_KERNEL);
            if self.passthrough_required {
                return Err(format!("--passthrough on, but {}", self.info.passthrough_reason));
            }
            return Ok(());
        }
        if self.core.init_replied.wait(INIT_TIMEOUT).is_none() {
            return Err("INIT's reply was not written in time".into());
        }
        match self.core.passthrough_backing() {
            Some(Ok(_)) => {
                self.info.passthrough = true;
                self.info.passthrough_reason = "the kernel reads and writes the image itself".into();
                Ok(())
            }
            Some(Err(why)) if !self.passthrough_required => {
                self.info.passthrough_reason = why.clone();
                self.info.warnings.push(format!("FUSE passthrough is off: {why}"));
                Ok(())
            }
            Some(Err(why)) => Err(format!("--passthrough on, but {why}")),
            None => Ok(()),
        }
    }

    /// Undoes a start that failed half-way: nobody else holds the file yet,
    /// so the lazy unmount ends the connection, and the export leaves its
    /// threads with it.
    fn abandon(&mut self) {
        let _ = mount::unmount(&self.mountpoint, true);
        self.stop(ABANDON_WAIT);
    }

    pub fn info(&self) -> &StartInfo {
        &self.info
    }

    pub fn stats(&self) -> Snapshot {
        self.core.counters.snapshot()
    }

    /// Changes the image's virtual size (QMP's `block_resize`), as a
    /// truncate through the mount would, whatever `--growable` says: the
    /// file shows it once the kernel's cached attributes expire (1 s).
    pub fn resize(&self, size: u64) -> Result<(), String> {
        let image = self.core.image();
        if !image.writable() {
            return Err(format!("{} is exported read-only: it cannot be resized", image.shown_name()));
        }
        image
            .resize(size)
            .map_err(|e| format!("Failed to resize {}: {}", image.shown_name(), crate::os_error::describe(&e)))
    }

    pub fn halt(&self, reason: &str) {
        self.core.status.halt(reason);
    }

    /// Requests that move data are held from now on; in-flight ones finish.
    pub fn pause(&self) {
        self.control.pause();
    }

    /// Unmounts unless the mount is gone already (unmounted from outside).
    /// Lazy: callers that still hold the file open can stat, flush and
    /// close it; what moves data fails from now on, so that nobody keeps
    /// the connection alive waiting for an answer.
    pub fn unmount(&self) -> Result<(), String> {
        self.control.detach();
        // Disconnected already: unmounted from outside (nothing left to
        // do), or aborted, which leaves the dead mount in place.
        let dead_mount_left = || self.connection.is_some_and(|c| mount::mounted_here(&self.mountpoint, c));
        if self.core.status.is_disconnected() && !dead_mount_left() {
            return Ok(());
        }
        mount::unmount(&self.mountpoint, true)
    }

    /// Ends the connection from the kernel's side: parked ring entries and
    /// waiting callers get ENOTCONN.
    pub fn abort_connection(&self) -> Result<(), String> {
        let connection = self.connection.ok_or("the connection's number is unknown, so it cannot be aborted")?;
        mount::abort_connection(connection)
    }

    /// Tells the export's parts on its I/O threads to finish what they hold
    /// and waits at most `wait` for them to leave. Returns on how many
    /// threads a part is still running: those keep their memory (the kernel
    /// may still write into it) and leave on their own later. How long to
    /// wait, and whether to abort first, is the caller's policy. The first
    /// stop then closes the image.
    pub fn stop(&mut self, wait: Duration) -> usize {
        self.control.stop();
        let deadline = Instant::now() + wait;
        while self.presence.threads() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if !std::mem::replace(&mut self.stopped, true) {
            self.close_image();
        }
        self.presence.threads()
    }

    /// The image's final write-back (a qcow2's metadata caches) now, not
    /// when its last reference goes: threads left running keep it alive,
    /// and the process may exit before they end. A failure is a warning.
    fn close_image(&self) {
        let image = self.core.image();
        if let Err(e) = image.close() {
            self.core.status.warn(
                "final-flush-failed",
                format!(
                    "The final write-back of {} failed: {}; what was written since the last fsync may be lost",
                    image.shown_name(),
                    describe(&e)
                ),
            );
        }
    }
}

impl Drop for Server {
    /// Parts that are still serving are left running, never waited for
    /// here: that could wait forever on a connection someone still holds.
    fn drop(&mut self) {
        self.stop(Duration::ZERO);
    }
}

/// A halt must reach threads asleep with held requests, which then answer
/// them (EIO) at once; whichever thread halts.
fn wake_on_halt(events: EventSink, control: Arc<Control>) -> EventSink {
    Box::new(move |event| {
        let halted = matches!(event, Event::Halted(_));
        events(event);
        if halted {
            control.wake_all();
        }
    })
}

/// Mounts with allow_other as the switch says: `auto` falls back to a mount
/// without it and says so.
fn mount_with_policy(
    options: &StartOptions,
    fsname: &str,
    writable: bool,
    faults: &Faults,
    warnings: &mut Vec<String>,
) -> Result<(Mounted, bool), String> {
    let request =
        |allow_other| MountRequest { mountpoint: &options.mountpoint, fsname, allow_other, read_only: !writable };
    let mount = |allow_other| mount::mount(&request(allow_other), faults).map(|m| (m, allow_other));
    match options.allow_other {
        Switch::Off => mount(false).map_err(|e| e.to_string()),
        Switch::On => mount(true).map_err(|e| e.to_string()),
        Switch::Auto => match mount(true) {
            Err(MountError::AllowOtherRefused(why)) => {
                warnings.push(format!("allow_other is not permitted, mounting without it: {why}"));
                mount(false).map_err(|e| e.to_string())
            }
            other => other.map_err(|e| e.to_string()),
        },
    }
}

//! Starting and stopping one export: open the image, mount, start the I/O
//! threads, wait for INIT; later pause, unmount and join.

use crate::export::counters::Snapshot;
use crate::export::counters::Counters;
use crate::export::{EventSink, Export, ExportSettings};
use crate::faults::Faults;
use crate::image::{Image, ImageOptions};
use crate::protocol::abi::{MAX_PAGES, MAX_WRITE};
use crate::runtime::control::Control;
use crate::runtime::queue::Queue;
use crate::runtime::worker::{ring_channel, Worker};
use crate::transport::legacy::{LegacyChannel, SLOTS_PER_CHANNEL};
use crate::transport::mount::{self, MountError, MountRequest};
use crate::transport::uring::{self, RingQueue, RingSetup};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
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
    /// Why that transport: the kernel's offer, the switch, a fallback.
    pub transport_reason: String,
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
    ring_setup: Option<Arc<RingSetup>>,
    ring_required: bool,
    threads: Vec<JoinHandle<()>>,
    mountpoint: PathBuf,
    /// The connection's number under /sys/fs/fuse/connections.
    connection: Option<u32>,
    faults: Faults,
    info: StartInfo,
}

/// How long `start()` waits for the ring queues to register.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether to ask for FUSE-over-io_uring, and why.
fn ring_decision(switch: Switch) -> Result<(bool, String), String> {
    let kernel = uring::kernel_switch();
    match (switch, kernel) {
        (Switch::Off, _) => Ok((false, "--io-uring off".into())),
        (_, Some(true)) => Ok((true, "the kernel offers FUSE-over-io_uring".into())),
        (Switch::On, Some(false)) => Err(format!(
            "--io-uring on, but FUSE-over-io_uring is switched off in this kernel: {}",
            uring::HOW_TO_ENABLE
        )),
        (Switch::On, None) => Err(format!(
            "--io-uring on, but this kernel has no FUSE-over-io_uring: {}",
            uring::HOW_TO_ENABLE
        )),
        (Switch::Auto, Some(false)) => {
            Ok((false, format!("FUSE-over-io_uring is switched off; {}", uring::HOW_TO_ENABLE)))
        }
        (Switch::Auto, None) => Ok((false, "this kernel has no FUSE-over-io_uring (Linux >= 6.14 needed)".into())),
    }
}

/// How long the kernel may take to send INIT after mount(2).
const INIT_TIMEOUT: Duration = Duration::from_secs(10);

impl Server {
    pub fn start(options: StartOptions, events: EventSink) -> Result<Server, String> {
        if options.threads == 0 {
            return Err("--threads must be at least 1".into());
        }
        let (ring_wanted, transport_reason) = ring_decision(options.io_uring)?;
        let (image, mut warnings) = Image::open(&options.image).map_err(|e| e.0)?;
        let fsname = options.image.path.to_string_lossy().into_owned();
        let (session, allow_other) = mount_with_policy(&options, &fsname, image.writable(), &mut warnings)?;
        let size = image.size();
        let direct_io = image.uses_direct_io();
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let faults = Faults::from_env();
        let settings = ExportSettings { allow_other, ring_wanted, uid, gid, faults, threads: options.threads };
        let export = Arc::new(Export::new(image, settings, events));
        let info = StartInfo {
            size,
            transport: "legacy",
            transport_reason,
            threads: options.threads,
            ring_queues: 0,
            queue_depth: options.queue_depth,
            allow_other,
            direct_io,
            warnings,
        };
        let ring_setup = ring_wanted.then(|| {
            let queues = uring::possible_cpus();
            Arc::new(RingSetup::new(options.io_uring == Switch::On, options.threads.min(queues)))
        });
        let mut server = Server {
            export,
            control: Arc::new(Control::new(options.threads).map_err(|e| format!("Failed to create eventfds: {e}"))?),
            ring_setup,
            ring_required: options.io_uring == Switch::On,
            threads: Vec::new(),
            mountpoint: options.mountpoint.clone(),
            connection: None,
            faults,
            info,
        };
        let started = server
            .spawn_threads(session)
            .and_then(|_| server.await_init())
            .and_then(|_| server.settle_transport());
        if let Err(e) = started {
            server.abandon();
            return Err(e);
        }
        Ok(server)
    }

    fn spawn_threads(&mut self, session: OwnedFd) -> Result<(), String> {
        let threads = self.info.threads;
        let mut fds = vec![session];
        for _ in 1..threads {
            fds.push(mount::clone_session(&fds[0]).map_err(|e| format!("Failed to clone /dev/fuse: {e}"))?);
        }
        for fd in &fds {
            mount::set_nonblocking(fd).map_err(|e| format!("Failed to configure /dev/fuse: {e}"))?;
        }
        // Ring queues (one per possible CPU) are dealt round-robin.
        let queues = if self.ring_setup.is_some() { uring::possible_cpus() } else { 0 };
        let depth = self.info.queue_depth as usize;
        let payload = self.faults.ring_payload_bytes.unwrap_or_else(|| uring::payload_size(MAX_WRITE, MAX_PAGES));
        for (thread, fd) in fds.into_iter().enumerate() {
            let rings: Vec<RingQueue> = (thread..queues)
                .step_by(threads)
                .enumerate()
                .map(|(n, qid)| RingQueue::new(qid as u16, ring_channel(n), fd.as_raw_fd(), depth, payload))
                .collect();
            let entries = SLOTS_PER_CHANNEL * 2 + rings.len() * depth * 2 + 8;
            let queue = Queue::new(entries.next_power_of_two() as u32)
                .map_err(|e| format!("Failed to create an io_uring: {e}"))?;
            let legacy = LegacyChannel::new(0, fd);
            let ring_setup = if rings.is_empty() { None } else { self.ring_setup.clone() };
            let worker =
                Worker::new(thread, queue, self.export.clone(), self.control.clone(), legacy, rings, ring_setup);
            let export = self.export.clone();
            let handle = std::thread::Builder::new()
                .name(format!("fuse-export-io{thread}"))
                .spawn(move || {
                    Counters::bind_current_thread(thread);
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

    /// Decides which transport serves, once INIT and REGISTER are through.
    fn settle_transport(&mut self) -> Result<(), String> {
        self.connection = std::fs::metadata(&self.mountpoint).ok().map(|m| libc::minor(m.dev()));
        let Some(setup) = &self.ring_setup else { return Ok(()) };
        let negotiated = self.export.negotiated().is_some_and(|n| n.over_io_uring());
        if !negotiated {
            if self.ring_required {
                return Err(format!("--io-uring on, but the kernel did not offer FUSE-over-io_uring: {}", uring::HOW_TO_ENABLE));
            }
            self.info.transport_reason = "the kernel did not offer FUSE-over-io_uring in INIT".into();
            return Ok(());
        }
        match setup.outcome.wait(REGISTER_TIMEOUT) {
            Some(Ok(())) => {
                self.info.transport = "io_uring";
                self.info.ring_queues = uring::possible_cpus();
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

    /// Tells the I/O threads to finish what they hold and waits at most
    /// `wait` for them. Returns how many are still running: those keep their
    /// memory (the kernel may still write into it) and are left to end on
    /// their own. How long to wait, and whether to abort first, is the
    /// caller's policy.
    pub fn stop(&mut self, wait: Duration) -> usize {
        self.control.stop();
        let deadline = std::time::Instant::now() + wait;
        while self.threads.iter().any(|t| !t.is_finished()) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let (finished, running): (Vec<_>, Vec<_>) = self.threads.drain(..).partition(|t| t.is_finished());
        for handle in finished {
            let _ = handle.join();
        }
        running.len()
    }

    /// Ends the connection from the kernel's side: parked ring entries and
    /// waiting callers get ENOTCONN.
    pub fn abort_connection(&self) -> Result<(), String> {
        let connection = self.connection.ok_or("the connection's number is unknown, so it cannot be aborted")?;
        let control = format!("/sys/fs/fuse/connections/{connection}/abort");
        std::fs::write(&control, "1").map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::NotFound {
                " (is the fusectl file system mounted? mount -t fusectl none /sys/fs/fuse/connections)"
            } else {
                ""
            };
            format!("Failed to abort the FUSE connection through {control}: {}{hint}", crate::image::describe(&e))
        })
    }

    fn join(&mut self) {
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
    }
}

impl Drop for Server {
    /// Threads that are still serving are left running, never joined here:
    /// joining could wait forever on a connection someone still holds.
    fn drop(&mut self) {
        self.stop(Duration::ZERO);
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

//! The napi-rs binding: JavaScript starts, steers and stops an export and
//! reads its counters; requests never cross this line.

use fuse_export_core::faults::Faults;
use fuse_export_core::image::probe::QEMU_FORMATS;
use fuse_export_core::image::{CacheMode, FormatChoice, ImageOptions, Overlay};
use fuse_export_core::request::counters::{OpClass, LATENCY_BOUNDS};
use fuse_export_core::runtime::pool::{IoThread, IoThreads};
use fuse_export_core::server::{Server, StartOptions, Switch};
use fuse_export_core::status::Event;
use fuse_export_core::transport::mount;
use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;
use std::sync::{Arc, Mutex};

pub mod notify;

#[napi(object)]
pub struct NativeOptions {
    pub image: String,
    pub mountpoint: String,
    pub writable: bool,
    pub growable: bool,
    /// "on" | "off" | "auto"
    pub allow_other: String,
    /// "on" | "off" | "auto"
    pub io_uring: String,
    /// "on" | "off" | "auto"
    pub passthrough: String,
    /// I/O threads of the export's own, when it is given none to share.
    pub threads: u32,
    pub queue_depth: u32,
    /// Microseconds an idle I/O thread may busy-poll before it sleeps.
    pub poll_max_us: u32,
    /// "direct" | "writeback"
    pub cache: String,
    /// "auto", "raw", "qcow2" or another of QEMU's formats
    pub format: String,
    /// Seconds requests wait for a lost NBD server to come back (0: halt).
    pub reconnect_delay: Option<f64>,
    /// The file holding an encrypted image's key.
    pub key_file: Option<String>,
    /// The file holding the password of the image's server.
    pub password_file: Option<String>,
    /// The CA an HTTPS server's certificate is checked against.
    pub ca_file: Option<String>,
    /// Writes go to a temporary overlay, thrown away at the end.
    pub snapshot: Option<bool>,
    /// Writes go to this qcow2 overlay, made when missing.
    pub overlay: Option<String>,
}

#[napi(object)]
pub struct NativeStartInfo {
    /// "raw" | "qcow2"
    pub format: String,
    /// The image as it may be shown (an NBD URI without secrets).
    pub image: String,
    /// "file" | "nbd" | "qemu"
    pub backend: String,
    /// qemu-nbd's version, when QEMU serves the image.
    pub qemu_version: Option<String>,
    pub size: f64,
    pub transport: String,
    pub transport_reason: String,
    pub threads: u32,
    pub ring_queues: u32,
    pub queue_depth: u32,
    pub allow_other: bool,
    pub direct_io: bool,
    pub passthrough: bool,
    pub passthrough_reason: String,
    pub warnings: Vec<String>,
}

#[napi(object)]
pub struct NativeStats {
    pub legacy_requests: f64,
    pub ring_requests: f64,
    pub bytes_read: f64,
    pub bytes_written: f64,
    pub errors: f64,
    pub in_flight: f64,
}

/// How long one class of image operations took: per bucket of
/// `latencyBounds()` (not cumulative; the last counts what exceeded every
/// bound), and their sum.
#[napi(object)]
pub struct NativeLatency {
    /// "read" | "write" | "other"
    pub op: String,
    pub counts: Vec<f64>,
    pub sum_seconds: f64,
}

/// The upper bounds of the latency buckets, in seconds.
#[napi]
pub fn latency_bounds() -> Vec<f64> {
    LATENCY_BOUNDS.iter().map(|bound| bound.as_secs_f64()).collect()
}

/// `kind` is "disconnected" (the kernel connection ended), "halted" (with `reason`) or "warning" (with
/// `reason` and `name`, which names the warning for scripts).
#[napi(object)]
pub struct NativeEvent {
    pub kind: String,
    pub reason: Option<String>,
    pub name: Option<String>,
}

type EventCallback = ThreadsafeFunction<NativeEvent, (), NativeEvent, Status, false>;

fn switch(name: &str, value: &str) -> Result<Switch> {
    match value {
        "on" => Ok(Switch::On),
        "off" => Ok(Switch::Off),
        "auto" => Ok(Switch::Auto),
        other => Err(Error::from_reason(format!("{name} must be on, off or auto, not {other:?}"))),
    }
}

fn start_options(options: &NativeOptions, threads: Vec<Arc<IoThread>>) -> Result<StartOptions> {
    let cache = match options.cache.as_str() {
        "direct" => CacheMode::Direct,
        "writeback" => CacheMode::Writeback,
        other => return Err(Error::from_reason(format!("cache must be direct or writeback, not {other:?}"))),
    };
    let format = FormatChoice::parse(&options.format).ok_or_else(|| {
        Error::from_reason(format!(
            "format must be auto or one of QEMU's formats ({}), not {:?}",
            QEMU_FORMATS.join(", "),
            options.format
        ))
    })?;
    let overlay = match (&options.overlay, options.snapshot.unwrap_or(false)) {
        (Some(_), true) => return Err(Error::from_reason("--snapshot and --overlay exclude each other")),
        (Some(file), false) => Overlay::File(file.into()),
        (None, true) => Overlay::Temporary,
        (None, false) => Overlay::None,
    };
    Ok(StartOptions {
        image: ImageOptions {
            path: options.image.clone().into(),
            writable: options.writable,
            growable: options.growable,
            cache,
            format,
            reconnect_delay: std::time::Duration::from_secs_f64(options.reconnect_delay.unwrap_or(0.0).max(0.0)),
            key_file: options.key_file.as_ref().map(Into::into),
            password_file: options.password_file.as_ref().map(Into::into),
            ca_file: options.ca_file.as_ref().map(Into::into),
            overlay,
        },
        mountpoint: options.mountpoint.clone().into(),
        allow_other: switch("allowOther", &options.allow_other)?,
        io_uring: switch("ioUring", &options.io_uring)?,
        passthrough: switch("passthrough", &options.passthrough)?,
        threads,
        queue_depth: options.queue_depth,
        poll_max: std::time::Duration::from_micros(options.poll_max_us.into()),
    })
}

fn start_io_threads(count: u32, name: &str) -> Result<IoThreads> {
    IoThreads::start(count as usize, name, Faults::from_env().enter_failures()).map_err(Error::from_reason)
}

/// A set of I/O threads that exports share (`startExport`'s `ioThreads`):
/// the storage daemon's default set, or one iothread object. Its threads
/// end once it is closed (or collected) and their exports have left them.
#[napi]
pub struct NativeIoThreads {
    threads: Mutex<Option<IoThreads>>,
}

/// Starts `count` I/O threads named `name` and their number.
#[napi(js_name = "startIoThreads")]
pub fn start_shared_io_threads(count: u32, name: String) -> Result<NativeIoThreads> {
    Ok(NativeIoThreads { threads: Mutex::new(Some(start_io_threads(count, &name)?)) })
}

#[napi]
impl NativeIoThreads {
    /// No export may attach any more; the threads end once theirs leave.
    #[napi]
    pub fn close(&self) {
        self.threads.lock().unwrap().take();
    }
}

impl NativeIoThreads {
    fn threads(&self) -> Result<Vec<Arc<IoThread>>> {
        let threads = self.threads.lock().unwrap();
        let threads = threads.as_ref().ok_or_else(|| Error::from_reason("these I/O threads were closed"))?;
        Ok(threads.threads().to_vec())
    }
}

/// A started export, and the threads of its own when it shares none.
pub struct Running {
    server: Server,
    /// Dropped after the server: closing threads lets them end once the
    /// export has left them.
    _own_threads: Option<IoThreads>,
}

pub struct StartTask {
    options: Option<StartOptions>,
    /// Threads to start for the export alone (none given to share).
    own_threads: u32,
    events: Option<Arc<EventCallback>>,
}

impl Task for StartTask {
    type Output = Running;
    type JsValue = NativeExport;

    fn compute(&mut self) -> Result<Running> {
        let mut options = self.options.take().ok_or_else(|| Error::from_reason("start ran twice"))?;
        let own_threads = match self.own_threads {
            0 => None,
            count => Some(start_io_threads(count, "fuse-export-io")?),
        };
        if let Some(own) = &own_threads {
            options.threads = own.threads().to_vec();
        }
        let events = self.events.take().ok_or_else(|| Error::from_reason("start ran twice"))?;
        let sink = Box::new(move |event: Event| {
            let event = match event {
                Event::Disconnected => NativeEvent { kind: "disconnected".into(), reason: None, name: None },
                Event::Halted(reason) => NativeEvent { kind: "halted".into(), reason: Some(reason), name: None },
                Event::Warning { kind, message } => {
                    NativeEvent { kind: "warning".into(), reason: Some(message), name: Some(kind.into()) }
                }
            };
            events.call(event, ThreadsafeFunctionCallMode::NonBlocking);
        });
        let server = Server::start(options, sink).map_err(Error::from_reason)?;
        Ok(Running { server, _own_threads: own_threads })
    }

    fn resolve(&mut self, _env: Env, running: Running) -> Result<NativeExport> {
        Ok(NativeExport { running: Arc::new(Mutex::new(Some(running))) })
    }
}

/// Mounts `options.mountpoint` and serves it; resolves once the kernel's
/// INIT was answered. `onEvent` hears "disconnected", "halted" and "warning".
/// The export is served by the threads of `ioThreads`, shared with other
/// exports; without them, by `options.threads` threads of its own.
#[napi(ts_return_type = "Promise<NativeExport>")]
pub fn start_export(
    options: NativeOptions,
    #[napi(ts_arg_type = "(event: NativeEvent) => void")] on_event: EventCallback,
    io_threads: Option<Vec<ClassInstance<NativeIoThreads>>>,
) -> Result<AsyncTask<StartTask>> {
    let mut shared = Vec::new();
    for set in io_threads.iter().flatten() {
        shared.extend(set.threads()?);
    }
    if options.threads == 0 && shared.is_empty() {
        return Err(Error::from_reason("--threads must be at least 1"));
    }
    let own_threads = if shared.is_empty() { options.threads } else { 0 };
    let options = start_options(&options, shared)?;
    Ok(AsyncTask::new(StartTask { options: Some(options), own_threads, events: Some(Arc::new(on_event)) }))
}

/// Lazily unmounts whatever is mounted on `path` (a dead export).
#[napi]
pub fn detach_mount(path: String) -> Result<()> {
    mount::unmount(std::path::Path::new(&path), true).map_err(Error::from_reason)
}

#[napi]
pub struct NativeExport {
    running: Arc<Mutex<Option<Running>>>,
}

pub struct StopTask {
    running: Arc<Mutex<Option<Running>>>,
    wait: std::time::Duration,
}

impl Task for StopTask {
    type Output = u32;
    type JsValue = u32;

    fn compute(&mut self) -> Result<u32> {
        let running = self.running.lock().unwrap().take();
        Ok(running.map_or(0, |mut running| running.server.stop(self.wait) as u32))
    }

    fn resolve(&mut self, _env: Env, left: u32) -> Result<u32> {
        Ok(left)
    }
}

impl NativeExport {
    fn with<T>(&self, f: impl FnOnce(&Server) -> T) -> Result<T> {
        let guard = self.running.lock().unwrap();
        let running = guard.as_ref().ok_or_else(|| Error::from_reason("the export was stopped"))?;
        Ok(f(&running.server))
    }
}

#[napi]
impl NativeExport {
    /// Changes the image's virtual size (QMP's `block_resize`).
    #[napi]
    pub fn resize(&self, size: f64) -> Result<()> {
        if !(size.is_finite() && size >= 0.0 && size.fract() == 0.0) {
            return Err(Error::from_reason(format!("a size is a whole number of bytes, not {size}")));
        }
        self.with(|server| server.resize(size as u64))?.map_err(Error::from_reason)
    }

    #[napi]
    pub fn info(&self) -> Result<NativeStartInfo> {
        self.with(|server| {
            let info = server.info();
            NativeStartInfo {
                format: info.format.into(),
                image: info.image.clone(),
                backend: info.backend.to_string(),
                qemu_version: info.backend_version.clone(),
                size: info.size as f64,
                transport: info.transport.to_string(),
                transport_reason: info.transport_reason.clone(),
                threads: info.threads as u32,
                ring_queues: info.ring_queues as u32,
                queue_depth: info.queue_depth,
                allow_other: info.allow_other,
                direct_io: info.direct_io,
                passthrough: info.passthrough,
                passthrough_reason: info.passthrough_reason.clone(),
                warnings: info.warnings.clone(),
            }
        })
    }

    #[napi]
    pub fn stats(&self) -> Result<NativeStats> {
        self.with(|server| {
            let s = server.stats();
            NativeStats {
                legacy_requests: s.legacy_requests as f64,
                ring_requests: s.ring_requests as f64,
                bytes_read: s.bytes_read as f64,
                bytes_written: s.bytes_written as f64,
                errors: s.errors as f64,
                in_flight: s.in_flight as f64,
            }
        })
    }

    /// The image operations' latencies so far, by class.
    #[napi]
    pub fn latencies(&self) -> Result<Vec<NativeLatency>> {
        self.with(|server| {
            let snapshot = server.stats();
            OpClass::ALL
                .iter()
                .map(|class| {
                    let latencies = &snapshot.latencies[*class as usize];
                    NativeLatency {
                        op: class.name().into(),
                        counts: latencies.buckets.iter().map(|&n| n as f64).collect(),
                        sum_seconds: latencies.sum_ns as f64 / 1e9,
                    }
                })
                .collect()
        })
    }

    /// Stop fetching new requests (drain); in-flight ones finish.
    #[napi]
    pub fn pause(&self) -> Result<()> {
        self.with(Server::pause)
    }

    #[napi]
    pub fn halt(&self, reason: String) -> Result<()> {
        self.with(|server| server.halt(&reason))
    }

    /// Ends the connection from the kernel's side (waiting callers get
    /// ENOTCONN). Throws when the kernel refuses.
    #[napi]
    pub fn abort(&self) -> Result<()> {
        self.with(Server::abort_connection)?.map_err(Error::from_reason)
    }

    #[napi]
    pub fn unmount(&self) -> Result<()> {
        self.with(Server::unmount)?.map_err(Error::from_reason)
    }

    /// Tells the I/O threads to finish, waits at most `waitMs` for them and
    /// releases what they left; resolves with how many are still running
    /// (left to end on their own, their memory kept). Safe to call twice.
    #[napi(ts_return_type = "Promise<number>")]
    pub fn stop(&self, wait_ms: u32) -> AsyncTask<StopTask> {
        let wait = std::time::Duration::from_millis(u64::from(wait_ms));
        AsyncTask::new(StopTask { running: self.running.clone(), wait })
    }
}

//! Image backends: where the exported bytes live. The request core asks a
//! backend for an `ImageOp` on a range and gets the result back in one of
//! three ways, whatever the backend:
//!
//! - at once (`Poll::Ready`): a copy from memory, a cached answer;
//! - as SQEs on the I/O thread's own ring, reading into or writing from the
//!   request's own buffer (no copy), completed through the token;
//! - as work done elsewhere (a metadata lookup, a network round trip):
//!   `context.ring.hand_off(context.token)` gives a `Remote` that the
//!   worker finishes with `runtime::remote::Poster::post`, which puts the
//!   completion on the I/O thread's ring with the same token.
//!
//! Until its completion arrives the request's buffer stays put and belongs
//! to the backend. A new backend (qcow2, NBD) is a new module here.
//!
//! A backend that drives descriptors of its own on the I/O threads' rings
//! (NBD's sockets) also gets a `ThreadImage` per I/O thread
//! (`ImageBackend::attach_thread`): the thread's owner routes the
//! completions of one token channel to it and lets it arm its SQEs before
//! every wait.

mod lock;
mod nbd;
pub mod probe;
mod qcow2;
mod qemu;
mod raw;
mod route;

use crate::runtime::control::Phase;
use crate::runtime::ring::Ring;
use crate::runtime::token::Token;
use std::io;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

pub use probe::FormatChoice;
use route::Route;

/// NBD block status turned into SEEK answers, for the fuzz targets.
#[cfg(feature = "fuzzing")]
pub use nbd::extents as nbd_extents;

/// How the image is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    #[default]
    /// O_DIRECT for aligned requests: no double caching under a guest or a
    /// filesystem that caches already.
    Direct,
    /// Through the host page cache.
    Writeback,
}

#[derive(Debug, Clone, Default)]
pub struct ImageOptions {
    pub path: PathBuf,
    pub writable: bool,
    pub growable: bool,
    pub cache: CacheMode,
    /// `--format`: how the image's bytes are laid out.
    pub format: FormatChoice,
    /// Remote images: how long requests wait for a lost server to come
    /// back before they fail (0: the export halts when it goes).
    pub reconnect_delay: Duration,
    /// The key of an encrypted image (LUKS, encrypted qcow2).
    pub key_file: Option<PathBuf>,
    /// The password of a place that asks for one (HTTP authentication).
    pub password_file: Option<PathBuf>,
    /// The CA that signed an HTTPS server's certificate.
    pub ca_file: Option<PathBuf>,
    /// Where writes go instead of the image.
    pub overlay: Overlay,
}

/// `--snapshot` and `--overlay FILE`: writes land in a qcow2 over the
/// image, which is opened read-only and never changes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Overlay {
    #[default]
    None,
    /// Thrown away when the export ends, or the process does.
    Temporary,
    /// Created over the image when missing, reused when present.
    File(PathBuf),
}

impl Overlay {
    /// The user's overlay file, if any.
    pub fn file(&self) -> Option<&std::path::Path> {
        match self {
            Overlay::File(path) => Some(path),
            Overlay::None | Overlay::Temporary => None,
        }
    }
}

/// What went wrong while opening: the message names the path and the fix.
#[derive(Debug)]
pub struct ImageError(pub String);

impl std::fmt::Display for ImageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An operation on a range of the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageOp {
    /// Into the request's buffer; short only at the end of the image.
    Read,
    /// From the request's buffer; past the end it grows the image.
    Write,
    /// Everything acknowledged so far becomes durable.
    Flush,
    /// The range reads back as zeroes; its space may be given back.
    Discard,
    /// The range reads back as zeroes; past the end it grows the image.
    WriteZeroes,
    /// The range exists and reads as zeroes, its space reserved (grows).
    Allocate,
}

impl ImageOp {
    pub fn name(self) -> &'static str {
        match self {
            ImageOp::Read => "read",
            ImageOp::Write => "write",
            ImageOp::Flush => "flush",
            ImageOp::Discard => "discard",
            ImageOp::WriteZeroes => "write-zeroes",
            ImageOp::Allocate => "allocate",
        }
    }
}

/// Where a request's image operation stands between its completions. Each
/// backend uses the stages of its own, named here so that none is mistaken
/// for another's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Stage {
    /// Nothing out yet, or what was out is done.
    #[default]
    Idle,
    /// Raw, NBD: a WriteZeroes done by writing zeroes, the range not being
    /// zeroed as such by the filesystem or the server.
    WritingZeroes,
    /// qcow2: a piece is on the ring (`ImageIo::piece` bytes).
    OnRing,
    /// qcow2: a worker loads the metadata a lookup missed.
    Warming,
    /// qcow2: the lookup after a warm-up: it may block (it will not, but
    /// it must end).
    Warmed,
    /// qcow2: a worker does the work (an allocation, a compressed read, a
    /// flush...).
    HandedOff,
    /// qcow2: a write waits on a worker (for a discard to finish, for the
    /// image to grow).
    Waiting,
    /// QEMU's formats: a read straight from the image file, where QEMU's
    /// map puts the range (`qemu/mapped.rs`).
    Mapped,
}

/// One request's image operation in progress. `done` and `stage` are the
/// backend's own bookkeeping across completions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageIo {
    pub op: ImageOp,
    pub offset: u64,
    pub len: u64,
    /// Bytes already transferred or zeroed.
    pub done: u64,
    pub stage: Stage,
    /// Bytes of the part now in flight, for backends that split a request
    /// into parts (qcow2: one mapping's worth at a time).
    pub piece: u64,
    /// When the operation began, for its latency.
    pub started: Instant,
}

impl ImageIo {
    pub fn new(op: ImageOp, offset: u64, len: u64) -> Self {
        Self { op, offset, len, done: 0, stage: Stage::Idle, piece: 0, started: Instant::now() }
    }
}

/// Where a backend puts its work and how its completion finds the request.
pub struct IoContext<'a> {
    pub ring: &'a mut Ring,
    /// The request's token: every completion for this operation carries it.
    pub token: Token,
    /// The request's payload buffer (READ data goes here, WRITE data is
    /// here), at least `len` bytes, page-aligned.
    pub buffer: *mut u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seek {
    Data,
    Hole,
}

impl Seek {
    /// The answer from `offset` when every byte is taken for data: coarse,
    /// but always true (SEEK_DATA finds data right there, SEEK_HOLE only
    /// the end), for when the real allocation cannot be had in time.
    pub fn all_data(self, offset: u64, size: u64) -> u64 {
        match self {
            Seek::Data => offset,
            Seek::Hole => size,
        }
    }
}

/// (seconds, nanoseconds) of the image's atime, mtime and ctime.
pub type Times = [(u64, u32); 3];

/// Results are bytes transferred (READ, WRITE) or 0, or a negative errno.
pub trait ImageBackend: Send + Sync {
    /// "raw" or "qcow2", for the `ready` event.
    fn format(&self) -> &'static str;
    /// The virtual size: what the exported file holds.
    fn size(&self) -> u64;
    fn writable(&self) -> bool;
    fn growable(&self) -> bool;
    /// Bytes the image occupies on its storage.
    fn allocated_bytes(&self) -> u64;
    fn times(&self) -> Times;
    /// Whether aligned transfers bypass the host page cache.
    fn uses_direct_io(&self) -> bool;
    /// Changes the virtual size (truncate, O_TRUNC). Rare: synchronous.
    fn resize(&self, size: u64) -> io::Result<()>;
    /// SEEK_DATA / SEEK_HOLE from `offset`. Rare: synchronous.
    fn seek(&self, offset: u64, what: Seek) -> io::Result<u64>;
    /// The descriptor the kernel may read and write itself (FUSE
    /// passthrough) while keeping the contract, or why it may not.
    fn passthrough_fd(&self) -> Result<RawFd, String>;
    /// Reads the size again from the storage: with passthrough the kernel
    /// writes (and grows the image) without asking us.
    fn sync_size(&self);
    /// Starts `io`.
    fn submit(&self, io: &mut ImageIo, context: IoContext) -> Poll<i32>;
    /// A completion arrived on `io`'s token: done, or more work queued.
    fn complete(&self, io: &mut ImageIo, result: i32, context: IoContext) -> Poll<i32>;
    /// "file", "nbd" or "qemu", for the `ready` event.
    fn backend_name(&self) -> &'static str {
        "file"
    }
    /// The version of the program that serves the image, when it is not us
    /// (qemu-nbd's).
    fn backend_version(&self) -> Option<String> {
        None
    }
    /// The image as it may be shown (logs, the mount table): no secrets.
    fn shown_name(&self) -> String;
    /// Makes what was written durable before the export ends (a qcow2's
    /// metadata caches written back, its files synced). The server calls it
    /// once as it stops, whether its I/O threads ended or are left running
    /// (and keep the backend alive): a backend must not count on its drop.
    fn close(&self) -> io::Result<()> {
        Ok(())
    }
    /// Why `io` failed, in words (the file, the offset), when the backend
    /// knows more than the errno says; asked once, when the failure is
    /// reported.
    fn failure_reason(&self, _io: &ImageIo) -> Option<String> {
        None
    }
    /// The part of the backend that lives on I/O thread `thread`, when it
    /// drives descriptors of its own on that thread's ring. Its SQEs carry
    /// token channel `channel`, whose completions the thread's owner hands
    /// to `ThreadImage::complete`.
    fn attach_thread(&self, _thread: usize, _channel: u16) -> Option<Box<dyn ThreadImage>> {
        None
    }
}

/// Something a backend's thread part wants the user to know that does not
/// stop the export (the NBD server went away, came back); `kind` names it
/// for scripts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub kind: &'static str,
    pub message: String,
}

/// A backend's per-thread part (see `ImageBackend::attach_thread`). Runs on
/// its I/O thread only. An `Err` is fatal for the export: the owner halts it
/// with that reason (reported once).
pub trait ThreadImage: Send {
    /// Before the thread waits, when its export's part is prepared (after
    /// a completion of its own, or a wake-up): arm what must be armed,
    /// finish what ended.
    /// When stopping, it lets go of every SQE once no work of its own is out.
    fn prepare(&mut self, ring: &mut Ring, phase: Phase) -> Result<(), String>;
    /// A completion on the backend's channel.
    fn complete(&mut self, ring: &mut Ring, token: Token, result: i32) -> Result<(), String>;
    /// What happened since the last call that the user should hear of
    /// (asked after every `prepare` and `complete`).
    fn take_notices(&mut self) -> Vec<Notice> {
        Vec::new()
    }
}

/// The atime, mtime and ctime of an image's file.
fn times_of(file: &std::fs::File) -> Times {
    use std::os::unix::fs::MetadataExt;
    match file.metadata() {
        Ok(m) => [
            (m.atime() as u64, m.atime_nsec() as u32),
            (m.mtime() as u64, m.mtime_nsec() as u32),
            (m.ctime() as u64, m.ctime_nsec() as u32),
        ],
        Err(_) => [(0, 0); 3],
    }
}

/// The message for an image file that would not open: the problem and the fix.
fn open_failed(path: &std::path::Path, writable: bool, error: &io::Error) -> ImageError {
    let shown = path.display();
    if error.kind() == io::ErrorKind::ResourceBusy {
        return in_use(path, error);
    }
    let hint = match (error.raw_os_error(), writable) {
        (Some(libc::EACCES | libc::EROFS | libc::EPERM), true) => {
            " (it cannot be opened for writing: export it without --writable, or fix its permissions)"
        }
        (Some(libc::ENOENT), _) => " (no such file: give the path of an existing image)",
        _ => "",
    };
    ImageError(format!("Failed to open image {shown}: {}{hint}", crate::os_error::describe(error)))
}

/// The message for an image someone else holds (`lock::acquire` said who).
fn in_use(path: &std::path::Path, holder: impl std::fmt::Display) -> ImageError {
    ImageError(format!("Image {} is in use: {holder}; stop that user first, or export a copy", path.display()))
}

/// Opens the image the options name, in the format `--format` names or its
/// header shows, with the backend `route.rs` picks. Warnings (such as an
/// O_DIRECT fallback) are returned for the caller to report.
pub fn open(options: &ImageOptions) -> Result<(Arc<dyn ImageBackend>, Vec<String>), ImageError> {
    let image = options.path.to_string_lossy();
    let route = route::route(&image, options.format);
    if !options.reconnect_delay.is_zero() && matches!(route, Route::Raw | Route::Qcow2) {
        return Err(ImageError(format!(
            "--reconnect-delay applies to NBD images and images QEMU serves, not to {} (a {} file served directly)",
            options.path.display(),
            route.format().unwrap_or("raw")
        )));
    }
    if options.overlay != Overlay::None {
        return open_with_overlay(&image, route, options);
    }
    match route {
        Route::Nbd => nbd::NbdImage::open(&image, options),
        Route::Qemu { format, encrypted } => {
            qemu::QemuImage::open(qemu::Source { image: &image, format, encrypted }, options)
        }
        Route::Qcow2 => open_qcow2(options),
        Route::Raw => {
            let probed = options.format == FormatChoice::Auto;
            let (image, mut warnings) = raw::RawImage::open(options, probed)?;
            if probed && route::ends_with_vhd_footer(&options.path) {
                warnings.push(format!(
                    "Image {} ends in a VHD footer: it looks like a fixed VHD, which QEMU too serves as raw \
                     (footer included); --format vpc serves the disk without it",
                    options.path.display()
                ));
            }
            Ok((Arc::new(image), warnings))
        }
    }
}

fn open_qcow2(options: &ImageOptions) -> Result<(Arc<dyn ImageBackend>, Vec<String>), ImageError> {
    let first = qcow2::read_first_bytes(&options.path).unwrap_or_default();
    if !first.starts_with(&probe::QCOW2_MAGIC) {
        let shown = options.path.display();
        std::fs::metadata(&options.path)
            .map_err(|e| ImageError(format!("Failed to open image {shown}: {}", crate::os_error::describe(&e))))?;
        return Err(ImageError(format!(
            "Image {shown} is not a qcow2 image (it does not start with the qcow2 magic): \
             export it with --format raw, or --format auto to detect the format"
        )));
    }
    let (image, warnings) = qcow2::Qcow2Image::open(options, &first)?;
    Ok((Arc::new(image), warnings))
}

/// `--snapshot`, `--overlay FILE`: the image read-only under a qcow2 that
/// takes the writes; imago serves it when it serves the image, else QEMU.
fn open_with_overlay(
    image: &str,
    route: Route,
    options: &ImageOptions,
) -> Result<(Arc<dyn ImageBackend>, Vec<String>), ImageError> {
    if options.growable {
        return Err(ImageError(
            "--growable does not go with --snapshot or --overlay: an overlay has the image's size".into(),
        ));
    }
    match route {
        Route::Raw | Route::Qcow2 => {
            let format = route.format().unwrap_or("raw");
            let overlay = qemu::native_overlay(image, format, options)?;
            let top = ImageOptions {
                path: overlay.path.clone(),
                writable: true,
                format: FormatChoice::Qcow2,
                overlay: Overlay::None,
                ..options.clone()
            };
            let opened = open_qcow2(&top);
            // imago holds descriptors of its own now.
            drop(overlay);
            opened
        }
        Route::Nbd => qemu::QemuImage::open(qemu::Source { image, format: Some("raw"), encrypted: false }, options),
        Route::Qemu { format, encrypted } => qemu::QemuImage::open(qemu::Source { image, format, encrypted }, options),
    }
}

//! Every format and place the native backends do not serve (VMDK, VHDX,
//! VDI, VHD, LUKS, a qcow2 chain imago cannot follow, images on web, ssh,
//! iSCSI, NFS and Ceph servers): QEMU's own block layer, in a qemu-nbd
//! child that the export owns (`child.rs`), served by the NBD backend over
//! a private socket. QEMU's drivers are the reference implementation of
//! these formats; there is no parser of ours between them and the bytes.
//!
//! The child gets the options that keep the export's promises: a flush is
//! QEMU's flush (an acknowledged fsync is never lost), the image is locked
//! as QEMU locks it, and it takes a connection per I/O thread (multi-conn).

mod child;
mod mapped;
mod overlay;
mod process;
mod secrets;
mod spec;

use super::nbd::NbdImage;
use super::{
    CacheMode, ImageBackend, ImageError, ImageIo, ImageOp, ImageOptions, IoContext, Notice, Overlay, Seek, Stage,
    ThreadImage, Times,
};
use crate::runtime::control::Phase;
use crate::runtime::ring::Ring;
use crate::runtime::token::Token;
use child::{ChildSpec, QemuNbd};
use mapped::{MappedReads, MAPPED_FORMATS};
use overlay::OverlayFile;
use secrets::{read_secret_file, Secrets, KEY_SECRET, PASSWORD_SECRET};
use serde_json::{json, Value};
use spec::FileNode;
use std::ffi::OsString;
use std::io;
use std::os::fd::RawFd;
use std::path::Path;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

pub use spec::is_place;

/// Connections qemu-nbd takes at once (`--shared`): one per I/O thread,
/// the block-status connection, and a reconnection's overlap.
const MAX_CONNECTIONS: usize = 1024 + 2;
/// Requests wait this long for a restarted child when the user set no
/// `--reconnect-delay`: a crash of qemu-nbd is not the end of the export.
const DEFAULT_RECONNECT_DELAY: Duration = Duration::from_secs(30);
/// Drivers Debian ships as modules in qemu-block-extra.
const MODULE_DRIVERS: &[&str] = &["http", "https", "ftp", "ftps", "ssh", "iscsi", "nfs", "rbd", "gluster"];
/// Formats whose key is in the format node itself rather than in `encrypt`.
const KEYED_FORMATS: &[&str] = &["luks"];

/// What QEMU is to open: the place, and the format when it is known.
pub struct Source<'a> {
    pub image: &'a str,
    /// None: QEMU's probe tells (`qemu-img info`).
    pub format: Option<&'static str>,
    /// The image is encrypted (the probe read its header).
    pub encrypted: bool,
}

pub struct QemuImage {
    nbd: Arc<dyn ImageBackend>,
    child: Arc<QemuNbd>,
    format: &'static str,
    shown: String,
    version: String,
    /// Bound again at every restart of the child.
    _trust: Option<TrustStore>,
    _overlay: Option<OverlayFile>,
    /// Reads of what QEMU placed plainly in the local image file skip the child.
    mapped: Option<MappedReads>,
}

impl QemuImage {
    pub fn open(source: Source, options: &ImageOptions) -> Result<(Arc<dyn ImageBackend>, Vec<String>), ImageError> {
        let access = Access::new(source.image, options)?;
        let shown = access.shown.clone();
        let (format, encrypted) = match (source.format, access.file.format.as_deref()) {
            (Some(format), _) => (format, source.encrypted),
            (None, Some(format)) => (known_format(format), false),
            (None, None) => access.probe()?,
        };
        let mut warnings = Vec::new();
        let keyed = KEYED_FORMATS.contains(&format) || encrypted;
        if access.secrets.has(KEY_SECRET) && !keyed {
            warnings.push(format!("Image {shown} is not encrypted: --key-file is not used"));
        }
        let base = spec::format_node(format, &access.file, keyed && access.secrets.has(KEY_SECRET));
        let (served, writable, local, overlay) = match &options.overlay {
            Overlay::None => {
                if access.file.read_only && options.writable {
                    return Err(ImageError(format!(
                        "Image {shown} is read-only: QEMU cannot write to {} places; export it without \
                         --writable, or keep the writes apart with --snapshot or --overlay FILE",
                        access.file.options["driver"].as_str().unwrap_or("such")
                    )));
                }
                (base, options.writable, access.file.is_local(), None)
            }
            Overlay::Temporary | Overlay::File(_) => {
                let overlay = overlay::create(options.overlay.file(), &access, format, &base)?;
                let top =
                    json!({ "driver": "qcow2", "file": spec::local_file(&overlay.path).options, "backing": base });
                (top, true, true, Some(overlay))
            }
        };
        let version = version()?;
        let args = child_args(&served, writable, local, &access.secrets, options.cache);
        let trusted_ca_dir = access.trust.as_ref().map(|t| t.dir.path().to_path_buf());
        let spec = ChildSpec { args, secrets: access.secrets.clone(), trusted_ca_dir };
        let (child, printed) = QemuNbd::start(spec).map_err(|e| explain(&shown, &e))?;
        warnings.extend(printed);
        let uri = format!("nbd+unix:///?socket={}", child.socket().display());
        let reconnect_delay =
            if options.reconnect_delay.is_zero() { DEFAULT_RECONNECT_DELAY } else { options.reconnect_delay };
        let nbd_options = ImageOptions { reconnect_delay, growable: false, writable, ..options.clone() };
        let (nbd, nbd_warnings) = NbdImage::open(&uri, &nbd_options)?;
        warnings.extend(nbd_warnings);
        let child = Arc::new(child);
        let mapped = (overlay.is_none() && !keyed && MAPPED_FORMATS.contains(&format))
            .then(|| access.mapped_reads(&served, options.cache))
            .flatten();
        let image = QemuImage { nbd, child, format, shown, version, _trust: access.trust, _overlay: overlay, mapped };
        Ok((Arc::new(image), warnings))
    }
}

/// The overlay a native backend serves over a local image (`--snapshot`,
/// `--overlay FILE`): made by qemu-img, opened by imago.
pub fn native_overlay(image: &str, format: &str, options: &ImageOptions) -> Result<OverlayFile, ImageError> {
    let access = Access::new(image, options)?;
    let base = spec::format_node(format, &access.file, false);
    overlay::create(options.overlay.file(), &access, format, &base)
}

/// The image's place, as QEMU's file node, with what every QEMU process
/// needs to reach it: its secrets and the CA to trust.
pub struct Access {
    file: FileNode,
    secrets: Secrets,
    trust: Option<TrustStore>,
    shown: String,
}

impl Access {
    fn new(image: &str, options: &ImageOptions) -> Result<Access, ImageError> {
        let mut secrets = Secrets::default();
        let (file, url_password) = if is_place(image) {
            spec::place(image, options.password_file.is_some()).map_err(ImageError)?
        } else {
            (spec::local_file(Path::new(image)), None)
        };
        if let Some(path) = &options.password_file {
            secrets.add(PASSWORD_SECRET, read_secret_file(path, "password").map_err(ImageError)?);
        } else if let Some(password) = url_password {
            secrets.add(PASSWORD_SECRET, password.into_bytes());
        }
        if let Some(path) = &options.key_file {
            secrets.add(KEY_SECRET, read_secret_file(path, "key").map_err(ImageError)?);
        }
        let trust = options.ca_file.as_deref().map(TrustStore::new).transpose().map_err(ImageError)?;
        let shown = file.shown.clone();
        Ok(Access { file, secrets, trust, shown })
    }

    /// Runs `qemu-img SUBCOMMAND` with the secrets and the trusted CA.
    fn qemu_img(&self, subcommand: &str, args: Vec<String>) -> Result<String, String> {
        let mut all = vec![subcommand.to_string()];
        all.extend(self.secrets.object_args());
        all.extend(args);
        let pipes = self.secrets.pipes().map_err(|e| e.to_string())?;
        process::run_tool("qemu-img", &all, &pipes, self.trust.as_ref().map(|t| t.dir.path()))
    }

    /// QEMU's map of a local image, for reads that skip the child; none
    /// where there is no map to be had.
    fn mapped_reads(&self, image: &Value, cache: CacheMode) -> Option<MappedReads> {
        let path = self.file.options["filename"].as_str().filter(|_| self.file.is_local())?;
        let args = vec!["--output=json".into(), "--force-share".into(), format!("json:{image}")];
        let map = self.qemu_img("map", args).ok()?;
        MappedReads::new(Path::new(path), &map, cache)
    }

    /// The format QEMU's probe finds and whether the image is encrypted.
    fn probe(&self) -> Result<(&'static str, bool), ImageError> {
        let image = json!({ "file": self.file.options });
        let args = vec!["--output=json".into(), "--force-share".into(), format!("json:{image}")];
        let printed = self.qemu_img("info", args).map_err(|e| explain(&self.shown, &e))?;
        let info: Value = serde_json::from_str(&printed)
            .map_err(|e| ImageError(format!("qemu-img info printed no JSON for {}: {e}", self.shown)))?;
        let format = info["format"].as_str().unwrap_or("raw");
        Ok((known_format(format), info["encrypted"].as_bool().unwrap_or(false)))
    }

    /// How an overlay names this image as its backing file: the path of a
    /// plain local file, else QEMU's options (secrets by id only).
    fn backing_name(&self, base: &Value) -> String {
        match self.file.options["filename"].as_str() {
            Some(path) if self.file.is_local() && self.secrets.is_empty() => {
                std::fs::canonicalize(path).map_or(path.to_string(), |p| p.to_string_lossy().into_owned())
            }
            _ => format!("json:{base}"),
        }
    }
}

/// The command line of qemu-nbd (its socket and pid file come later).
fn child_args(image: &Value, writable: bool, local: bool, secrets: &Secrets, cache: CacheMode) -> Vec<OsString> {
    let mut args: Vec<String> = vec!["--persistent".into(), format!("--shared={MAX_CONNECTIONS}")];
    args.push("--discard=unmap".into());
    if local {
        // Linux AIO where the image is opened O_DIRECT: on a tmpfs image
        // io_uring hands every O_DIRECT request to a kernel worker thread,
        // which halved qemu-nbd's rate (bench, formats section).
        let (cache, aio) = match cache {
            CacheMode::Direct => ("none", "native"),
            CacheMode::Writeback => ("writeback", "io_uring"),
        };
        args.extend([format!("--cache={cache}"), format!("--aio={aio}")]);
    }
    if !writable {
        args.push("--read-only".into());
    }
    args.extend(secrets.object_args());
    args.push(format!("json:{image}"));
    args.into_iter().map(OsString::from).collect()
}

/// A format name as the `'static` the backend interface reports.
fn known_format(name: &str) -> &'static str {
    super::probe::QEMU_FORMATS.iter().find(|known| **known == name).copied().unwrap_or("raw")
}

/// qemu-nbd's version, for the `ready` event; a missing qemu-nbd is told
/// here, with the package that has it. Asked once per process (a daemon
/// may open hundreds of images); a failure is not kept, so that qemu-nbd
/// installed meanwhile is found.
fn version() -> Result<String, ImageError> {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(known) = VERSION.get() {
        return Ok(known.clone());
    }
    let printed = process::run_tool(child::PROGRAM, &["--version".into()], &[], None).map_err(ImageError)?;
    let first = printed.lines().next().unwrap_or_default();
    let version = first.split_whitespace().nth(1).unwrap_or("unknown").to_string();
    Ok(VERSION.get_or_init(|| version).clone())
}

/// QEMU's message for an image it would not open, with what to do.
fn explain(shown: &str, message: &str) -> ImageError {
    if message.contains("is missing: ") {
        return ImageError(message.to_string());
    }
    let lower = message.to_lowercase();
    let advice = if lower.contains("key-secret") && lower.contains("required") {
        format!("Image {shown} is encrypted: give its key with --key-file FILE")
    } else if lower.contains("invalid password") || lower.contains("cannot unlock") {
        format!("The key in --key-file does not unlock image {shown}: it is the wrong key")
    } else if lower.contains("qemu-block-extra")
        || lower.contains("unknown protocol")
        || MODULE_DRIVERS.iter().any(|driver| lower.contains(&format!("unknown driver '{driver}'")))
    {
        format!(
            "QEMU cannot read image {shown}: its driver is missing ({message}); install Debian's \
             qemu-block-extra package"
        )
    } else {
        format!("QEMU could not open image {shown}: {message}")
    };
    ImageError(advice)
}

/// `--ca-file` as a trust store of its own: a private directory whose
/// `ca-certificates.crt` is that CA, bound over the system's in QEMU's
/// namespace.
struct TrustStore {
    dir: child::PrivateDir,
}

impl TrustStore {
    fn new(ca_file: &Path) -> Result<TrustStore, String> {
        let dir = child::PrivateDir::create()?;
        std::fs::copy(ca_file, dir.path().join("ca-certificates.crt")).map_err(|e| {
            format!("Failed to read the CA file {}: {}", ca_file.display(), crate::os_error::describe(&e))
        })?;
        Ok(TrustStore { dir })
    }
}

/// Everything but what names the image is the NBD backend's.
impl ImageBackend for QemuImage {
    fn format(&self) -> &'static str {
        self.format
    }

    fn size(&self) -> u64 {
        self.nbd.size()
    }

    fn writable(&self) -> bool {
        self.nbd.writable()
    }

    fn growable(&self) -> bool {
        false
    }

    fn allocated_bytes(&self) -> u64 {
        self.nbd.allocated_bytes()
    }

    fn times(&self) -> Times {
        self.nbd.times()
    }

    fn uses_direct_io(&self) -> bool {
        false
    }

    fn resize(&self, size: u64) -> io::Result<()> {
        self.nbd.resize(size)
    }

    fn seek(&self, offset: u64, what: Seek) -> io::Result<u64> {
        self.nbd.seek(offset, what)
    }

    fn passthrough_fd(&self) -> Result<RawFd, String> {
        Err(format!("QEMU reads this {} image: there is no raw file the kernel could read itself", self.format))
    }

    fn sync_size(&self) {}

    fn submit(&self, io: &mut ImageIo, mut context: IoContext) -> Poll<i32> {
        if let Some(mapped) = &self.mapped {
            match io.op {
                ImageOp::Read => {
                    if let Some(started) = mapped.submit_read(io, &mut context) {
                        return started;
                    }
                }
                ImageOp::Flush => {}
                ImageOp::Write | ImageOp::Discard | ImageOp::WriteZeroes | ImageOp::Allocate => {
                    mapped.forget(io.offset, io.len)
                }
            }
        }
        self.nbd.submit(io, context)
    }

    fn complete(&self, io: &mut ImageIo, result: i32, context: IoContext) -> Poll<i32> {
        if io.stage == Stage::Mapped {
            return Poll::Ready(MappedReads::complete(io, result));
        }
        self.nbd.complete(io, result, context)
    }

    fn backend_name(&self) -> &'static str {
        "qemu"
    }

    fn backend_version(&self) -> Option<String> {
        Some(self.version.clone())
    }

    fn shown_name(&self) -> String {
        self.shown.clone()
    }

    /// The connections' writes are flushed, then qemu-nbd ends (closing
    /// the image as QEMU does).
    fn close(&self) -> io::Result<()> {
        let closed = self.nbd.close();
        self.child.stop();
        closed
    }

    fn failure_reason(&self, io: &ImageIo) -> Option<String> {
        self.nbd.failure_reason(io)
    }

    /// Thread 0's part also reports what the child did (its messages,
    /// its restarts).
    fn attach_thread(&self, thread: usize, channel: u16) -> Option<Box<dyn ThreadImage>> {
        let nbd = self.nbd.attach_thread(thread, channel)?;
        Some(Box::new(QemuThread { nbd, child: (thread == 0).then(|| self.child.clone()) }))
    }
}

struct QemuThread {
    nbd: Box<dyn ThreadImage>,
    child: Option<Arc<QemuNbd>>,
}

impl ThreadImage for QemuThread {
    fn prepare(&mut self, ring: &mut Ring, phase: Phase) -> Result<(), String> {
        self.nbd.prepare(ring, phase)
    }

    fn complete(&mut self, ring: &mut Ring, token: Token, result: i32) -> Result<(), String> {
        self.nbd.complete(ring, token, result)
    }

    fn take_notices(&mut self) -> Vec<Notice> {
        let mut notices = self.nbd.take_notices();
        notices.extend(self.child.as_ref().map(|child| child.take_notices()).unwrap_or_default());
        notices
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemus_messages_become_what_to_do() {
        let image = "/images/disk.luks";
        let said = |message: &str| explain(image, message).0;
        assert!(
            said("Parameter 'key-secret' is required for cipher").contains("encrypted: give its key with --key-file")
        );
        assert!(said("Invalid password, cannot unlock any keyslot").contains("wrong key"));
        assert!(said("Unknown protocol 'https'").contains("install Debian's qemu-block-extra"));
        assert!(said("Unknown driver 'ssh'").contains("qemu-block-extra"));
        assert!(!said("Unknown driver 'vmdk2'").contains("qemu-block-extra"));
        let other = said("Could not read image for determining its format: Input/output error");
        assert!(other.starts_with("QEMU could not open image /images/disk.luks: Could not read"), "{other}");
        let missing = "qemu-nbd is missing: images of this kind ...";
        assert_eq!(said(missing), missing);
    }

    #[test]
    fn the_child_keeps_the_exports_promises() {
        let file = spec::local_file(Path::new("/images/disk.vmdk"));
        let image = spec::format_node("vmdk", &file, false);
        let args = child_args(&image, false, true, &Secrets::default(), CacheMode::Direct);
        let args: Vec<String> = args.into_iter().map(|a| a.into_string().unwrap()).collect();
        for expected in ["--persistent", "--discard=unmap", "--cache=none", "--aio=native", "--read-only"] {
            assert!(args.contains(&expected.to_string()), "{expected} in {args:?}");
        }
        assert!(args.iter().any(|a| a.starts_with("--shared=")));
        assert_eq!(args.last().unwrap(), &format!("json:{image}"));
        let remote = child_args(&image, true, false, &Secrets::default(), CacheMode::Direct);
        assert!(!remote.iter().any(|a| a == "--read-only" || a.to_string_lossy().starts_with("--cache")));
    }
}

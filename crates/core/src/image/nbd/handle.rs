//! One libnbd handle: connecting it, what it learnt about the export, the
//! commands sent on it and the state of its socket. Closed when dropped.

use super::extents::{extents_of, Extents};
use super::ffi::{self, Api, CompletionCallback, ExtentCallback, RawHandle};
use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::time::{Duration, Instant};

/// What a command asks of the server. Buffers belong to the request and
/// stay put until its completion is delivered.
#[derive(Debug, Clone, Copy)]
pub enum Command {
    Read {
        buffer: *mut u8,
        len: u64,
        offset: u64,
    },
    Write {
        buffer: *const u8,
        len: u64,
        offset: u64,
    },
    /// `covers_writes`: acknowledged writes were not yet durable when it
    /// went out (`Durability`).
    Flush {
        covers_writes: bool,
    },
    /// WRITE_ZEROES without NO_HOLE: the server may deallocate the range,
    /// and it reads back as zeroes (a TRIM promises no bytes at all).
    Zero {
        len: u64,
        offset: u64,
    },
}

pub struct Handle {
    api: &'static Api,
    raw: *mut RawHandle,
    /// Simple replies in the clear: what a reply takes from the socket is
    /// known from its command (`Command::simple_reply_bytes`).
    metered: bool,
}

// SAFETY: libnbd handles are thread-safe: every call takes the handle's lock.
unsafe impl Send for Handle {}
// SAFETY: as above.
unsafe impl Sync for Handle {}

/// The replies a connection asks the server for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replies {
    /// Structured replies, with `base:allocation`: they carry block status.
    Structured,
    /// Simple replies: a read's reply is a header and the data, two `recv`
    /// calls where a structured one takes four; no block status.
    Simple,
}

/// What a successful connection learnt about the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Export {
    pub size: u64,
    pub read_only: bool,
    pub multi_conn: bool,
    pub can_flush: bool,
    pub can_zero: bool,
    pub base_allocation: bool,
}

impl Export {
    /// Why a server that came back cannot stand in for the one we exported
    /// (`self`), if it cannot: the file's size is fixed, and so is whether
    /// it may be written.
    pub fn replacement_refused(&self, found: &Export, writable: bool) -> Option<String> {
        if found.size != self.size {
            return Some(format!("it now serves {} bytes, not {}", found.size, self.size));
        }
        if writable && found.read_only {
            return Some("it now serves the export read-only".into());
        }
        None
    }
}

impl Handle {
    /// Connects to `uri` (as given, secrets and all) and completes the
    /// handshake by `deadline`. The error names `address`.
    pub fn connect(
        api: &'static Api,
        uri: &str,
        address: &str,
        replies: Replies,
        deadline: Instant,
    ) -> Result<(Handle, Export), String> {
        let failed = |why: String| format!("Cannot connect to the NBD server at {address}: {why}");
        // SAFETY: no arguments; NULL on failure.
        let raw = unsafe { (api.nbd_create)() };
        if raw.is_null() {
            return Err(failed(api.last_error().0));
        }
        let mut handle = Handle { api, raw, metered: false };
        let c_uri = ffi::c_string(uri)?;
        // SAFETY: a valid handle and NUL-terminated strings.
        unsafe {
            (api.nbd_set_handle_name)(raw, c"fuse-export".as_ptr());
            match replies {
                Replies::Structured => (api.nbd_add_meta_context)(raw, ffi::BASE_ALLOCATION.as_ptr()),
                Replies::Simple => (api.nbd_set_request_structured_replies)(raw, false),
            };
            // The URI is the user's own: its TLS key and certificate files
            // (tls-psk-file=, tls-certificates=) may be read.
            (api.nbd_set_uri_allow_local_file)(raw, true);
            // A client that asks for the server's block size must keep to
            // its minimum: qemu-nbd then refuses a 300-byte write to a VHDX
            // (EINVAL). One that does not ask gets any alignment, the server
            // reading-modifying-writing itself (the NBD spec's default).
            if let Some(set_request_block_size) = api.nbd_set_request_block_size {
                set_request_block_size(raw, false);
            }
            if (api.nbd_aio_connect_uri)(raw, c_uri.as_ptr()) < 0 {
                return Err(failed(api.last_error().0));
            }
        }
        // SAFETY (the loop): calls on our valid handle.
        while unsafe { (api.nbd_aio_is_connecting)(raw) } != 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(failed("no answer in time (is the server running and listening there?)".into()));
            }
            let wait = left.min(Duration::from_millis(500)).as_millis() as c_int;
            if unsafe { (api.nbd_poll)(raw, wait.max(1)) } < 0 {
                return Err(failed(api.last_error().0));
            }
        }
        if unsafe { (api.nbd_aio_is_ready)(raw) } == 0 {
            return Err(failed(api.last_error().0));
        }
        let flag = |f: unsafe extern "C" fn(*mut RawHandle) -> c_int| unsafe { f(raw) } > 0;
        // SAFETY: a connected handle.
        let size = unsafe { (api.nbd_get_size)(raw) };
        if size < 0 {
            return Err(failed(api.last_error().0));
        }
        let export = Export {
            size: size as u64,
            read_only: flag(api.nbd_is_read_only),
            multi_conn: flag(api.nbd_can_multi_conn),
            can_flush: flag(api.nbd_can_flush),
            can_zero: flag(api.nbd_can_zero),
            // SAFETY: a connected handle and a NUL-terminated name.
            base_allocation: unsafe { (api.nbd_can_meta_context)(raw, ffi::BASE_ALLOCATION.as_ptr()) } > 0,
        };
        let simple_replies = !flag(api.nbd_get_structured_replies_negotiated);
        handle.metered = simple_replies && !flag(api.nbd_get_tls_negotiated);
        if simple_replies {
            // A read with a simple reply either fills all of its buffer or
            // fails, so libnbd's zeroing of the buffer before each read (a
            // memset of up to 1 MiB) guards nothing here.
            if let Some(set_pread_initialize) = api.nbd_set_pread_initialize {
                // SAFETY: a connected handle.
                unsafe { set_pread_initialize(raw, false) };
            }
        }
        Ok((handle, export))
    }

    /// Queues `command`; `callback` hears of its end. Err(errno) when libnbd
    /// refused it before sending (then it never calls back, only frees).
    ///
    /// SAFETY: the command's buffer stays valid until the callback ran.
    pub unsafe fn send(&self, command: Command, callback: CompletionCallback) -> Result<(), i32> {
        let (api, h) = (self.api, self.raw);
        // SAFETY: the caller keeps the buffers; the handle is ours.
        let cookie = unsafe {
            match command {
                Command::Read { buffer, len, offset } => {
                    (api.nbd_aio_pread)(h, buffer.cast(), len as usize, offset, callback, 0)
                }
                Command::Write { buffer, len, offset } => {
                    (api.nbd_aio_pwrite)(h, buffer.cast(), len as usize, offset, callback, 0)
                }
                Command::Flush { .. } => (api.nbd_aio_flush)(h, callback, 0),
                Command::Zero { len, offset } => (api.nbd_aio_zero)(h, len, offset, callback, 0),
            }
        };
        if cookie < 0 {
            return Err(api.last_error().1);
        }
        Ok(())
    }

    pub fn is_dead(&self) -> bool {
        // SAFETY: our handle; these calls take no lock.
        unsafe { (self.api.nbd_aio_is_dead)(self.raw) != 0 || (self.api.nbd_aio_is_closed)(self.raw) != 0 }
    }

    /// The socket and the directions libnbd waits for on it; none once the
    /// handle is dead (libnbd closed the socket).
    pub fn socket(&self) -> Option<(c_int, c_uint)> {
        // SAFETY: our handle.
        self.fd().map(|fd| (fd, unsafe { (self.api.nbd_aio_get_direction)(self.raw) }))
    }

    fn fd(&self) -> Option<c_int> {
        // SAFETY: our handle.
        let fd = unsafe { (self.api.nbd_aio_get_fd)(self.raw) };
        (fd >= 0).then_some(fd)
    }

    /// Tells libnbd the socket is readable. A failure leaves it dead.
    pub fn notify_read(&self) {
        // SAFETY: our handle.
        unsafe { (self.api.nbd_aio_notify_read)(self.raw) };
    }

    /// Tells libnbd the socket is writable. A failure leaves it dead.
    pub fn notify_write(&self) {
        // SAFETY: our handle.
        unsafe { (self.api.nbd_aio_notify_write)(self.raw) };
    }

    /// The bytes waiting in the socket, on a metered handle (none else:
    /// encrypted or structured, they do not tell how many replies wait).
    pub fn bytes_waiting(&self) -> Option<u64> {
        if !self.metered {
            return None;
        }
        let fd = self.fd()?;
        let mut waiting: c_int = 0;
        // SAFETY: FIONREAD writes one int.
        let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut waiting) };
        Some(if rc < 0 { 0 } else { waiting as u64 })
    }

    /// Whether a read would find something (data, the end, an error). A
    /// poll can report data that a synchronous call (`block_status`) has
    /// read since; libnbd must not hear of it then: a read notification
    /// with nothing to read leaves it waiting for a reply before it sends
    /// the next command, which may never come.
    pub fn readable(&self) -> bool {
        let Some(fd) = self.fd() else { return true };
        let mut byte = 0u8;
        // SAFETY: a one-byte peek that never blocks.
        let peeked = unsafe { libc::recv(fd, (&mut byte as *mut u8).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
        peeked >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EAGAIN)
    }

    pub fn in_flight(&self) -> i32 {
        // SAFETY: our handle.
        unsafe { (self.api.nbd_aio_in_flight)(self.raw) }
    }

    /// The extents of `base:allocation` from `offset`: (length, flags), or
    /// libnbd's errno. Synchronous.
    pub fn block_status(&self, offset: u64, count: u64) -> Result<Extents, i32> {
        let mut extents = Extents::new();
        let callback = ExtentCallback {
            callback: Some(extents_seen),
            user_data: (&mut extents as *mut Extents).cast(),
            free: None,
        };
        // SAFETY: `extents` outlives the synchronous call.
        let rc = unsafe { (self.api.nbd_block_status)(self.raw, count, offset, callback, 0) };
        if rc < 0 {
            return Err(self.api.last_error().1);
        }
        Ok(extents)
    }
}

unsafe extern "C" fn extents_seen(
    user_data: *mut c_void,
    metacontext: *const c_char,
    _offset: u64,
    entries: *mut u32,
    nr_entries: usize,
    _error: *mut c_int,
) -> c_int {
    // SAFETY: libnbd passes a NUL-terminated context name and nr_entries u32s.
    if metacontext.is_null() || unsafe { CStr::from_ptr(metacontext) } != ffi::BASE_ALLOCATION || entries.is_null() {
        return 0;
    }
    let extents = unsafe { &mut *(user_data as *mut Extents) };
    let entries = unsafe { std::slice::from_raw_parts(entries, nr_entries) };
    extents.extend(extents_of(entries));
    0
}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: ours; no command of ours is still in it (a dead handle
        // failed them all; a live one is dropped only once none is out).
        unsafe { (self.api.nbd_close)(self.raw) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPORT: Export = Export {
        size: 1 << 20,
        read_only: false,
        multi_conn: true,
        can_flush: true,
        can_zero: true,
        base_allocation: true,
    };

    #[test]
    fn a_returning_server_must_serve_the_same_size() {
        assert_eq!(EXPORT.replacement_refused(&EXPORT, true), None);
        let other = Export { multi_conn: false, can_zero: false, ..EXPORT };
        assert_eq!(EXPORT.replacement_refused(&other, true), None, "features may change");
        let bigger = Export { size: 2 << 20, ..EXPORT };
        assert!(EXPORT.replacement_refused(&bigger, false).unwrap().contains("2097152 bytes, not 1048576"));
    }

    #[test]
    fn a_writable_export_needs_a_writable_server() {
        let read_only = Export { read_only: true, ..EXPORT };
        assert!(EXPORT.replacement_refused(&read_only, true).unwrap().contains("read-only"));
        assert_eq!(EXPORT.replacement_refused(&read_only, false), None);
    }
}

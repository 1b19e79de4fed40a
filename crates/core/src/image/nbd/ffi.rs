//! The few libnbd calls the backend makes, looked up at run time in
//! `libnbd.so.0` (Debian's `libnbd0`), so that exporting a file needs
//! nothing more. Declared by hand from libnbd's stable C API.

use libloading::Library;
use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::sync::OnceLock;

/// An opaque `struct nbd_handle`.
#[repr(C)]
pub struct RawHandle {
    _private: [u8; 0],
}

/// `nbd_completion_callback`, passed by value.
#[repr(C)]
pub struct CompletionCallback {
    pub callback: Option<unsafe extern "C" fn(user_data: *mut c_void, error: *mut c_int) -> c_int>,
    pub user_data: *mut c_void,
    pub free: Option<unsafe extern "C" fn(user_data: *mut c_void)>,
}

/// `nbd_extent_callback`, passed by value.
#[repr(C)]
pub struct ExtentCallback {
    pub callback: Option<
        unsafe extern "C" fn(
            user_data: *mut c_void,
            metacontext: *const c_char,
            offset: u64,
            entries: *mut u32,
            nr_entries: usize,
            error: *mut c_int,
        ) -> c_int,
    >,
    pub user_data: *mut c_void,
    pub free: Option<unsafe extern "C" fn(user_data: *mut c_void)>,
}

pub const DIRECTION_READ: c_uint = 1;
pub const DIRECTION_WRITE: c_uint = 2;
pub const STATE_HOLE: u32 = 1;
pub const BASE_ALLOCATION: &CStr = c"base:allocation";

type H = *mut RawHandle;

/// The function `name` exported by `library`, typed as `F`.
///
/// SAFETY: `F` is the function's C signature.
unsafe fn entry_point<F: Copy>(library: &Library, name: &str) -> Result<F, libloading::Error> {
    // SAFETY: the caller's.
    unsafe { library.get::<F>(name.as_bytes()) }.map(|symbol| *symbol)
}

macro_rules! api {
    (
        optional { $($opt:ident: fn($($opt_arg:ty),*) -> $opt_ret:ty;)* }
        $($name:ident: fn($($arg:ty),*) -> $ret:ty;)*
    ) => {
        /// libnbd's entry points, resolved once.
        #[allow(non_snake_case)]
        pub struct Api {
            _library: Library,
            $(pub $name: unsafe extern "C" fn($($arg),*) -> $ret,)*
            $(pub $opt: Option<unsafe extern "C" fn($($opt_arg),*) -> $opt_ret>,)*
        }

        impl Api {
            fn load() -> Result<Api, String> {
                // SAFETY: loading libnbd runs only its own initialisers.
                let library = unsafe { Library::new("libnbd.so.0") }.map_err(|e| {
                    format!("NBD images need libnbd, which is not installed ({e}): install the libnbd0 package (apt-get install libnbd0)")
                })?;
                $(
                    // SAFETY: the symbol has this C signature in every libnbd 1.x.
                    let $name = unsafe { entry_point(&library, stringify!($name)) }
                        .map_err(|e| format!("libnbd.so.0 lacks {} ({e}): install a newer libnbd0 package", stringify!($name)))?;
                )*
                $(
                    // SAFETY: as above, in the libnbd versions that have it.
                    let $opt = unsafe { entry_point(&library, stringify!($opt)) }.ok();
                )*
                Ok(Api { _library: library, $($name,)* $($opt,)* })
            }
        }
    };
}

api! {
    optional {
        // libnbd >= 1.12.
        nbd_set_pread_initialize: fn(H, bool) -> c_int;
        // libnbd >= 1.8.
        nbd_set_request_block_size: fn(H, bool) -> c_int;
    }
    nbd_create: fn() -> H;
    nbd_close: fn(H) -> ();
    nbd_get_error: fn() -> *const c_char;
    nbd_get_errno: fn() -> c_int;
    nbd_set_handle_name: fn(H, *const c_char) -> c_int;
    nbd_add_meta_context: fn(H, *const c_char) -> c_int;
    nbd_set_request_structured_replies: fn(H, bool) -> c_int;
    nbd_set_uri_allow_local_file: fn(H, bool) -> c_int;
    nbd_aio_connect_uri: fn(H, *const c_char) -> c_int;
    nbd_aio_is_connecting: fn(H) -> c_int;
    nbd_aio_is_ready: fn(H) -> c_int;
    nbd_aio_is_dead: fn(H) -> c_int;
    nbd_aio_is_closed: fn(H) -> c_int;
    nbd_poll: fn(H, c_int) -> c_int;
    nbd_get_size: fn(H) -> i64;
    nbd_is_read_only: fn(H) -> c_int;
    nbd_can_multi_conn: fn(H) -> c_int;
    nbd_can_flush: fn(H) -> c_int;
    nbd_can_zero: fn(H) -> c_int;
    nbd_can_meta_context: fn(H, *const c_char) -> c_int;
    nbd_get_structured_replies_negotiated: fn(H) -> c_int;
    nbd_get_tls_negotiated: fn(H) -> c_int;
    nbd_aio_pread: fn(H, *mut c_void, usize, u64, CompletionCallback, u32) -> i64;
    nbd_aio_pwrite: fn(H, *const c_void, usize, u64, CompletionCallback, u32) -> i64;
    nbd_aio_flush: fn(H, CompletionCallback, u32) -> i64;
    nbd_aio_zero: fn(H, u64, u64, CompletionCallback, u32) -> i64;
    nbd_block_status: fn(H, u64, u64, ExtentCallback, u32) -> c_int;
    nbd_aio_get_fd: fn(H) -> c_int;
    nbd_aio_get_direction: fn(H) -> c_uint;
    nbd_aio_notify_read: fn(H) -> c_int;
    nbd_aio_notify_write: fn(H) -> c_int;
    nbd_aio_in_flight: fn(H) -> c_int;
}

static API: OnceLock<Result<Api, String>> = OnceLock::new();

/// libnbd, loaded on first use; the error names the package to install.
pub fn api() -> Result<&'static Api, String> {
    API.get_or_init(Api::load).as_ref().map_err(Clone::clone)
}

impl Api {
    /// libnbd's message for the last failed call on this thread, and its errno.
    pub fn last_error(&self) -> (String, i32) {
        // SAFETY: a thread-local string owned by libnbd, or NULL.
        let message = unsafe { (self.nbd_get_error)() };
        let text = if message.is_null() {
            "unknown error".to_string()
        } else {
            // SAFETY: NUL-terminated, valid until the next libnbd call here.
            unsafe { CStr::from_ptr(message) }.to_string_lossy().into_owned()
        };
        // SAFETY: no arguments.
        let errno = unsafe { (self.nbd_get_errno)() };
        (text, if errno > 0 { errno } else { libc::EIO })
    }
}

pub fn c_string(text: &str) -> Result<CString, String> {
    CString::new(text).map_err(|_| "the NBD URI contains a NUL byte".to_string())
}

//! OS errors as people read them.

use std::io;

/// "No such file or directory", without Rust's "(os error 2)" suffix.
pub fn describe(error: &io::Error) -> String {
    let text = error.to_string();
    match text.find(" (os error") {
        Some(cut) => text[..cut].to_string(),
        None => text,
    }
}

/// The text of a positive errno.
pub fn describe_errno(errno: i32) -> String {
    describe(&io::Error::from_raw_os_error(errno))
}

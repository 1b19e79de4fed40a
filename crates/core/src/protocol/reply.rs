//! Replies: an errno, or fixed arguments, or data already in the payload.

use super::abi::*;
use vm_memory::ByteValued;

/// The largest fixed reply argument we send (`fuse_attr_out`).
pub const MAX_ARGS: usize = std::mem::size_of::<AttrOut>();

/// A reply before it is framed for a transport. `data_len` counts bytes that
/// the image I/O already put at the start of the request's payload buffer.
#[derive(Debug, Clone, Copy)]
pub struct Reply {
    errno: i32,
    args: [u8; MAX_ARGS],
    args_len: u8,
    data_len: u32,
}

impl Reply {
    pub fn ok() -> Self {
        Self { errno: 0, args: [0; MAX_ARGS], args_len: 0, data_len: 0 }
    }

    /// A failed request; `errno` is positive (EIO, not -EIO).
    pub fn error(errno: i32) -> Self {
        Self { errno, ..Self::ok() }
    }

    pub fn with_args<T: ByteValued>(value: &T) -> Self {
        let bytes = value.as_slice();
        let mut reply = Self::ok();
        reply.args[..bytes.len()].copy_from_slice(bytes);
        reply.args_len = bytes.len() as u8;
        reply
    }

    pub fn with_data(len: u32) -> Self {
        Self { data_len: len, ..Self::ok() }
    }

    pub fn args(&self) -> &[u8] {
        if self.errno != 0 {
            return &[];
        }
        &self.args[..self.args_len as usize]
    }

    pub fn data_len(&self) -> u32 {
        if self.errno != 0 {
            return 0;
        }
        self.data_len
    }

    /// The length of what follows the out-header.
    pub fn body_len(&self) -> u32 {
        self.args().len() as u32 + self.data_len()
    }

    pub fn out_header(&self, unique: u64) -> OutHeader {
        OutHeader { len: OUT_HEADER_SIZE as u32 + self.body_len(), error: -self.errno, unique }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_reply_is_a_bare_header_with_a_negative_errno() {
        let header = Reply::error(libc::ENOSYS).out_header(12);
        assert_eq!(
            header.as_slice(),
            [16u32.to_ne_bytes().as_slice(), &(-38i32).to_ne_bytes(), &12u64.to_ne_bytes()].concat()
        );
    }

    #[test]
    fn fixed_arguments_are_copied_byte_for_byte() {
        let out = WriteOut { size: 4096, padding: 0 };
        let reply = Reply::with_args(&out);
        assert_eq!(reply.args(), [4096u32.to_ne_bytes(), 0u32.to_ne_bytes()].concat().as_slice());
        assert_eq!(reply.out_header(3).len, 24);
    }

    #[test]
    fn data_replies_count_the_payload_and_errors_drop_it() {
        assert_eq!(Reply::with_data(512).out_header(1).len, 16 + 512);
        let mut failed = Reply::with_data(512);
        failed.errno = libc::EIO;
        assert_eq!(failed.out_header(1).len, 16);
        assert_eq!(failed.data_len(), 0);
    }
}

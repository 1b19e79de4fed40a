//! Work that another thread finishes (a metadata lookup, a network round
//! trip): its completion is posted straight into the I/O thread's ring
//! (IORING_OP_MSG_RING) with the request's token, so it comes back to its
//! owner like any other completion, and the I/O thread never polls for it.

use super::ring::Ring;
use super::token::Token;
use io_uring::{opcode, types, IoUring};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

/// A promise to complete `token` on one I/O thread's ring. Post it exactly
/// once: that thread counts it as outstanding and does not end before.
#[must_use = "an unposted Remote keeps its I/O thread from ever finishing"]
#[derive(Debug)]
pub struct Remote {
    ring_fd: RawFd,
    token: Token,
}

impl Ring {
    /// Hands the work of `token` to another thread, which finishes it with
    /// `Poster::post`. The ring outlives it: its thread ends only once every
    /// outstanding completion, this one included, has come back.
    pub fn hand_off(&mut self, token: Token) -> Remote {
        let token = self.expect_completion(token);
        Remote { ring_fd: self.as_raw_fd(), token }
    }

    /// Finishes `remote` from its own I/O thread without a system call: the
    /// completion is delivered by this ring's next `reap`. For work that
    /// ended while the thread itself ran someone else's code (a library's
    /// completion callback, say). Returns `remote` when it belongs to
    /// another thread's ring (then post it with a `Poster`).
    pub fn complete_local(&mut self, remote: Remote, result: i32) -> Result<(), Remote> {
        if remote.ring_fd != self.as_raw_fd() {
            return Err(remote);
        }
        self.push_local(remote.token, result);
        Ok(())
    }
}

/// What a worker thread posts completions with: a small ring of its own.
pub struct Poster {
    ring: IoUring,
}

impl Poster {
    pub fn new() -> io::Result<Self> {
        Ok(Self { ring: IoUring::new(4)? })
    }

    /// A poster for a thread that holds a completion to deliver now: a
    /// failure to make its ring (no memory, no descriptor free) is waited
    /// out, as `post` waits out its own, since the request's owner waits.
    pub fn new_patiently() -> Self {
        let mut pause = RETRY_FIRST;
        loop {
            match Self::new() {
                Ok(poster) => return poster,
                Err(_) => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// Delivers `result` as the completion of `remote`'s token. A transient
    /// failure (the kernel short of memory, the target's completion queue
    /// overflowing, a signal) is retried until it goes through: the
    /// request's owner waits for this completion and would wait forever.
    /// An error is left only when the target ring is gone, and with it
    /// every request that could wait for `remote`.
    pub fn post(&mut self, remote: Remote, result: i32) -> io::Result<()> {
        let mut pause = RETRY_FIRST;
        loop {
            match self.try_post(&remote, result) {
                Err(e) if is_transient(&e) => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(RETRY_MAX);
                }
                outcome => return outcome,
            }
        }
    }

    fn try_post(&mut self, remote: &Remote, result: i32) -> io::Result<()> {
        let message =
            opcode::MsgRingData::new(types::Fd(remote.ring_fd), result, remote.token.user_data(), None).build();
        // SAFETY: the message points at no memory of ours.
        unsafe { self.ring.submission().push(&message) }.map_err(|_| io::Error::from(io::ErrorKind::WouldBlock))?;
        self.ring.submit_and_wait(1)?;
        let sent = self.ring.completion().next().map_or(-libc::EIO, |cqe| cqe.result());
        if sent < 0 {
            return Err(io::Error::from_raw_os_error(-sent));
        }
        Ok(())
    }
}

/// The first pause before a failed post is tried again, and the longest.
const RETRY_FIRST: Duration = Duration::from_micros(50);
const RETRY_MAX: Duration = Duration::from_millis(100);

fn is_transient(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::WouldBlock
        || matches!(
            error.raw_os_error(),
            Some(libc::EAGAIN | libc::EINTR | libc::ENOMEM | libc::EBUSY | libc::EOVERFLOW)
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::ring::Completion;

    #[test]
    fn a_posted_completion_arrives_on_the_owners_ring_with_its_token() {
        let mut ring = Ring::new(8).unwrap();
        let token = Token::new(3, 2, 7);
        let remote = ring.hand_off(token);
        assert_eq!(ring.outstanding(), 1);
        std::thread::spawn(move || Poster::new().unwrap().post(remote, 4096).unwrap()).join().unwrap();
        ring.submit(1);
        let mut completions = Vec::new();
        ring.reap(&mut completions);
        assert_eq!(completions, [Completion::new(token, 4096)]);
        assert_eq!(ring.outstanding(), 0);
    }

    #[test]
    fn a_local_completion_arrives_on_the_next_reap_without_waiting() {
        let mut ring = Ring::new(8).unwrap();
        let token = Token::new(1, 4, 9);
        let remote = ring.hand_off(token);
        ring.complete_local(remote, -5).unwrap();
        ring.submit(1);
        let mut completions = Vec::new();
        ring.reap(&mut completions);
        assert_eq!(completions, [Completion::new(token, -5)]);
        assert_eq!(ring.outstanding(), 0);
        let mut other = Ring::new(8).unwrap();
        let foreign = other.hand_off(token);
        let foreign = ring.complete_local(foreign, 0).unwrap_err();
        other.complete_local(foreign, 0).unwrap();
    }
}

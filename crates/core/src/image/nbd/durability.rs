//! Writes the server acknowledged that no FLUSH has made durable yet. A
//! server that restarts with a write-back cache (or a memory one) may have
//! lost them, and only the next FLUSH can tell the writer: it fails with
//! EIO, as Linux reports a lost writeback at the next fsync. Without that,
//! a write lost across a reconnect would be acknowledged twice over: by the
//! write, then by an fsync that returns 0.
//!
//! Shared by every connection of an export (with multi-conn a FLUSH on any
//! of them covers the writes of all). The write path only reads a flag
//! that is already set.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

#[derive(Default)]
pub struct Durability {
    /// A write, zero or trim was acknowledged since the last FLUSH went out.
    unflushed: AtomicBool,
    /// FLUSHes out that cover acknowledged writes: a connection lost before
    /// they end may have lost those writes too.
    covering: AtomicU32,
    /// A connection was replaced while acknowledged writes were not durable.
    lost: AtomicBool,
}

impl Durability {
    /// The server acknowledged a command that changes data.
    pub fn acknowledged(&self) {
        if !self.unflushed.load(Ordering::Relaxed) {
            self.unflushed.store(true, Ordering::Release);
        }
    }

    /// A FLUSH goes out (once per request, not again when it is re-sent):
    /// whether it covers acknowledged writes.
    pub fn flush_sent(&self) -> bool {
        let covers = self.unflushed.swap(false, Ordering::AcqRel);
        if covers {
            self.covering.fetch_add(1, Ordering::AcqRel);
        }
        covers
    }

    /// The connection's handle was replaced: the server may have restarted
    /// without what it had acknowledged.
    pub fn connection_replaced(&self) {
        if self.unflushed.load(Ordering::Acquire) || self.covering.load(Ordering::Acquire) > 0 {
            self.lost.store(true, Ordering::Release);
        }
    }

    /// A FLUSH ended with `errno` (0: success): the errno its request gets.
    pub fn flush_ended(&self, covered: bool, errno: i32) -> i32 {
        if covered {
            self.covering.fetch_sub(1, Ordering::AcqRel);
            if errno != 0 {
                // What it covered is not known to be durable.
                self.unflushed.store(true, Ordering::Release);
            }
        }
        if self.lost.swap(false, Ordering::AcqRel) {
            return libc::EIO;
        }
        errno
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reconnect_after_unflushed_writes_fails_the_next_flush_once() {
        let durability = Durability::default();
        durability.acknowledged();
        durability.connection_replaced();
        let covers = durability.flush_sent();
        assert!(covers);
        assert_eq!(durability.flush_ended(covers, 0), libc::EIO);
        let covers = durability.flush_sent();
        assert!(!covers);
        assert_eq!(durability.flush_ended(covers, 0), 0, "reported once");
    }

    #[test]
    fn a_flush_out_when_the_connection_goes_fails_once_it_is_sent_again() {
        let durability = Durability::default();
        durability.acknowledged();
        let covers = durability.flush_sent();
        durability.connection_replaced();
        assert_eq!(durability.flush_ended(covers, 0), libc::EIO);
    }

    #[test]
    fn a_reconnect_with_everything_flushed_loses_nothing() {
        let durability = Durability::default();
        durability.acknowledged();
        let covers = durability.flush_sent();
        assert_eq!(durability.flush_ended(covers, 0), 0);
        durability.connection_replaced();
        let covers = durability.flush_sent();
        assert_eq!(durability.flush_ended(covers, 0), 0);
    }

    #[test]
    fn a_failed_flush_leaves_its_writes_unflushed() {
        let durability = Durability::default();
        durability.acknowledged();
        let covers = durability.flush_sent();
        assert_eq!(durability.flush_ended(covers, libc::ENOSPC), libc::ENOSPC);
        durability.connection_replaced();
        let covers = durability.flush_sent();
        assert!(covers);
        assert_eq!(durability.flush_ended(covers, 0), libc::EIO);
    }
}

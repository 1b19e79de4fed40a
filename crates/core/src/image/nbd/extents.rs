//! What the server's `base:allocation` block status says, turned into
//! SEEK_DATA / SEEK_HOLE answers. Pure: the server's replies come in
//! through a closure, so the fuzzer (`fuzz/`) can play a hostile server.

use crate::image::Seek;
use std::io;

/// `base:allocation` extents: (length, flags).
pub type Extents = Vec<(u64, u32)>;

pub use super::ffi::STATE_HOLE;

/// Block status asks for at most this much at a time.
const STATUS_SPAN: u64 = 1 << 30;

/// The extents in libnbd's flat array of (length, flags) pairs; an odd
/// last entry is dropped.
pub fn extents_of(entries: &[u32]) -> impl Iterator<Item = (u64, u32)> + '_ {
    entries.chunks_exact(2).map(|pair| (u64::from(pair[0]), pair[1]))
}

/// SEEK_DATA / SEEK_HOLE from `offset` (below `size`) over the extents
/// `status(position, count)` returns: `Ok(None)` when they cannot be had
/// now (every byte is then data, a true answer), `Err(errno)` on failure.
///
/// A server's extents are trusted for nothing but their flags: a reply
/// that moves no byte forward (no extent, or only empty ones) ends the
/// walk, so a broken server cannot keep the caller asking for ever.
pub fn seek(
    size: u64,
    offset: u64,
    what: Seek,
    mut status: impl FnMut(u64, u64) -> Result<Option<Extents>, i32>,
) -> io::Result<u64> {
    let mut position = offset;
    while position < size {
        let count = (size - position).min(STATUS_SPAN);
        let Some(extents) = status(position, count).map_err(io::Error::from_raw_os_error)? else {
            return Ok(what.all_data(offset, size));
        };
        let start = position;
        for (len, flags) in extents {
            let hole = flags & STATE_HOLE != 0;
            if hole == (what == Seek::Hole) {
                return Ok(position);
            }
            position = position.saturating_add(len);
            if position >= size {
                break;
            }
        }
        if position == start {
            break;
        }
    }
    match what {
        Seek::Data if position >= size => Err(io::Error::from_raw_os_error(libc::ENXIO)),
        Seek::Data => Ok(position),
        Seek::Hole => Ok(size),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// A server whose every reply is `replies[i]`, the last one repeated.
    fn server(replies: Vec<Extents>) -> impl FnMut(u64, u64) -> Result<Option<Extents>, i32> {
        let mut calls = 0;
        move |_, _| {
            calls += 1;
            assert!(calls < 100, "the seek keeps asking");
            Ok(Some(replies[(calls - 1).min(replies.len() - 1)].clone()))
        }
    }

    #[test]
    fn data_and_holes_are_found_across_replies() {
        let replies = vec![vec![(MIB, 0), (MIB, STATE_HOLE)], vec![(2 * MIB, 0)]];
        assert_eq!(seek(4 * MIB, 0, Seek::Hole, server(replies.clone())).unwrap(), MIB);
        assert_eq!(seek(4 * MIB, 0, Seek::Data, server(replies)).unwrap(), 0);
        let hole_then_data = vec![vec![(MIB, STATE_HOLE)], vec![(3 * MIB, 0)]];
        assert_eq!(seek(4 * MIB, 0, Seek::Data, server(hole_then_data)).unwrap(), MIB);
    }

    #[test]
    fn a_hole_to_the_end_has_no_data_and_data_to_the_end_has_the_virtual_hole() {
        assert_eq!(
            seek(MIB, 0, Seek::Data, server(vec![vec![(MIB, STATE_HOLE)]])).unwrap_err().raw_os_error(),
            Some(libc::ENXIO)
        );
        assert_eq!(seek(MIB, 0, Seek::Hole, server(vec![vec![(MIB, 0)]])).unwrap(), MIB);
    }

    #[test]
    fn a_server_that_moves_nothing_forward_ends_the_seek() {
        // Empty extents used to keep the walk asking for ever.
        assert_eq!(seek(MIB, 0, Seek::Hole, server(vec![vec![(0, 0)]])).unwrap(), MIB);
        assert_eq!(seek(MIB, 0, Seek::Data, server(vec![vec![(0, STATE_HOLE)]])).unwrap(), 0);
        assert_eq!(seek(MIB, 0, Seek::Data, server(vec![vec![]])).unwrap(), 0);
    }

    #[test]
    fn a_lost_connection_answers_all_data() {
        assert_eq!(seek(MIB, 5, Seek::Data, |_, _| Ok(None)).unwrap(), 5);
        assert_eq!(seek(MIB, 5, Seek::Hole, |_, _| Ok(None)).unwrap(), MIB);
    }

    #[test]
    fn an_odd_last_entry_is_dropped() {
        assert_eq!(extents_of(&[4096, 1, 512]).collect::<Vec<_>>(), [(4096, 1)]);
    }
}

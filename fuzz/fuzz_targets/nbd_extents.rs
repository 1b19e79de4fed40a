//! SEEK_DATA / SEEK_HOLE over the `base:allocation` block status a
//! hostile NBD server sends: the fuzzer plays the server, each reply a
//! list of (length, flags) as libnbd hands them over.
//!
//! The input: the export's size, the seek's offset and kind, then the
//! replies, each a count of u32 entries and the entries. Properties: no
//! panic; the walk never asks twice from one position (it would loop for
//! ever on a server that repeats itself); the answer lies between the
//! offset and the end.
#![no_main]

use fuse_export_core::image::nbd_extents::{extents_of, seek, Extents};
use fuse_export_core::image::Seek;
use fuse_export_fuzz::Input;
use libfuzzer_sys::fuzz_target;

/// Times the server's list of replies is played before it goes away.
const ROUNDS: usize = 4;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let size = input.u64() & (i64::MAX as u64);
    let offset = input.u64() % size.max(1);
    let what = if input.u8() & 1 == 0 { Seek::Data } else { Seek::Hole };
    let mut replies = Vec::new();
    while !input.is_empty() {
        let count = usize::from(input.u8());
        let entries: Vec<u32> = (0..count).map(|_| input.u32()).collect();
        replies.push(extents_of(&entries).collect::<Extents>());
    }
    if size == 0 {
        return;
    }
    let mut asked = Vec::new();
    let mut played = replies.iter().cycle().take(replies.len() * ROUNDS);
    let answer = seek(size, offset, what, |position, count| {
        assert!(count > 0 && position < size && position + count <= size, "asked {count} from {position}");
        assert!(!asked.contains(&position), "asked again from {position}: the walk would never end");
        asked.push(position);
        Ok(played.next().cloned())
    });
    if let Ok(found) = answer {
        assert!(found >= offset && found <= size, "{what:?} from {offset} in {size} found {found}");
    }
});

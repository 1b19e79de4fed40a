//! INIT: what we negotiate with the kernel.

use crate::protocol::abi::*;

/// What INIT settled: the flags both sides agreed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    pub flags: u64,
}

impl Negotiated {
    pub fn over_io_uring(&self) -> bool {
        self.flags & init_flag::OVER_IO_URING != 0
    }

    pub fn passthrough(&self) -> bool {
        self.flags & init_flag::PASSTHROUGH != 0
    }
}

const WANTED: u64 = init_flag::ASYNC_READ
    | init_flag::ATOMIC_O_TRUNC
    | init_flag::BIG_WRITES
    | init_flag::ASYNC_DIO
    | init_flag::MAX_PAGES
    | init_flag::INIT_EXT
    | init_flag::DIRECT_IO_ALLOW_MMAP;

/// Parallel direct I/O from fio-like callers travels as background requests:
/// a low limit would serialise them in the kernel.
const MAX_BACKGROUND: u16 = 512;

/// What we ask for beyond the basics, when the kernel offers it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wanted {
    pub io_uring: bool,
    pub passthrough: bool,
}

/// Backing files stacked under ours: the image's own file system is one
/// level (0 or 3 leave passthrough silently off).
const MAX_STACK_DEPTH: u32 = 1;

/// Builds the INIT reply, asking for what `wanted` names if it is offered.
pub fn negotiate(arg: &InitIn, offered: u64, extras: Wanted) -> Result<(InitOut, Negotiated), i32> {
    if arg.major != KERNEL_MAJOR {
        return Err(libc::EPROTO);
    }
    let minor = arg.minor.min(KERNEL_MINOR);
    let mut wanted = WANTED;
    if extras.io_uring {
        wanted |= init_flag::OVER_IO_URING;
    }
    if extras.passthrough {
        wanted |= init_flag::PASSTHROUGH;
    }
    if minor < MINOR_WITH_INIT_EXT {
        wanted &= u64::from(u32::MAX);
    }
    let flags = offered & wanted;
    let out = InitOut {
        major: KERNEL_MAJOR,
        minor,
        max_readahead: arg.max_readahead,
        flags: flags as u32,
        max_background: MAX_BACKGROUND,
        congestion_threshold: MAX_BACKGROUND / 4 * 3,
        max_write: MAX_WRITE,
        time_gran: 1,
        max_pages: MAX_PAGES,
        map_alignment: 0,
        flags2: (flags >> 32) as u32,
        // The first of these is max_stack_depth.
        unused: [if flags & init_flag::PASSTHROUGH != 0 { MAX_STACK_DEPTH } else { 0 }, 0, 0, 0, 0, 0, 0],
    };
    Ok((out, Negotiated { flags }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::ByteValued;

    const RING: Wanted = Wanted { io_uring: true, passthrough: false };

    fn init_in(minor: u32) -> InitIn {
        InitIn { major: 7, minor, max_readahead: 128 << 10, flags: 0 }
    }

    #[test]
    fn only_offered_flags_are_echoed_and_the_ring_only_when_wanted() {
        let offered = u64::MAX;
        let (out, negotiated) = negotiate(&init_in(45), offered, Wanted::default()).unwrap();
        assert_eq!(negotiated.flags, WANTED);
        assert_eq!(out.flags2 & (1 << 9), 0);
        assert_eq!(out.flags2 & (1 << 4), 1 << 4, "DIRECT_IO_ALLOW_MMAP");
        let (out, negotiated) = negotiate(&init_in(45), offered, RING).unwrap();
        assert!(negotiated.over_io_uring());
        assert_eq!(out.flags2 & (1 << 9), 1 << 9);
        let (_, negotiated) = negotiate(&init_in(45), WANTED, RING).unwrap();
        assert!(!negotiated.over_io_uring(), "not offered, not taken");
    }

    #[test]
    fn the_reply_encodes_byte_for_byte() {
        let offered = init_flag::ASYNC_READ | init_flag::MAX_PAGES | init_flag::INIT_EXT | init_flag::OVER_IO_URING;
        let (out, _) = negotiate(&init_in(45), offered, RING).unwrap();
        let bytes = out.as_slice();
        assert_eq!(&bytes[0..4], &7u32.to_ne_bytes());
        assert_eq!(&bytes[4..8], &45u32.to_ne_bytes());
        assert_eq!(&bytes[12..16], &((1u32 << 0) | (1 << 22) | (1 << 30)).to_ne_bytes());
        assert_eq!(&bytes[20..24], &(1u32 << 20).to_ne_bytes(), "max_write 1 MiB");
        assert_eq!(&bytes[28..30], &256u16.to_ne_bytes(), "max_pages");
        assert_eq!(&bytes[32..36], &(1u32 << 9).to_ne_bytes(), "flags2");
    }

    #[test]
    fn passthrough_asks_for_one_stacking_level_only_when_offered_and_wanted() {
        let wanted = Wanted { io_uring: false, passthrough: true };
        let (out, negotiated) = negotiate(&init_in(45), u64::MAX, wanted).unwrap();
        assert!(negotiated.passthrough());
        let bytes = out.as_slice();
        assert_eq!(
            &bytes[32..36],
            &((1u32 << 5) | (1 << 4)).to_ne_bytes(),
            "flags2: PASSTHROUGH, DIRECT_IO_ALLOW_MMAP"
        );
        assert_eq!(&bytes[36..40], &1u32.to_ne_bytes(), "max_stack_depth");
        let (out, negotiated) = negotiate(&init_in(45), WANTED, wanted).unwrap();
        assert!(!negotiated.passthrough(), "not offered, not taken");
        assert_eq!(out.unused[0], 0);
        let (_, negotiated) = negotiate(&init_in(45), u64::MAX, Wanted::default()).unwrap();
        assert!(!negotiated.passthrough(), "offered, not wanted");
    }

    #[test]
    fn old_kernels_get_no_flags2_and_wrong_majors_eproto() {
        let (out, _) = negotiate(&init_in(31), u64::MAX, RING).unwrap();
        assert_eq!(out.flags2, 0);
        assert_eq!(out.minor, 31);
        let wrong = InitIn { major: 8, ..init_in(45) };
        assert_eq!(negotiate(&wrong, 0, Wanted::default()).unwrap_err(), libc::EPROTO);
    }
}

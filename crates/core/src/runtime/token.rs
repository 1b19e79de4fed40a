//! The user_data of every SQE: what the completion belongs to.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Tag {
    /// A read of /dev/fuse into a legacy slot.
    FuseRead = 1,
    /// A reply written to /dev/fuse from a legacy slot.
    Reply = 2,
    /// Image I/O for a request.
    ImageIo = 3,
    /// The worker's wake-up eventfd.
    Wake = 4,
    /// An ASYNC_CANCEL of an armed read.
    Cancel = 5,
    /// REGISTER or COMMIT_AND_FETCH of a ring entry.
    RingCommand = 6,
}

/// `tag` in the top byte, the channel (fd or ring queue) in the next 16
/// bits, the slot in the low 32.
pub fn encode(tag: Tag, channel: u16, slot: u32) -> u64 {
    (tag as u64) << 56 | u64::from(channel) << 32 | u64::from(slot)
}

pub fn decode(user_data: u64) -> Option<(Tag, u16, u32)> {
    let tag = match (user_data >> 56) as u8 {
        1 => Tag::FuseRead,
        2 => Tag::Reply,
        3 => Tag::ImageIo,
        4 => Tag::Wake,
        5 => Tag::Cancel,
        6 => Tag::RingCommand,
        _ => return None,
    };
    Some((tag, (user_data >> 32) as u16, user_data as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        let token = encode(Tag::ImageIo, 513, u32::MAX - 1);
        assert_eq!(decode(token), Some((Tag::ImageIo, 513, u32::MAX - 1)));
        assert_eq!(decode(0), None);
    }
}

//! The user_data of every SQE: which owner a completion goes back to. The
//! runtime reads only the channel; what `kind` and `slot` mean is the
//! owner's business.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token(u64);

/// The runtime's own SQEs (its wake-up read) use this channel; owners never do.
pub(super) const RUNTIME_CHANNEL: u16 = u16::MAX;

impl Token {
    /// `kind` in the top byte, `channel` in the next 16 bits, `slot` in the low 32.
    pub const fn new(kind: u8, channel: u16, slot: u32) -> Self {
        Self((kind as u64) << 56 | (channel as u64) << 32 | slot as u64)
    }

    pub const fn from_user_data(user_data: u64) -> Self {
        Self(user_data)
    }

    pub const fn user_data(self) -> u64 {
        self.0
    }

    pub const fn kind(self) -> u8 {
        (self.0 >> 56) as u8
    }

    pub const fn channel(self) -> u16 {
        (self.0 >> 32) as u16
    }

    pub const fn slot(self) -> u32 {
        self.0 as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        let token = Token::from_user_data(Token::new(3, 513, u32::MAX - 1).user_data());
        assert_eq!((token.kind(), token.channel(), token.slot()), (3, 513, u32::MAX - 1));
    }
}

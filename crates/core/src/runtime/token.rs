//! The user_data of every SQE: which tenant of a thread (an export) and
//! which of its owners a completion goes back to. The runtime reads the
//! tenant; what `kind`, `channel` and `slot` mean is the tenant's business.
//! Owners build tokens without a tenant; the ring stamps the tenant it is
//! serving when the SQE goes in and takes it off again on the way back.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token(u64);

/// Bits of each field, from the top: kind, tenant, channel, slot.
const KIND_BITS: u32 = 4;
const TENANT_BITS: u32 = 14;
const CHANNEL_BITS: u32 = 14;
const SLOT_BITS: u32 = 32;
const CHANNEL_SHIFT: u32 = SLOT_BITS;
const TENANT_SHIFT: u32 = CHANNEL_SHIFT + CHANNEL_BITS;
const KIND_SHIFT: u32 = TENANT_SHIFT + TENANT_BITS;
const _: () = assert!(KIND_SHIFT + KIND_BITS == 64);

/// The highest kind, channel and tenant a token holds.
pub const KIND_MAX: u8 = (1 << KIND_BITS) - 1;
pub const CHANNEL_MAX: u16 = (1 << CHANNEL_BITS) - 1;
pub const TENANT_MAX: u16 = (1 << TENANT_BITS) - 1;

/// The runtime's own SQEs (its wake-up read) are tenant 0; tenants are
/// numbered from 1.
pub(super) const RUNTIME_TENANT: u16 = 0;

impl Token {
    pub const fn new(kind: u8, channel: u16, slot: u32) -> Self {
        assert!(kind <= KIND_MAX && channel <= CHANNEL_MAX);
        Self((kind as u64) << KIND_SHIFT | (channel as u64) << CHANNEL_SHIFT | slot as u64)
    }

    pub const fn from_user_data(user_data: u64) -> Self {
        Self(user_data)
    }

    pub const fn user_data(self) -> u64 {
        self.0
    }

    pub const fn kind(self) -> u8 {
        (self.0 >> KIND_SHIFT) as u8
    }

    pub const fn channel(self) -> u16 {
        (self.0 >> CHANNEL_SHIFT) as u16 & CHANNEL_MAX
    }

    pub const fn slot(self) -> u32 {
        self.0 as u32
    }

    pub(super) const fn tenant(self) -> u16 {
        (self.0 >> TENANT_SHIFT) as u16 & TENANT_MAX
    }

    pub(super) const fn with_tenant(self, tenant: u16) -> Self {
        Self(self.without_tenant().0 | (tenant as u64) << TENANT_SHIFT)
    }

    pub(super) const fn without_tenant(self) -> Self {
        Self(self.0 & !((TENANT_MAX as u64) << TENANT_SHIFT))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        let token = Token::from_user_data(Token::new(KIND_MAX, CHANNEL_MAX, u32::MAX - 1).user_data());
        assert_eq!(
            (token.kind(), token.channel(), token.slot(), token.tenant()),
            (KIND_MAX, CHANNEL_MAX, u32::MAX - 1, 0)
        );
    }

    #[test]
    fn the_tenant_goes_on_and_off_without_touching_the_rest() {
        let token = Token::new(3, 513, 7);
        let stamped = token.with_tenant(TENANT_MAX);
        assert_eq!((stamped.kind(), stamped.channel(), stamped.slot(), stamped.tenant()), (3, 513, 7, TENANT_MAX));
        assert_eq!(stamped.with_tenant(5).tenant(), 5);
        assert_eq!(stamped.without_tenant(), token);
    }
}

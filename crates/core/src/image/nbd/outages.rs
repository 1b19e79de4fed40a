//! What the user hears about the connections to one server. With
//! multi-conn every I/O thread has its own connection, and all of them see
//! the server go: the loss is told when the first goes, the return when the
//! last is back, and the expired delay once per outage.

#[derive(Debug, Default)]
pub struct Outages {
    /// Connections lost and not yet back.
    down: usize,
    expiry_told: bool,
}

impl Outages {
    /// A connection was lost: whether to tell.
    pub fn lost(&mut self) -> bool {
        self.down += 1;
        if self.down == 1 {
            self.expiry_told = false;
        }
        self.down == 1
    }

    /// A lost connection is back: whether to tell (the last one is).
    pub fn restored(&mut self) -> bool {
        self.down = self.down.saturating_sub(1);
        self.down == 0
    }

    /// A lost connection's delay ran out: whether to tell.
    pub fn expired(&mut self) -> bool {
        !std::mem::replace(&mut self.expiry_told, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_connection_tells_each_step() {
        let mut outages = Outages::default();
        assert!(outages.lost());
        assert!(outages.expired());
        assert!(outages.restored());
    }

    #[test]
    fn many_connections_tell_the_first_loss_and_the_last_return_once() {
        let mut outages = Outages::default();
        assert!(outages.lost());
        assert!(!outages.lost());
        assert!(outages.expired());
        assert!(!outages.expired());
        assert!(!outages.restored());
        assert!(outages.restored());
    }

    #[test]
    fn a_new_outage_tells_its_expiry_again() {
        let mut outages = Outages::default();
        outages.lost();
        outages.expired();
        outages.restored();
        assert!(outages.lost());
        assert!(outages.expired());
    }
}

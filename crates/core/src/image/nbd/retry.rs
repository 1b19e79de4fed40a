//! The clock of a lost connection, with no I/O: how long to wait between
//! attempts to reconnect, and when the commands kept for the server stop
//! waiting for it.

use std::time::{Duration, Instant};

/// The first pause between attempts. A server that restarts is back within
/// a second or two, and a refused connect costs next to nothing.
const FIRST_PAUSE: Duration = Duration::from_millis(200);
/// The longest pause: an absent server costs an attempt every 5 s, and one
/// that returns is served again within 5 s.
const LONGEST_PAUSE: Duration = Duration::from_secs(5);

/// Pauses that double from `FIRST_PAUSE` up to `LONGEST_PAUSE`.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    pub fn new() -> Self {
        Self { next: FIRST_PAUSE }
    }

    /// The pause before the next attempt.
    pub fn pause(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(LONGEST_PAUSE);
        pause
    }
}

/// A connection lost at some instant: its commands wait until `deadline`
/// (the reconnect delay later), then fail, and so do new ones until the
/// server is back.
#[derive(Debug)]
pub struct Outage {
    deadline: Instant,
    expired: bool,
}

impl Outage {
    pub fn new(lost_at: Instant, delay: Duration) -> Self {
        Self { deadline: lost_at + delay, expired: false }
    }

    /// Whether commands still wait for the server.
    pub fn keeps_commands(&self) -> bool {
        !self.expired
    }

    /// How long commands may still wait, while they do.
    pub fn left(&self, now: Instant) -> Option<Duration> {
        (!self.expired).then(|| self.deadline.saturating_duration_since(now))
    }

    /// Marks the outage expired when its delay has run out (or at once when
    /// the export stops: nobody waits for a server then). True only the
    /// first time.
    pub fn expire(&mut self, now: Instant, stopping: bool) -> bool {
        if self.expired || (now < self.deadline && !stopping) {
            return false;
        }
        self.expired = true;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_longest() {
        let mut backoff = Backoff::new();
        let pauses: Vec<u64> = (0..8).map(|_| backoff.pause().as_millis() as u64).collect();
        assert_eq!(pauses, [200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
    }

    #[test]
    fn commands_wait_until_the_delay_has_passed_since_the_loss() {
        let lost = Instant::now();
        let mut outage = Outage::new(lost, Duration::from_secs(2));
        assert!(outage.keeps_commands());
        assert_eq!(outage.left(lost + Duration::from_millis(500)), Some(Duration::from_millis(1500)));
        assert!(!outage.expire(lost + Duration::from_millis(1999), false));
        assert!(outage.keeps_commands());
        assert!(outage.expire(lost + Duration::from_secs(2), false));
        assert!(!outage.keeps_commands());
        assert_eq!(outage.left(lost + Duration::from_secs(3)), None);
        assert!(!outage.expire(lost + Duration::from_secs(3), false), "expires once");
    }

    #[test]
    fn a_stop_ends_the_wait_at_once() {
        let lost = Instant::now();
        let mut outage = Outage::new(lost, Duration::from_secs(60));
        assert!(outage.expire(lost, true));
        assert!(!outage.keeps_commands());
    }

    #[test]
    fn a_deadline_already_past_leaves_no_time() {
        let lost = Instant::now();
        let outage = Outage::new(lost, Duration::from_secs(1));
        assert_eq!(outage.left(lost + Duration::from_secs(5)), Some(Duration::ZERO));
    }
}

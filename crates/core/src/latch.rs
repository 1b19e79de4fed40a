//! A value set once and waited for: INIT's outcome, the ring's registration.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

pub struct Latch<T> {
    state: Mutex<Option<T>>,
    changed: Condvar,
}

impl<T> Default for Latch<T> {
    fn default() -> Self {
        Self { state: Mutex::new(None), changed: Condvar::new() }
    }
}

impl<T: Clone> Latch<T> {
    /// Sets the value; false (and no change) if it was set before.
    pub fn set(&self, value: T) -> bool {
        let mut state = self.state.lock().unwrap();
        if state.is_some() {
            return false;
        }
        *state = Some(value);
        self.changed.notify_all();
        true
    }

    pub fn get(&self) -> Option<T> {
        self.state.lock().unwrap().clone()
    }

    pub fn wait(&self, timeout: Duration) -> Option<T> {
        let state = self.state.lock().unwrap();
        let (state, _) = self.changed.wait_timeout_while(state, timeout, |s| s.is_none()).unwrap();
        state.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_value_wins() {
        let latch = Latch::default();
        assert_eq!(latch.wait(Duration::from_millis(1)), None);
        assert!(latch.set(1));
        assert!(!latch.set(2));
        assert_eq!(latch.get(), Some(1));
    }
}

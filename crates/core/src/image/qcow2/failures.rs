//! Why recent requests failed, in words: the request core reports the
//! first failure of each errno, and an errno alone does not say which file
//! is truncated or which table entry is corrupt. The backend notes the
//! reason under the request's offset; the core asks for it when it reports.

use std::collections::VecDeque;
use std::sync::Mutex;

/// Reasons kept: enough for the failures in flight at once; the core asks
/// right after the failure, so older ones are never wanted.
const KEPT: usize = 16;

#[derive(Default)]
pub struct Failures {
    recent: Mutex<VecDeque<(u64, String)>>,
}

impl Failures {
    /// Notes why the request at guest offset `request` failed.
    pub fn note(&self, request: u64, reason: String) {
        let mut recent = self.recent.lock().unwrap();
        if recent.len() == KEPT {
            recent.pop_front();
        }
        recent.push_back((request, reason));
    }

    /// The reason noted for the request at `request`, taken out.
    pub fn take(&self, request: u64) -> Option<String> {
        let mut recent = self.recent.lock().unwrap();
        let at = recent.iter().rposition(|(offset, _)| *offset == request)?;
        recent.remove(at).map(|(_, reason)| reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_is_found_by_its_request_once_and_old_ones_go() {
        let failures = Failures::default();
        failures.note(4096, "first".into());
        assert_eq!(failures.take(0), None);
        assert_eq!(failures.take(4096).as_deref(), Some("first"));
        assert_eq!(failures.take(4096), None);
        for n in 0..=KEPT as u64 {
            failures.note(n, format!("{n}"));
        }
        assert_eq!(failures.take(0), None, "the oldest went");
        assert_eq!(failures.take(KEPT as u64).as_deref(), Some(&*format!("{KEPT}")));
    }
}

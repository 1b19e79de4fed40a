//! The export's health, shared by every layer that can change it: halted
//! (no more requests served), disconnected (the kernel connection ended),
//! and the events that tell JavaScript so. Never a single request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The kernel connection ended: unmounted (from outside, or by us once
    /// the last user closed the file), or aborted.
    Disconnected,
    /// A fatal error: no more requests are served.
    Halted(String),
    /// Something the user should know that does not stop the export;
    /// `kind` names it for scripts.
    Warning { kind: &'static str, message: String },
}

pub type EventSink = Box<dyn Fn(Event) + Send + Sync>;

pub struct Status {
    halted: AtomicBool,
    disconnected: AtomicBool,
    halt_reason: Mutex<Option<String>>,
    events: EventSink,
}

impl Status {
    pub fn new(events: EventSink) -> Self {
        Self {
            halted: AtomicBool::new(false),
            disconnected: AtomicBool::new(false),
            halt_reason: Mutex::new(None),
            events,
        }
    }

    pub fn is_halted(&self) -> bool {
        self.halted.load(Ordering::Acquire)
    }

    pub fn halt_reason(&self) -> Option<String> {
        self.halt_reason.lock().unwrap().clone()
    }

    /// Stops serving for good and says why. Only the first reason is kept.
    pub fn halt(&self, reason: impl Into<String>) {
        if self.halted.swap(true, Ordering::AcqRel) {
            return;
        }
        let reason = reason.into();
        *self.halt_reason.lock().unwrap() = Some(reason.clone());
        (self.events)(Event::Halted(reason));
    }

    pub fn warn(&self, kind: &'static str, message: impl Into<String>) {
        (self.events)(Event::Warning { kind, message: message.into() });
    }

    /// Reported once however many threads see it.
    pub fn disconnected(&self) {
        if !self.disconnected.swap(true, Ordering::AcqRel) {
            (self.events)(Event::Disconnected);
        }
    }

    pub fn is_disconnected(&self) -> bool {
        self.disconnected.load(Ordering::Acquire)
    }
}

//! The connection that answers SEEK_DATA / SEEK_HOLE for an export whose
//! data connections ask for simple replies (those carry no block status):
//! the first connection, kept with its structured replies and
//! `base:allocation`. Its calls are synchronous (seeks are rare). When the
//! server goes, a helper thread connects again; until then every byte is
//! data, which is a true answer.

use super::connection::request_errno;
use super::extents::Extents;
use super::handle::Handle;
use super::reconnect::{Reconnector, Target};
use std::sync::{Arc, Mutex, MutexGuard};

pub struct StatusConnection {
    /// Asks for structured replies.
    target: Arc<Target>,
    state: Mutex<State>,
}

struct State {
    handle: Option<Handle>,
    /// While the handle is lost.
    reconnector: Option<Reconnector>,
}

impl StatusConnection {
    pub fn new(handle: Handle, target: Arc<Target>) -> Self {
        Self { target, state: Mutex::new(State { handle: Some(handle), reconnector: None }) }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The extents from `offset`; none while the connection is lost.
    pub fn extents(&self, offset: u64, count: u64) -> Result<Option<Extents>, i32> {
        let mut state = self.lock();
        if let Some(handle) = state.reconnector.as_ref().and_then(Reconnector::take) {
            state.handle = Some(handle);
            state.reconnector = None;
        }
        if let Some(handle) = &state.handle {
            match handle.block_status(offset, count) {
                Ok(extents) => return Ok(Some(extents)),
                Err(errno) if !handle.is_dead() => return Err(request_errno(errno)),
                Err(_) => state.handle = None,
            }
        }
        if state.reconnector.is_none() {
            // Not started (no thread to be had): tried again at the next seek.
            state.reconnector = Reconnector::start(self.target.clone(), None).ok();
        }
        Ok(None)
    }
}

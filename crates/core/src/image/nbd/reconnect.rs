//! Reconnecting on a helper thread. libnbd's connect resolves TCP names with
//! getaddrinfo, which blocks, and a server that does not answer takes until
//! the connect deadline: neither may hold up an I/O thread's ring, where
//! requests (and the expiry of the reconnect delay) are served meanwhile.
//! The thread tries until it has a connection to the same export, then
//! hands it over and wakes the I/O thread through the connection's eventfd.

use super::connection::Kick;
use super::ffi::Api;
use super::handle::{Export, Handle, Replies};
use super::retry::Backoff;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Each attempt gives up after this (the same bound as at start).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where to reconnect to and what must be found there.
pub struct Target {
    pub api: &'static Api,
    /// The user's URI, secrets and all.
    pub uri: String,
    pub address: String,
    /// The export as first found: a server that came back must match it.
    pub export: Export,
    pub writable: bool,
    pub replies: Replies,
}

#[derive(Default)]
struct Found {
    /// A connection to the same export, not yet taken.
    handle: Option<Handle>,
    /// Why the last server that answered was refused, not yet told.
    refused: Option<String>,
    /// Nobody wants a connection any more: the thread ends.
    abandoned: bool,
}

#[derive(Default)]
struct Shared {
    found: Mutex<Found>,
    abandoned: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Found> {
        self.found.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One reconnecting helper thread; dropping it lets the thread end (after
/// the attempt it may be in).
pub struct Reconnector {
    shared: Arc<Shared>,
}

impl Reconnector {
    /// `wake` hears of each server that answered, taken or refused.
    pub fn start(target: Arc<Target>, wake: Option<Kick>) -> std::io::Result<Reconnector> {
        let shared = Arc::new(Shared::default());
        let theirs = shared.clone();
        std::thread::Builder::new().name("nbd-reconnect".into()).spawn(move || reconnect(&target, &theirs, &wake))?;
        Ok(Reconnector { shared })
    }

    /// The new connection, once there is one.
    pub fn take(&self) -> Option<Handle> {
        self.shared.lock().handle.take()
    }

    /// Why a server that answered was not taken, once per refusal.
    pub fn take_refusal(&self) -> Option<String> {
        self.shared.lock().refused.take()
    }
}

impl Drop for Reconnector {
    fn drop(&mut self) {
        self.shared.lock().abandoned = true;
        self.shared.abandoned.notify_all();
    }
}

fn reconnect(target: &Target, shared: &Shared, wake: &Option<Kick>) {
    let mut backoff = Backoff::new();
    loop {
        let deadline = Instant::now() + ATTEMPT_TIMEOUT;
        if let Ok((handle, export)) =
            Handle::connect(target.api, &target.uri, &target.address, target.replies, deadline)
        {
            let mut found = shared.lock();
            match target.export.replacement_refused(&export, target.writable) {
                None => found.handle = Some(handle),
                Some(why) => found.refused = Some(why),
            }
            let done = found.handle.is_some();
            drop(found);
            if let Some(wake) = wake {
                wake.kick();
            }
            if done {
                return;
            }
        }
        let found = shared.lock();
        let pause = backoff.pause();
        let found =
            shared.abandoned.wait_timeout_while(found, pause, |f| !f.abandoned).unwrap_or_else(|e| e.into_inner()).0;
        if found.abandoned {
            return;
        }
    }
}

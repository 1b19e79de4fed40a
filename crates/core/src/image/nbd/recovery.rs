//! A lost connection, on the I/O thread that drives it, when the export has
//! a reconnect delay: the commands that failed with the connection are
//! kept, a helper thread reconnects (`reconnect.rs`), and on success they
//! are sent again; once the delay has passed they fail with EIO, and so do
//! new ones, until the server is back (the helper keeps trying, as QEMU
//! does). The export never halts for a lost server then.

use super::connection::Connection;
use super::outages::Outages;
use super::reconnect::{Reconnector, Target};
use super::retry::Outage;
use crate::image::Notice;
use crate::runtime::remote::Poster;
use crate::runtime::ring::Ring;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Recovery {
    target: Arc<Target>,
    delay: Duration,
    /// Shared by the export's connections: what the user is told.
    outages: Arc<Mutex<Outages>>,
    /// While the connection is lost.
    outage: Option<Outage>,
    lost_at: Instant,
    reconnector: Option<Reconnector>,
    /// Commands that failed with the lost connection, to be sent again.
    kept: Vec<u32>,
    notices: Vec<Notice>,
}

impl Recovery {
    pub fn new(target: Arc<Target>, delay: Duration, outages: Arc<Mutex<Outages>>) -> Self {
        Self {
            target,
            delay,
            outages,
            outage: None,
            lost_at: Instant::now(),
            reconnector: None,
            kept: Vec::new(),
            notices: Vec::new(),
        }
    }

    /// How long kept commands may still wait, while they do.
    pub fn time_left(&self) -> Option<Duration> {
        self.outage.as_ref().and_then(|outage| outage.left(Instant::now()))
    }

    /// Nothing of the export's is waiting here.
    pub fn idle(&self) -> bool {
        self.kept.is_empty()
    }

    pub fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.notices)
    }

    /// Delivers what ended, and moves the connection on: lost, back,
    /// delay expired. Kept commands go out again as soon as it is up.
    pub fn settle(&mut self, connection: &Connection, ring: &mut Ring, poster: &mut Option<Poster>, stopping: bool) {
        loop {
            if self.outage.is_none() && connection.is_dead() {
                self.lose();
            }
            if self.outage.is_some() {
                self.restore(connection, stopping);
            }
            if stopping {
                // Nobody waits for a server once the export stops.
                self.reconnector = None;
            }
            self.expire(connection, stopping);
            let keep = self.outage.as_ref().is_none_or(Outage::keeps_commands);
            self.kept.extend(connection.deliver(ring, poster, keep));
            if self.outage.is_none() && !connection.is_dead() && !self.kept.is_empty() {
                // Sending may find the new connection dead already: round again.
                connection.resend(std::mem::take(&mut self.kept));
                continue;
            }
            break;
        }
    }

    fn lose(&mut self) {
        self.lost_at = Instant::now();
        self.outage = Some(Outage::new(self.lost_at, self.delay));
        if self.outages().lost() {
            let (address, delay) = (&self.target.address, self.delay.as_secs_f64());
            self.tell(
                "nbd-lost",
                format!("lost the connection to the NBD server at {address}; requests wait up to {delay} s for it to come back (--reconnect-delay)"),
            );
        }
    }

    /// Takes the helper's new connection, if it has one; starts the helper
    /// if there is none yet.
    fn restore(&mut self, connection: &Connection, stopping: bool) {
        let Some(reconnector) = &self.reconnector else {
            if !stopping {
                self.start_reconnecting(connection);
            }
            return;
        };
        let (refusal, handle) = (reconnector.take_refusal(), reconnector.take());
        if let Some(why) = refusal {
            let address = &self.target.address;
            self.tell(
                "nbd-refused",
                format!("the NBD server at {address} answered but cannot stand in for the export: {why}; still trying"),
            );
        }
        let Some(handle) = handle else { return };
        connection.replace(handle);
        self.reconnector = None;
        self.outage = None;
        if self.outages().restored() {
            let (address, after) = (&self.target.address, self.lost_at.elapsed().as_secs_f64());
            self.tell(
                "nbd-reconnected",
                format!("reconnected to the NBD server at {address} after {after:.1} s; serving again"),
            );
        }
    }

    fn start_reconnecting(&mut self, connection: &Connection) {
        match connection.kick().try_clone().and_then(|wake| Reconnector::start(self.target.clone(), Some(wake))) {
            Ok(reconnector) => self.reconnector = Some(reconnector),
            // Tried again at the next turn; until then the delay runs.
            Err(e) => self.tell("nbd-lost", format!("cannot start reconnecting to the NBD server yet: {e}")),
        }
    }

    fn expire(&mut self, connection: &Connection, stopping: bool) {
        let Some(outage) = &mut self.outage else { return };
        if !outage.expire(Instant::now(), stopping) {
            return;
        }
        connection.fail(std::mem::take(&mut self.kept));
        if !stopping && self.outages().expired() {
            let (address, delay) = (&self.target.address, self.delay.as_secs_f64());
            self.tell(
                "nbd-delay-expired",
                format!("the NBD server at {address} did not come back within {delay} s: requests fail with EIO until it does (still trying)"),
            );
        }
    }

    fn outages(&self) -> std::sync::MutexGuard<'_, Outages> {
        self.outages.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn tell(&mut self, kind: &'static str, message: String) {
        self.notices.push(Notice { kind, message });
    }
}

//! The owner of a connection on its I/O thread: keeps the socket polled in
//! the direction libnbd wants and tells libnbd when it is ready. When the
//! server goes, the export halts, or, with a reconnect delay, `Recovery`
//! keeps its commands until the connection is back or the delay is over
//! (a timeout on the ring marks that moment).

use super::connection::Connection;
use super::ffi;
use super::recovery::Recovery;
use crate::image::Notice;
use crate::runtime::control::Phase;
use crate::runtime::remote::Poster;
use crate::runtime::ring::Ring;
use crate::runtime::token::Token;
use io_uring::{opcode, types};
use std::sync::Arc;

/// Token kinds on the backend's channel. A poll's slot is the generation
/// of the handle whose socket it watches.
const POLL_IN: u8 = 1;
const POLL_OUT: u8 = 2;
const KICKED: u8 = 3;
const CANCEL: u8 = 4;
const DELAY_OVER: u8 = 5;

#[derive(Default)]
struct Armed {
    armed: bool,
    cancelling: bool,
}

impl Armed {
    fn arm(&mut self, ring: &mut Ring, entry: io_uring::squeue::Entry, token: Token) {
        if !self.armed {
            ring.push(entry, token);
            self.armed = true;
            self.cancelling = false;
        }
    }

    /// Cancels the SQE armed with `token` (any slot: the cancel matches the
    /// whole token, so it is the one given at arming).
    fn cancel(&mut self, ring: &mut Ring, token: Token) {
        if self.armed && !self.cancelling {
            ring.cancel(token, Token::new(CANCEL, token.channel(), 0));
            self.cancelling = true;
        }
    }
}

pub struct Driver {
    connection: Arc<Connection>,
    address: String,
    channel: u16,
    read: Armed,
    write: Armed,
    kicked: Armed,
    delay_over: Armed,
    /// The tokens the polls were armed with (their slot is a generation).
    read_token: Token,
    write_token: Token,
    kick_buffer: Box<u64>,
    /// Read by the kernel when the DELAY_OVER timeout is submitted.
    delay_left: Box<types::Timespec>,
    poster: Option<Poster>,
    gone_reported: bool,
    /// With a reconnect delay.
    recovery: Option<Recovery>,
    stopping: bool,
}

impl Driver {
    pub fn new(connection: Arc<Connection>, address: String, channel: u16, recovery: Option<Recovery>) -> Self {
        Self {
            connection,
            address,
            channel,
            read: Armed::default(),
            write: Armed::default(),
            kicked: Armed::default(),
            delay_over: Armed::default(),
            read_token: Token::new(POLL_IN, channel, 0),
            write_token: Token::new(POLL_OUT, channel, 0),
            kick_buffer: Box::new(0),
            delay_left: Box::new(types::Timespec::new()),
            poster: None,
            gone_reported: false,
            recovery,
            stopping: false,
        }
    }

    fn token(&self, kind: u8) -> Token {
        Token::new(kind, self.channel, 0)
    }

    pub fn take_notices(&mut self) -> Vec<Notice> {
        self.recovery.as_mut().map(Recovery::take_notices).unwrap_or_default()
    }

    pub fn prepare(&mut self, ring: &mut Ring, phase: Phase) -> Result<(), String> {
        self.stopping = phase == Phase::Stopping;
        self.settle(ring);
        let connection = self.connection.clone();
        let dead = connection.is_dead() && self.recovery.is_none();
        let idle = self.recovery.as_ref().is_none_or(Recovery::idle);
        // Other threads' requests count too: one between two of its
        // commands has none in flight, yet will send the next.
        if dead || (self.stopping && idle && connection.in_flight() <= 0 && connection.driver_stops()) {
            self.cancel_all(ring);
            return self.gone(dead);
        }
        self.watch_socket(ring);
        if let Some(left) = self.recovery.as_ref().and_then(Recovery::time_left) {
            if !self.delay_over.armed {
                *self.delay_left = types::Timespec::from(left);
                let timeout = opcode::Timeout::new(&*self.delay_left).build();
                self.delay_over.arm(ring, timeout, self.token(DELAY_OVER));
            }
        }
        let kick = types::Fd(connection.kick().fd());
        let read = opcode::Read::new(kick, (&mut *self.kick_buffer as *mut u64).cast(), 8).build();
        self.kicked.arm(ring, read, self.token(KICKED));
        Ok(())
    }

    /// Polls the current handle's socket in the directions libnbd wants.
    /// Polls on a lost handle's socket are cancelled: libnbd closed it, and
    /// the new handle's polls wait for theirs to end.
    fn watch_socket(&mut self, ring: &mut Ring) {
        let Some((fd, direction, generation)) = self.connection.socket() else {
            let (read, write) = (self.read_token, self.write_token);
            self.read.cancel(ring, read);
            self.write.cancel(ring, write);
            return;
        };
        let wanted = [(POLL_IN, ffi::DIRECTION_READ, libc::POLLIN), (POLL_OUT, ffi::DIRECTION_WRITE, libc::POLLOUT)];
        for (kind, bit, events) in wanted {
            let (armed, token) = match kind {
                POLL_IN => (&mut self.read, &mut self.read_token),
                _ => (&mut self.write, &mut self.write_token),
            };
            if armed.armed && token.slot() != generation {
                armed.cancel(ring, *token);
            } else if direction & bit != 0 && !armed.armed {
                *token = Token::new(kind, self.channel, generation);
                armed.arm(ring, opcode::PollAdd::new(types::Fd(fd), events as u32).build(), *token);
            }
        }
    }

    pub fn complete(&mut self, ring: &mut Ring, token: Token, result: i32) -> Result<(), String> {
        let generation = token.slot();
        match token.kind() {
            POLL_IN => {
                self.read.armed = false;
                if result >= 0 {
                    self.connection.notify(generation, ffi::DIRECTION_READ);
                }
            }
            POLL_OUT => {
                self.write.armed = false;
                if result >= 0 {
                    self.connection.notify(generation, ffi::DIRECTION_WRITE);
                }
            }
            KICKED => self.kicked.armed = false,
            // The delay's end is read from the clock in `settle`.
            DELAY_OVER => self.delay_over.armed = false,
            _ => {}
        }
        self.settle(ring);
        self.gone(self.recovery.is_none() && self.connection.is_dead())
    }

    /// Delivers what ended; with a reconnect delay, lets `Recovery` move
    /// the connection on.
    fn settle(&mut self, ring: &mut Ring) {
        let connection = &self.connection;
        match &mut self.recovery {
            Some(recovery) => recovery.settle(connection, ring, &mut self.poster, self.stopping),
            None => {
                connection.deliver(ring, &mut self.poster, false);
            }
        }
    }

    /// Lets go of every SQE: the server is gone, or the export stops.
    fn cancel_all(&mut self, ring: &mut Ring) {
        let (read, write, kicked, delay_over) =
            (self.read_token, self.write_token, self.token(KICKED), self.token(DELAY_OVER));
        self.read.cancel(ring, read);
        self.write.cancel(ring, write);
        self.kicked.cancel(ring, kicked);
        self.delay_over.cancel(ring, delay_over);
    }

    /// The server went away (without a reconnect delay): reported once.
    fn gone(&mut self, dead: bool) -> Result<(), String> {
        if !dead || self.gone_reported {
            return Ok(());
        }
        self.gone_reported = true;
        Err(format!("the NBD server at {} went away (the connection is closed)", self.address))
    }
}

//! The owner of a connection on its I/O thread: keeps the socket polled in
//! the direction libnbd wants and tells libnbd when it is ready.

use super::connection::Connection;
use super::ffi;
use crate::runtime::control::Phase;
use crate::runtime::remote::Poster;
use crate::runtime::ring::Ring;
use crate::runtime::token::Token;
use io_uring::{opcode, types};
use std::sync::Arc;

/// Token kinds on the backend's channel.
const POLL_IN: u8 = 1;
const POLL_OUT: u8 = 2;
const KICKED: u8 = 3;
const CANCEL: u8 = 4;

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

    fn cancel(&mut self, ring: &mut Ring, token: Token, channel: u16) {
        if self.armed && !self.cancelling {
            ring.push(opcode::AsyncCancel::new(token.user_data()).build(), Token::new(CANCEL, channel, 0));
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
    kick_buffer: Box<u64>,
    poster: Option<Poster>,
    gone_reported: bool,
}

impl Driver {
    pub fn new(connection: Arc<Connection>, address: String, channel: u16) -> Self {
        Self {
            connection,
            address,
            channel,
            read: Armed::default(),
            write: Armed::default(),
            kicked: Armed::default(),
            kick_buffer: Box::new(0),
            poster: None,
            gone_reported: false,
        }
    }

    fn token(&self, kind: u8) -> Token {
        Token::new(kind, self.channel, 0)
    }

    pub fn prepare(&mut self, ring: &mut Ring, phase: Phase) -> Result<(), String> {
        let connection = self.connection.clone();
        connection.deliver(ring, &mut self.poster);
        let dead = connection.is_dead();
        if dead || (phase == Phase::Stopping && connection.handle().in_flight() == 0) {
            let channel = self.channel;
            let (read, write, kicked) = (self.token(POLL_IN), self.token(POLL_OUT), self.token(KICKED));
            self.read.cancel(ring, read, channel);
            self.write.cancel(ring, write, channel);
            self.kicked.cancel(ring, kicked, channel);
            return self.gone(dead);
        }
        if let Some((fd, direction)) = connection.handle().socket() {
            if direction & ffi::DIRECTION_READ != 0 {
                let poll = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32).build();
                self.read.arm(ring, poll, self.token(POLL_IN));
            }
            if direction & ffi::DIRECTION_WRITE != 0 {
                let poll = opcode::PollAdd::new(types::Fd(fd), libc::POLLOUT as u32).build();
                self.write.arm(ring, poll, self.token(POLL_OUT));
            }
        }
        let kick = types::Fd(connection.kick_fd());
        let read = opcode::Read::new(kick, (&mut *self.kick_buffer as *mut u64).cast(), 8).build();
        self.kicked.arm(ring, read, self.token(KICKED));
        Ok(())
    }

    pub fn complete(&mut self, ring: &mut Ring, token: Token, result: i32) -> Result<(), String> {
        let handle = self.connection.handle();
        match token.kind() {
            POLL_IN => {
                self.read.armed = false;
                if result >= 0 && !handle.is_dead() && handle.readable() {
                    handle.notify_read();
                }
            }
            POLL_OUT => {
                self.write.armed = false;
                if result >= 0 && !handle.is_dead() {
                    handle.notify_write();
                }
            }
            KICKED => self.kicked.armed = false,
            _ => {}
        }
        let connection = self.connection.clone();
        connection.deliver(ring, &mut self.poster);
        self.gone(connection.is_dead())
    }

    /// The server went away: reported once.
    fn gone(&mut self, dead: bool) -> Result<(), String> {
        if !dead || self.gone_reported {
            return Ok(());
        }
        self.gone_reported = true;
        Err(format!("the NBD server at {} went away (the connection is closed)", self.address))
    }
}

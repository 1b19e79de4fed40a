//! The life of one request, whatever transport carries it: decode, account,
//! hand to the export, run its image I/O on the thread's ring, reply.

use super::queue::Queue;
use crate::export::io::ImageIo;
use crate::export::{Export, Step};
use crate::protocol::{Malformed, Reply, Request};

/// What the transport does next for a request.
pub enum Outcome {
    Reply(Reply),
    /// Nothing to send (FORGET, INTERRUPT): the carrier is free again.
    NoReply,
    /// Image I/O is on the ring; its completion comes back through `resume`.
    InProgress,
}

/// Starts a freshly arrived request. `None` when it cannot even be answered
/// (a broken header: the export has halted).
pub fn begin(export: &Export, decoded: Result<Request, Malformed>, via_ring: bool) -> Option<(u64, Step)> {
    let request = match decoded {
        Ok(request) => request,
        Err(malformed) => {
            let (unique, reply) = export.malformed(malformed)?;
            export.counters.local().request_started(via_ring);
            return Some((unique, Step::Reply(reply)));
        }
    };
    export.counters.local().request_started(via_ring);
    let step = if export.is_halted() { Step::Reply(Reply::error(libc::EIO)) } else { export.handle(&request) };
    Some((request.header.unique, step))
}

/// Answers a request that arrives while stopping with EIO, as the kernel
/// would at unmount.
pub fn refuse(export: &Export, decoded: Result<Request, Malformed>, via_ring: bool) -> Option<(u64, Step)> {
    let request = decoded.ok()?;
    export.counters.local().request_started(via_ring);
    Some((request.header.unique, Step::Reply(Reply::error(libc::EIO))))
}

/// Carries out a step: image I/O goes on the ring, reading into or writing
/// from `payload`, with `token` as its user_data; `pending` keeps it.
pub fn drive(
    queue: &mut Queue,
    export: &Export,
    step: Step,
    pending: &mut Option<ImageIo>,
    payload: *mut u8,
    token: u64,
) -> Outcome {
    match step {
        Step::Reply(reply) => Outcome::Reply(reply),
        Step::NoReply => Outcome::NoReply,
        Step::Io(mut io) => {
            if let Some(result) = io.perform_in_memory(export.image(), payload) {
                let next = export.complete(&mut io, result);
                return drive(queue, export, next, pending, payload, token);
            }
            queue.push(io.sqe(export.image(), payload).user_data(token));
            *pending = Some(io);
            Outcome::InProgress
        }
    }
}

/// The image I/O in `pending` completed with `result`.
pub fn resume(
    queue: &mut Queue,
    export: &Export,
    pending: &mut Option<ImageIo>,
    result: i32,
    payload: *mut u8,
    token: u64,
) -> Outcome {
    let Some(mut io) = pending.take() else { return Outcome::NoReply };
    let step = export.complete(&mut io, result);
    drive(queue, export, step, pending, payload, token)
}

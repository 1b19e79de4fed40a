//! One I/O thread's loop: take in arriving guests, submit, wait, and hand
//! each completion back to the guest that pushed its SQE. The loop knows no
//! transport and no image backend; it knows each guest's phase, its
//! wake-up eventfd and the `Owner` interface. A guest leaves once it is
//! stopping and every SQE it pushed has completed; a guest whose code
//! panics halts its export and is kept, never dropped (see `Seat::Poisoned`),
//! while the thread goes on serving the others.

use super::affinity::Affinity;
use super::control::{Control, Phase};
use super::poll::AdaptivePoll;
use super::pool::{Guest, IoThread, Presence};
use super::ring::{Completion, Ring};
use super::token::{Token, RUNTIME_TENANT, TENANT_MAX};
use io_uring::{opcode, types};
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Whoever puts SQEs on a thread's ring gets their completions back here.
pub trait Owner {
    /// Called before the thread waits, after a completion of this owner's
    /// or a wake-up: arm reads, take up held requests. `Next::Poll` asks for
    /// another turn without waiting (to see at once whether what was just
    /// submitted was refused).
    fn prepare(&mut self, ring: &mut Ring, phase: Phase) -> Next;

    /// A completion of an SQE this owner pushed.
    fn complete(&mut self, ring: &mut Ring, completion: Completion, phase: Phase);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Wait,
    Poll,
}

const WAKE: Token = Token::new(1, 0, 0);
const CANCEL_WAKE: Token = Token::new(2, 0, 0);

struct Resident {
    owner: Box<dyn Owner + Send>,
    guest: GuestTerms,
    /// Something happened for it since its last `prepare`: it is on the
    /// list of guests to prepare (`Seats::dirty`).
    dirty: bool,
}

/// Why a poisoned guest's memory stays.
const KEPT: &str = "its buffers are kept, not freed, since the kernel may still write into them";

impl Resident {
    /// Halts the guest's export with `why` and leaks its owner (see
    /// `Seat::Poisoned`).
    fn poison(self, why: String) {
        (self.guest.halt)(format!("{why} ({KEPT})"));
        std::mem::forget(self.owner);
        // Nothing is left to wait for: it will never leave.
        self.guest.presence.left();
    }
}

/// What the thread keeps of a guest besides its owner.
struct GuestTerms {
    control: Arc<Control>,
    poll_max: Duration,
    cpus: Vec<usize>,
    halt: Box<dyn Fn(String) + Send>,
    presence: Arc<Presence>,
}

enum Seat {
    Free,
    Taken(Resident),
    /// Its code panicked (or its setup failed with SQEs in flight): its
    /// owner is leaked, never dropped, since its SQEs may still be in
    /// flight and its buffers registered with the kernel, which can write
    /// into them until the connection ends. Its completions are dropped,
    /// its seat is never given again, and it no longer counts as present:
    /// there is nothing to wait for.
    Poisoned,
}

struct Seats {
    seats: Vec<Seat>,
    /// The guests to prepare on the next turn, so that a turn costs the
    /// idle ones nothing.
    dirty: Vec<u16>,
    /// The longest `poll_max` of the guests, kept as they come and go.
    poll_max: Duration,
    affinity: Affinity,
}

impl Seats {
    fn new(affinity: Affinity) -> Self {
        Self { seats: Vec::new(), dirty: Vec::new(), poll_max: Duration::ZERO, affinity }
    }

    fn tenant(index: usize) -> u16 {
        index as u16 + 1
    }

    fn get(&mut self, tenant: u16) -> Option<&mut Resident> {
        match self.seats.get_mut(tenant as usize - 1) {
            Some(Seat::Taken(resident)) => Some(resident),
            _ => None,
        }
    }

    fn any_taken(&self) -> bool {
        self.seats.iter().any(|seat| matches!(seat, Seat::Taken(_)))
    }

    fn any_poisoned(&self) -> bool {
        self.seats.iter().any(|seat| matches!(seat, Seat::Poisoned))
    }

    /// `tenant` gets a `prepare` on the next turn.
    fn mark_dirty(&mut self, tenant: u16) {
        if let Some(resident) = self.get(tenant).filter(|resident| !resident.dirty) {
            resident.dirty = true;
            self.dirty.push(tenant);
        }
    }

    fn mark_all_dirty(&mut self) {
        for index in 0..self.seats.len() {
            self.mark_dirty(Self::tenant(index));
        }
    }

    /// Seats a guest whose setup runs here, on the thread's ring.
    fn welcome(&mut self, ring: &mut Ring, guest: Guest) -> Result<(), String> {
        let index = match self.seats.iter().position(|seat| matches!(seat, Seat::Free)) {
            Some(index) => index,
            None if self.seats.len() < TENANT_MAX as usize => {
                self.seats.push(Seat::Free);
                self.seats.len() - 1
            }
            None => return Err(format!("an I/O thread serves at most {TENANT_MAX} exports")),
        };
        let Guest { setup, control, poll_max, cpus, halt, presence } = guest;
        ring.serve(Self::tenant(index));
        let owner = match catch_unwind(AssertUnwindSafe(|| setup(ring))) {
            Ok(Ok(owner)) => owner,
            // What a failed setup pushed may still be in flight: its seat
            // is never given again.
            Ok(Err(why)) if ring.outstanding_of(Self::tenant(index)) > 0 => {
                self.seats[index] = Seat::Poisoned;
                return Err(why);
            }
            Ok(Err(why)) => {
                ring.release(Self::tenant(index));
                return Err(why);
            }
            Err(panic) => {
                self.seats[index] = Seat::Poisoned;
                return Err(format!("setting up an export's part on an I/O thread panicked: {}", describe(&*panic)));
            }
        };
        presence.arrived();
        let guest = GuestTerms { control, poll_max, cpus, halt, presence };
        self.seats[index] = Seat::Taken(Resident { owner, guest, dirty: false });
        self.mark_dirty(Self::tenant(index));
        self.guests_changed();
        Ok(())
    }

    /// Runs `body` for `tenant`'s owner; a panic poisons its seat.
    fn with_owner<T>(
        &mut self,
        ring: &mut Ring,
        tenant: u16,
        body: impl FnOnce(&mut dyn Owner, &mut Ring) -> T,
    ) -> Option<T> {
        let resident = self.get(tenant)?;
        ring.serve(tenant);
        let outcome = catch_unwind(AssertUnwindSafe(|| body(&mut *resident.owner, ring)));
        match outcome {
            Ok(value) => Some(value),
            Err(panic) => {
                let Seat::Taken(resident) = std::mem::replace(&mut self.seats[tenant as usize - 1], Seat::Poisoned)
                else {
                    unreachable!("the seat was taken a moment ago")
                };
                resident.poison(format!("an I/O thread panicked serving this export: {}", describe(&*panic)));
                self.guests_changed();
                None
            }
        }
    }

    /// Prepares every guest something happened for; guests that stopped
    /// with nothing in flight leave.
    fn prepare(&mut self, ring: &mut Ring) -> Next {
        let mut next = Next::Wait;
        for tenant in std::mem::take(&mut self.dirty) {
            // A guest that left since it was marked is no longer here.
            let Some(resident) = self.get(tenant) else { continue };
            resident.dirty = false;
            let phase = resident.guest.control.phase();
            match self.with_owner(ring, tenant, |owner, ring| owner.prepare(ring, phase)) {
                Some(Next::Poll) => {
                    next = Next::Poll;
                    self.mark_dirty(tenant);
                }
                Some(Next::Wait) if phase == Phase::Stopping && ring.outstanding_of(tenant) == 0 => {
                    self.leave(ring, tenant as usize - 1)
                }
                _ => {}
            }
        }
        ring.serve(RUNTIME_TENANT);
        next
    }

    fn leave(&mut self, ring: &mut Ring, index: usize) {
        ring.release(Self::tenant(index));
        if let Seat::Taken(resident) = std::mem::replace(&mut self.seats[index], Seat::Free) {
            let presence = resident.guest.presence.clone();
            drop(resident);
            presence.left();
        }
        self.guests_changed();
    }

    fn deliver(&mut self, ring: &mut Ring, completion: Completion) {
        let tenant = completion.token.tenant();
        self.mark_dirty(tenant);
        let Some(resident) = self.get(tenant) else { return };
        let phase = resident.guest.control.phase();
        let completion = Completion { token: completion.token.without_tenant(), ..completion };
        self.with_owner(ring, tenant, |owner, ring| owner.complete(ring, completion, phase));
    }

    /// A guest came or went: the polling window is the longest of those
    /// here, and a thread whose guests all serve the same CPU's queue runs
    /// on that CPU (the kernel routes a caller's requests to its own CPU's
    /// queue).
    fn guests_changed(&mut self) {
        let mut cpus = std::collections::BTreeSet::new();
        let mut every_guest_has_one = true;
        self.poll_max = Duration::ZERO;
        for seat in &self.seats {
            if let Seat::Taken(resident) = seat {
                cpus.extend(&resident.guest.cpus);
                every_guest_has_one &= !resident.guest.cpus.is_empty();
                self.poll_max = self.poll_max.max(resident.guest.poll_max);
            }
        }
        let single = cpus.first().copied().filter(|_| every_guest_has_one && cpus.len() == 1);
        self.affinity.run_on(single);
    }
}

/// Serves guests until the thread is closed and every guest has left (a
/// thread whose loop panics halts every guest, keeps their memory and ends).
/// Before sleeping it busy-polls for up to the longest `poll_max` of its
/// guests (see `AdaptivePoll`).
pub(super) fn run(thread: &IoThread, ring: Ring) {
    let mut state = std::mem::ManuallyDrop::new((ring, Seats::new(Affinity::of_process())));
    let served = catch_unwind(AssertUnwindSafe(|| {
        let (ring, seats) = &mut *state;
        serve(thread, ring, seats)
    }));
    let (_, seats) = &mut *state;
    match served {
        Err(panic) => {
            let why = format!("its loop panicked: {}", describe(&*panic));
            // The ring stays leaked with `state`; the guests go with it.
            for seat in std::mem::take(&mut seats.seats) {
                if let Seat::Taken(resident) = seat {
                    resident.poison(format!("I/O thread {thread:?} {why}"));
                }
            }
            thread.inbox.lock().unwrap().end(thread, why);
        }
        // Poisoned guests' SQEs may still be in flight: their ring stays.
        Ok(()) if seats.any_poisoned() => {}
        Ok(()) => drop(std::mem::ManuallyDrop::into_inner(state)),
    }
}

fn serve(thread: &IoThread, ring: &mut Ring, seats: &mut Seats) {
    let mut poll = AdaptivePoll::new(Duration::ZERO);
    let waker = types::Fd(thread.waker.as_raw_fd());
    let (mut wake_armed, mut wake_cancelled) = (false, false);
    let mut completions = Vec::with_capacity(256);
    // Guests arrive with a wake-up: the inbox is looked at only after one.
    let mut woken = true;
    loop {
        if std::mem::take(&mut woken) {
            let arrivals = std::mem::take(&mut thread.inbox.lock().unwrap().arrivals);
            for (guest, reply) in arrivals {
                let _ = reply.send(seats.welcome(ring, guest));
            }
        }
        let next = seats.prepare(ring);
        let closing = thread.closing.load(Ordering::Acquire) && !seats.any_taken() && {
            // Checked and ended under one lock, so that no guest slips in.
            let mut inbox = thread.inbox.lock().unwrap();
            let empty = inbox.arrivals.is_empty();
            if empty && inbox.ended.is_none() {
                inbox.end(thread, "it was closed".into());
            }
            empty
        };
        if !wake_armed && !closing {
            let target = ring.wake_target();
            ring.push(opcode::Read::new(waker, target, 8).build(), WAKE);
            wake_armed = true;
        } else if wake_armed && closing && !wake_cancelled {
            ring.cancel(WAKE, CANCEL_WAKE);
            wake_cancelled = true;
        }
        if closing && ring.outstanding_of(RUNTIME_TENANT) == 0 {
            return;
        }
        poll.set_max(seats.poll_max);
        match next {
            Next::Wait => poll.wait(ring),
            Next::Poll => ring.submit(0),
        }
        ring.reap(&mut completions);
        for &completion in &completions {
            if completion.token.tenant() != RUNTIME_TENANT {
                seats.deliver(ring, completion);
            } else if completion.token == WAKE {
                wake_armed = false;
                woken = true;
                seats.mark_all_dirty();
            }
        }
        ring.serve(RUNTIME_TENANT);
    }
}

fn describe(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

//! The image backend's part on one I/O thread (NBD's sockets), as the
//! thread's owner sees it: driven whenever the owner is prepared and on its
//! completions;
//! what it wants the user to know becomes a warning, and its fatal error
//! halts the export.

use crate::image::ThreadImage;
use crate::request::RequestCore;
use crate::runtime::control::Phase;
use crate::runtime::ring::Ring;
use crate::runtime::token::Token;

pub struct ImagePart(Box<dyn ThreadImage>);

impl ImagePart {
    pub fn new(image: Box<dyn ThreadImage>) -> Self {
        Self(image)
    }

    pub fn prepare(&mut self, ring: &mut Ring, phase: Phase, core: &RequestCore) {
        let outcome = self.0.prepare(ring, phase);
        self.report(core, outcome);
    }

    pub fn complete(&mut self, ring: &mut Ring, token: Token, result: i32, core: &RequestCore) {
        let outcome = self.0.complete(ring, token, result);
        self.report(core, outcome);
    }

    fn report(&mut self, core: &RequestCore, outcome: Result<(), String>) {
        for notice in self.0.take_notices() {
            core.status.warn(notice.kind, notice.message);
        }
        if let Err(reason) = outcome {
            core.status.halt(reason);
        }
    }
}

//! The tcp connection's memory: what an idle one costs the worker.

use super::*;
use runtime::slab::Slab;
use std::mem::size_of;

/// An idle client connection costs the worker its slab slot and little
/// else (README "Measured": at most 0.5 KiB of user memory per idle
/// connection, with its timer entry and the allocator's share), so the
/// slot must stay small: what connecting needs and what relaying needs
/// share the room ([`Phase`]), what only some connections need (a hold,
/// replicas) is boxed apart, and times are 8-byte `Tick`s. It was 320
/// bytes, then 248, then 236; issue 20 added what its end is written down
/// with: its start (8 bytes), its route (8) and the client's address from
/// `accept4` kept past connecting for its access line (19, which had fit
/// in `Connecting`'s spare room): 276.
#[test]
fn an_idle_connection_slot_stays_small() {
    // A release build's `Stream` is a tag and an fd; mio's debug builds
    // (these tests) add a selector id to each of the two sockets.
    let debug_only = 2 * (size_of::<Stream>() - 8);
    let slot = Slab::<Conn>::SLOT_BYTES - debug_only;
    assert!(slot <= 276, "a connection slot takes {slot} bytes");
}

/// Connecting shares its room with relaying, so it must not be the
/// larger one: every idle (relaying) connection would pay for it.
#[test]
fn connecting_fits_in_the_room_of_relaying() {
    let (c, r) = (size_of::<Connecting>(), size_of::<Relaying>());
    assert!(c <= r, "connecting takes {c} bytes, relaying {r}");
}

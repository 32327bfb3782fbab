use super::*;
use runtime::slab::Slab;
use std::mem::size_of;

/// An idle client connection costs the worker its slab slot and the
/// bytes its buffers hold (README "Measured": at most 0.5 KiB of user
/// memory per idle connection), so the slot must stay small: each phase
/// holds only what it needs, the large parts boxed ([`Phase`]). It was
/// 236 bytes (release build, 64-bit) with per-phase fields on `Conn`; 172.
#[test]
fn an_idle_connection_slot_stays_small() {
    // A release build's `Stream` is a tag and an fd; mio's debug builds
    // (these tests) add a selector id to each of the two sockets.
    let debug_only = 2 * (size_of::<Stream>() - 8);
    let slot = Slab::<Conn>::SLOT_BYTES - debug_only;
    assert!(slot <= 172, "a connection slot takes {slot} bytes");
}

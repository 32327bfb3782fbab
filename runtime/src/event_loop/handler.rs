//! What a worker plugs into the loop ([`Handler`]: its connections) and
//! what the loop lends it for each call ([`Cx`]): all a handler may
//! change beyond its own connections arrives there, as an argument.

use super::LOOP_KEYS;
use crate::backend::Reach;
use crate::stock::Stock;
use crate::stream::Stream;
use mio::event::Event;
use mio::{Registry, Token};
use proto::ctl::{Stats, WorkerConfig};
use proto::timer::Timers;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Instant;

/// What a worker plugs into the loop: its connections. Every call gets a
/// [`Cx`] with the time of this loop turn, the poll's registry, the timer
/// heap, the counters, the running configuration and what dialling and
/// relaying change (the backends' side, the data path's stock).
pub trait Handler: Sized {
    /// The handler for the endpoint of the first config (Init).
    fn new(config: &WorkerConfig) -> Self;
    /// A client the listener gave us: register it (on a token of ours) and
    /// start it; dropping it closes it.
    /// `peer`: its address from `accept4` (None for a unix client).
    fn accept(&mut self, cx: &mut Cx, client: Stream, peer: Option<SocketAddr>);
    /// Readiness on one of our tokens (any but 0 and 1).
    fn event(&mut self, cx: &mut Cx, token: Token, ev: &Event);
    /// One of our timer keys (added with [`Cx::wake`]) came due.
    fn timer(&mut self, cx: &mut Cx, key: u64);
    /// Open client connections: the connection cap, stats, drain's end.
    fn active(&self) -> usize;
    /// An update for the same endpoint: refuse it (nothing changed), or
    /// take what the handler keeps of it. `cx.config` is still the old
    /// config; the loop swaps it after.
    fn update(&mut self, _cx: &mut Cx, _new: &WorkerConfig) -> Result<(), String> {
        Ok(())
    }
    /// A drain began (`cx.draining`): finish connections at their next
    /// boundary. The listener is closed already.
    fn drain(&mut self, _cx: &mut Cx) {}
    /// The drain's deadline passed with connections still open: the last
    /// word to them (without waiting) before the worker exits and the
    /// kernel closes them.
    fn cut(&mut self, _cx: &mut Cx) {}
    /// End of each loop turn: the handler's own housekeeping.
    fn turn(&mut self, _cx: &mut Cx) {}
    /// A backend may be back (an applied update, a health check saw one
    /// come up: the hold book's wake-up, `crate::hold`): every connection
    /// still reaching its backend retargets to its route's backend in
    /// `cx.config` and retries now.
    fn wake(&mut self, _cx: &mut Cx) {}
    /// After a burst of connections: give back what it made us grow.
    fn shrink(&mut self) {}
    /// Whether a timer entry of ours still matters (stale ones are dropped
    /// when the heap shrinks).
    fn timer_live(&self, key: u64) -> bool;
}

/// What the loop lends its handler for one call.
pub struct Cx<'a> {
    pub now: Instant,
    pub registry: &'a Registry,
    pub stats: &'a mut Stats,
    pub config: &'a WorkerConfig,
    /// A drain has begun: finish what is open, start nothing new.
    pub draining: bool,
    /// This poll round's number, wrapping: a socket registered in a round
    /// gets none of the events gathered for it before (see
    /// `conns::Sockets::on_event`; clients need no such care, they are
    /// accepted after the round's events).
    pub round: NonZeroU32,
    /// The backends' side: provider roots, health table, hold book,
    /// replicas' book (what dialers and checks change).
    pub reach: &'a mut Reach,
    /// The data path's stock: the relays' pipes (`--pipe-size`) and copy
    /// buffers, a scratch area for one call, the fds in flight.
    pub stock: &'a mut Stock,
    pub(super) timers: &'a mut Timers,
}

impl Cx<'_> {
    /// Call the handler's `timer(key)` at `at` (or later).
    ///
    /// A handler called from the timer pass must not arm a deadline at or
    /// before the pass's `now`: it came due already, and re-arming it
    /// retries nothing (issue 18's wedge). Debug builds stop there; a
    /// release build moves it just after `now` (`timer::AFTER_PASS`).
    pub fn wake(&mut self, at: Instant, key: u64) {
        debug_assert!(key < LOOP_KEYS, "timer key {key:#x} is the loop's");
        debug_assert!(
            !self.timers.due_in_pass(at),
            "timer key {key:#x} re-armed at a deadline already due ({:?} before the pass's now)",
            self.now.saturating_duration_since(at)
        );
        self.timers.add(at, key);
    }
}

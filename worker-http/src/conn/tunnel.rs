//! The Tunnel phase: after a `101 Switching Protocols` the connection is a
//! byte tunnel, the same [`Duplex`] relay as a tcp link. Bytes either side
//! already read into user space (the client's after its request head, the
//! backend's after the 101 head) become the prefix of their direction, so
//! they go first; then both directions are spliced. An end or a failure
//! of one direction is handled by `runtime::duplex` (half-close passed on,
//! a failed destination ends only its own direction), and the connection
//! ends when both directions have.

use super::exchange::Exchange;
use super::record::Record;
use super::{BackendConn, Conn, Ctx, Phase};
use crate::route::Entry;
use runtime::duplex::{Duplex, ShortRead};
use runtime::relay::Splice;
use runtime::stream::Stream;
use std::os::fd::AsFd;
use std::rc::Rc;
use std::time::Instant;

/// What a tunnel keeps of its exchange: the backend connection, the route
/// (for log lines), a replica's choice (counted while the tunnel lasts)
/// and the request's record (the tunnel's end is the request's).
pub(super) struct Tunnel {
    relay: Duplex<Splice>,
    pub(super) backend: BackendConn,
    pub(super) route: Rc<Entry>,
    pub(super) rec: Record,
    _choice: Option<runtime::balance::Choice>,
    /// Bytes last moved either way then (the idle timeout's start).
    pub(super) last_active: Instant,
}

impl Tunnel {
    /// A direction has ended and the other not yet: the half-close linger applies.
    pub(super) fn half_closed(&self) -> bool {
        self.relay.lingering()
    }
}

impl Conn {
    /// The `101` is out: the exchange becomes a tunnel, what both buffers
    /// hold the prefixes of their directions.
    pub(super) fn start_tunnel(&mut self, cx: &mut Ctx) {
        let Some((mut ex, backend)) = self.take_exchanging() else {
            return;
        };
        let mut relay = Duplex::<Splice>::default();
        relay.up.prefix(self.cbuf.bytes().to_vec());
        self.cbuf.consume(self.cbuf.bytes().len());
        self.cbuf.release(cx.spares);
        relay.down.prefix(ex.bbuf.bytes().to_vec());
        ex.bbuf.give_back(cx.spares);
        let Exchange {
            route,
            choice,
            last_active,
            rec,
            ..
        } = *ex;
        self.phase = Phase::Tunnel(Box::new(Tunnel {
            relay,
            backend,
            route,
            rec,
            _choice: choice,
            last_active,
        }));
    }

    /// One pass of the relay. Returns whether bytes moved.
    pub(super) fn tunnel(&mut self, cx: &mut Ctx) -> bool {
        let Phase::Tunnel(t) = &mut self.phase else {
            return false;
        };
        let b = &mut t.backend;
        // A short read proves a TCP socket empty while no event on it
        // reported a hang-up, an error or urgent data (`Duplex::
        // short_reads`): a message each way costs one read, not two.
        let trust = |tcp: bool, hup: bool| {
            if tcp && !hup {
                ShortRead::Empty
            } else {
                ShortRead::Unknown
            }
        };
        t.relay.short_reads(
            trust(matches!(self.client, Stream::Tcp(_)), self.c_hup),
            trust(matches!(b.stream, Stream::Tcp(_)), b.hup),
        );
        let p = t.relay.pump(
            self.client.as_fd(),
            &mut self.cr,
            b.stream.as_fd(),
            &mut b.ready,
            &t.route.backend,
            cx.stock,
        );
        cx.stats.bytes_in += p.up;
        cx.stats.bytes_out += p.down;
        t.rec.bytes_in += p.up;
        t.rec.bytes_out += p.down;
        if t.relay.done() {
            self.ended(cx.ledger, cx.now, None, None);
            self.phase = Phase::Done;
            return false;
        }
        if p.active() {
            t.last_active = cx.now;
        }
        p.active()
    }
}

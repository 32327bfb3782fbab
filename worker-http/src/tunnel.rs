//! After a `101 Switching Protocols` the connection is a byte tunnel, the
//! same [`Duplex`] relay as a tcp link: bytes either side already read
//! into user space (the client's after its request head, the backend's
//! after the 101 head) become the prefix of their direction, so they go
//! first; then both directions are spliced. An end or a failure of one
//! direction is handled by `runtime::duplex` (half-close passed on, a failed
//! destination ends only its own direction), and the connection ends when
//! both directions have.

use crate::conn::{Conn, Ctx, Fail, Phase};
use runtime::duplex::{Duplex, ShortRead};
use runtime::relay::Splice;
use runtime::stream::Stream;
use std::os::fd::AsFd;

/// The two directions of an upgraded connection.
#[derive(Default)]
pub struct Tunnel {
    relay: Duplex<Splice>,
    /// The buffered bytes were handed to the relay.
    started: bool,
}

impl Tunnel {
    /// A direction has ended and the other not yet: the half-close linger applies.
    pub fn half_closed(&self) -> bool {
        self.relay.lingering()
    }
}

impl Conn {
    pub(crate) fn tunnel(&mut self, cx: &mut Ctx) -> Result<bool, Fail> {
        let (Phase::Tunnel(t), Some(ex), Some(b)) = (
            &mut self.phase,
            self.ex.as_deref_mut(),
            self.backend.as_mut(),
        ) else {
            return Err(Fail::Abort("tunnel without both sides".into()));
        };
        if !t.started {
            t.started = true;
            t.relay.up.prefix(self.cbuf.bytes().to_vec());
            self.cbuf.consume(self.cbuf.bytes().len());
            self.cbuf.release();
            t.relay.down.prefix(ex.bbuf.bytes().to_vec());
            ex.bbuf.consume(ex.bbuf.bytes().len());
            ex.bbuf.release();
        }
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
            &ex.route.backend,
            cx.stock,
        );
        cx.stats.bytes_in += p.up;
        cx.stats.bytes_out += p.down;
        if t.relay.done() {
            self.phase = Phase::Done;
            return Ok(false);
        }
        if p.active() {
            self.last_active = cx.now;
        }
        Ok(p.active())
    }
}

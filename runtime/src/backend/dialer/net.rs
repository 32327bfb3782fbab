//! What a [`Dialer`](super::Dialer) does on the network, as a seam: the
//! worker's [`Real`] network, or a fuzz target's or a test's script.

use super::super::connect::connect;
use super::super::roots::Roots;
use crate::stream::Stream;
use proto::types::Backend;
use std::io;

/// What a dialer does on the network: connect, and tell a connect under
/// way from one done. [`Real`] does it; a fuzz target or a test plays a
/// script instead (`Dialer::step_on`).
pub trait Net {
    /// Start connecting to `b` ([`connect`]), through `roots` for a unix
    /// backend in a provider container.
    fn connect(&mut self, b: &Backend, roots: &Roots) -> io::Result<Stream>;
    /// The socket of an attempt reported: Ok(true) connected, Ok(false)
    /// still under way, Err the attempt failed ([`Stream::connect_done`]).
    fn done(&mut self, s: &Stream) -> io::Result<bool>;
    /// Asked when a hold would begin, and only then: whether the client
    /// the dial is for has gone already, so it is not held at all
    /// (`Step::Gone`). No for [`Real`]: a worker asks through
    /// [`Real`] with `hung_up` once its client reported a hang-up.
    fn client_gone(&mut self) -> bool {
        false
    }
}

/// The network itself. `hung_up`: the client the dial is for, when an
/// event said it hung up (FIN, reset or error) before its connection was
/// held, with `tunnel` as [`crate::hold::client_gone`] takes it: if a
/// hold begins, the client is asked first, and one that has gone is let
/// go (`Step::Gone`) rather than admitted into the book, where it
/// would keep a route's slot until its first held retry asked (issue 18,
/// item 5). None (a client that reported nothing): no syscall added to
/// the common path. One type for both, so the dialer's code is there
/// once in the executable (a second `Net` type doubled it: +13 KiB).
pub struct Real<'a> {
    pub hung_up: Option<(&'a Stream, bool)>,
}

impl Real<'_> {
    /// For a client that reported nothing.
    pub fn quiet() -> Real<'static> {
        Real { hung_up: None }
    }
}

impl Net for Real<'_> {
    #[inline]
    fn connect(&mut self, b: &Backend, roots: &Roots) -> io::Result<Stream> {
        connect(b, roots)
    }

    #[inline]
    fn done(&mut self, s: &Stream) -> io::Result<bool> {
        s.connect_done()
    }

    fn client_gone(&mut self) -> bool {
        self.hung_up
            .is_some_and(|(client, tunnel)| crate::hold::client_gone(client, tunnel))
    }
}

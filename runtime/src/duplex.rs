//! The one duplex relay of pv-xconnect: the tcp worker, the unix worker
//! and the http worker's tunnel (after a `101`) all move a connection's
//! two directions through [`Duplex`], so what happens when one side ends or
//! fails is decided here, once.
//!
//! A direction is a [`Direction`]: how bytes get from a source socket to a
//! destination socket ([`crate::relay::Splice`]: `splice(2)` through a pipe,
//! with a read/write fallback; [`crate::fdrelay::FdRelay`]: `recvmsg` and
//! `sendmsg` through a buffer, carrying fds). The driver gives each
//! direction a [`Flow`]:
//!
//! ```text
//!  Open ──source EOF or read error──> Flushing ──held bytes written──> shutdown(dst, SHUT_WR) ─> Ended
//!    │                                   │
//!    └──────write to dst failed──────────┴──> Draining (held bytes dropped) ──source EOF/error,
//!                                                  or other direction over and SIOCOUTQ(src) = 0──> Ended
//! ```
//!
//! - A failure writing towards side X ends only the direction whose
//!   destination is X: X cannot take the bytes held for it, so they are
//!   dropped. Its source is then still read, and what arrives is thrown
//!   away (not counted): leaving it unread would make the kernel answer our
//!   final `close` of that socket with a reset, and a reset destroys what
//!   our send queue still holds for that same peer — the bytes of the
//!   other direction this relay exists to deliver. (`shutdown(SHUT_RD)`
//!   does not help on TCP: Linux aborts a connection that receives data
//!   after it, once our FIN is out.) The drain stops at the source's EOF,
//!   or as soon as nothing is at stake: the other direction is over and
//!   that peer has taken all we sent it (`SIOCOUTQ` 0). The close may then
//!   reset it, which is the truth: what it sent was not delivered.
//! - A short read from a TCP source whose FIN an event already reported
//!   is its last ([`ShortRead::End`]): `Flushing` without the read that
//!   would return 0, and the held bytes go out with the FIN joined to them
//!   ([`Direction::write_last`]).
//! - A read error (`ECONNRESET`) from source S is an end of S's stream:
//!   what was already read still goes out, then the destination gets a FIN
//!   (`shutdown(SHUT_WR)`), not a reset: a reset would destroy bytes still
//!   queued towards it. The other direction is not ended by this; writes
//!   towards S fail by themselves if S is really gone.
//! - The connection is done when both directions have ended. While one has
//!   left `Open` it is lingering: the caller closes it after
//!   `half_close_linger_ms` without traffic (drained bytes are not
//!   traffic), so a half-open peer cannot keep it for ever.
//!
//! Readiness is edge-triggered: every step runs until the kernel says
//! EAGAIN, which clears the matching [`Ready`] flag.
//!
//! The first failure either direction saw is kept ([`Duplex::fault`]):
//! which socket, and what the kernel said. A connection's access line and
//! its route's counters say by it how the connection ended (a client or a
//! backend that reset it, or both closing normally).

use crate::stock::Stock;
use crate::stream::{shutdown_write, Ready};
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use transfer::{transfer_with, would_block};

mod transfer;
pub use transfer::{transfer, Direction, ShortRead, Side, Transfer};

/// Where one direction of a [`Duplex`] stands (see the module docs).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    #[default]
    Open,
    /// The source ended: deliver what is held, then shut the destination.
    Flushing,
    /// The destination failed: read the source and throw it away.
    Draining,
    Ended,
}

/// The first failure of a relayed connection: on its backend's socket
/// (else its client's), and what the kernel said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    pub backend: bool,
    pub cause: Cause,
}

/// What a failed read or write on a relayed socket said, in the access
/// log's words (`reason=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// `ECONNRESET`: the peer reset the connection.
    Reset,
    /// `EPIPE`: written after the peer closed.
    BrokenPipe,
    /// `ETIMEDOUT`: the kernel gave up on the peer (retransmissions).
    TimedOut,
    Other,
}

impl Cause {
    /// Not inlined at each of its two callers in every kind of relay.
    #[inline(never)]
    fn of(e: &io::Error) -> Cause {
        match e.kind() {
            io::ErrorKind::ConnectionReset => Cause::Reset,
            io::ErrorKind::BrokenPipe => Cause::BrokenPipe,
            io::ErrorKind::TimedOut => Cause::TimedOut,
            _ => Cause::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Reset => "reset",
            Cause::BrokenPipe => "broken_pipe",
            Cause::TimedOut => "timed_out",
            Cause::Other => "error",
        }
    }
}

/// What one [`Duplex::pump`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pumped {
    /// Bytes delivered client -> backend and backend -> client.
    pub up: u64,
    pub down: u64,
    /// A direction changed its [`Flow`].
    pub changed: bool,
}

impl Pumped {
    /// Traffic, for idle and linger clocks.
    pub fn active(&self) -> bool {
        self.up + self.down > 0 || self.changed
    }
}

/// Both directions of a proxied connection: `up` = client -> backend,
/// `down` = backend -> client.
#[derive(Debug, Default)]
pub struct Duplex<D> {
    pub up: D,
    pub down: D,
    flow: [Flow; 2],
    /// Per source (client, backend): what a short read proves.
    short: [ShortRead; 2],
    /// The first failure (in the room alignment left: no byte more).
    fault: Option<Fault>,
}

impl<D: Direction> Duplex<D> {
    pub fn new(up: D, down: D) -> Duplex<D> {
        Duplex {
            up,
            down,
            flow: [Flow::Open; 2],
            short: [ShortRead::Unknown; 2],
            fault: None,
        }
    }

    /// What a read that returns fewer bytes than it asked for proves about
    /// the (client, backend) socket. On TCP a short read took everything
    /// queued (it stops early only at an urgent byte, reported with
    /// `EPOLLPRI`), so:
    /// - [`ShortRead::Empty`] for a TCP socket on which no event has
    ///   reported a hang-up, an error or urgent data: `readable` is cleared
    ///   without the `read` that would say EAGAIN, since whatever arrives
    ///   later brings an event of its own (edge-triggered epoll reports
    ///   every arrival). A FIN already queued behind the data would bring
    ///   none; it comes with `EPOLLRDHUP` in the event that announced it.
    /// - [`ShortRead::End`] for a TCP socket whose peer's FIN (or reset)
    ///   an event has reported (`EPOLLRDHUP` / `EPOLLHUP`) and no urgent
    ///   data: the FIN is in sequence after every byte the peer sent, so a
    ///   short read took the last of them and the next read would return 0
    ///   (or the reset's error, which ends the stream the same way). That
    ///   read is skipped, and the bytes go out as the last before the
    ///   destination is shut, the FIN riding on them.
    ///
    /// A unix socket may stop a read short with bytes left (at passed
    /// fds): always [`ShortRead::Unknown`], the default for both.
    pub fn short_reads(&mut self, client: ShortRead, backend: ShortRead) {
        self.short = [client, backend];
    }

    /// Move both directions as far as readiness allows, with the worker's
    /// stock. `peer` names the backend in log lines.
    pub fn pump(
        &mut self,
        client: BorrowedFd<'_>,
        cr: &mut Ready,
        backend: BorrowedFd<'_>,
        br: &mut Ready,
        peer: &dyn fmt::Display,
        stock: &mut Stock,
    ) -> Pumped {
        let [up_flow, down_flow] = &mut self.flow;
        let (up, c1, f1) = step(
            &mut self.up,
            (up_flow, *down_flow),
            (client, &mut *cr, self.short[0]),
            (backend, &mut *br),
            &|| format!("client -> {peer}"),
            stock,
        );
        let (down, c2, f2) = step(
            &mut self.down,
            (down_flow, *up_flow),
            (backend, br, self.short[1]),
            (client, cr),
            &|| format!("{peer} -> client"),
            stock,
        );
        // Up reads the client and writes the backend; down the reverse.
        let on_backend = |side| side == Side::Destination;
        let first = f1
            .map(|(side, cause)| (on_backend(side), cause))
            .or(f2.map(|(side, cause)| (!on_backend(side), cause)));
        if self.fault.is_none() {
            self.fault = first.map(|(backend, cause)| Fault { backend, cause });
        }
        let c3 = self.stop_draining(client, backend);
        Pumped {
            up,
            down,
            changed: c1 || c2 || c3,
        }
    }

    /// A direction drains its source only so that our final close does not
    /// reset bytes still on their way to that same peer. Once nothing more
    /// will be sent to it (the other direction is over) and our send queue
    /// to it is empty, the drain stops: a peer streaming to a client that
    /// is gone is not read for nothing until the linger deadline.
    fn stop_draining(&mut self, client: BorrowedFd<'_>, backend: BorrowedFd<'_>) -> bool {
        let mut changed = false;
        for (i, src) in [(0, client), (1, backend)] {
            let over = matches!(self.flow[1 - i], Flow::Ended | Flow::Draining);
            if self.flow[i] == Flow::Draining && over && unsent(src) == 0 {
                self.flow[i] = Flow::Ended;
                changed = true;
            }
        }
        changed
    }

    /// Both directions have ended: the connection can be closed.
    pub fn done(&self) -> bool {
        self.flow == [Flow::Ended; 2]
    }

    /// One direction has left `Open` and the connection is not done: the
    /// half-close linger applies.
    pub fn lingering(&self) -> bool {
        self.flow != [Flow::Open; 2] && !self.done()
    }

    /// The (client, backend) socket reported urgent data: its direction
    /// reads with `read(2)` from now on ([`Direction::urgent_seen`]).
    pub fn urgent_data(&mut self, client: bool, backend: bool) {
        if client {
            self.up.urgent_seen();
        }
        if backend {
            self.down.urgent_seen();
        }
    }

    /// (up, down).
    pub fn flows(&self) -> (Flow, Flow) {
        (self.flow[0], self.flow[1])
    }

    /// The first failure a direction saw, if any: None when both sides
    /// ended normally (so far).
    pub fn fault(&self) -> Option<Fault> {
        self.fault
    }
}

/// Bytes we wrote on `fd` that its peer has not taken yet (`SIOCOUTQ`:
/// TCP not acknowledged, unix not read); 0 when the fd cannot say.
fn unsent(fd: BorrowedFd<'_>) -> i32 {
    let mut n: nix::libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int.
    let r = unsafe { nix::libc::ioctl(fd.as_raw_fd(), nix::libc::TIOCOUTQ, &mut n) };
    if r < 0 {
        0
    } else {
        n
    }
}

/// One direction's turn: transfer, then apply the end rules. Returns the
/// bytes delivered, whether its flow changed, and its first failure.
/// `other`: the other direction's flow; `short`: what a short read from
/// `src` proves.
fn step<D: Direction>(
    d: &mut D,
    (flow, other): (&mut Flow, Flow),
    (src, sr, short): (BorrowedFd<'_>, &mut Ready, ShortRead),
    (dst, dr): (BorrowedFd<'_>, &mut Ready),
    what: &dyn Fn() -> String,
    stock: &mut Stock,
) -> (u64, bool, Option<(Side, Cause)>) {
    let before = *flow;
    let mut bytes = 0;
    let mut failed = None;
    if matches!(*flow, Flow::Open | Flow::Flushing) {
        let open = *flow == Flow::Open;
        let mut t = transfer_with(
            d,
            (src, &mut *sr, short),
            (dst, &mut *dr),
            open,
            true,
            stock,
        );
        bytes += t.bytes;
        if t.eof {
            *flow = Flow::Flushing;
        }
        if let Some((Side::Source, e)) = &t.fault {
            failed = Some((Side::Source, Cause::of(e)));
            proto::debug!(
                "{}: {e}; delivering what was read, then passing on the end",
                what()
            );
            *flow = Flow::Flushing;
            // The transfer stopped at the error: write out what is held.
            t = transfer_with(
                d,
                (src, &mut *sr, short),
                (dst, &mut *dr),
                false,
                true,
                stock,
            );
            bytes += t.bytes;
        }
        if let Some((Side::Destination, e)) = &t.fault {
            failed = failed.or(Some((Side::Destination, Cause::of(e))));
            proto::debug!(
                "{}: {e}; dropping {} byte(s) held for it, ending this direction only",
                what(),
                d.held()
            );
            d.discard(stock);
            *flow = Flow::Draining;
        }
        if *flow == Flow::Flushing && d.held() == 0 {
            // With the other direction ended this one ends the connection,
            // whose `close` sends the same FIN (dst was read to its end, so
            // nothing unread turns it into a reset): no `shutdown` call.
            if other != Flow::Ended {
                if let Err(e) = shutdown_write(dst) {
                    proto::debug!("{}: {e}", what());
                }
            }
            // Frees the pipe or buffer now, not when the connection ends.
            d.discard(stock);
            *flow = Flow::Ended;
        }
    }
    if *flow == Flow::Draining {
        while sr.readable {
            match d.drain(src) {
                Ok(0) => *flow = Flow::Ended,
                Ok(_) => continue,
                Err(e) if would_block(&e) => sr.readable = false,
                Err(_) => *flow = Flow::Ended,
            }
            if *flow == Flow::Ended {
                break;
            }
        }
    }
    (bytes, *flow != before, failed)
}

#[cfg(test)]
mod tests;

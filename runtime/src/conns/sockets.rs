//! [`Sockets`]: the two sockets of a tcp or unix worker's connection,
//! their readiness as events reported it, and what the loop keeps for it
//! (its timer state, the bytes moved): the part every such connection
//! shares, with the two steps that read it, dialling the backend
//! ([`Sockets::dial`]) and relaying ([`Sockets::relay`]), and what every
//! such connection's end is written down with (its start, its route, the
//! bytes it moved; [`Ending`]: how it ended).

use crate::backend::{Dialer, Reach, Real, Step};
use crate::duplex::{Direction, Duplex, Fault, Flow, ShortRead};
use crate::event_loop::Cx;
use crate::route_book::RouteRef;
use crate::stream::{Peer, Ready, Stream, Who};
use mio::event::Event;
use proto::ctl::End;
use proto::limits::Limits;
use proto::tick::Tick;
use std::num::NonZeroU32;
use std::os::fd::AsFd;
use std::time::Instant;

/// What the loop must do after driving a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Continue,
    /// Close both sides, ended as it says.
    Close(Ending),
    /// A new backend socket exists and must be registered.
    RegisterBackend,
}

/// How a connection ended: its route's `end` count and its access line's
/// `end=` and `reason=` (README, "Access log"), and whether the worker's
/// `errors` counter counts it (a failure of ours or of its backend, not a
/// client that went away or an idle connection closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ending {
    pub end: End,
    /// One word, for `reason=` (none when complete): a fixed set,
    /// documented in the README, so a line never allocates for it.
    pub why: &'static str,
    pub error: bool,
}

impl Ending {
    /// Both directions ended normally.
    pub const COMPLETE: Ending = Ending {
        end: End::Complete,
        why: "",
        error: false,
    };

    /// Not counted as a failed connection.
    pub fn quiet(end: End, why: &'static str) -> Ending {
        Ending {
            end,
            why,
            error: false,
        }
    }

    /// A relay that is done: the side that failed first is how it ended
    /// (a client that reset, or would not take the answer, went away; a
    /// backend that did reset); neither, both closed normally. Not inlined
    /// into each kind of relay.
    #[inline(never)]
    pub fn of(fault: Option<Fault>) -> Ending {
        match fault {
            None => Ending::COMPLETE,
            Some(f) if f.backend => Ending::quiet(End::BackendReset, f.cause.as_str()),
            Some(f) => Ending::quiet(End::ClientGone, f.cause.as_str()),
        }
    }

    /// Counted as a failed connection (stats `errors`).
    pub fn failed(end: End, why: &'static str) -> Ending {
        Ending {
            end,
            why,
            error: true,
        }
    }
}

/// The two sockets of a proxied connection and what the loop keeps for
/// it; every [`Connection`] has one. Kept small: thousands of idle
/// connections each hold one (times are 8-byte [`Tick`]s).
pub struct Sockets {
    pub client: Stream,
    pub client_ready: Ready,
    pub backend: Option<Stream>,
    pub backend_ready: Ready,
    /// An event reported a hang-up, an error or urgent data on the
    /// (client, backend) socket: a short read no longer proves it empty
    /// (`Duplex::short_reads`), nor a writable backend connected.
    pub troubled: [bool; 2],
    /// The backend's handshake ACK waits for our first bytes to carry it
    /// (`backend::connect`); the first relay pass sends it if it has none.
    ack_owed: bool,
    /// An event reported the peer's FIN (or a reset) on the (client,
    /// backend) socket: nothing arrives after what is queued, so a short
    /// read proves the end (`ShortRead::End`).
    pub hung_up: [bool; 2],
    /// Urgent data was reported on (client, backend) (`Duplex::urgent_data`).
    pub urgent: [bool; 2],
    /// The poll round in which the backend socket was registered, until
    /// its first event: events of that round were gathered before it
    /// existed (an fd closed in the round had its token), so they are not
    /// about it.
    pub(super) backend_round: Option<NonZeroU32>,
    /// Bytes delivered so far (up: client to backend, down: back).
    pub moved: (u64, u64),
    /// When the client was accepted: its access line's `ms=` and its
    /// route's duration count from it.
    pub started: Tick,
    /// The route it counts under ([`RouteRef::NONE`] until one is chosen,
    /// or when none matched).
    pub route: RouteRef,
    /// When the connection next needs attention from a timer
    /// ([`Sockets::set_deadline`]).
    pub(super) deadline: Option<Tick>,
    /// Earliest timer entry for it in the loop's heap: a new entry is only
    /// needed when the deadline moves before it.
    pub(super) timer_at: Option<Tick>,
    /// When bytes last moved (or the relay began): the idle and linger
    /// timeouts count from it.
    last_activity: Tick,
    /// A route with replicas: this connection counted against its backend
    /// until it closes (least-conn, `balance.rs`).
    pub lease: Option<crate::balance::Lease>,
}

/// Where a backend connect stands after [`Sockets::dial`].
pub enum Dialing {
    /// Not connected (yet): what the loop must do.
    Next(Next),
    /// Connected: start relaying.
    Connected,
}

impl Sockets {
    /// A connection accepted at `now`, for `route` (the config's route it
    /// was given, `RouteRef::NONE` while sni picks it).
    pub fn new(client: Stream, now: Instant, route: RouteRef) -> Sockets {
        Sockets {
            client,
            client_ready: Ready::default(),
            backend: None,
            backend_ready: Ready::default(),
            troubled: [false; 2],
            ack_owed: false,
            hung_up: [false; 2],
            urgent: [false; 2],
            backend_round: None,
            moved: (0, 0),
            started: Tick::from(now),
            route,
            deadline: Some(Tick::from(now)),
            timer_at: None,
            last_activity: Tick::from(now),
            lease: None,
        }
    }

    /// When the connection next needs a timer (None: never).
    pub fn set_deadline(&mut self, at: Option<Instant>) {
        self.deadline = at.map(Tick::from);
    }

    /// Whether the deadline has come (a timer may fire for an older one).
    pub fn due(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| d <= Tick::from(now))
    }

    pub fn last_activity(&self) -> Instant {
        self.last_activity.instant()
    }

    /// Count idle time from `now` (the relay begins).
    pub fn touch(&mut self, now: Instant) {
        self.last_activity = Tick::from(now);
    }

    /// Record an event on the client or (`backend`) the backend socket,
    /// gathered in poll round `round`.
    pub fn on_event(&mut self, backend: bool, ev: &Event, round: NonZeroU32) {
        if backend {
            if self.backend_round == Some(round) {
                return;
            }
            self.backend_round = None;
        }
        let r = if backend {
            &mut self.backend_ready
        } else {
            &mut self.client_ready
        };
        r.add(ev);
        if crate::stream::troubled(ev) {
            self.troubled[usize::from(backend)] = true;
        }
        if ev.is_priority() {
            self.urgent[usize::from(backend)] = true;
        }
        if ev.is_read_closed() {
            self.hung_up[usize::from(backend)] = true;
        }
    }

    /// Drive the backend connect one step (see [`Dialer::step`]), with
    /// the backends' side the loop lends (`Cx::reach`). `client`: its
    /// address from `accept4`, for log lines (None: a unix client).
    pub fn dial(
        &mut self,
        dial: &mut Dialer,
        reach: &mut Reach,
        now: Instant,
        limits: &Limits,
        client: Option<Peer>,
    ) -> Dialing {
        // A held client reported a hang-up, an error or a FIN: if it has
        // gone, its slot and fd are freed now, not at the hold's end.
        if self.troubled[0] && dial.is_held() && crate::hold::client_gone(&self.client, true) {
            proto::debug!(
                "client{} gone while held for backend {}; closing",
                Who(client),
                dial.target
            );
            let gone = Ending::quiet(End::ClientGone, "gone_while_held");
            return Dialing::Next(Next::Close(gone));
        }
        let ready = self.backend_ready.writable;
        // Writable with no error or hang-up reported: the connect has
        // succeeded, and SO_ERROR (with getpeername) would only say so.
        let known = ready && self.backend.is_some() && !self.troubled[1];
        let step = if known {
            dial.connected(reach, now)
        } else {
            // A hang-up reported before any hold: should one begin, the
            // client is asked first, and not held if gone. One call site
            // either way: the dialer is inlined here once.
            let mut net = Real {
                hung_up: self.troubled[0].then_some((&self.client, true)),
            };
            dial.step_on(&mut net, reach, &mut self.backend, ready, now, limits)
        };
        Dialing::Next(match step {
            Step::Wait => Next::Continue,
            Step::Pending => {
                self.backend_ready.writable = false;
                Next::Continue
            }
            Step::Register => {
                self.backend_ready = Ready::default();
                self.troubled[1] = false;
                self.hung_up[1] = false;
                self.urgent[1] = false;
                Next::RegisterBackend
            }
            Step::Connected => {
                self.lease = dial.take_lease();
                // A tcp client whose reset was reported before its backend
                // connected is gone: nothing of it is forwarded (its bytes
                // go with it), and the backend connection closes unused.
                // Asked only when an event said so (no syscall on the
                // common path). A FIN alone is a half-close, honoured as
                // everywhere (`hold::client_reset`). A unix client has no
                // reset: its close after writing is its normal end (a
                // message sent, then gone), so its bytes still go.
                if self.troubled[0]
                    && matches!(self.client, Stream::Tcp(_))
                    && crate::hold::client_reset(&self.client)
                {
                    proto::debug!(
                        "client{} gone before backend {} connected; closing without forwarding",
                        Who(client),
                        dial.target
                    );
                    let gone = Ending::quiet(End::ClientGone, "reset_before_connect");
                    return Dialing::Next(Next::Close(gone));
                }
                if let Some(Stream::Tcp(s)) = &self.backend {
                    let _ = s.set_nodelay(true);
                    self.ack_owed = true;
                }
                return Dialing::Connected;
            }
            Step::Failed(why) => {
                proto::warn!("{why}; closing client{}", Who(client));
                Next::Close(Ending::failed(End::BackendFailed, "unreachable"))
            }
            Step::TimedOut(why) => {
                proto::warn!("{why}; closing client{}", Who(client));
                Next::Close(Ending::failed(End::Timeout, "connect_timeout"))
            }
            Step::Gone => {
                proto::debug!(
                    "client{} gone before backend {} was reached; closing, not holding",
                    Who(client),
                    dial.target
                );
                Next::Close(Ending::quiet(End::ClientGone, "gone_before_hold"))
            }
        })
    }
}

impl Sockets {
    /// What a short read from the client (0) or backend (1) socket proves
    /// (`Duplex::short_reads`).
    fn short_read(&self, i: usize, tcp: bool) -> ShortRead {
        if !tcp || self.urgent[i] {
            ShortRead::Unknown
        } else if self.hung_up[i] {
            ShortRead::End
        } else if self.troubled[i] {
            ShortRead::Unknown
        } else {
            ShortRead::Empty
        }
    }

    /// Relay both ways as far as readiness allows once connected (tcp and
    /// unix alike), with the worker's stock: count the bytes (the
    /// connection's and the worker's), note activity ([`Sockets::touch`]),
    /// close when both directions ended, as the first failure says.
    pub fn relay<D: Direction>(
        &mut self,
        relay: &mut Duplex<D>,
        peer: &dyn std::fmt::Display,
        cx: &mut Cx,
    ) -> Next {
        let Some(b) = self.backend.as_ref() else {
            return Next::Close(Ending::failed(End::BackendFailed, "no_backend"));
        };
        relay.short_reads(
            self.short_read(0, matches!(self.client, Stream::Tcp(_))),
            self.short_read(1, matches!(b, Stream::Tcp(_))),
        );
        relay.urgent_data(self.urgent[0], self.urgent[1]);
        let p = relay.pump(
            self.client.as_fd(),
            &mut self.client_ready,
            b.as_fd(),
            &mut self.backend_ready,
            peer,
            cx.stock,
        );
        if std::mem::take(&mut self.ack_owed) && p.up == 0 && relay.flows().0 == Flow::Open {
            // Nothing went to the backend (a server that speaks first, a
            // client that has not yet): the ACK now, or the backend would
            // not see the connection before Linux's 200 ms timer.
            let _ = crate::stream::set_quickack(b.as_fd(), true);
        }
        if p.active() {
            self.touch(cx.now);
        }
        self.moved.0 += p.up;
        self.moved.1 += p.down;
        cx.stats.bytes_in += p.up;
        cx.stats.bytes_out += p.down;
        if relay.done() {
            Next::Close(Ending::of(relay.fault()))
        } else {
            Next::Continue
        }
    }
}

//! What a tcp or unix connection leaves behind when it ends (in `Conns`'
//! close, the one place it does): its route's counters, and with
//! `--access-log` on its access line (README, "Access log": tcp and unix
//! lines). Not generic: built once for both workers, not once per kind of
//! connection (binary size).

use super::sockets::{Ending, Sockets};
use crate::access::MAX_VALUE;
use crate::event_loop::Cx;
use crate::ledger::Ledger;
use crate::stream::{Peer, Stream};
use proto::ctl::End;
use proto::types::Backend;
use std::fmt::Display;

/// What a connection's end is written down with that only the connection
/// knows ([`super::Connection::facts`]); the rest is in its [`Sockets`].
pub struct Facts<'a> {
    pub io: &'a Sockets,
    /// A tcp client's address from `accept4` (a client that has reset has
    /// no peer to ask any more). None for a unix client: its pid and uid
    /// are asked of its socket (`SO_PEERCRED`), only for a line.
    pub client: Option<Peer>,
    /// The backend aimed at or reached; None before a route was chosen.
    pub backend: Option<&'a Backend>,
    /// A unix connection's fds passed: (client to backend, back).
    pub fds: Option<(u64, u64)>,
}

/// Count the connection under its route and, when access lines are on,
/// write its line: `kind link client backend in out ms [fds_in fds_out]
/// end [reason]`, in that order, whatever ended it.
#[inline(never)]
pub(super) fn write_down(cx: &mut Cx, f: &Facts, ending: Ending) {
    let io = f.io;
    let took = cx.now.saturating_duration_since(io.started.instant());
    // In u64 arithmetic (`as_millis` is u128's, and its division code).
    let ms = took
        .as_secs()
        .saturating_mul(1000)
        .saturating_add(u64::from(took.subsec_millis()));
    let Ledger { line, routes } = &mut *cx.ledger;
    // The route is current (renewed after each update) or none: the
    // name is never asked for.
    if routes.name(io.route).is_some() {
        routes.count(io.route, || "", None, ending.end, io.moved, ms);
    }
    if !line.on() {
        return;
    }
    let unix = matches!(io.client, Stream::Unix(_));
    line.start(if unix { "unix" } else { "tcp" });
    line.text("link", routes.name(io.route).unwrap_or(""), MAX_VALUE);
    match (f.client, &io.client) {
        (Some(p), _) => line.addr("client", &p.addr()),
        // Credentials the kernel took when the client connected: still
        // there after it closed.
        (None, Stream::Unix(s)) => {
            match nix::sys::socket::getsockopt(s, nix::sys::socket::sockopt::PeerCredentials) {
                Ok(c) => {
                    let (pid, uid) = (c.pid(), c.uid());
                    line.shown(
                        "client",
                        &format_args!("pid:{pid},uid:{uid}") as &dyn Display,
                    )
                }
                Err(_) => line.text("client", "", MAX_VALUE),
            }
        }
        (None, Stream::Tcp(_)) => line.text("client", "", MAX_VALUE),
    };
    match f.backend {
        Some(Backend::Tcp(a)) => line.addr("backend", a),
        Some(b) => line.shown("backend", b as &dyn Display),
        None => line.text("backend", "", MAX_VALUE),
    };
    line.num("in", io.moved.0)
        .num("out", io.moved.1)
        .num("ms", ms);
    if let Some((fds_in, fds_out)) = f.fds {
        line.num("fds_in", fds_in).num("fds_out", fds_out);
    }
    line.text("end", ending.end.as_str(), MAX_VALUE);
    if ending.end != End::Complete {
        line.text("reason", ending.why, MAX_VALUE);
    }
    line.write();
}

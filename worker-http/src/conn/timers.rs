//! A connection's deadline in each phase, and what its passing does: the
//! head and idle timeouts while waiting for a request, the dialer's own
//! while connecting, the response and idle timeouts of an exchange, the
//! tunnel's idle and half-close linger, the lingering close's bound.
//! The connection keeps at most one live timer entry (`armed`); an entry
//! that fires early (the deadline moved later) just re-arms.

use super::closing::LINGER;
use super::record::Cause;
use super::{Conn, Ctx, Fail, Phase};
use proto::limits::Limits;
use std::time::{Duration, Instant};

impl Conn {
    /// The connection's next deadline, if any.
    pub fn deadline(&self, l: &Limits) -> Option<Instant> {
        let ms = Duration::from_millis;
        match &self.phase {
            Phase::ReadHead {
                since,
                head_since,
                first,
            } => Some(match head_since {
                Some(t) => *t + ms(l.head_timeout_ms),
                // A new connection gets the head timeout for its first
                // request; a kept-alive one the (longer) idle timeout.
                None if *first => *since + ms(l.head_timeout_ms),
                None => *since + ms(l.idle_timeout_ms),
            }),
            Phase::Connecting { dial, .. } => Some(dial.deadline()),
            Phase::Exchange { ex, .. } => Some(match ex.waiting_since() {
                Some(sent) => sent + ms(l.response_timeout_ms),
                None => ex.last_active + ms(l.idle_timeout_ms),
            }),
            Phase::Tunnel(t) => {
                let idle =
                    (l.tcp_idle_timeout_ms > 0).then(|| t.last_active + ms(l.tcp_idle_timeout_ms));
                let linger = t
                    .half_closed()
                    .then(|| t.last_active + ms(l.half_close_linger_ms));
                idle.into_iter().chain(linger).min()
            }
            Phase::Closing { since, .. } => Some(*since + LINGER),
            Phase::Done => None,
        }
    }

    /// After a run: the deadline to arm a timer entry for, when it comes
    /// before the one armed (or none is).
    pub fn rearm(&mut self, l: &Limits) -> Option<Instant> {
        let d = self.deadline(l)?;
        if self.armed.is_some_and(|a| d >= a) {
            return None;
        }
        self.armed = Some(d);
        Some(d)
    }

    /// A timer fired: act on whatever deadline has passed, then run.
    /// Returns false once finished.
    pub fn on_timer(&mut self, cx: &mut Ctx) -> bool {
        if self.armed.is_some_and(|a| a <= cx.now) {
            self.armed = None;
        }
        let due = self.deadline(cx.limits).is_some_and(|d| d <= cx.now);
        if due {
            let fail = match &self.phase {
                Phase::ReadHead {
                    head_since: Some(_),
                    ..
                } => Some(Fail::Status(
                    408,
                    Cause::HeadTimeout,
                    "request head not complete in time".into(),
                )),
                Phase::ReadHead { .. } => {
                    self.phase = Phase::Done;
                    None
                }
                // A retry is due, or the timeout passed: the dialer knows.
                Phase::Connecting { .. } => None,
                // The request body stalled (the client stopped sending).
                Phase::Exchange { ex, .. } if !ex.responded() && !ex.request_sent() => {
                    Some(Fail::Status(
                        408,
                        Cause::BodyTimeout,
                        "request body stalled for the idle timeout".into(),
                    ))
                }
                Phase::Exchange { ex, .. } if !ex.responded() => Some(Fail::Status(
                    504,
                    Cause::ResponseTimeout,
                    "backend did not answer in time".into(),
                )),
                Phase::Exchange { .. } => Some(Fail::Abort(
                    Cause::IdleTimeout,
                    "no traffic on the exchange for the idle timeout".into(),
                )),
                Phase::Tunnel(_) | Phase::Closing { .. } | Phase::Done => {
                    // A tunnel idle (or half-closed) too long ends its request.
                    self.ended(cx.ledger, cx.now, None, Some(Cause::IdleTimeout));
                    self.enter(Phase::Done, cx.spares);
                    None
                }
            };
            if let Some(f) = fail {
                self.fail(cx, f);
            }
        }
        if matches!(self.phase, Phase::Done) {
            return false;
        }
        self.drive(cx)
    }
}

//! How a connection closes with an answer still on its way: the Closing
//! phase (flush the last bytes, shut our side, then read and drop what
//! the client still sends until it closes: closing with unread input would
//! send a reset that can destroy the response before the client reads
//! it), and the `503` a request still waiting gets at a drain's deadline.

use super::record::Cause;
use super::{Conn, Phase};
use crate::errors;
use runtime::ledger::Ledger;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

/// How long a closing connection may take to flush its last response and
/// drain what the client still sends (lingering close).
pub const LINGER: Duration = Duration::from_secs(2);
/// Most bytes discarded during a lingering close.
const LINGER_BYTES: usize = 1 << 20;

/// Where a closing connection reads what it discards: one per worker,
/// owned by the handler and lent to each step, so no closing step zeroes
/// a buffer of its own.
pub struct Sink(Box<[u8]>);

impl Default for Sink {
    fn default() -> Sink {
        Sink(vec![0; 4096].into_boxed_slice())
    }
}

impl Phase {
    /// The lingering close, from `now`.
    pub(super) fn closing(now: Instant) -> Phase {
        Phase::Closing {
            since: now,
            shut: false,
            discarded: 0,
        }
    }
}

impl Conn {
    /// One step of the lingering close (see the module comment).
    pub(super) fn closing_step(&mut self, sink: &mut Sink) -> bool {
        let Phase::Closing {
            shut, discarded, ..
        } = &mut self.phase
        else {
            return false;
        };
        if !self.cout.is_empty() {
            match self.cout.flush(&self.client, &mut self.cr) {
                Ok(n) if !self.cout.is_empty() => return n > 0,
                Ok(_) => {}
                Err(_) => {
                    self.phase = Phase::Done;
                    return false;
                }
            }
        }
        if !*shut {
            *shut = true;
            let _ = self.client.shutdown(Shutdown::Write);
        }
        while self.cr.readable {
            match (&self.client).read(&mut sink.0) {
                Ok(n) if n > 0 && *discarded + n <= LINGER_BYTES => *discarded += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => self.cr.readable = false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                _ => {
                    self.phase = Phase::Done;
                    return false;
                }
            }
        }
        false
    }

    /// The worker exits now (a drain's deadline): a request head in
    /// progress, or a request still reaching its backend (held while a
    /// provider is away), gets `503`, written once without waiting: none
    /// of it reached a backend. Whether it did. Every request in progress
    /// is written down as drained (`ledger`, at `now`).
    pub fn cut(&mut self, sink: &mut Sink, ledger: &mut Ledger, now: Instant) -> bool {
        let waiting = match self.phase {
            Phase::ReadHead { .. } => !self.cbuf.is_empty(),
            Phase::Connecting { .. } => true,
            _ => false,
        };
        if !waiting {
            // Cut with its response under way (or a tunnel): as it is.
            self.ended(ledger, now, None, Some(Cause::Drained));
            return false;
        }
        let head_only = match &self.phase {
            Phase::Connecting { ex, .. } => ex.is_head,
            _ => self.cbuf.bytes().starts_with(b"HEAD "),
        };
        let answer = errors::response(503, head_only);
        let _ = (&self.client).write(&answer);
        self.ended(ledger, now, Some((503, answer.len())), Some(Cause::Drained));
        let _ = self.client.shutdown(Shutdown::Write);
        // Input left unread turns the close into a reset, which can
        // destroy the answer before the client reads it.
        for _ in 0..16 {
            match (&self.client).read(&mut sink.0) {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
        true
    }
}

//! mio tokens and timer keys: which socket an event is for, and which
//! deadline a timer entry belongs to.
//!
//! Tokens (0 and 1 are runtime's loop's: listener, control socket):
//! `2 + slot` for a client socket. A backend socket's token is its fd
//! (with the top bit set), registered once for the socket's life: it moves
//! between a connection and the idle pool by updating [`Owners`], with no
//! `epoll_ctl` per request. An fd is only reused by the kernel after its
//! socket closed, which also removed it from epoll, so the table needs no
//! clean-up; an event whose owner no longer holds that fd is a leftover
//! and is ignored.
//!
//! Timer keys: 2-bit kind, 30-bit slot, 32-bit slot generation, so an
//! entry for a slot that was reused is recognised as stale. Every key is
//! below `runtime::event_loop::LOOP_KEYS` (kind 3 is never used).

use mio::Token;
use std::os::fd::RawFd;

// The top bit of a `usize` of any width: 1 << 31 on armv7. Client slots and
// fds both stay far below it.
const BACKEND_BIT: usize = 1 << (usize::BITS - 1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tok {
    Client(usize),
    Backend(RawFd),
}

pub fn client(slot: usize) -> Token {
    Token(2 + slot)
}

pub fn backend(fd: RawFd) -> Token {
    Token(BACKEND_BIT | fd as usize)
}

pub fn decode(t: Token) -> Tok {
    match t.0 {
        n if n & BACKEND_BIT != 0 => Tok::Backend((n & !BACKEND_BIT) as RawFd),
        n => Tok::Client(n - 2),
    }
}

/// Who holds a backend socket now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Owner {
    #[default]
    Nobody,
    Conn(usize),
    Pool(usize),
}

/// Backend socket fd -> its holder.
#[derive(Debug, Default)]
pub struct Owners(Vec<Owner>);

impl Owners {
    pub fn set(&mut self, fd: RawFd, o: Owner) {
        let i = fd as usize;
        if self.0.len() <= i {
            self.0.resize(i + 1, Owner::Nobody);
        }
        self.0[i] = o;
    }

    pub fn get(&self, fd: RawFd) -> Owner {
        self.0.get(fd as usize).copied().unwrap_or_default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    Conn {
        slot: usize,
        gen: u32,
    },
    /// The idle pool's sweep is due.
    Sweep,
}

const SLOT_MASK: u64 = (1 << 30) - 1;

pub fn timer(t: Timer) -> u64 {
    let (kind, slot, gen) = match t {
        Timer::Conn { slot, gen } => (0u64, slot as u64, gen),
        Timer::Sweep => (1, 0, 0),
    };
    (kind << 62) | ((slot & SLOT_MASK) << 32) | gen as u64
}

pub fn decode_timer(k: u64) -> Timer {
    let slot = ((k >> 32) & SLOT_MASK) as usize;
    let gen = k as u32;
    match k >> 62 {
        0 => Timer::Conn { slot, gen },
        _ => Timer::Sweep,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_timers_roundtrip() {
        for s in [0usize, 1, 7, 100_000] {
            assert_eq!(decode(client(s)), Tok::Client(s));
            assert_eq!(decode(backend(s as RawFd)), Tok::Backend(s as RawFd));
            for gen in [0, 9, u32::MAX] {
                let t = Timer::Conn { slot: s, gen };
                assert_eq!(decode_timer(timer(t)), t);
            }
        }
        assert_eq!(decode_timer(timer(Timer::Sweep)), Timer::Sweep);
        let top = timer(Timer::Conn {
            slot: usize::MAX,
            gen: u32::MAX,
        })
        .max(timer(Timer::Sweep));
        assert!(top < runtime::event_loop::LOOP_KEYS);
        let mut o = Owners::default();
        assert_eq!(o.get(7), Owner::Nobody);
        o.set(7, Owner::Pool(3));
        assert_eq!(o.get(7), Owner::Pool(3));
        o.set(7, Owner::Conn(1));
        assert_eq!(o.get(7), Owner::Conn(1));
    }
}

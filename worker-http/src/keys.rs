//! mio tokens and timer keys: which socket an event is for, and which
//! deadline a timer entry belongs to.
//!
//! Tokens: 0 listener, 1 control socket, then two per connection slot
//! (client, backend); idle pooled backend connections have the top bit.
//! Timer keys: 2-bit kind, 30-bit slot, 32-bit slot generation, so an
//! entry for a slot that was reused is recognised as stale.

use mio::Token;

pub const LISTENER: Token = Token(0);
pub const CTL: Token = Token(1);
const POOL_BIT: usize = 1 << 62;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tok {
    Listener,
    Ctl,
    Client(usize),
    Backend(usize),
    Pool(usize),
}

pub fn client(slot: usize) -> Token {
    Token(2 + slot * 2)
}

pub fn backend(slot: usize) -> Token {
    Token(3 + slot * 2)
}

pub fn pool(slot: usize) -> Token {
    Token(POOL_BIT | slot)
}

pub fn decode(t: Token) -> Tok {
    match t.0 {
        0 => Tok::Listener,
        1 => Tok::Ctl,
        n if n & POOL_BIT != 0 => Tok::Pool(n & !POOL_BIT),
        n if n % 2 == 0 => Tok::Client((n - 2) / 2),
        n => Tok::Backend((n - 3) / 2),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    Conn {
        slot: usize,
        gen: u32,
    },
    Pool {
        slot: usize,
        gen: u32,
    },
    /// Loop housekeeping: accept pause over, stats due, drain deadline.
    Loop,
}

const SLOT_MASK: u64 = (1 << 30) - 1;

pub fn timer(t: Timer) -> u64 {
    let (kind, slot, gen) = match t {
        Timer::Conn { slot, gen } => (0u64, slot as u64, gen),
        Timer::Pool { slot, gen } => (1, slot as u64, gen),
        Timer::Loop => (2, 0, 0),
    };
    (kind << 62) | ((slot & SLOT_MASK) << 32) | gen as u64
}

pub fn decode_timer(k: u64) -> Timer {
    let slot = ((k >> 32) & SLOT_MASK) as usize;
    let gen = k as u32;
    match k >> 62 {
        0 => Timer::Conn { slot, gen },
        1 => Timer::Pool { slot, gen },
        _ => Timer::Loop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_timers_roundtrip() {
        for s in [0usize, 1, 7, 100_000] {
            assert_eq!(decode(client(s)), Tok::Client(s));
            assert_eq!(decode(backend(s)), Tok::Backend(s));
            assert_eq!(decode(pool(s)), Tok::Pool(s));
            for t in [
                Timer::Conn { slot: s, gen: 9 },
                Timer::Pool {
                    slot: s,
                    gen: u32::MAX,
                },
            ] {
                assert_eq!(decode_timer(timer(t)), t);
            }
        }
        assert_eq!(decode(LISTENER), Tok::Listener);
        assert_eq!(decode(CTL), Tok::Ctl);
        assert_eq!(decode_timer(timer(Timer::Loop)), Timer::Loop);
    }
}

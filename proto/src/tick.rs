//! Instants in 8 bytes, for what is kept per open connection (its
//! deadline, its idle clock, its timer entry): `std::time::Instant` takes
//! 16 (seconds and nanoseconds apart), and a worker holds thousands of
//! idle connections (README "Measured": user memory per idle connection).
//!
//! A [`Tick`] counts nanoseconds from this process's clock epoch (584
//! years fit in a u64). It is never zero, so an `Option<Tick>` is 8 bytes
//! too. The epoch is set the first time it is asked for, [`EPOCH_BACK`]
//! before that moment (an `Instant` may lie before boot: on Linux it is a
//! signed `timespec`), so every instant the process takes after start-up
//! converts exactly; one from before the epoch would map to the epoch.

use std::num::NonZeroU64;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tick(NonZeroU64);

/// How long before its first use the clock's epoch is put.
const EPOCH_BACK: Duration = Duration::from_secs(1 << 20);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(|| {
        let now = Instant::now();
        now.checked_sub(EPOCH_BACK).unwrap_or(now)
    })
}

impl Tick {
    pub fn instant(self) -> Instant {
        epoch() + Duration::from_nanos(self.0.get() - 1)
    }
}

impl From<Instant> for Tick {
    fn from(at: Instant) -> Tick {
        let ns = at.saturating_duration_since(epoch()).as_nanos();
        let ns = u64::try_from(ns).unwrap_or(u64::MAX - 1);
        Tick(NonZeroU64::MIN.saturating_add(ns))
    }
}

impl From<Tick> for Instant {
    fn from(t: Tick) -> Instant {
        t.instant()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_orders_like_instants() {
        let now = Instant::now();
        let later = now + Duration::from_millis(1500);
        let (a, b) = (Tick::from(now), Tick::from(later));
        assert!(a < b);
        assert_eq!(a.instant(), now);
        assert_eq!(b.instant(), later);
        assert_eq!(std::mem::size_of::<Option<Tick>>(), 8);
    }

    #[test]
    fn before_the_epoch_is_the_epoch() {
        let e = epoch();
        let before = e.checked_sub(Duration::from_secs(1)).unwrap_or(e);
        assert_eq!(Tick::from(before).instant(), e);
    }
}

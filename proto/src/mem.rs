//! Keep resident memory small: the code (below), and the heap after a
//! burst of connections ([`give_back_heap`], [`AfterBurst`]).
//!
//! Code. By default the kernel maps up to 64 KiB
//! of already-cached file pages around every code page fault
//! ("fault-around"), so a daemon ends up with most of its binary in its
//! page tables, and counted in its PSS, although it runs a small part of
//! it. After start-up, the workers and the supervisor mark their own code
//! `MADV_RANDOM` (no fault-around) and drop what start-up mapped
//! (`MADV_DONTNEED` on a private file mapping only unmaps; pages come back
//! from the page cache on the next use). Only code that runs again stays.

use nix::sys::mman::{madvise, MmapAdvise};
use std::ptr::NonNull;

/// Apply to every executable mapping of our own binary.
pub fn trim_code() {
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
        return;
    };
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    let exe = exe.to_string_lossy();
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else {
            continue;
        };
        if !perms.starts_with("r-x") || !line.ends_with(exe.as_ref()) {
            continue;
        }
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) else {
            continue;
        };
        let Some(ptr) = NonNull::new(a as *mut std::ffi::c_void) else {
            continue;
        };
        // SAFETY: advice on our own read-only code mapping; DONTNEED on a
        // private file mapping that was never written only drops PTEs.
        unsafe {
            let _ = madvise(ptr, b - a, MmapAdvise::MADV_RANDOM);
            let _ = madvise(ptr, b - a, MmapAdvise::MADV_DONTNEED);
        }
    }
}

/// Hand the heap's free memory back to the system. glibc's `free` keeps
/// what it takes back in its arenas and returns only a large free block
/// at the top of the heap, so a heap fragmented by a burst of connections
/// (small allocations of live connections between the freed ones) stays
/// resident; `malloc_trim` also releases every free page in the middle
/// (`MADV_DONTNEED`). Other C libraries (musl's mallocng) return freed
/// memory themselves; there this does nothing.
pub fn give_back_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it is
    // called from the loop, with no allocation in progress.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

/// This process's resident memory in KiB (from /proc/self/statm), 0 when
/// unknown: for logs.
pub fn resident_kib() -> u64 {
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64;
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page / 1024)
}

/// Connections that closed since the peak before memory is given back.
const BURST: usize = 128;
/// How long after the fall the heap is trimmed: one trim for a burst that
/// ends over a few hundred milliseconds, not one per closed connection.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(1);

/// Notices the end of a burst of connections, so a worker gives back the
/// memory the burst made it take (connection slots, buffers, heap) once
/// instead of holding its peak for ever.
#[derive(Debug, Default)]
pub struct AfterBurst {
    peak: usize,
    due: Option<std::time::Instant>,
    /// Connections left at the last give-back: when half of them have gone
    /// too, the burst was still ending and its last connections' memory is
    /// given back as well (a few give-backs at most, one per `SETTLE`;
    /// steady churn after a burst does not keep trimming).
    left: Option<usize>,
}

impl AfterBurst {
    /// Record the live connection count (after each loop turn). Returns
    /// when the worker should next call [`AfterBurst::due`], when a burst
    /// has just ended: the caller sets a timer for it.
    pub fn observe(&mut self, now: std::time::Instant, live: usize) -> Option<std::time::Instant> {
        self.peak = self.peak.max(live);
        let falling = self.left.is_some_and(|left| live <= left / 2);
        if self.due.is_none() && (self.peak >= live + BURST || falling) {
            let at = now + SETTLE;
            self.due = Some(at);
            return Some(at);
        }
        None
    }

    /// Whether memory should be given back now; the next burst is counted
    /// from `live`.
    pub fn due(&mut self, now: std::time::Instant, live: usize) -> bool {
        match self.due {
            Some(at) if at <= now => {
                self.due = None;
                self.peak = live;
                self.left = (live > 0).then_some(live);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_burst_is_noticed_once_it_has_fallen() {
        let mut b = AfterBurst::default();
        let t = Instant::now();
        assert_eq!(b.observe(t, 500), None);
        assert_eq!(b.observe(t, 400), None, "100 fewer: not yet a burst");
        let at = b.observe(t, 300).expect("200 fewer: a burst ended");
        assert_eq!(at, t + SETTLE);
        assert_eq!(b.observe(t, 250), None, "already due");
        assert!(!b.due(t, 250));
        assert!(b.due(t + SETTLE, 250));
        assert!(!b.due(t + Duration::from_secs(9), 250));
        // The last connections of the burst leave: given back again.
        assert_eq!(b.observe(t, 250), None);
        assert_eq!(b.observe(t, 200), None, "churn, not the burst's end");
        assert!(b.observe(t, 125).is_some(), "half gone: still falling");
        assert!(b.due(t + SETTLE, 0));
        assert_eq!(b.observe(t, 0), None, "all gone: the burst is over");
        assert_eq!(b.observe(t, 100), None, "counted from 0 again");
        assert!(b.observe(t, 0).is_none());
    }
}

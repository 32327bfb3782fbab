//! Keep the resident code small. By default the kernel maps up to 64 KiB
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

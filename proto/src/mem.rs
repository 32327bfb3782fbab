//! Keep resident memory small: the code and read-only data (below), the
//! stack left deep by start-up ([`trim_stack`]), and the heap after a burst
//! of connections ([`give_back_heap`], [`AfterBurst`]).
//!
//! Code. On a code page fault the kernel maps up to 64 KiB of already
//! cached file pages around the faulting page ("fault-around",
//! `fault_around_bytes`; `MADV_RANDOM` does not turn it off), so a daemon
//! ends up with most of its binary and of libc in its page tables, and
//! counted in its PSS, although it runs a small part of them. After
//! start-up (and the supervisor after each burst of work, [`IdleTrim`]) a
//! process drops every clean read-only file mapping it has: code and
//! read-only data of our executable, libc, libgcc_s and the dynamic loader
//! (`MADV_DONTNEED` on a private file mapping with no private copy only
//! unmaps; the pages stay in the page cache, where the next use maps them
//! again with a minor fault). Only what runs again comes back.

use nix::sys::mman::{madvise, MmapAdvise};
use std::io::BufRead;
use std::ptr::NonNull;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// `[start, end)` of every mapping that is file-backed, not writable and
/// holds no private (anonymous, copied-on-write) page: unmapping its pages
/// loses nothing. Found once: the set does not change after start-up (no
/// `dlopen`), and a mapping that cannot be written never gains a private
/// page.
fn clean_mappings() -> &'static [(usize, usize)] {
    static MAPS: OnceLock<Vec<(usize, usize)>> = OnceLock::new();
    MAPS.get_or_init(|| {
        let mut clean = Clean::default();
        if !each_line("/proc/self/smaps", |l| clean.line(l)) {
            return Vec::new();
        }
        let mut listed = Listed::default();
        if !each_line("/proc/self/maps", |l| listed.line(l)) {
            return Vec::new();
        }
        clean.confirmed_by(&listed)
    })
}

/// Feed `path` to `f` line by line: smaps is tens of KiB, which read whole
/// would stay on the heap's top as a free block, resident. false: it
/// could not be opened.
fn each_line(path: &str, mut f: impl FnMut(&str)) -> bool {
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    let mut r = std::io::BufReader::with_capacity(1024, file);
    let mut line = String::new();
    while matches!(r.read_line(&mut line), Ok(n) if n > 0) {
        f(&line);
        line.clear();
    }
    true
}

/// A mapping's header line (`start-end perms offset dev inode path`):
/// its range, and whether it is a read-only private mapping of a file.
fn mapping(line: &str) -> Option<((usize, usize), bool)> {
    let mut f = line.split_whitespace();
    let (a, b) = f.next()?.split_once('-')?;
    // A field line ("Rss: ...") has no hexadecimal range.
    let range = (
        usize::from_str_radix(a, 16).ok()?,
        usize::from_str_radix(b, 16).ok()?,
    );
    let perms = f.next()?;
    let path = f.nth(3).unwrap_or("");
    Some((
        range,
        matches!(perms, "r--p" | "r-xp") && path.starts_with('/'),
    ))
}

/// Reads smaps line by line; `found` holds the clean mappings (see
/// [`clean_mappings`]) it lists.
#[derive(Default)]
struct Clean {
    found: Vec<(usize, usize)>,
    cur: Option<(usize, usize)>,
}

impl Clean {
    fn line(&mut self, line: &str) {
        if let Some(anon) = line.strip_prefix("Anonymous:") {
            // A mapping with a private page (relro after relocation) is
            // never dropped: its pages hold what the file does not.
            if let Some(r) = self.cur.take() {
                if anon.trim() == "0 kB" {
                    self.found.push(r);
                }
            }
            return;
        }
        if let Some((range, read_only_file)) = mapping(line) {
            self.cur = read_only_file.then_some(range);
        }
    }

    /// The clean mappings that /proc/self/maps lists too, as read-only
    /// file mappings of the same range. On a kernel both files describe
    /// the same address space and this keeps them all; under qemu-user 7.2,
    /// smaps is the emulator's own (host addresses, host permissions) while
    /// maps is the guest's, and dropping a range smaps named can discard
    /// the relocated pages of a guest library next to it (a SIGSEGV under
    /// qemu-arm): nothing is trusted that maps does not confirm.
    fn confirmed_by(self, listed: &Listed) -> Vec<(usize, usize)> {
        let mut found = self.found;
        found.retain(|r| listed.0.contains(r));
        found
    }
}

/// The read-only file mappings /proc/self/maps lists.
#[derive(Default)]
struct Listed(Vec<(usize, usize)>);

impl Listed {
    fn line(&mut self, line: &str) {
        if let Some((range, true)) = mapping(line) {
            self.0.push(range);
        }
    }
}

/// Drop the pages of every clean file mapping from this process's page
/// tables (see the module comment). Safe to call at any time; costs one
/// `madvise` per mapping and, afterwards, a minor fault per 64 KiB of code
/// or data used again.
pub fn trim_code() {
    for &(a, b) in clean_mappings() {
        let Some(ptr) = NonNull::new(a as *mut std::ffi::c_void) else {
            continue;
        };
        // SAFETY: a read-only private file mapping without a private page:
        // DONTNEED only drops PTEs, the contents come back from the file.
        unsafe {
            let _ = madvise(ptr, b - a, MmapAdvise::MADV_DONTNEED);
        }
    }
}

/// Give back the main thread's stack pages below the caller's frame,
/// left resident by a deeper start-up (command line parsing, the first
/// graph): they are dead by the ABI (what a callee or a signal handler
/// needs below the stack pointer it faults in again, zeroed). Call from a
/// shallow frame, e.g. an event loop.
#[inline(never)]
pub fn trim_stack() {
    // Room left below this frame for madvise's own frames (and the ABI's
    // 128-byte red zone) while it runs: never dropped.
    const MARGIN: usize = 4 * 1024;
    let here = std::hint::black_box(0u8);
    let sp = std::ptr::addr_of!(here) as usize;
    let Some((start, end)) = stack_mapping() else {
        return;
    };
    if !(start..end).contains(&sp) {
        return; // not on the main thread's stack
    }
    let top = sp.saturating_sub(MARGIN) & !(PAGE - 1);
    if top <= start {
        return;
    }
    let Some(ptr) = NonNull::new(start as *mut std::ffi::c_void) else {
        return;
    };
    // SAFETY: [start, top) lies below this frame by more than any frame
    // madvise needs; nothing live is stored there (the stack grows down).
    unsafe {
        let _ = madvise(ptr, top - start, MmapAdvise::MADV_DONTNEED);
    }
}

const PAGE: usize = 4096;

/// `[start, end)` of the main thread's `[stack]` mapping, found once. Its
/// start moves down only when the stack grows past it, which dropping
/// pages inside it does not undo, so the first value stays a lower bound
/// of the live mapping's start.
fn stack_mapping() -> Option<(usize, usize)> {
    static STACK: OnceLock<Option<(usize, usize)>> = OnceLock::new();
    *STACK.get_or_init(|| {
        let mut stack = None;
        each_line("/proc/self/maps", |l| {
            if l.trim_end().ends_with("[stack]") {
                stack = mapping(l).map(|(range, _)| range);
            }
        });
        stack
    })
}

/// For a loop that wakes now and then for a burst of work (the
/// supervisor's: graph polls, status requests, restarts): `QUIET` after a
/// wake-up, when that burst is usually over (a local control socket's
/// answer arrives within it: one drop per poll, not one before the answer
/// and one after), drop the code, stack and heap it brought in
/// ([`trim_code`], [`trim_stack`], [`give_back_heap`]), so an idle process
/// keeps only what it touches between the drop and its next wait. At most
/// one drop per `QUIET`; the cost is a few minor faults per wake-up
/// (README, "Measured").
#[derive(Debug, Default)]
pub struct IdleTrim {
    due: Option<Instant>,
}

impl IdleTrim {
    const QUIET: Duration = Duration::from_millis(25);

    /// Call right before waiting, after a wake-up's work; `wait` is how
    /// long the loop means to sleep at most (None: until an event).
    /// Returns the wait to use instead: no longer than until the drop is
    /// due.
    pub fn before_wait(&mut self, now: Instant, wait: Option<Duration>) -> Option<Duration> {
        let due = *self.due.get_or_insert(now + Self::QUIET);
        if now < due {
            let left = due - now;
            return Some(wait.map_or(left, |w| w.min(left)));
        }
        self.due = None;
        trim_code();
        trim_stack();
        give_back_heap();
        wait
    }

    /// The process is serving (a worker with connections open, or that
    /// accepted some since its last wait): no drop, and the quiet time
    /// starts again at the next [`IdleTrim::before_wait`]. Under traffic
    /// the code stays mapped; dropping it would cost faults per request.
    pub fn busy(&mut self) {
        self.due = None;
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
    fn idle_trim_drops_once_a_burst_is_quiet() {
        let mut t = IdleTrim::default();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // Woken at t0: the drop is due 25 ms later, the wait shortened.
        assert_eq!(t.before_wait(t0, Some(ms(5000))), Some(ms(25)));
        // More work of the same burst: still due at t0 + 25 ms.
        assert_eq!(t.before_wait(t0 + ms(1), None), Some(ms(24)));
        assert_eq!(t.before_wait(t0 + ms(2), Some(ms(10))), Some(ms(10)));
        // Due: dropped, and the loop sleeps as it meant to.
        assert_eq!(t.before_wait(t0 + ms(25), Some(ms(4975))), Some(ms(4975)));
        // The next wake-up starts the next burst.
        assert_eq!(t.before_wait(t0 + ms(5000), None), Some(ms(25)));
    }

    #[test]
    fn clean_mappings_are_read_only_file_mappings_without_private_pages() {
        // Addresses of an armv7 process, so the test runs on 32 bits too.
        let smaps = "\
b6000000-b6045000 r--p 00000000 fe:00 64 /usr/bin/pv-xconnect
Rss:                 172 kB
Anonymous:             0 kB
b6045000-b6171000 r-xp 00045000 fe:00 64 /usr/bin/pv-xconnect
Anonymous:             0 kB
b6173000-b617a000 r--p 00171000 fe:00 64 /usr/bin/pv-xconnect
Anonymous:            28 kB
b617a000-b617b000 rw-p 00177000 fe:00 64 /usr/bin/pv-xconnect
Anonymous:             4 kB
b7000000-b7020000 rw-p 00000000 00:00 0 [heap]
Anonymous:            20 kB
be000000-be001000 r--p 00000000 00:00 0
Anonymous:             0 kB
bef00000-bef02000 r-xp 00000000 00:00 0 [vdso]
Anonymous:             0 kB
";
        let mut c = Clean::default();
        let mut maps = Listed::default();
        for line in smaps.lines() {
            c.line(line);
            // The same address space: maps has smaps' header lines.
            maps.line(line);
        }
        assert_eq!(
            c.confirmed_by(&maps),
            vec![(0xb6000000, 0xb6045000), (0xb6045000, 0xb6171000)],
            "code and read-only data of the file; not relro, data, heap, anonymous or vdso"
        );
    }

    /// qemu-arm 7.2 passes /proc/self/smaps through from the host (the
    /// emulator's mappings: guest addresses plus its guest base, here
    /// 0x1000, and code as r--p) while it makes up /proc/self/maps for the
    /// guest. The smaps range 3f6bd000-3f7c7000 covers the guest's relro
    /// page of libc at 3f7c6000: dropping it crashed this test binary under
    /// qemu-arm. Nothing maps does not confirm is dropped.
    #[test]
    fn smaps_that_maps_does_not_confirm_is_not_trusted() {
        let smaps = "\
3f6bd000-3f7c7000 r--p 00000000 fe:00 770476 /usr/lib/arm-linux-gnueabihf/libc.so.6
Anonymous:             0 kB
3f7c7000-3f7c9000 r--p 00109000 fe:00 770476 /usr/lib/arm-linux-gnueabihf/libc.so.6
Anonymous:             8 kB
";
        let maps = "\
3f6bc000-3f7c6000 r-xp 00000000 fe:00 770476 /usr/lib/arm-linux-gnueabihf/libc.so.6
3f7c6000-3f7c8000 r--p 00109000 fe:00 770476 /usr/lib/arm-linux-gnueabihf/libc.so.6
3f7c8000-3f7c9000 rw-p 0010b000 fe:00 770476 /usr/lib/arm-linux-gnueabihf/libc.so.6
";
        let mut c = Clean::default();
        smaps.lines().for_each(|l| c.line(l));
        assert_eq!(c.found, vec![(0x3f6bd000, 0x3f7c7000)], "clean by smaps");
        let mut listed = Listed::default();
        maps.lines().for_each(|l| listed.line(l));
        assert_eq!(c.confirmed_by(&listed), vec![], "but not a mapping of ours");
    }

    #[test]
    fn trimming_keeps_code_data_and_stack_working() {
        let data: Vec<u64> = (0..4096).collect();
        fn deep(n: u32) -> u64 {
            let pad = std::hint::black_box([n as u64; 512]);
            if n == 0 {
                pad[0]
            } else {
                deep(n - 1) + pad[511]
            }
        }
        assert_eq!(deep(16), (1..=16).sum::<u64>());
        trim_code();
        trim_stack();
        give_back_heap();
        assert_eq!(deep(16), (1..=16).sum::<u64>());
        assert_eq!(data.iter().sum::<u64>(), 4095 * 4096 / 2);
    }

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

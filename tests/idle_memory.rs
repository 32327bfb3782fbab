//! What an idle supervisor and worker keep mapped (issue 10, README
//! "Measured": idle PSS). The kernel maps code in 64 KiB windows around
//! each page fault, so a process that ran its start-up has most of its
//! executable and of libc in its page tables; after start-up and after
//! each burst of work, pv-xconnect drops its clean read-only file pages
//! (`proto::mem`) and keeps only what it uses again.

use pvx_tests::*;
use std::time::Duration;

/// KiB resident in `pid`'s clean read-only file mappings (code and
/// read-only data: what `proto::mem::trim_code` drops), from
/// /proc/PID/smaps; `libs`: of its libraries only (libc, the loader...),
/// else of every file, the executable too.
fn clean_file_rss(pid: u32, libs: bool) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("smaps");
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("exe");
    let exe = exe.to_string_lossy();
    let (mut total, mut rss, mut file) = (0, 0, false);
    for line in smaps.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if let Some(v) = line.strip_prefix("Rss:") {
            rss = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("Anonymous:") {
            if file && v.trim() == "0 kB" {
                total += rss;
            }
        } else if f.len() >= 6 && f[0].contains('-') && !f[0].ends_with(':') {
            file = matches!(f[1], "r--p" | "r-xp")
                && f[5].starts_with('/')
                && !(libs && f[5] == exe.as_ref());
        }
    }
    total
}

#[test]
fn idle_processes_drop_the_code_they_ran_at_start_up() {
    let backend = echo_server();
    let port = free_port();
    let g = graph(&[link(
        "tcp",
        "idle",
        0,
        &format!("127.0.0.1:{port}"),
        &backend.to_string(),
        0,
    )]);
    let sup = Supervisor::start(&g, &[]);
    let worker = sup.worker_pid("pvx-worker-tcp");
    wait_worker_started(worker);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    // Start-up maps megabytes (the executable's code, libc, the loader):
    // idle, both keep a few 64 KiB windows of what their loops run (more
    // in this debug build than in release: its code is spread wider).
    const SUP_KIB: u64 = 1024;
    const LIBS_KIB: u64 = 512;
    let dropped = |pid, libs, max| {
        wait_for(
            Duration::from_secs(10),
            "an idle process's code dropped",
            || (clean_file_rss(pid, libs) <= max).then_some(()),
        )
    };
    dropped(sup.pid(), false, SUP_KIB);
    dropped(worker, true, LIBS_KIB);
    // What was dropped comes back from the page cache when used: a
    // connection, a reload and a status request are served as ever.
    assert_eq!(
        roundtrip(addr, b"after the drop\n").unwrap(),
        b"after the drop\n"
    );
    let (code, body) = sup.http_status("/status");
    assert_eq!(code, 200, "{body}");
    sup.reload(&g);
    assert_eq!(roundtrip(addr, b"and again\n").unwrap(), b"and again\n");
    dropped(sup.pid(), false, SUP_KIB);
    assert!(sup.stop().success());
}

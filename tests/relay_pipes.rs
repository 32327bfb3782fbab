//! The relay's pipes (issue 8, item 10): 64 KiB by default, `--pipe-size`
//! changes them, a bad value exits 2 naming the flag. Checked on the pipes
//! a running tcp worker holds, through /proc/<pid>/fd.

use pvx_tests::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::thread;
use std::time::Duration;

/// More than a direction copies before it splices (`SPLICE_AFTER`, 64 KiB).
const BULK: usize = 128 * 1024;

/// A backend that sends `BULK` bytes and then holds the connection open
/// (reading what comes), so both directions of the relay made their pipe.
fn bulk_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind backend");
    let addr = l.local_addr().expect("addr");
    thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            thread::spawn(move || {
                let _ = c.write_all(&vec![b'b'; BULK]);
                let mut buf = [0u8; 1024];
                while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

/// F_GETPIPE_SZ of every pipe `pid` holds (opened again through /proc).
fn pipe_sizes(pid: u32) -> Vec<usize> {
    fds(pid)
        .into_iter()
        .filter(|(_, what)| what.starts_with("pipe:"))
        .filter_map(|(fd, _)| {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(nix::libc::O_NONBLOCK)
                .open(format!("/proc/{pid}/fd/{fd}"))
                .ok()?;
            nix::fcntl::fcntl(f.as_raw_fd(), nix::fcntl::FcntlArg::F_GETPIPE_SZ)
                .ok()
                .map(|n| n as usize)
        })
        .collect()
}

use std::os::unix::fs::OpenOptionsExt;

/// The sizes of the pipes the tcp worker made for one connection with
/// `BULK` bytes each way, started with `extra` flags.
fn worker_pipes(extra: &[&str]) -> Vec<usize> {
    let backend = bulk_backend();
    let port = free_port();
    let sup = Supervisor::start(
        &graph(&[link(
            "tcp",
            "pipes",
            0,
            &format!("127.0.0.1:{port}"),
            &backend.to_string(),
            0,
        )]),
        extra,
    );
    let pid = sup.worker_pid("pvx-worker-tcp");
    let mut c = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let writer = {
        let mut c = c.try_clone().unwrap();
        thread::spawn(move || c.write_all(&vec![b'c'; BULK]).unwrap())
    };
    let mut b = vec![0u8; BULK];
    c.read_exact(&mut b).unwrap();
    writer.join().unwrap();
    // The client byte may still be on its way to the backend's side.
    let sizes = wait_for(Duration::from_secs(10), "two relay pipes", || {
        let s = pipe_sizes(pid);
        (s.len() >= 4).then_some(s)
    });
    drop(c);
    sizes
}

#[test]
fn worker_pipes_are_64_kib_and_pipe_size_changes_them() {
    let sizes = worker_pipes(&[]);
    assert_eq!(sizes, vec![65536; 4], "two pipes (4 fds) of 64 KiB");
    let sizes = worker_pipes(&["--pipe-size", "131072"]);
    assert_eq!(sizes, vec![131072; 4]);
}

#[test]
fn bad_pipe_size_exits_2_naming_the_flag() {
    for bad in ["100", "2097152", "64k", ""] {
        let out = Command::new(bin_dir().join("pv-xconnect"))
            .args(["run", "--graph", "/nonexistent.json", "--pipe-size", bad])
            .output()
            .expect("run pv-xconnect");
        assert_eq!(out.status.code(), Some(2), "--pipe-size {bad:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--pipe-size"), "{err}");
    }
}

/// Pipes the worker holds now.
fn pipe_fds(pid: u32) -> usize {
    fds(pid)
        .into_iter()
        .filter(|(_, what)| what.starts_with("pipe:"))
        .count()
}

#[test]
fn short_exchanges_make_no_pipe_and_bulk_ones_leave_none_behind() {
    let backend = echo_server();
    let port = free_port();
    let sup = Supervisor::start(
        &graph(&[link(
            "tcp",
            "pool",
            0,
            &format!("127.0.0.1:{port}"),
            &backend.to_string(),
            0,
        )]),
        // fds are counted: no health-check socket may come and go.
        &["--health-interval", "0"],
    );
    let w = sup.worker_pid("pvx-worker-tcp");
    wait_worker_started(w);
    let base = fds(w);
    let a = SocketAddr::from(([127, 0, 0, 1], port));

    // A short exchange, connection kept open: copied, no pipe made.
    let mut held = TcpStream::connect(a).unwrap();
    held.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    held.write_all(&pattern(100, 1)).unwrap();
    let mut back = vec![0u8; 100];
    held.read_exact(&mut back).unwrap();
    assert_eq!(back, pattern(100, 1));
    let open = wait_for(
        Duration::from_secs(10),
        "client and backend sockets",
        || {
            let n = fds(w).len();
            (n == base.len() + 2).then_some(n)
        },
    );
    assert_eq!(pipe_fds(w), 0, "a short exchange holds no pipe");

    // Many bulk connections, 20 at a time, each spliced both ways: pipes
    // are taken, given back, reused; none may stay behind.
    for batch in 0..6u64 {
        let hs: Vec<_> = (0..20u64)
            .map(|i| {
                let data = pattern(512 * 1024, batch * 20 + i);
                thread::spawn(move || (roundtrip(a, &data).map(|g| g == data), data.len()))
            })
            .collect();
        for h in hs {
            let (same, _) = h.join().unwrap();
            assert!(same.unwrap(), "bulk bytes intact and in order");
        }
    }
    let now = wait_for(Duration::from_secs(20), "bulk connections closed", || {
        let now = fds(w);
        (now.len() == open).then_some(now)
    });
    assert_eq!(pipe_fds(w), 0, "no pipe left: {now:?}");
    drop(held);
    let after = wait_for(Duration::from_secs(10), "fds back to baseline", || {
        let now = fds(w);
        (now == base).then_some(now)
    });
    assert_eq!(after, base);
}

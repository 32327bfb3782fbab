//! unix links through the real supervisor and pvx-worker-unix: sockets
//! planted in a consumer's private mount namespace, providers reached in
//! theirs, bytes and file descriptors both ways.

use pvx_tests::fds::{
    fd_count, fd_list, memfd_with, read_all_from_start, recv_exact_fds, recv_fds, send_fds,
};
use pvx_tests::*;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::thread;
use std::time::Duration;

fn unix_link(
    name: &str,
    consumer_pid: u32,
    target: &Path,
    socket: &Path,
    provider_pid: u32,
) -> String {
    link(
        "unix",
        name,
        consumer_pid,
        &target.display().to_string(),
        &socket.display().to_string(),
        provider_pid,
    )
}

#[test]
fn injected_into_consumer_mount_ns_reaches_provider_in_its_own() {
    if !require_root("injected_into_consumer_mount_ns_reaches_provider_in_its_own") {
        return;
    }
    let cdir = std::env::temp_dir().join(unique("cons"));
    let pdir = std::env::temp_dir().join(unique("prov"));
    let consumer = MountNsProc::start(&cdir, "exec sleep 3600");
    let provider = MountNsProc::start(&pdir, "exec sleep 3600");
    // The provider's socket exists only inside its namespace: bound through
    // /proc/<pid>/root, served by this test.
    let inner_sock = pdir.join("prov.sock");
    unix_echo_server(&provider.host_path(&inner_sock.display().to_string()));
    assert!(
        !inner_sock.exists(),
        "provider socket must not be visible on the host"
    );

    // A missing parent directory is created in the consumer's namespace.
    let target = cdir.join("run/app/link.sock");
    let g = graph(&[unix_link(
        "inj",
        consumer.pid(),
        &target,
        &inner_sock,
        provider.pid(),
    )]);
    let sup = Supervisor::start(&g, &[]);
    let w = sup.worker_pid("pvx-worker-unix");
    let (_, argv) = sup
        .workers()
        .into_iter()
        .find(|(p, _)| *p == w)
        .expect("worker argv");
    assert_eq!(
        argv,
        format!(
            "pvx-worker-unix {} consumer=c{}",
            target.display(),
            consumer.pid()
        )
    );

    let seen = consumer.host_path(&target.display().to_string());
    let meta = std::fs::symlink_metadata(&seen).expect("socket inside the consumer");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o666);
    assert!(
        !target.exists(),
        "the socket must exist only in the consumer's namespace"
    );

    let data = pattern(3 * 1024 * 1024, 11);
    let got = roundtrip_unix(&seen, &data).expect("roundtrip through the unix link");
    assert!(
        got == data,
        "bytes differ after the relay ({} of {})",
        got.len(),
        data.len()
    );

    // The consumer restarts (new pid, new mount namespace): the socket is
    // planted in the new namespace and the worker replaced.
    let c2dir = std::env::temp_dir().join(unique("cons2"));
    let consumer2 = MountNsProc::start(&c2dir, "exec sleep 3600");
    let target2 = c2dir.join("link.sock");
    sup.reload(&graph(&[unix_link(
        "inj",
        consumer2.pid(),
        &target2,
        &inner_sock,
        provider.pid(),
    )]));
    let w2 = sup.worker_pid(&format!("consumer=c{}", consumer2.pid()));
    assert_ne!(w2, w);
    let seen2 = consumer2.host_path(&target2.display().to_string());
    assert_eq!(roundtrip_unix(&seen2, b"again").unwrap(), b"again");
    wait_for(Duration::from_secs(10), "old worker gone", || {
        is_dead(w).then_some(())
    });
    assert!(
        std::fs::symlink_metadata(&seen).is_err(),
        "the old consumer's socket is removed"
    );

    // Removing the link removes the socket from the consumer's namespace.
    sup.reload("[]");
    wait_for(Duration::from_secs(10), "socket file removed", || {
        std::fs::symlink_metadata(&seen2).is_err().then_some(())
    });
    wait_for(Duration::from_secs(10), "worker exit after drain", || {
        is_dead(w2).then_some(())
    });
}

#[test]
fn host_link_half_close_and_stale_socket_replaced() {
    let dir = TempDir::new("uhost");
    let prov = dir.path().join("prov.sock");
    // The backend reads to EOF, then answers: only a relay that passes
    // the client's half-close on works.
    let _ = std::fs::remove_file(&prov);
    let l = UnixListener::bind(&prov).unwrap();
    thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let mut got = Vec::new();
            let _ = c.read_to_end(&mut got);
            let _ = c.write_all(format!("{} bytes, then EOF", got.len()).as_bytes());
        }
    });
    let target = dir.path().join("link.sock");
    // A stale socket from an earlier run is replaced.
    drop(UnixListener::bind(&target).unwrap());
    let sup = Supervisor::start(&graph(&[unix_link("half", 0, &target, &prov, 0)]), &[]);
    sup.worker_pid("pvx-worker-unix");
    let mut s = UnixStream::connect(&target).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"1234567").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, "7 bytes, then EOF");
}

#[test]
fn fds_pass_both_ways_and_none_stays_in_the_worker() {
    let dir = TempDir::new("ufd");
    let prov = dir.path().join("prov.sock");
    let l = UnixListener::bind(&prov).unwrap();
    // Provider: takes the pipe it is sent and writes into it, then sends a
    // memfd of its own back; then a batch of three fds in one message.
    let provider = thread::spawn(move || {
        let (c, _) = l.accept().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let (bytes, fds) = recv_exact_fds(&c, 4);
        assert_eq!(bytes, b"up!\n");
        assert_eq!(fds.len(), 1, "the pipe came with its bytes");
        nix::unistd::write(&fds[0], b"written by the provider").unwrap();
        drop(fds);
        let m = memfd_with(b"provider memory");
        send_fds(&c, b"down\n", &[m.as_raw_fd()]);
        drop(m);
        let (bytes, fds) = recv_exact_fds(&c, 6);
        assert_eq!(bytes, b"three\n");
        let contents: Vec<Vec<u8>> = fds.into_iter().map(read_all_from_start).collect();
        let mut rest = Vec::new();
        (&c).read_to_end(&mut rest).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        contents
    });

    let target = dir.path().join("link.sock");
    // The provider's first connection must be the client's: no checks.
    let sup = Supervisor::start(
        &graph(&[unix_link("fds", 0, &target, &prov, 0)]),
        &["--health-interval", "0"],
    );
    let w = sup.worker_pid("pvx-worker-unix");
    // The idle worker's fds (stdio, control socket, listener, epoll),
    // counted once its event loop exists.
    wait_for(Duration::from_secs(10), "worker event loop", || {
        fd_list(w)
            .iter()
            .any(|f| f.contains("eventpoll"))
            .then_some(())
    });
    let base = pvx_tests::fds::settled_fd_count(w);

    let c = UnixStream::connect(&target).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (pipe_r, pipe_w) = nix::unistd::pipe().unwrap();
    send_fds(&c, b"up!\n", &[pipe_w.as_raw_fd()]);
    drop(pipe_w);
    // EOF on the pipe proves every copy of its write end is closed: the
    // provider's and the worker's.
    let mut from_provider = String::new();
    std::fs::File::from(pipe_r)
        .read_to_string(&mut from_provider)
        .unwrap();
    assert_eq!(from_provider, "written by the provider");

    let (bytes, fds) = recv_exact_fds(&c, 5);
    assert_eq!(bytes, b"down\n");
    assert_eq!(fds.len(), 1, "the memfd came with its bytes");
    let mut fds = fds;
    assert_eq!(read_all_from_start(fds.remove(0)), b"provider memory");

    let batch: Vec<_> = (0..3u8)
        .map(|i| memfd_with(format!("memfd #{i}").as_bytes()))
        .collect();
    let raw: Vec<_> = batch.iter().map(|f| f.as_raw_fd()).collect();
    send_fds(&c, b"three\n", &raw);
    drop(batch);
    c.shutdown(Shutdown::Write).unwrap();
    let (rest, none) = recv_fds(&c, 64);
    assert!(
        rest.is_empty() && none.is_empty(),
        "EOF after the provider closed"
    );
    let contents = provider.join().expect("provider thread");
    assert_eq!(
        contents,
        vec![
            b"memfd #0".to_vec(),
            b"memfd #1".to_vec(),
            b"memfd #2".to_vec()
        ]
    );
    drop(c);

    let until = std::time::Instant::now() + Duration::from_secs(10);
    while fd_count(w) != base && std::time::Instant::now() < until {
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        fd_count(w),
        base,
        "worker back to its idle fd count; its fds now: {:?}",
        fd_list(w)
    );
}

#[test]
fn unreachable_provider_closes_client_after_retry() {
    let dir = TempDir::new("udead");
    let target = dir.path().join("link.sock");
    let missing = dir.path().join("nobody.sock");
    let sup = Supervisor::start(&graph(&[unix_link("dead", 0, &target, &missing, 0)]), &[]);
    sup.worker_pid("pvx-worker-unix");
    let mut s = UnixStream::connect(&target).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut b = [0u8; 8];
    let r = s.read(&mut b);
    assert!(
        matches!(r, Ok(0)) || r.is_err(),
        "expected close, got {r:?}"
    );
    sup.wait_log("unreachable", 1);
}

#[test]
fn rest_link_across_mount_namespaces_carries_identity_only_from_the_proxy() {
    if !require_root("rest_link_across_mount_namespaces_carries_identity_only_from_the_proxy") {
        return;
    }
    let cdir = std::env::temp_dir().join(unique("rcons"));
    let pdir = std::env::temp_dir().join(unique("rprov"));
    let consumer = MountNsProc::start(&cdir, "exec sleep 3600");
    let provider = MountNsProc::start(&pdir, "exec sleep 3600");
    // An HTTP server on a socket that exists only in the provider's namespace.
    let inner_sock = pdir.join("api.sock");
    let _origin =
        pvx_tests::http::backend::unix(&provider.host_path(&inner_sock.display().to_string()));
    let target = cdir.join("pv/api.sock");
    let rest = format!(
        r#"{{"type":"rest","name":"api","consumer":"app","consumer_pid":{},"provider":"svc","provider_pid":{},"role":"reader","interface":"rest","target":"{}","socket":"{}"}}"#,
        consumer.pid(),
        provider.pid(),
        target.display(),
        inner_sock.display()
    );
    let sup = Supervisor::start(&graph(&[rest]), &[]);
    sup.worker_pid("pvx-worker-http");
    let seen = consumer.host_path(&target.display().to_string());
    wait_for(
        Duration::from_secs(10),
        "rest socket in the consumer",
        || seen.exists().then_some(()),
    );
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "20", "--unix-socket"])
        .arg(&seen)
        .args([
            "-H",
            "X-PV-Role: admin",
            "-H",
            "X-PV-Client: spoofed",
            "-H",
            "X-Pv-Anything: sneaky",
            "http://localhost/v1/state",
        ])
        .output()
        .expect("curl");
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(body.starts_with("GET /v1/state\n"), "{body}");
    assert!(body.contains("x-pv-role: reader\n"), "{body}");
    assert!(body.contains("x-pv-client: app\n"), "{body}");
    for gone in ["admin", "spoofed", "sneaky", "x-pv-anything"] {
        assert!(
            !body.to_ascii_lowercase().contains(gone),
            "{gone} reached the provider: {body}"
        );
    }
}

// ------------------------------------------- fds in flight, stalled peers

/// The unix worker's bound on fds passed to a destination that has not
/// read them yet (`runtime::fdrelay::MAX_UNREAD_FDS`), per direction.
const MAX_UNREAD_FDS: usize = 64;

/// One non-blocking sendmsg of `data` with `fds`; `false` when the socket
/// is full (EAGAIN), nothing sent.
fn try_send_fds(s: &UnixStream, data: &[u8], fds: &[std::os::fd::RawFd]) -> bool {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    match sendmsg::<()>(
        s.as_raw_fd(),
        &[std::io::IoSlice::new(data)],
        cmsgs,
        MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
        None,
    ) {
        Ok(n) => {
            assert_eq!(n, data.len(), "short sendmsg of a 16 KiB message");
            true
        }
        Err(nix::errno::Errno::EAGAIN) => false,
        Err(e) => panic!("sendmsg with {} fd(s): {e}", fds.len()),
    }
}

/// Send `msg` with `fds` up to `max` times, waiting while the socket is
/// full until the worker stopped taking them (no room for 0.5 s).
fn send_until_stuck(s: &UnixStream, msg: &[u8], fds: &[std::os::fd::RawFd], max: usize) -> usize {
    let (mut sent, mut waits) = (0, 0);
    while sent < max && waits < 25 {
        if try_send_fds(s, msg, fds) {
            sent += 1;
            waits = 0;
        } else {
            waits += 1;
            thread::sleep(Duration::from_millis(20));
        }
    }
    sent
}

/// `ioctl(req)` answering one int: FIONREAD (bytes queued to read) or
/// TIOCOUTQ (bytes sent the peer has not read).
fn queued(s: &UnixStream, req: nix::libc::Ioctl) -> usize {
    let mut n: nix::libc::c_int = 0;
    // SAFETY: both requests write one int.
    let r = unsafe { nix::libc::ioctl(s.as_raw_fd(), req, &mut n) };
    assert!(r >= 0, "ioctl: {}", std::io::Error::last_os_error());
    n as usize
}

/// Wait until `f` gives the same value 5 times in a row, 50 ms apart (the
/// worker has done what it will do), and return it.
fn settled(what: &str, mut f: impl FnMut() -> usize) -> usize {
    let mut last = (f(), 0);
    wait_for(Duration::from_secs(20), what, || {
        thread::sleep(Duration::from_millis(50));
        let v = f();
        last = if v == last.0 { (v, last.1 + 1) } else { (v, 0) };
        (last.1 >= 5).then_some(v)
    })
}

/// A provider that accepts the first `stalled` connections and never reads
/// them (handing each to the test, which looks at what is queued), then
/// serves the next: reads 4 bytes and one pipe, writes "pong" into the
/// pipe and answers "ok".
fn stalling_provider(path: &Path, stalled: usize) -> std::sync::mpsc::Receiver<UnixStream> {
    let l = UnixListener::bind(path).expect("bind provider");
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for (i, c) in l.incoming().flatten().enumerate() {
            if i < stalled {
                if tx.send(c).is_err() {
                    return;
                }
                continue;
            }
            thread::spawn(move || {
                c.set_read_timeout(Some(Duration::from_secs(10))).ok();
                let (bytes, fds) = recv_exact_fds(&c, 4);
                if bytes == b"ping" && fds.len() == 1 {
                    let _ = nix::unistd::write(&fds[0], b"pong");
                    let _ = (&c).write_all(b"ok");
                }
            });
        }
    });
    rx
}

/// The well-behaved client: a pipe's write end to the provider and back
/// "pong" through it, "ok" on the socket. Err says what went wrong.
fn pipe_roundtrip(target: &Path) -> Result<(), String> {
    let c = UnixStream::connect(target).map_err(|e| format!("connect: {e}"))?;
    c.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let (pr, pw) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    send_fds(&c, b"ping", &[pw.as_raw_fd()]);
    drop(pw);
    let mut reply = [0u8; 2];
    (&c).read_exact(&mut reply)
        .map_err(|e| format!("no answer through the worker: {e}"))?;
    let mut through = String::new();
    std::fs::File::from(pr)
        .read_to_string(&mut through)
        .map_err(|e| format!("pipe: {e}"))?;
    if &reply == b"ok" && through == "pong" {
        Ok(())
    } else {
        Err(format!("answer {reply:?}, pipe {through:?}"))
    }
}

/// Fds the worker holds beyond its idle set and two sockets per connection.
fn extra_fds(w: u32, base: usize, conns: usize) -> usize {
    fd_count(w).saturating_sub(base + 2 * conns)
}

#[test]
fn unix_provider_that_never_reads_stops_the_client_and_the_worker_keeps_no_fds() {
    let dir = TempDir::new("ustall");
    let prov = dir.path().join("prov.sock");
    const STALLED: usize = 2;
    let accepted = stalling_provider(&prov, STALLED);
    let target = dir.path().join("link.sock");
    let sup = Supervisor::start(
        &graph(&[unix_link("stall", 0, &target, &prov, 0)]),
        &["--health-interval", "0"],
    );
    let w = sup.worker_pid("pvx-worker-unix");
    wait_worker_started(w);
    let base = fd_count(w);

    // A client sends 16 KiB messages with 253 fds each (one memfd, 253
    // times) as fast as its socket takes them, to a provider that accepted
    // and never reads.
    let memfd = memfd_with(b"x");
    let many = vec![memfd.as_raw_fd(); 253];
    let msg = vec![b'm'; 16 * 1024];
    let mut clients = Vec::new();
    let mut providers = Vec::new();
    for i in 0..STALLED {
        let c = UnixStream::connect(&target).unwrap();
        providers.push(accepted.recv_timeout(Duration::from_secs(10)).unwrap());
        let sent = send_until_stuck(&c, &msg, &many, 40);
        let at_provider = settled("the provider's queue settles", || {
            queued(&providers[i], nix::libc::FIONREAD)
        });
        let held = settled("the worker's fds settle", || extra_fds(w, base, i + 1));
        eprintln!(
            "stalled connection {i}: {sent} messages sent, {} reached the provider \
             ({} fds in flight there), worker holds {held} fd(s) beyond its sockets",
            at_provider / msg.len(),
            at_provider / msg.len() * 253
        );
        clients.push(c);
    }
    let held = extra_fds(w, base, STALLED);
    for (i, p) in providers.iter().enumerate() {
        let msgs = queued(p, nix::libc::FIONREAD) / msg.len();
        // The reading side stopped after MAX_UNREAD_FDS fds: at most the
        // message that crossed it (fds cannot be split) went through.
        assert!(
            msgs * 253 <= MAX_UNREAD_FDS + 253,
            "connection {i}: {msgs} messages of 253 fds reached a provider that reads nothing"
        );
    }
    assert!(
        held <= STALLED * MAX_UNREAD_FDS,
        "the worker holds {held} fds for {STALLED} stalled connections: {:?}",
        fd_list(w)
    );
    // Another connection on the same worker still passes fds.
    pipe_roundtrip(&target).expect("a well-behaved client beside the stalled ones");
    drop(clients);
    drop(providers);
    wait_for(
        Duration::from_secs(10),
        "worker back to its idle fds",
        || (fd_count(w) == base).then_some(()),
    );
}

#[test]
fn fds_held_for_stalled_providers_never_exhaust_the_worker() {
    let dir = TempDir::new("uexhaust");
    let prov = dir.path().join("prov.sock");
    // Enough stalled connections to fill a 1024-fd table with held fds.
    const STALLED: usize = 8;
    let accepted = stalling_provider(&prov, 1 + STALLED);
    let target = dir.path().join("link.sock");
    let sup = Supervisor::start(
        &graph(&[unix_link("exhaust", 0, &target, &prov, 0)]),
        &["--health-interval", "0"],
    );
    let w = sup.worker_pid("pvx-worker-unix");
    wait_worker_started(w);
    let base = fd_count(w);
    // The worker raises its soft limit to the hard one at start; a device
    // has the kernel's default hard limit, 4096, or less. 1024 keeps the
    // test short (and the worker's in-flight limit, which the kernel ties
    // to it, is not what is tested: no fd is in flight below).
    let limit: usize = 1024;
    let st = std::process::Command::new("prlimit")
        .arg(format!("--pid={w}"))
        .arg(format!("--nofile={limit}:{limit}"))
        .status()
        .expect("prlimit");
    assert!(st.success());

    // How many 16 KiB messages a provider that never reads takes before
    // the worker's sendmsg says EAGAIN: then the next one is read and held.
    let msg = vec![b'm'; 16 * 1024];
    let probe = UnixStream::connect(&target).unwrap();
    let probe_p = accepted.recv_timeout(Duration::from_secs(10)).unwrap();
    let sent = send_until_stuck(&probe, &msg, &[], 64);
    let fit = settled("the probe's provider queue settles", || {
        queued(&probe_p, nix::libc::FIONREAD)
    }) / msg.len();
    eprintln!("probe: {sent} messages sent, {fit} reached the provider");
    assert!(fit + 2 <= sent, "the worker never stopped: {fit} of {sent}");

    // Each stalled client: `fit` messages with no fd (they reach the
    // provider and fill it), then one with up to 253 fds, which the worker
    // reads and cannot pass on. Filled to the limit exactly.
    let memfd = memfd_with(b"x");
    let mut conns = vec![(probe, probe_p)];
    for i in 0..STALLED {
        // Its two sockets and at least one fd must fit.
        if limit.saturating_sub(fd_count(w)) < 3 {
            break;
        }
        let c = UnixStream::connect(&target).unwrap();
        let p = accepted
            .recv_timeout(Duration::from_secs(10))
            .expect("the worker accepts a stalled client");
        for _ in 0..fit {
            assert!(try_send_fds(&c, &msg, &[]));
        }
        settled("the provider's queue settles", || {
            queued(&p, nix::libc::FIONREAD)
        });
        let room = limit.saturating_sub(fd_count(w));
        let n = room.min(253);
        let fds = vec![memfd.as_raw_fd(); n];
        if n > 0 {
            assert!(try_send_fds(&c, &msg, &fds));
        }
        conns.push((c, p));
        let held = settled("the worker's fds settle", || {
            extra_fds(w, base, conns.len())
        });
        eprintln!(
            "stalled connection {i}: sent {n} fds after {fit} messages; worker: {} fds of \
             {limit}, {held} held beyond its sockets",
            fd_count(w)
        );
    }
    let held = extra_fds(w, base, conns.len());
    assert!(
        held <= limit / 4,
        "the worker holds {held} fds for stalled providers (limit {limit}): {} open",
        fd_count(w)
    );
    // Connections beside the stalled ones still work, fds and all.
    pipe_roundtrip(&target).expect("a well-behaved client beside the stalled ones");
    drop(conns);
    wait_for(
        Duration::from_secs(10),
        "worker back to its idle fds",
        || (fd_count(w) == base).then_some(()),
    );
}

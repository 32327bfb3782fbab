//! Where a unix link's socket is made inside a consumer container, and what
//! is never done there: no symlink on the way is followed (the supervisor
//! works there as root with CAP_DAC_OVERRIDE and CAP_FOWNER), and a socket
//! another service listens on is never taken over. A link that cannot be
//! made there stays pending with the reason and is tried again on the
//! backoff (the path may be fixed, the other service may go away).

use pvx_tests::*;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

fn unix_link(name: &str, consumer_pid: u32, target: &Path, socket: &Path) -> String {
    link(
        "unix",
        name,
        consumer_pid,
        &target.display().to_string(),
        &socket.display().to_string(),
        0,
    )
}

/// A provider on the host: a unix echo server in its own scratch dir.
fn provider() -> (TempDir, PathBuf) {
    let dir = TempDir::new("uprov");
    let sock = dir.path().join("prov.sock");
    unix_echo_server(&sock);
    (dir, sock)
}

/// The reasons of the refused links `status` reports.
fn refusals(sup: &Supervisor) -> Vec<String> {
    sup.status()["refused"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| r["reason"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The reasons of the endpoints `status` reports as pending (listener
/// not made yet).
fn pending_reasons(sup: &Supervisor) -> Vec<String> {
    sup.status()["endpoints"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["pending"]["reason"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// A service of the consumer's own: answers every connection with `tag`
/// until the returned flag is set, then closes its listener (its socket
/// file stays behind, stale).
fn tagged_unix_server(l: UnixListener, tag: &'static str) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    l.set_nonblocking(true).unwrap();
    thread::spawn(move || {
        while !stopped.load(Ordering::SeqCst) {
            match l.accept() {
                Ok((mut c, _)) => {
                    let _ = c.write_all(tag.as_bytes());
                }
                Err(_) => thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    stop
}

fn read_answer(path: &Path) -> std::io::Result<String> {
    let mut s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut got = String::new();
    s.read_to_string(&mut got)?;
    Ok(got)
}

#[test]
fn symlinked_directory_in_the_consumer_is_not_followed() {
    if !require_root("symlinked_directory_in_the_consumer_is_not_followed") {
        return;
    }
    // The consumer points `run` at a host directory outside its tmpfs.
    let victim = TempDir::new("victim");
    let cdir = std::env::temp_dir().join(unique("cons"));
    let consumer = MountNsProc::start(&cdir, "exec sleep 3600");
    let run = cdir.join("run");
    std::os::unix::fs::symlink(
        victim.path(),
        consumer.host_path(&run.display().to_string()),
    )
    .unwrap();
    let (_p, prov) = provider();
    let target = run.join("app/link.sock");
    let sup = Supervisor::start(
        &graph(&[unix_link("sym", consumer.pid(), &target, &prov)]),
        &[],
    );
    let made: Vec<_> = std::fs::read_dir(victim.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(made.is_empty(), "created at the symlink's target: {made:?}");
    assert!(refusals(&sup).is_empty(), "{:?}", refusals(&sup));
    let r = pending_reasons(&sup);
    assert_eq!(r.len(), 1, "{r:?}");
    assert!(
        r[0].contains(&format!("'{}' is a symbolic link", run.display())),
        "{r:?}"
    );
    // (A namespace helper of a retry may be forked just now; no worker.)
    let w = sup.workers();
    assert!(w.iter().all(|(_, a)| !a.contains("pvx-worker")), "{w:?}");
}

#[test]
fn live_socket_of_another_service_stays_and_the_link_waits_until_it_goes() {
    if !require_root("live_socket_of_another_service_stays_and_the_link_waits_until_it_goes") {
        return;
    }
    let cdir = std::env::temp_dir().join(unique("cons"));
    let consumer = MountNsProc::start(&cdir, "exec sleep 3600");
    let svc = cdir.join("svc.sock");
    let seen = consumer.host_path(&svc.display().to_string());
    let other = tagged_unix_server(UnixListener::bind(&seen).unwrap(), "the consumer's own");
    let ino = std::fs::symlink_metadata(&seen).unwrap().ino();
    let (_p, prov) = provider();
    let sup = Supervisor::start(
        &graph(&[unix_link("taken", consumer.pid(), &svc, &prov)]),
        &["--max-delay", "200ms"],
    );
    assert!(refusals(&sup).is_empty(), "{:?}", refusals(&sup));
    let r = pending_reasons(&sup);
    assert_eq!(r.len(), 1, "{r:?}");
    assert!(
        r[0].contains(&format!("a live socket at {} is in use", svc.display())),
        "{r:?}"
    );
    // Tried again and again, never taken over while it answers.
    sup.wait_log("is in use", 3);
    assert_eq!(std::fs::symlink_metadata(&seen).unwrap().ino(), ino);
    assert_eq!(read_answer(&seen).unwrap(), "the consumer's own");
    // (A namespace helper of a retry may be forked just now; no worker.)
    let w = sup.workers();
    assert!(w.iter().all(|(_, a)| !a.contains("pvx-worker")), "{w:?}");
    // The other service goes away (its socket stale): the link is made.
    other.store(true, Ordering::SeqCst);
    sup.worker_pid("pvx-worker-unix");
    wait_for(Duration::from_secs(10), "the link served", || {
        roundtrip_unix(&seen, b"ours now")
            .ok()
            .filter(|b| b == b"ours now")
    });
}

#[test]
fn stale_socket_in_the_consumer_is_replaced() {
    if !require_root("stale_socket_in_the_consumer_is_replaced") {
        return;
    }
    let cdir = std::env::temp_dir().join(unique("cons"));
    let consumer = MountNsProc::start(&cdir, "exec sleep 3600");
    let target = cdir.join("stale.sock");
    let seen = consumer.host_path(&target.display().to_string());
    drop(UnixListener::bind(&seen).unwrap());
    let (_p, prov) = provider();
    let sup = Supervisor::start(
        &graph(&[unix_link("stale", consumer.pid(), &target, &prov)]),
        &[],
    );
    sup.worker_pid("pvx-worker-unix");
    assert!(refusals(&sup).is_empty(), "{:?}", refusals(&sup));
    assert_eq!(roundtrip_unix(&seen, b"fresh").unwrap(), b"fresh");
}

#[test]
fn missing_directory_chain_is_created_and_the_link_works() {
    if !require_root("missing_directory_chain_is_created_and_the_link_works") {
        return;
    }
    let cdir = std::env::temp_dir().join(unique("cons"));
    let consumer = MountNsProc::start(&cdir, "exec sleep 3600");
    let target = cdir.join("a/b/c/link.sock");
    let (_p, prov) = provider();
    let sup = Supervisor::start(
        &graph(&[unix_link("chain", consumer.pid(), &target, &prov)]),
        &[],
    );
    sup.worker_pid("pvx-worker-unix");
    let seen = consumer.host_path(&target.display().to_string());
    let m = std::fs::symlink_metadata(&seen).unwrap();
    assert!(m.file_type().is_socket());
    assert_eq!(m.permissions().mode() & 0o777, 0o666);
    for d in ["a", "a/b", "a/b/c"] {
        let p = consumer.host_path(&cdir.join(d).display().to_string());
        let m = std::fs::symlink_metadata(&p).unwrap();
        assert!(m.is_dir());
        assert_eq!(m.permissions().mode() & 0o777, 0o755, "{d}");
    }
    assert_eq!(roundtrip_unix(&seen, b"chain").unwrap(), b"chain");
    // A file that is not a socket is never replaced.
    let (_p2, prov2) = provider();
    let file = cdir.join("a/b/plain");
    std::fs::write(consumer.host_path(&file.display().to_string()), "data").unwrap();
    sup.reload(&graph(&[
        unix_link("chain", consumer.pid(), &target, &prov),
        unix_link("file", consumer.pid(), &file, &prov2),
    ]));
    let r = pending_reasons(&sup);
    assert!(
        r.len() == 1 && r[0].contains("exists and is not a socket"),
        "{r:?}"
    );
    assert_eq!(
        std::fs::read_to_string(consumer.host_path(&file.display().to_string())).unwrap(),
        "data"
    );
}

/// A consumer that restarts keeps its socket on storage both of its lives
/// see, while the old worker (stopped here, so it cannot close its copy
/// yet) still listens on it: that socket is ours, and is replaced.
#[test]
fn our_own_socket_still_held_by_a_draining_worker_is_replaced() {
    if !require_root("our_own_socket_still_held_by_a_draining_worker_is_replaced") {
        return;
    }
    let store = TempDir::new("store");
    let target = store.path().join("link.sock");
    let c1dir = std::env::temp_dir().join(unique("cons"));
    let consumer1 = MountNsProc::start(&c1dir, "exec sleep 3600");
    let (_p, prov) = provider();
    let sup = Supervisor::start(
        &graph(&[unix_link("keep", consumer1.pid(), &target, &prov)]),
        &[],
    );
    let w1 = sup.worker_pid("pvx-worker-unix");
    assert_eq!(roundtrip_unix(&target, b"one").unwrap(), b"one");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(w1 as i32),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    drop(consumer1);
    let c2dir = std::env::temp_dir().join(unique("cons"));
    let consumer2 = MountNsProc::start(&c2dir, "exec sleep 3600");
    sup.reload(&graph(&[unix_link(
        "keep",
        consumer2.pid(),
        &target,
        &prov,
    )]));
    let r = refusals(&sup);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(w1 as i32),
        nix::sys::signal::Signal::SIGCONT,
    )
    .unwrap();
    assert!(r.is_empty(), "{r:?}");
    assert_eq!(sup.count_log("replacing our own earlier socket"), 1);
    let w2 = sup.worker_pid(&format!("consumer=c{}", consumer2.pid()));
    assert_ne!(w1, w2);
    assert_eq!(roundtrip_unix(&target, b"two").unwrap(), b"two");
    wait_for(Duration::from_secs(15), "old worker drained", || {
        is_dead(w1).then_some(())
    });
}

/// Removing a link unlinks only the socket we made: a directory on the way
/// swapped for a symlink afterwards does not lead us to another socket.
#[test]
fn removal_does_not_follow_a_symlink_swapped_in_later() {
    if !require_root("removal_does_not_follow_a_symlink_swapped_in_later") {
        return;
    }
    let victim = TempDir::new("victim");
    let theirs = victim.path().join("link.sock");
    drop(UnixListener::bind(&theirs).unwrap());
    let cdir = std::env::temp_dir().join(unique("cons"));
    let consumer = MountNsProc::start(&cdir, "exec sleep 3600");
    let run = cdir.join("run");
    let target = run.join("link.sock");
    let (_p, prov) = provider();
    let sup = Supervisor::start(
        &graph(&[unix_link("swap", consumer.pid(), &target, &prov)]),
        &[],
    );
    let w = sup.worker_pid("pvx-worker-unix");
    let inner = |p: &Path| consumer.host_path(&p.display().to_string());
    std::fs::rename(inner(&run), inner(&cdir.join("run.old"))).unwrap();
    std::os::unix::fs::symlink(victim.path(), inner(&run)).unwrap();
    sup.reload("[]");
    wait_for(Duration::from_secs(15), "worker drained", || {
        is_dead(w).then_some(())
    });
    assert!(
        std::fs::symlink_metadata(&theirs).is_ok(),
        "the socket at the symlink's target was removed"
    );
}

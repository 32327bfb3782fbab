//! The control channel under abuse: a worker started by hand, or fed
//! garbage, short, oversized and wrong-fd-count messages, never panics and
//! keeps serving what it was configured for.

use proto::ctl::{self, Limits, ToWorker, WorkerConfig};
use pvx_tests::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Start pvx-worker-tcp with fd 3 = one end of a fresh control socketpair.
fn start_worker() -> (Child, OwnedFd) {
    let (ours, theirs) = ctl::socketpair().unwrap();
    let fd = theirs.as_raw_fd();
    let mut cmd = worker_command("pvx-worker-tcp");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    unsafe {
        cmd.pre_exec(move || {
            if nix::libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    drop(theirs);
    (child, ours)
}

fn exit_of(mut c: Child) -> (Option<i32>, String) {
    let st = wait_for(Duration::from_secs(10), "worker exit", || {
        c.try_wait().ok().flatten()
    });
    let mut err = String::new();
    c.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (st.code(), err)
}

#[test]
fn worker_without_supervisor_says_so() {
    let out = worker_command("pvx-worker-tcp")
        .arg("0.0.0.0:1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("pvx-worker-tcp: started by pv-xconnect only (no control socket on fd 3)"));
}

/// Run by hand under a worker's name, with `fd3` (if any) on fd 3: every
/// worker refuses, exit 2, naming itself.
fn run_by_hand(name: &str, fd3: Option<std::os::fd::RawFd>) -> (Option<i32>, String) {
    let mut cmd = worker_command(name);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(fd) = fd3 {
        unsafe {
            cmd.pre_exec(move || {
                // dup2 clears close-on-exec, except when fd already is 3.
                if fd == 3 {
                    nix::libc::fcntl(3, nix::libc::F_SETFD, 0);
                } else if nix::libc::dup2(fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    exit_of(cmd.spawn().unwrap())
}

#[test]
fn workers_run_by_hand_refuse_without_a_seqpacket_socket_on_fd_3() {
    // A stream socket, a file and nothing at all: none is the supervisor's
    // control socket.
    let (stream, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
    let file = std::fs::File::open("/proc/self/exe").unwrap();
    for name in ["pvx-worker-tcp", "pvx-worker-http", "pvx-worker-unix"] {
        for fd3 in [Some(stream.as_raw_fd()), Some(file.as_raw_fd()), None] {
            let (code, err) = run_by_hand(name, fd3);
            assert_eq!(code, Some(2), "{name} with {fd3:?}: {err}");
            assert!(
                err.contains(&format!(
                    "{name}: started by pv-xconnect only (no control socket on fd 3)"
                )),
                "{name} with {fd3:?}: {err}"
            );
        }
    }
}

#[test]
fn a_symlink_named_like_a_worker_runs_that_worker() {
    let dir = TempDir::new("link");
    let link = dir.path().join("pvx-worker-unix");
    std::os::unix::fs::symlink(bin_dir().join("pv-xconnect"), &link).unwrap();
    let out = Command::new(&link).stdin(Stdio::null()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("pvx-worker-unix: started by pv-xconnect only (no control socket on fd 3)"));
}

#[test]
fn bad_first_messages_end_the_worker_cleanly() {
    for (body, fds, says) in [
        (
            br#"{"msg":"drain","seq":1,"deadline_ms":1}"#.to_vec(),
            0,
            "first control message must be init",
        ),
        (b"\xffgarbage".to_vec(), 0, "malformed control message"),
        (
            br#"{"msg":"init","seq":1}"#.to_vec(),
            0,
            "malformed control message",
        ),
        (
            br#"{"msg":"drain","seq":1,"deadline_ms":1}"#.to_vec(),
            1,
            "needs 0 fds, 1 attached",
        ),
    ] {
        let (child, ctl) = start_worker();
        let (p, _q) = nix::unistd::pipe().unwrap();
        let attach: Vec<i32> = if fds == 1 {
            vec![p.as_raw_fd()]
        } else {
            vec![]
        };
        ctl::send_raw(ctl.as_fd(), &body, &attach).unwrap();
        let (code, err) = exit_of(child);
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains(says), "expected '{says}' in: {err}");
    }
}

#[test]
fn garbage_after_init_is_ignored_and_the_worker_keeps_serving() {
    let backend = echo_server();
    let port = free_port();
    let plan = proto::plan::from_graph(&graph(&[link(
        "tcp",
        "abuse",
        0,
        &format!("127.0.0.1:{port}"),
        &backend.to_string(),
        0,
    )]))
    .unwrap();
    let config = WorkerConfig {
        endpoint: plan.endpoints[0].clone(),
        limits: Limits::default(),
        log_target: "stderr".into(),
        log_level: "debug".into(),
    };
    let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let (mut child, ctl) = start_worker();
    ctl::send(
        ctl.as_fd(),
        &ToWorker::Init { seq: 1, config },
        &[l.as_raw_fd()],
    )
    .unwrap();
    let (p, _q) = nix::unistd::pipe().unwrap();
    ctl::send_raw(ctl.as_fd(), b"", &[]).unwrap();
    ctl::send_raw(ctl.as_fd(), b"{", &[]).unwrap();
    ctl::send_raw(ctl.as_fd(), br#"{"msg":"nonsense"}"#, &[]).unwrap();
    ctl::send_raw(
        ctl.as_fd(),
        br#"{"msg":"update","seq":2}"#,
        &[p.as_raw_fd()],
    )
    .unwrap();
    ctl::send_raw(ctl.as_fd(), &vec![b' '; ctl::MAX_MSG], &[]).unwrap();
    // Blobs that lie: a pipe, and a memfd nobody sealed (its sender could
    // change it after the worker checked it).
    let head = br#"{"msg":"blob","len":2}"#;
    ctl::send_raw(ctl.as_fd(), head, &[p.as_raw_fd()]).unwrap();
    let unsealed =
        nix::sys::memfd::memfd_create(c"unsealed", nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC)
            .unwrap();
    nix::unistd::write(&unsealed, b"{}").unwrap();
    ctl::send_raw(ctl.as_fd(), head, &[unsealed.as_raw_fd()]).unwrap();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"ping").unwrap();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ping");
    assert!(child.try_wait().unwrap().is_none(), "worker must still run");
    let our_pipe = std::fs::read_link(format!("/proc/self/fd/{}", p.as_raw_fd()))
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let fds = pvx_tests::fds(child.id());
    assert!(
        !fds.iter()
            .any(|(_, l)| l.contains("memfd:unsealed") || *l == our_pipe),
        "the worker kept a refused fd: {fds:?}"
    );
    // Closing the control socket (the supervisor is gone) ends it.
    drop(ctl);
    let (code, err) = exit_of(child);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("supervisor gone"), "{err}");
    assert!(err.contains("not sealed against changes"), "{err}");
    assert!(err.contains("not a memfd"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

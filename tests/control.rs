//! The control channel under abuse: a worker started by hand, or fed
//! garbage, short, oversized and wrong-fd-count messages, never panics and
//! keeps serving what it was configured for.

use proto::ctl::{self, ToWorker, WorkerConfig};
use proto::limits::{Limits, MAX_MSG};
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
        access_log: Default::default(),
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
    ctl::send_raw(ctl.as_fd(), &vec![b' '; MAX_MSG], &[]).unwrap();
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

// ----------------------------------------- one meaning of update and drain
//
// The same control messages, sent by hand to a worker of each kind, have
// the same effect (the rules: runtime/src/event_loop.rs): all three run
// runtime's one loop.

use proto::types::{Backend, Kind, Listen};
use pvx_tests::direct;
use std::os::unix::net::{UnixListener, UnixStream};

trait Io: Read + Write {
    fn shut_write(&self) -> std::io::Result<()>;
}
impl Io for TcpStream {
    fn shut_write(&self) -> std::io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}
impl Io for UnixStream {
    fn shut_write(&self) -> std::io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}

/// One endpoint of a kind, its worker run by hand, with a backend that
/// echoes (tcp, unix) or answers requests (http).
struct Ep {
    kind: &'static str,
    w: direct::Worker,
    cfg: WorkerConfig,
    _dir: TempDir,
    _http: Option<pvx_tests::http::backend::Backend>,
}

impl Ep {
    fn start(kind: &'static str) -> Ep {
        let dir = TempDir::new(&format!("one-loop-{kind}"));
        let port = free_port();
        let mut http = None;
        let (link_, listener): (String, OwnedFd) = match kind {
            "tcp" => (
                link(
                    "tcp",
                    "one",
                    0,
                    &format!("127.0.0.1:{port}"),
                    &echo_server().to_string(),
                    0,
                ),
                TcpListener::bind(("127.0.0.1", port)).unwrap().into(),
            ),
            "http" => {
                let b = pvx_tests::http::backend::tcp("127.0.0.1:0");
                let l = link(
                    "http",
                    "one",
                    0,
                    &format!("127.0.0.1:{port}/api"),
                    &b.socket(),
                    0,
                );
                http = Some(b);
                (l, TcpListener::bind(("127.0.0.1", port)).unwrap().into())
            }
            _ => {
                let backend = dir.path().join("b.sock");
                unix_echo_server(&backend);
                let at = dir.path().join("l.sock");
                (
                    link(
                        "unix",
                        "one",
                        0,
                        &at.display().to_string(),
                        &backend.display().to_string(),
                        0,
                    ),
                    UnixListener::bind(&at).unwrap().into(),
                )
            }
        };
        let plan = proto::plan::from_graph(&graph(&[link_])).unwrap();
        assert!(plan.refused.is_empty(), "{:?}", plan.refused);
        let cfg = WorkerConfig {
            endpoint: plan.endpoints[0].clone(),
            limits: Limits::default(),
            log_target: "stderr".into(),
            log_level: "warn".into(),
            access_log: Default::default(),
        };
        let name = format!("pvx-worker-{kind}");
        let w = direct::Worker::start(&name, "by-hand", cfg.clone(), listener.as_fd());
        // `listener` closes here: the worker holds the only copy.
        Ep {
            kind,
            w,
            cfg,
            _dir: dir,
            _http: http,
        }
    }

    fn connect(&self) -> std::io::Result<Box<dyn Io>> {
        let t = Some(Duration::from_secs(10));
        Ok(match &self.cfg.endpoint.key.listen {
            Listen::Tcp(a) => {
                let s = TcpStream::connect(a)?;
                s.set_read_timeout(t)?;
                Box::new(s)
            }
            Listen::Unix(p) => {
                let s = UnixStream::connect(p)?;
                s.set_read_timeout(t)?;
                Box::new(s)
            }
        })
    }

    /// One whole exchange, then the end of the connection: a line echoed
    /// (tcp, unix) or a request answered 200 (http).
    fn served(&self, mut s: Box<dyn Io>) -> Result<(), String> {
        self.ask(&mut s)?;
        self.answered(s)
    }

    fn ask(&self, s: &mut Box<dyn Io>) -> Result<(), String> {
        let req: &[u8] = match self.kind {
            "http" => b"GET /api/x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            _ => b"served\n",
        };
        s.write_all(req).map_err(|e| e.to_string())
    }

    fn answered(&self, mut s: Box<dyn Io>) -> Result<(), String> {
        if self.kind != "http" {
            match read_line(&mut s) {
                Ok(l) if l == "served" => {}
                other => return Err(format!("echo: {other:?}")),
            }
            // Our half-close ends the relay: the rest is EOF.
            s.shut_write().map_err(|e| e.to_string())?;
        }
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&rest);
        match self.kind {
            "http" if text.starts_with("HTTP/1.1 200 ") => Ok(()),
            "http" => Err(format!("answer: {text:?}")),
            _ if rest.is_empty() => Ok(()),
            _ => Err(format!("after the echo: {text:?}")),
        }
    }

    /// A connection that stays busy until its client acts: a relay that
    /// carried a line (tcp, unix), a request whose body is unfinished
    /// (http).
    fn busy(&self) -> Box<dyn Io> {
        let mut s = self.connect().unwrap();
        if self.kind == "http" {
            s.write_all(b"POST /api/x HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nhalf")
                .unwrap();
        } else {
            s.write_all(b"busy\n").unwrap();
            assert_eq!(read_line(&mut s).unwrap(), "busy", "{}", self.kind);
        }
        s
    }

    fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.w.child.id() as i32)
    }
}

#[test]
fn every_kind_refuses_an_update_for_another_endpoint_and_keeps_what_it_had() {
    // A provider root that comes with a refused update must not be kept
    // (nor replace the roots the running routes use).
    let marker = TempDir::new("refused-root");
    let root = std::fs::File::open(marker.path()).unwrap();
    for kind in ["tcp", "unix", "http"] {
        let mut ep = Ep::start(kind);
        let mut other_kind = ep.cfg.clone();
        other_kind.endpoint.kind = match kind {
            "tcp" => Kind::Http,
            "http" => Kind::Tcp,
            _ => Kind::Rest,
        };
        let mut other_listen = ep.cfg.clone();
        other_listen.endpoint.key.listen = match &ep.cfg.endpoint.key.listen {
            Listen::Tcp(_) => Listen::Tcp("127.0.0.1:1".parse().unwrap()),
            Listen::Unix(p) => Listen::Unix(p.with_file_name("elsewhere.sock")),
        };
        let mut other_consumer = ep.cfg.clone();
        other_consumer.endpoint.consumer = "someone-else".into();
        for (cfg, says) in [
            (other_kind.clone(), "kind"),
            (other_listen, "listen address"),
            (other_consumer, "consumer"),
        ] {
            let err = ep.w.send(|seq| ToWorker::Update { seq, config: cfg });
            assert!(
                err.as_deref().is_some_and(|e| e.contains(says)),
                "{kind}: an update with another {says} must be refused, got {err:?}"
            );
        }
        // Refused with a provider root attached.
        let mut with_root = other_kind;
        let r = &mut with_root.endpoint.routes[0];
        r.via.provider_pid = std::process::id();
        r.via.backend = Backend::Unix(proto::graph::provider_path(r.via.provider_pid, "/x.sock"));
        assert_eq!(with_root.endpoint.root_pids().len(), 1);
        let err = ep.w.send_with(
            |seq| ToWorker::Update {
                seq,
                config: with_root,
            },
            &[root.as_raw_fd()],
        );
        assert!(err.is_some(), "{kind}: refused");
        let held = pvx_tests::fds(ep.w.child.id());
        let marker_s = marker.path().display().to_string();
        assert!(
            !held.iter().any(|(_, l)| *l == marker_s),
            "{kind}: the worker kept the root of an update it refused: {held:?}"
        );
        // The same endpoint with its routes is applied, and it serves.
        let cfg = ep.cfg.clone();
        assert_eq!(
            ep.w.send(|seq| ToWorker::Update { seq, config: cfg }),
            None,
            "{kind}"
        );
        ep.served(ep.connect().unwrap())
            .unwrap_or_else(|e| panic!("{kind} after the updates: {e}"));
        assert!(ep.w.child.try_wait().unwrap().is_none(), "{kind} runs on");
    }
}

#[test]
fn every_kind_drains_the_same_way() {
    use nix::sys::signal::{kill, Signal};
    for kind in ["tcp", "unix", "http"] {
        let mut ep = Ep::start(kind);
        let busy = ep.busy();
        // A client that is queued in the backlog, its request sent, when
        // the drain arrives is still served: stop the worker, connect and
        // ask, send the drain, go on.
        kill(ep.pid(), Signal::SIGSTOP).unwrap();
        let mut queued = ep.connect().unwrap();
        ep.ask(&mut queued).unwrap();
        let seq = ep.w.post(|seq| ToWorker::Drain {
            seq,
            deadline_ms: 60_000,
        });
        kill(ep.pid(), Signal::SIGCONT).unwrap();
        assert_eq!(ep.w.ack(seq), None, "{kind}");
        ep.answered(queued)
            .unwrap_or_else(|e| panic!("{kind}: the queued client: {e}"));
        // The listener is closed: nobody else gets in.
        let refused = ep.connect();
        assert!(
            matches!(&refused, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
            "{kind}: expected refused, got {:?}",
            refused.as_ref().map(|_| ())
        );
        assert!(
            ep.w.child.try_wait().unwrap().is_none(),
            "{kind}: the draining worker waits for its busy connection"
        );
        // A second drain brings the deadline forward (never back): the
        // busy connection is cut and the worker exits, well before the
        // first drain's 60 s.
        assert_eq!(
            ep.w.send(|seq| ToWorker::Drain {
                seq,
                deadline_ms: 100
            }),
            None,
            "{kind}"
        );
        let status = wait_for(
            Duration::from_secs(10),
            &format!("{kind} worker exit"),
            || ep.w.child.try_wait().unwrap(),
        );
        assert_eq!(status.code(), Some(0), "{kind}");
        drop(busy);
    }
}

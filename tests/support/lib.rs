//! Test support for pv-xconnect's integration tests: build and start the
//! real binaries, real backends, real namespaces; clean up exactly what a
//! test started (by pid and by the names it created).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;
use std::thread;
use std::time::{Duration, Instant};

pub mod access;
pub mod ctrl;
pub mod direct;
pub mod fds;
pub mod http;
pub mod lab;
pub mod ns;
pub use ctrl::FakeCtrl;
pub use ns::{free_pid, MountNsProc, Netns};

/// The workspace's target/debug with the binary, `pv-xconnect`, built
/// (once per run).
pub fn bin_dir() -> PathBuf {
    static BUILD: Once = Once::new();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    BUILD.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = Command::new(cargo)
            .args(["build", "--bins", "--workspace"])
            .current_dir(&root)
            .status()
            .expect("running cargo build for the binaries under test");
        assert!(st.success(), "cargo build --bins failed");
    });
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    target.join("debug")
}

/// The one executable run as worker `name` (`pvx-worker-tcp`...), as the
/// supervisor runs it: the name in argv[0] picks the worker.
pub fn worker_command(name: &str) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(bin_dir().join("pv-xconnect"));
    cmd.arg0(name);
    cmd
}

/// Root-only tests run whenever we hold CAP_SYS_ADMIN. Without it they
/// skip, except under CI=true, where skipping would hide a failure.
pub fn require_root(test: &str) -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let has = cap_eff & (1 << 21) != 0; // CAP_SYS_ADMIN
    if !has {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test}: needs CAP_SYS_ADMIN, and CI=true forbids skipping"
        );
        eprintln!("SKIP {test}: needs CAP_SYS_ADMIN");
    }
    has
}

/// A name unique to this test process and call, for namespaces and links.
pub fn unique(tag: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "pvxt{}{}{}",
        std::process::id() % 100_000,
        tag,
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// A free loopback port (bound then released; good enough on loopback).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("ephemeral port")
}

/// Poll `f` until it returns Some or `within` passes.
pub fn wait_for<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(unique(tag));
        std::fs::create_dir_all(&p).expect("mkdir temp");
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `pv-xconnect run` with its graph file and log.
pub struct Supervisor {
    pub child: Child,
    pub dir: TempDir,
    pub graph: PathBuf,
    pub log: PathBuf,
    /// Its status socket: private to the test unless `extra` named one.
    pub status_socket: PathBuf,
}

impl Supervisor {
    /// Start on `graph` (JSON text) with extra flags; waits until the graph
    /// has been applied once.
    pub fn start(graph: &str, extra: &[&str]) -> Supervisor {
        Supervisor::start_env(graph, extra, &[])
    }

    /// [`Supervisor::start`] with `env` added to its environment (and its
    /// workers'), for this supervisor only: `PVX_SYSLOG_PATH`.
    pub fn start_env(graph: &str, extra: &[&str], env: &[(&str, &Path)]) -> Supervisor {
        let dir = TempDir::new("sup");
        let graph_path = dir.path().join("graph.json");
        std::fs::write(&graph_path, graph).expect("write graph");
        let source = ["--graph".to_string(), graph_path.display().to_string()];
        Supervisor::launch(
            &bin_dir().join("pv-xconnect"),
            dir,
            graph_path,
            &source,
            (extra, env),
        )
    }

    /// [`Supervisor::start`], running the executable at `binary` (a copy
    /// of pv-xconnect the test can replace).
    pub fn start_from(binary: &Path, graph: &str, extra: &[&str]) -> Supervisor {
        let dir = TempDir::new("sup");
        let graph_path = dir.path().join("graph.json");
        std::fs::write(&graph_path, graph).expect("write graph");
        let source = ["--graph".to_string(), graph_path.display().to_string()];
        Supervisor::launch(binary, dir, graph_path, &source, (extra, &[]))
    }

    /// Start reading the graph from the control socket at `ctrl`; waits
    /// until a graph has been applied once.
    pub fn start_ctrl(ctrl: &Path, extra: &[&str]) -> Supervisor {
        let dir = TempDir::new("sup");
        let graph_path = dir.path().join("unused-graph.json");
        let source = ["--ctrl-socket".to_string(), ctrl.display().to_string()];
        Supervisor::launch(
            &bin_dir().join("pv-xconnect"),
            dir,
            graph_path,
            &source,
            (extra, &[]),
        )
    }

    /// `args`: the extra flags, and what to add to its environment.
    fn launch(
        binary: &Path,
        dir: TempDir,
        graph_path: PathBuf,
        source: &[String],
        (extra, env): (&[&str], &[(&str, &Path)]),
    ) -> Supervisor {
        let log = dir.path().join("supervisor.log");
        let logf = std::fs::File::create(&log).expect("log file");
        // Tests run in parallel: each supervisor gets its own status socket
        // unless the test chose one.
        let status_socket = match extra.iter().position(|a| *a == "--status-socket") {
            Some(i) => PathBuf::from(extra.get(i + 1).expect("--status-socket PATH")),
            None => dir.path().join("status.sock"),
        };
        let mut cmd = Command::new(binary);
        cmd.arg("run")
            .args(source)
            .args(["--log-target", "stderr", "--log-level", "debug"]);
        if !extra.contains(&"--status-socket") {
            cmd.arg("--status-socket").arg(&status_socket);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .expect("spawn pv-xconnect");
        let s = Supervisor {
            child,
            dir,
            graph: graph_path,
            log,
            status_socket,
        };
        s.wait_log("graph applied", 1);
        s
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How often `needle` appears in the log so far.
    pub fn count_log(&self, needle: &str) -> usize {
        self.log_text().matches(needle).count()
    }

    /// Wait until `needle` appears at least `n` times in the log.
    pub fn wait_log(&self, needle: &str, n: usize) {
        wait_for(
            Duration::from_secs(10),
            &format!("'{needle}' x{n} in supervisor log"),
            || (self.log_text().matches(needle).count() >= n).then_some(()),
        );
    }

    /// Replace the graph and send SIGHUP; waits for the next "graph applied".
    pub fn reload(&self, graph: &str) {
        let before = self.log_text().matches("graph applied").count();
        std::fs::write(&self.graph, graph).expect("write graph");
        self.signal("HUP");
        self.wait_log("graph applied", before + 1);
    }

    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(st.success());
    }

    /// Live worker children: (pid, argv joined by spaces).
    pub fn workers(&self) -> Vec<(u32, String)> {
        children(self.pid())
    }

    /// The pid of the live worker whose argv contains `needle`.
    pub fn worker_pid(&self, needle: &str) -> u32 {
        wait_for(
            Duration::from_secs(10),
            &format!("worker '{needle}'"),
            || {
                self.workers()
                    .into_iter()
                    .find(|(_, a)| a.contains(needle))
                    .map(|(p, _)| p)
            },
        )
    }

    /// `GET path` on the status socket: (status code, body).
    pub fn http_status(&self, path: &str) -> (u16, String) {
        let raw = unix_request(
            &self.status_socket,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        )
        .expect("status socket request");
        split_http(&raw)
    }

    /// The parsed `GET /status` answer.
    pub fn status(&self) -> serde_json::Value {
        let (code, body) = self.http_status("/status");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("status is JSON")
    }

    /// The status entry of the endpoint whose address is `address`.
    pub fn endpoint_status(&self, address: &str) -> Option<serde_json::Value> {
        self.status()["endpoints"]
            .as_array()?
            .iter()
            .find(|e| e["address"] == address)
            .cloned()
    }

    /// SIGTERM and wait for the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        wait_for(Duration::from_secs(20), "supervisor exit", || {
            self.child.try_wait().ok().flatten()
        })
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(self.pid().to_string())
                .status();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- supervisor log ---\n{}", self.log_text());
        }
    }
}

/// Send `req` on a unix stream socket, half-close, read the answer to EOF.
pub fn unix_request(path: &Path, req: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(req)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(out)
}

/// (status code, body) of a raw HTTP/1.x answer; code 0 if unparseable.
pub fn split_http(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, body.to_string())
}

/// Close `s` with a reset instead of a FIN (SO_LINGER 0), as a client
/// that vanishes mid-stream does.
pub fn close_with_reset(s: TcpStream) {
    let linger = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Linger, &linger)
        .expect("SO_LINGER 0");
    drop(s);
}

/// A field of /proc/PID/status (`CapEff`, `NoNewPrivs`, ...), trimmed.
pub fn proc_status(pid: u32, field: &str) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

/// A capability set of PID as a bit mask, of the capabilities the kernel
/// has ([`kernel_caps`]).
pub fn cap_mask(pid: u32, set: &str) -> u64 {
    let v = proc_status(pid, set).unwrap_or_else(|| panic!("{set} of pid {pid}"));
    u64::from_str_radix(&v, 16).expect("hex cap mask") & kernel_caps()
}

/// The capabilities this kernel has, as a mask: those `PR_CAPBSET_READ`
/// answers for (a kernel answers EINVAL past its last one). On a kernel as
/// it is, /proc shows no bit past that one anyway; under
/// scripts/old-kernel.sh, the seccomp filter answers EINVAL for the
/// capabilities newer than the kernel it stands for, as that kernel would,
/// but cannot change what /proc shows.
pub fn kernel_caps() -> u64 {
    (0..64u64)
        .filter(|&c| {
            // SAFETY: PR_CAPBSET_READ only reads the argument.
            unsafe { nix::libc::prctl(nix::libc::PR_CAPBSET_READ, c as nix::libc::c_ulong) >= 0 }
        })
        .fold(0, |m, c| m | 1 << c)
}

/// Wait until worker PID is past its start-up (init received, stray fds
/// closed, privileges dropped): its event loop's epoll exists only then.
/// (NoNewPrivs cannot tell: a worker inherits it from the supervisor.)
pub fn wait_worker_started(pid: u32) {
    wait_for(Duration::from_secs(10), "worker past start-up", || {
        let f = fds(pid);
        (f.iter().any(|(_, t)| t.contains("eventpoll"))
            && !f.iter().any(|(_, t)| t.starts_with("/proc/")))
        .then_some(())
    });
}

/// Open fds of PID with what they point at (`socket:[..]`, `pipe:[..]`,
/// `anon_inode:[eventpoll]`, paths).
pub fn fds(pid: u32) -> Vec<(i32, String)> {
    let mut out: Vec<(i32, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_str()?.parse().ok()?;
                    let t = std::fs::read_link(e.path()).ok()?;
                    Some((n, t.to_string_lossy().into_owned()))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Whether fd `fd` of PID is close-on-exec (O_CLOEXEC in its fdinfo flags).
pub fn is_cloexec(pid: u32, fd: i32) -> bool {
    const O_CLOEXEC: u32 = 0o2000000;
    std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))
        .ok()
        .and_then(|s| {
            let v = s.lines().find_map(|l| l.strip_prefix("flags:"))?;
            u32::from_str_radix(v.trim(), 8).ok()
        })
        .is_some_and(|f| f & O_CLOEXEC != 0)
}

/// Live (not zombie) children of `ppid`, with their argv.
pub fn children(ppid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Some((pp, state)) = stat_ppid_state(pid) else {
            continue;
        };
        if pp == ppid && state != 'Z' {
            let argv = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let argv = String::from_utf8_lossy(&argv)
                .replace('\0', " ")
                .trim()
                .to_string();
            out.push((pid, argv));
        }
    }
    out
}

/// (ppid, state) from /proc/PID/stat.
pub fn stat_ppid_state(pid: u32) -> Option<(u32, char)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let mut it = rest.split(' ');
    let state = it.next()?.chars().next()?;
    let ppid = it.next()?.parse().ok()?;
    Some((ppid, state))
}

/// Whether a process is gone (or a zombie nobody reaped yet).
pub fn is_dead(pid: u32) -> bool {
    stat_ppid_state(pid).is_none_or(|(_, s)| s == 'Z' || s == 'X')
}

/// Kill a process by pid (SIGKILL).
pub fn kill9(pid: u32) {
    let _ = Command::new("kill")
        .arg("-KILL")
        .arg(pid.to_string())
        .status();
}

// ---------------------------------------------------------------- backends

/// A TCP echo backend on loopback: echoes until the client's EOF, then
/// half-closes. Runs on threads until the test process ends.
pub fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind echo");
    let addr = l.local_addr().expect("addr");
    thread::spawn(move || {
        for c in l.incoming().flatten() {
            thread::spawn(move || echo(c));
        }
    });
    addr
}

fn echo(mut c: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if c.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
    let _ = c.shutdown(Shutdown::Write);
}

/// A TCP backend that greets every connection with `tag` and a newline,
/// then echoes: a test can tell which backend a connection reached.
pub fn tagged_echo_server(tag: &str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind tagged echo");
    let addr = l.local_addr().expect("addr");
    let greeting = format!("{tag}\n");
    thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let g = greeting.clone();
            thread::spawn(move || {
                if c.write_all(g.as_bytes()).is_ok() {
                    echo(c);
                }
            });
        }
    });
    addr
}

/// Read one `\n`-terminated line (without it), byte by byte, so nothing
/// after it is consumed.
pub fn read_line(s: &mut impl Read) -> std::io::Result<String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        if s.read(&mut b)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("EOF after {:?}", String::from_utf8_lossy(&line)),
            ));
        }
        if b[0] == b'\n' {
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        line.push(b[0]);
    }
}

/// A unix-socket echo backend at `path`.
pub fn unix_echo_server(path: &Path) {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path).expect("bind unix echo");
    thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = c.shutdown(Shutdown::Write);
            });
        }
    });
}

/// Send `data`, half-close, read everything back (concurrently, so large
/// payloads do not deadlock on full buffers).
pub fn roundtrip(addr: SocketAddr, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    roundtrip_stream(s, data)
}

pub fn roundtrip_stream(s: TcpStream, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let w = s.try_clone()?;
    exchange(s, w, data, |w: &TcpStream| w.shutdown(Shutdown::Write))
}

/// Same over a unix socket.
pub fn roundtrip_unix(path: &Path, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let w = s.try_clone()?;
    exchange(s, w, data, |w: &UnixStream| w.shutdown(Shutdown::Write))
}

/// Write `data` on `w` (then half-close it) from a thread while reading `r`
/// to EOF.
fn exchange<S: Read + Write + Send + 'static>(
    mut r: S,
    mut w: S,
    data: &[u8],
    half_close: fn(&S) -> std::io::Result<()>,
) -> std::io::Result<Vec<u8>> {
    let payload = data.to_vec();
    let writer = thread::spawn(move || -> std::io::Result<()> {
        w.write_all(&payload)?;
        half_close(&w)
    });
    let mut got = Vec::new();
    r.read_to_end(&mut got)?;
    writer
        .join()
        .map_err(|_| std::io::Error::other("writer panicked"))??;
    Ok(got)
}

/// Deterministic pseudo-random bytes (no rand crate needed).
pub fn pattern(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A graph link object as JSON text.
pub fn link(
    ty: &str,
    name: &str,
    consumer_pid: u32,
    target: &str,
    socket: &str,
    provider_pid: u32,
) -> String {
    format!(
        r#"{{"type":"{ty}","name":"{name}","consumer":"{}","consumer_pid":{consumer_pid},"provider":"prov-{name}","provider_pid":{provider_pid},"role":"any","interface":"test","target":"{target}","socket":"{socket}"}}"#,
        if consumer_pid == 0 {
            "EXTERNAL".to_string()
        } else {
            format!("c{consumer_pid}")
        }
    )
}

pub fn graph(links: &[String]) -> String {
    format!("[{}]", links.join(",\n"))
}

/// Segments the kernel received on `s` so far (`tcpi_segs_in` of
/// `TCP_INFO`): exact for this one socket, whatever else the machine does.
pub fn segs_in(s: &impl std::os::fd::AsRawFd) -> u32 {
    let mut info = [0u8; 256];
    let mut len = info.len() as nix::libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`.
    let r = unsafe {
        nix::libc::getsockopt(
            s.as_raw_fd(),
            nix::libc::IPPROTO_TCP,
            nix::libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    assert_eq!(r, 0, "getsockopt(TCP_INFO)");
    // struct tcp_info: 8 bytes of u8 fields, 24 u32, 4 u64, segs_out, segs_in.
    assert!(len >= 144, "tcp_info without tcpi_segs_in");
    u32::from_ne_bytes(info[140..144].try_into().unwrap())
}

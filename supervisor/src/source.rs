//! Where the graph comes from (SPEC §3):
//!
//! - `--ctrl-socket PATH` (the default, `/run/pantavisor/pv/pv-ctrl`):
//!   `GET /xconnect-graph` over HTTP/1.0 on Pantavisor's control socket,
//!   every `--poll-interval` and at once on SIGHUP.
//! - `--graph FILE`: re-read on SIGHUP and when the file changes (its
//!   mtime and size are checked once a second).
//!
//! A source that cannot be read (unreachable socket, non-200 answer, a
//! body that is not a graph) leaves the running state untouched. The
//! failure is logged once per outage, not once per poll, and the recovery
//! is logged too. A graph is handed on only when its text changed since
//! the last one applied, unless the read was forced (start, SIGHUP).

use proto::graph::{self, Link, Refusal};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// Pantavisor's control socket.
pub const DEFAULT_CTRL_SOCKET: &str = "/run/pantavisor/pv/pv-ctrl";
const FILE_CHECK: Duration = Duration::from_secs(1);
/// The whole control-socket exchange must finish within this. It is a
/// local socket; a Pantavisor that does not answer in time is an outage,
/// and the supervisor loop is not held up for longer.
const CTRL_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest graph body accepted (a graph is a few KiB).
const MAX_BODY: usize = 4 * 1024 * 1024;

enum Origin {
    File {
        path: PathBuf,
        /// mtime and size at the last read.
        stamp: Option<(SystemTime, u64)>,
    },
    Ctrl {
        path: PathBuf,
    },
}

/// A graph read from the source: valid links and refused ones.
pub type Parsed = (Vec<Link>, Vec<Refusal>);

pub struct Source {
    origin: Origin,
    every: Duration,
    next_check: Instant,
    /// Text of the graph last handed on.
    last: Option<String>,
    /// The failure being lived through, as last logged.
    outage: Option<String>,
}

impl Source {
    pub fn file(path: PathBuf) -> Source {
        Source::new(Origin::File { path, stamp: None }, FILE_CHECK)
    }

    pub fn ctrl(path: PathBuf, every: Duration) -> Source {
        Source::new(Origin::Ctrl { path }, every)
    }

    fn new(origin: Origin, every: Duration) -> Source {
        Source {
            origin,
            every,
            next_check: Instant::now() + every,
            last: None,
            outage: None,
        }
    }

    /// For logs: `graph file X` or `control socket Y`.
    pub fn describe(&self) -> String {
        match &self.origin {
            Origin::File { path, .. } => format!("graph file {}", path.display()),
            Origin::Ctrl { path } => format!("control socket {}", path.display()),
        }
    }

    /// When the loop must next look at the source.
    pub fn next_check(&self) -> Instant {
        self.next_check
    }

    /// Whether the source should be read now: the poll interval passed
    /// (control socket) or the file changed.
    pub fn due(&mut self, now: Instant) -> bool {
        if now < self.next_check {
            return false;
        }
        self.next_check = now + self.every;
        match &self.origin {
            Origin::File { path, stamp } => {
                let now_stamp = file_stamp(path);
                now_stamp.is_some() && now_stamp != *stamp
            }
            Origin::Ctrl { .. } => true,
        }
    }

    /// Read the graph. `force` (start, SIGHUP): hand it on even if its text
    /// did not change, and log a failure even in a known outage. None: the
    /// running state stays as it is (unchanged, or the source failed).
    pub fn fetch(&mut self, force: bool) -> Option<Parsed> {
        self.next_check = Instant::now() + self.every;
        let text = match self.read_text() {
            Ok(t) => t,
            Err(e) => return self.failed(e, force),
        };
        let parsed = match graph::parse(&text) {
            Ok(p) => p,
            Err(e) => return self.failed(format!("{}: {e}", self.describe()), force),
        };
        if let Some(was) = self.outage.take() {
            proto::info!("{} is readable again (was: {was})", self.describe());
        }
        if !force && self.last.as_deref() == Some(text.as_str()) {
            return None;
        }
        self.last = Some(text);
        Some(parsed)
    }

    fn failed(&mut self, e: String, force: bool) -> Option<Parsed> {
        if force || self.outage.as_deref() != Some(e.as_str()) {
            proto::error!("{e}; running configuration left as it was");
        } else {
            proto::debug!("{e} (still)");
        }
        self.outage = Some(e);
        None
    }

    fn read_text(&mut self) -> Result<String, String> {
        match &mut self.origin {
            Origin::File { path, stamp } => {
                let shown = path.display();
                *stamp = file_stamp(path);
                std::fs::read_to_string(&*path).map_err(|e| format!("graph file {shown}: {e}"))
            }
            Origin::Ctrl { path } => get_graph(path, CTRL_TIMEOUT)
                .map_err(|e| format!("control socket {}: {e}", path.display())),
        }
    }
}

fn file_stamp(p: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Connect without blocking: a control socket whose backlog is full (a
/// hung Pantavisor) must not hang the supervisor in connect().
fn connect_nonblocking(path: &Path) -> Result<UnixStream, String> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(|e| format!("socket: {e}"))?;
    let addr = UnixAddr::new(path).map_err(|e| format!("address: {e}"))?;
    match connect(fd.as_raw_fd(), &addr) {
        Ok(()) => {}
        Err(nix::errno::Errno::EAGAIN) => {
            return Err("connect: backlog full (not accepting)".into())
        }
        Err(e) => return Err(format!("connect: {e}")),
    }
    let s = UnixStream::from(fd);
    s.set_nonblocking(false)
        .map_err(|e| format!("clearing O_NONBLOCK: {e}"))?;
    Ok(s)
}

/// `GET /xconnect-graph HTTP/1.0` on the unix socket at `path`; the body
/// of a 200 answer. The whole exchange is bounded by `timeout`.
pub fn get_graph(path: &Path, timeout: Duration) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    let mut s = connect_nonblocking(path)?;
    let left = |what: &str| {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("no answer within {} ms ({what})", timeout.as_millis()))
    };
    s.set_write_timeout(Some(left("sending")?))
        .map_err(|e| format!("SO_SNDTIMEO: {e}"))?;
    s.write_all(b"GET /xconnect-graph HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .map_err(|e| format!("sending request: {e}"))?;
    let mut buf = Vec::with_capacity(8 * 1024);
    let mut chunk = [0u8; 8 * 1024];
    loop {
        // Done as soon as the head and a Content-Length body are in; an
        // answer without length ends at EOF (HTTP/1.0).
        if let Some(body) = complete_body(&buf)? {
            return Ok(body);
        }
        s.set_read_timeout(Some(left("reading")?))
            .map_err(|e| format!("SO_RCVTIMEO: {e}"))?;
        match s.read(&mut chunk) {
            Ok(0) => return eof_body(&buf),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > MAX_BODY {
                    return Err(format!("answer larger than {MAX_BODY} bytes"));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Err(format!("no answer within {} ms", timeout.as_millis()))
            }
            Err(e) => return Err(format!("reading answer: {e}")),
        }
    }
}

/// Status and body offset of a complete head, with its Content-Length.
fn parse_head(buf: &[u8]) -> Result<Option<(u16, usize, Option<usize>)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let at = match resp.parse(buf) {
        Ok(httparse::Status::Complete(at)) => at,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("malformed HTTP answer: {e}")),
    };
    let code = resp.code.unwrap_or(0);
    let mut len = None;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or("malformed Content-Length")?;
            len = Some(v);
        }
    }
    Ok(Some((code, at, len)))
}

fn check_status(code: u16, body: &[u8]) -> Result<String, String> {
    let text = String::from_utf8_lossy(body);
    if code != 200 {
        let snippet: String = text.chars().take(120).collect();
        return Err(format!("answered {code}: {}", snippet.trim()));
    }
    String::from_utf8(body.to_vec()).map_err(|_| "graph is not UTF-8".to_string())
}

fn complete_body(buf: &[u8]) -> Result<Option<String>, String> {
    match parse_head(buf)? {
        Some((code, at, Some(len))) if buf.len() >= at + len => {
            check_status(code, &buf[at..at + len]).map(Some)
        }
        _ => Ok(None),
    }
}

fn eof_body(buf: &[u8]) -> Result<String, String> {
    match parse_head(buf)? {
        None if buf.is_empty() => Err("closed without answering".into()),
        None => Err("closed in the middle of the answer head".into()),
        Some((_, at, Some(len))) if buf.len() < at + len => Err(format!(
            "closed after {} of {len} body bytes",
            buf.len() - at
        )),
        Some((code, at, _)) => check_status(code, &buf[at..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn serve_once(answer: &'static [u8]) -> (PathBuf, std::thread::JoinHandle<String>) {
        let p = std::env::temp_dir().join(format!(
            "pvx-src-{}-{}.sock",
            std::process::id(),
            answer.len()
        ));
        let _ = std::fs::remove_file(&p);
        let l = UnixListener::bind(&p).unwrap();
        let h = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut req = Vec::new();
            let mut b = [0u8; 256];
            while !req.ends_with(b"\r\n\r\n") {
                let n = c.read(&mut b).unwrap();
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&b[..n]);
            }
            c.write_all(answer).unwrap();
            String::from_utf8_lossy(&req).into_owned()
        });
        (p, h)
    }

    #[test]
    fn reads_a_200_with_and_without_length() {
        let (p, h) = serve_once(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n[]");
        assert_eq!(get_graph(&p, CTRL_TIMEOUT).unwrap(), "[]");
        assert!(h
            .join()
            .unwrap()
            .starts_with("GET /xconnect-graph HTTP/1.0\r\n"));
        let _ = std::fs::remove_file(&p);
        let (p, h) = serve_once(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n[ ]");
        assert_eq!(get_graph(&p, CTRL_TIMEOUT).unwrap(), "[ ]");
        h.join().unwrap();
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn errors_say_what_went_wrong() {
        let (p, h) = serve_once(b"HTTP/1.0 404 Not Found\r\n\r\nno such endpoint");
        let e = get_graph(&p, CTRL_TIMEOUT).unwrap_err();
        assert!(e.contains("answered 404: no such endpoint"), "{e}");
        h.join().unwrap();
        let _ = std::fs::remove_file(&p);
        let (p, h) = serve_once(b"garbage\r\n\r\n");
        let e = get_graph(&p, CTRL_TIMEOUT).unwrap_err();
        assert!(e.contains("malformed"), "{e}");
        h.join().unwrap();
        let _ = std::fs::remove_file(&p);
        let e = get_graph(Path::new("/nonexistent/pv-ctrl"), CTRL_TIMEOUT).unwrap_err();
        assert!(e.contains("connect"), "{e}");
    }

    #[test]
    fn a_silent_server_times_out() {
        let p = std::env::temp_dir().join(format!("pvx-src-{}-silent.sock", std::process::id()));
        let _ = std::fs::remove_file(&p);
        let _l = UnixListener::bind(&p).unwrap();
        let e = get_graph(&p, Duration::from_millis(100)).unwrap_err();
        assert!(e.contains("no answer within"), "{e}");
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn unchanged_text_is_not_handed_on_unless_forced() {
        let dir = std::env::temp_dir().join(format!("pvx-src-{}-file", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("g.json");
        std::fs::write(&f, "[]").unwrap();
        let mut s = Source::file(f.clone());
        assert!(s.fetch(false).is_some());
        assert!(s.fetch(false).is_none());
        assert!(s.fetch(true).is_some());
        std::fs::write(&f, "{").unwrap();
        assert!(s.fetch(false).is_none());
        assert!(s.outage.is_some());
        std::fs::write(&f, "[ ]").unwrap();
        assert!(s.fetch(false).is_some());
        assert!(s.outage.is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

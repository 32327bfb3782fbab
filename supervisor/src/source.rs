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

use crate::http_client::{Answer, Reader};
use mio::net::UnixStream;
use mio::{Interest, Registry, Token};
use proto::graph::{self, Link, Refusal};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// Pantavisor's control socket.
pub const DEFAULT_CTRL_SOCKET: &str = "/run/pantavisor/pv/pv-ctrl";
/// The supervisor loop's token for the control-socket exchange in flight.
pub const TOKEN: Token = Token(2);
const FILE_CHECK: Duration = Duration::from_secs(1);
/// The whole control-socket exchange must finish within this. A
/// Pantavisor that does not answer in time is an outage; the exchange
/// runs inside the supervisor loop without ever blocking it.
const CTRL_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest graph answer accepted (a graph is a few KiB).
const MAX_BODY: usize = 4 * 1024 * 1024;
/// Largest graph file read (`--graph`, `check`): a file may carry more
/// than the control socket (an endpoint's routes may reach
/// `proto::ctl::MAX_CONFIG`, 16 MiB), but a mistaken path (a log, a disk
/// image, `/dev/zero`) must not make the supervisor read it all.
pub const MAX_FILE: u64 = 32 * 1024 * 1024;
const REQUEST: &[u8] = b"GET /xconnect-graph HTTP/1.0\r\nHost: localhost\r\n\r\n";

enum Origin {
    File {
        path: PathBuf,
        /// mtime and size at the last read.
        stamp: Option<(SystemTime, u64)>,
    },
    Ctrl {
        path: PathBuf,
        /// The one exchange in flight, if any.
        inflight: Option<Exchange>,
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
        Source::new(
            Origin::Ctrl {
                path,
                inflight: None,
            },
            every,
        )
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
            Origin::Ctrl { path, .. } => format!("control socket {}", path.display()),
        }
    }

    /// When the loop must next call [`Source::on_time`]: the next poll or
    /// the deadline of the exchange in flight.
    pub fn next_wake(&self) -> Instant {
        match &self.origin {
            Origin::Ctrl {
                inflight: Some(x), ..
            } => x.deadline.min(self.next_check),
            _ => self.next_check,
        }
    }

    /// Read the graph now (start, SIGHUP). `force`: hand it on even if its
    /// text did not change, and log a failure even in a known outage.
    /// A file is read at once; the control socket starts an exchange whose
    /// graph comes later from [`Source::on_ready`] or [`Source::on_time`]
    /// (an exchange already in flight is abandoned: its answer may predate
    /// the SIGHUP). None: nothing to apply now.
    pub fn request(&mut self, force: bool, registry: &Registry) -> Option<Parsed> {
        self.next_check = Instant::now() + self.every;
        match &mut self.origin {
            Origin::File { path, stamp } => {
                *stamp = file_stamp(path);
                let text = read_graph_file(path)
                    .map_err(|e| format!("graph file {}: {e}", path.display()));
                self.finish(text, force)
            }
            Origin::Ctrl { path, inflight } => {
                if let Some(old) = inflight.take() {
                    proto::debug!("control socket: abandoning the request in flight");
                    old.close(registry);
                }
                match Exchange::start(path, registry, CTRL_TIMEOUT, force) {
                    Ok(x) => {
                        *inflight = Some(x);
                        self.on_ready(registry)
                    }
                    Err(e) => {
                        let e = format!("control socket {}: {e}", path.display());
                        self.finish(Err(e), force)
                    }
                }
            }
        }
    }

    /// Readiness of the exchange in flight ([`TOKEN`]): send, read, and
    /// once the answer is complete, the graph if it is to be applied.
    pub fn on_ready(&mut self, registry: &Registry) -> Option<Parsed> {
        let Origin::Ctrl { path, inflight } = &mut self.origin else {
            return None;
        };
        let x = inflight.as_mut()?;
        let result = x.advance()?;
        let force = x.force;
        if let Some(x) = inflight.take() {
            x.close(registry);
        }
        let result = result.map_err(|e| format!("control socket {}: {e}", path.display()));
        self.finish(result, force)
    }

    /// Called every loop turn: an exchange past its deadline fails; a due
    /// poll starts an exchange (skipped while one is in flight) or reads
    /// a file that changed.
    pub fn on_time(&mut self, now: Instant, registry: &Registry) -> Option<Parsed> {
        if let Origin::Ctrl { path, inflight } = &mut self.origin {
            if let Some(x) = inflight.take_if(|x| now >= x.deadline) {
                let force = x.force;
                let e = format!(
                    "control socket {}: no answer within {} ms ({})",
                    path.display(),
                    CTRL_TIMEOUT.as_millis(),
                    x.stage()
                );
                x.close(registry);
                return self.finish(Err(e), force);
            }
        }
        if now < self.next_check {
            return None;
        }
        self.next_check = now + self.every;
        match &self.origin {
            Origin::File { path, stamp } => {
                let now_stamp = file_stamp(path);
                if now_stamp.is_some() && now_stamp != *stamp {
                    return self.request(false, registry);
                }
                None
            }
            // One exchange at a time: a Pantavisor slower than the poll
            // interval is asked again only once it answered or timed out.
            Origin::Ctrl {
                inflight: Some(_), ..
            } => None,
            Origin::Ctrl { inflight: None, .. } => self.request(false, registry),
        }
    }

    /// The text read (or why not) becomes a graph to apply, or nothing.
    fn finish(&mut self, text: Result<String, String>, force: bool) -> Option<Parsed> {
        let text = match text {
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
}

/// Read a graph file of at most [`MAX_FILE`] bytes; a longer one is an
/// error naming the cap, and is not read past it.
pub fn read_graph_file(p: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(p)?
        .take(MAX_FILE + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > MAX_FILE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "longer than {} MiB, the cap for a graph file",
                MAX_FILE >> 20
            ),
        ));
    }
    Ok(text)
}

fn file_stamp(p: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// One `GET /xconnect-graph HTTP/1.0` on the control socket, driven by
/// readiness: the request is written and the answer read as far as the
/// socket allows, never waiting.
struct Exchange {
    sock: UnixStream,
    deadline: Instant,
    /// Request bytes sent so far.
    sent: usize,
    /// The answer, as far as it came.
    answer: Reader,
    /// Started by start-up or SIGHUP: applied even if unchanged.
    force: bool,
}

impl Exchange {
    /// Connect without blocking (a Pantavisor whose backlog is full fails
    /// at once) and register for readiness under [`TOKEN`].
    fn start(
        path: &Path,
        registry: &Registry,
        timeout: Duration,
        force: bool,
    ) -> Result<Exchange, String> {
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
        let mut sock = UnixStream::from_std(std::os::unix::net::UnixStream::from(fd));
        registry
            .register(&mut sock, TOKEN, Interest::READABLE | Interest::WRITABLE)
            .map_err(|e| format!("epoll_ctl: {e}"))?;
        Ok(Exchange {
            sock,
            deadline: Instant::now() + timeout,
            sent: 0,
            answer: Reader::new(MAX_BODY),
            force,
        })
    }

    /// What it was waiting for, for a timeout's message.
    fn stage(&self) -> &'static str {
        match (self.sent < REQUEST.len(), self.answer.is_empty()) {
            (true, _) => "sending",
            (false, true) => "waiting for the answer",
            (false, false) => "reading the answer",
        }
    }

    /// Progress as far as the socket allows. None: not finished yet;
    /// otherwise the body of a 200 answer or why there is none.
    fn advance(&mut self) -> Option<Result<String, String>> {
        while self.sent < REQUEST.len() {
            match self.sock.write(&REQUEST[self.sent..]) {
                Ok(0) => return Some(Err("sending request: socket closed".into())),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Some(Err(format!("sending request: {e}"))),
            }
        }
        let got = self.answer.read_from(&mut self.sock)?;
        Some(got.and_then(check_status))
    }

    fn close(mut self, registry: &Registry) {
        let _ = registry.deregister(&mut self.sock);
    }
}

/// The graph in a 200 answer, or why there is none.
fn check_status(a: Answer) -> Result<String, String> {
    if a.code != 200 {
        let text = String::from_utf8_lossy(&a.body);
        let snippet: String = text.chars().take(120).collect();
        return Err(format!("answered {}: {}", a.code, snippet.trim()));
    }
    String::from_utf8(a.body).map_err(|_| "graph is not UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http_client::MAX_HEAD;
    use std::io::Read;
    use std::os::unix::net::UnixListener;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn sock_path(tag: &str) -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("pvx-src-{}-{tag}{n}.sock", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    fn serve_once(answer: Vec<u8>) -> (PathBuf, std::thread::JoinHandle<String>) {
        let p = sock_path("once");
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
            // The client may give up before reading it all.
            let _ = c.write_all(&answer);
            String::from_utf8_lossy(&req).into_owned()
        });
        (p, h)
    }

    /// One exchange driven to its end by a poll of its own.
    fn get_graph(p: &Path, timeout: Duration) -> Result<String, String> {
        let mut poll = mio::Poll::new().unwrap();
        let mut x = Exchange::start(p, poll.registry(), timeout, false)?;
        let mut events = mio::Events::with_capacity(4);
        loop {
            if let Some(r) = x.advance() {
                x.close(poll.registry());
                return r;
            }
            let left = x.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("no answer within deadline ({})", x.stage()));
            }
            poll.poll(&mut events, Some(left)).unwrap();
        }
    }

    fn answer(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    #[test]
    fn reads_a_200_with_and_without_length() {
        let (p, h) = serve_once(answer("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n[]"));
        assert_eq!(get_graph(&p, CTRL_TIMEOUT).unwrap(), "[]");
        assert!(h
            .join()
            .unwrap()
            .starts_with("GET /xconnect-graph HTTP/1.0\r\n"));
        let _ = std::fs::remove_file(&p);
        let (p, h) = serve_once(answer(
            "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n[ ]",
        ));
        assert_eq!(get_graph(&p, CTRL_TIMEOUT).unwrap(), "[ ]");
        h.join().unwrap();
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn errors_say_what_went_wrong() {
        let cases = [
            (
                "HTTP/1.0 404 Not Found\r\n\r\nno such endpoint",
                "answered 404: no such endpoint",
            ),
            ("garbage\r\n\r\n", "malformed"),
            (
                "HTTP/1.0 200 OK\r\nContent-Length: 10\r\n\r\n[]",
                "closed after 2 of 10",
            ),
            (
                "HTTP/1.0 200 OK\r\nContent-Le",
                "closed in the middle of the answer head",
            ),
            ("", "closed without answering"),
            (
                "HTTP/1.0 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n[]",
                "conflicting Content-Length",
            ),
            (
                "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n[]\r\n0\r\n\r\n",
                "Transfer-Encoding",
            ),
            (
                "HTTP/1.0 200 OK\r\nContent-Length: 99999999\r\n\r\n[]",
                "answer larger than",
            ),
        ];
        for (a, want) in cases {
            let (p, h) = serve_once(answer(a));
            let e = get_graph(&p, CTRL_TIMEOUT).unwrap_err();
            assert!(e.contains(want), "{a:?}: {e}");
            h.join().unwrap();
            let _ = std::fs::remove_file(&p);
        }
        let e = get_graph(Path::new("/nonexistent/pv-ctrl"), CTRL_TIMEOUT).unwrap_err();
        assert!(e.contains("connect"), "{e}");
    }

    #[test]
    fn oversized_answers_are_cut_short() {
        let mut body = answer("HTTP/1.0 200 OK\r\n\r\n");
        body.resize(MAX_BODY + 64 * 1024, b' ');
        let (p, h) = serve_once(body);
        let e = get_graph(&p, CTRL_TIMEOUT).unwrap_err();
        assert!(e.contains("answer larger than"), "{e}");
        h.join().unwrap();
        let _ = std::fs::remove_file(&p);
        let mut head = answer("HTTP/1.0 200 OK\r\nX-Pad: ");
        head.resize(MAX_HEAD + 1024, b'a');
        let (p, h) = serve_once(head);
        let e = get_graph(&p, CTRL_TIMEOUT).unwrap_err();
        assert!(e.contains("answer head larger than"), "{e}");
        h.join().unwrap();
        let _ = std::fs::remove_file(&p);
    }

    /// The deadline covers the whole exchange: an answer dribbled a byte
    /// at a time does not extend it.
    #[test]
    fn a_dribbled_answer_times_out() {
        let p = sock_path("dribble");
        let l = UnixListener::bind(&p).unwrap();
        let h = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            for b in b"HTTP/1.0 200 OK\r\nX-Slow: ".iter().cycle() {
                if c.write_all(&[*b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let e = get_graph(&p, Duration::from_millis(300)).unwrap_err();
        assert!(
            e.contains("no answer within deadline (reading the answer)"),
            "{e}"
        );
        h.join().unwrap();
        let _ = std::fs::remove_file(&p);
    }

    /// A Pantavisor that takes the request and never answers: the source
    /// asks once however often the poll comes round, and reports the
    /// silence as an outage at the deadline, all without blocking.
    #[test]
    fn a_silent_server_is_asked_once_and_times_out() {
        let p = sock_path("silent");
        let l = UnixListener::bind(&p).unwrap();
        l.set_nonblocking(true).unwrap();
        let mut poll = mio::Poll::new().unwrap();
        let mut events = mio::Events::with_capacity(4);
        let mut s = Source::ctrl(p.clone(), Duration::from_millis(10));
        let mut held = Vec::new();
        let started = Instant::now();
        assert!(s.request(true, poll.registry()).is_none());
        while s.outage.is_none() {
            let now = Instant::now();
            assert!(now < started + 4 * CTRL_TIMEOUT, "no timeout reported");
            let wait = s.next_wake().saturating_duration_since(now);
            poll.poll(&mut events, Some(wait.min(Duration::from_millis(50))))
                .unwrap();
            for ev in events.iter() {
                assert_eq!(ev.token(), TOKEN);
                assert!(s.on_ready(poll.registry()).is_none());
            }
            assert!(s.on_time(Instant::now(), poll.registry()).is_none());
            while let Ok((c, _)) = l.accept() {
                held.push(c);
            }
        }
        assert_eq!(held.len(), 1, "one request in flight at a time");
        let e = s.outage.clone().unwrap();
        assert!(e.contains("no answer within 2000 ms"), "{e}");
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn unchanged_text_is_not_handed_on_unless_forced() {
        let poll = mio::Poll::new().unwrap();
        let r = poll.registry();
        let dir = std::env::temp_dir().join(format!("pvx-src-{}-file", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("g.json");
        std::fs::write(&f, "[]").unwrap();
        let mut s = Source::file(f.clone());
        assert!(s.request(false, r).is_some());
        assert!(s.request(false, r).is_none());
        assert!(s.request(true, r).is_some());
        std::fs::write(&f, "{").unwrap();
        assert!(s.request(false, r).is_none());
        assert!(s.outage.is_some());
        std::fs::write(&f, "[ ]").unwrap();
        assert!(s.request(false, r).is_some());
        assert!(s.outage.is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

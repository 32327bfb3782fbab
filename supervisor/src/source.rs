//! Where the graph comes from (BEHAVIOUR §3):
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

use exchange::Exchange;
use mio::{Registry, Token};
use proto::graph::{self, Link, Refusal};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

mod exchange;

/// Pantavisor's control socket.
pub const DEFAULT_CTRL_SOCKET: &str = "/run/pantavisor/pv/pv-ctrl";
/// `--poll-interval`'s default: how often the control socket is asked.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(5);
/// The supervisor loop's token for the control-socket exchange in flight.
pub const TOKEN: Token = Token(2);
const FILE_CHECK: Duration = Duration::from_secs(1);
/// The whole control-socket exchange must finish within this. A
/// Pantavisor that does not answer in time is an outage; the exchange
/// runs inside the supervisor loop without ever blocking it.
const CTRL_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest graph file read (`--graph`, `check`): a file may carry more
/// than the control socket (an endpoint's routes may reach
/// `proto::limits::MAX_CONFIG`, 16 MiB), but a mistaken path (a log, a disk
/// image, `/dev/zero`) must not make the supervisor read it all.
pub const MAX_FILE: u64 = 32 * 1024 * 1024;

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::sync::atomic::{AtomicUsize, Ordering};

    pub(super) fn sock_path(tag: &str) -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("pvx-src-{}-{tag}{n}.sock", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
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

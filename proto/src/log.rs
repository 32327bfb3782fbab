//! One line per event, through the `log` facade, to syslog (facility
//! daemon, the `syslog` crate's RFC 3164 formatter) when the syslog socket
//! exists, else to stderr. The `proto::info!`/`warn!`/`error!`/`debug!`
//! macros are `log`'s own, re-exported so that callers need no dependency
//! of their own; nothing is logged before [`init`].
//!
//! Line format:
//! - syslog: `<PRI>Mmm dd hh:mm:ss ident[pid]: level: [context: ]message`,
//!   PRI = 3*8 + severity, the timestamp in UTC (the crate's choice on unix)
//! - stderr: `ident[pid]: level: [context: ]message`
//!
//! Context and message are escaped with [`crate::text`] (a newline shows as
//! `\n`, ESC as `\x1b`), so one event is one line whatever it quotes and a
//! quoted text cannot forge a line; each is cut at [`MAX_MSG`] bytes.
//! A worker sets its endpoint as the context, so every line it writes
//! names the endpoint; the pid is in every line's header.
//!
//! What a device needs from it, kept here rather than left to the crate:
//! - The datagram socket is ours, connected and non-blocking, handed to the
//!   crate's `LoggerBackend::Unix`: a stalled syslogd never blocks a
//!   worker's event loop. A line it cannot take now (EAGAIN, ENOBUFS) is
//!   dropped and counted ([`dropped`]; workers report it in their stats).
//! - A restarted syslogd (ECONNREFUSED, ENOTCONN, or its socket replaced):
//!   connect again once per line; a line that still cannot be sent goes to
//!   stderr and is counted too.
//!
//! `PVX_SYSLOG_PATH` (environment, for tests and unusual systems) replaces
//! `/dev/log` as the syslog socket; workers inherit it from the supervisor.

use std::fmt::Arguments;
use std::io::{ErrorKind, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use syslog::{Facility, Formatter3164, LoggerBackend};

/// The `log` crate, for the exported macros.
#[doc(hidden)]
pub use ::log as facade;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    Error = 3,
    Warn = 4,
    Info = 6,
    Debug = 7,
}

impl Level {
    pub fn parse(s: &str) -> Option<Level> {
        match s.to_ascii_lowercase().as_str() {
            "error" | "err" => Some(Level::Error),
            "warn" | "warning" => Some(Level::Warn),
            "info" => Some(Level::Info),
            "debug" => Some(Level::Debug),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }

    fn filter(self) -> ::log::LevelFilter {
        match self {
            Level::Error => ::log::LevelFilter::Error,
            Level::Warn => ::log::LevelFilter::Warn,
            Level::Info => ::log::LevelFilter::Info,
            Level::Debug => ::log::LevelFilter::Debug,
        }
    }

    fn of(l: ::log::Level) -> Level {
        match l {
            ::log::Level::Error => Level::Error,
            ::log::Level::Warn => Level::Warn,
            ::log::Level::Info => Level::Info,
            ::log::Level::Debug | ::log::Level::Trace => Level::Debug,
        }
    }
}

/// Longest message part of a line; longer ones are cut (small syslogds
/// such as busybox's read short datagrams, and a runaway message must not
/// flood the log).
pub const MAX_MSG: usize = 1024;

type Syslog = syslog::Logger<LoggerBackend, Formatter3164>;

enum Sink {
    Stderr,
    Syslog(Syslog),
}

struct State {
    ident: String,
    context: Option<String>,
    sink: Sink,
}

// Processes here are single-threaded: the lock is never contended; the
// `log` facade wants a `Sync` logger all the same.
static STATE: Mutex<Option<State>> = Mutex::new(None);
static DROPPED: AtomicU64 = AtomicU64::new(0);

fn state() -> std::sync::MutexGuard<'static, Option<State>> {
    STATE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The syslog socket: `$PVX_SYSLOG_PATH`, else `/dev/log`.
pub fn syslog_path() -> PathBuf {
    std::env::var_os("PVX_SYSLOG_PATH")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/dev/log"))
}

fn connect_syslog(ident: &str) -> std::io::Result<Syslog> {
    // std sockets are opened close-on-exec: workers never inherit it.
    let s = UnixDatagram::unbound()?;
    s.connect(syslog_path())?;
    // A stalled syslogd must never block the event loop (the crate would
    // leave the socket blocking).
    s.set_nonblocking(true)?;
    Ok(syslog_logger(s, ident))
}

fn syslog_logger(s: UnixDatagram, ident: &str) -> Syslog {
    syslog::Logger::new(
        LoggerBackend::Unix(s),
        Formatter3164 {
            facility: Facility::LOG_DAEMON,
            // Local datagrams: syslogd adds the host name.
            hostname: None,
            process: ident.to_string(),
            pid: std::process::id(),
        },
    )
}

struct Facade;

impl ::log::Log for Facade {
    fn enabled(&self, m: &::log::Metadata<'_>) -> bool {
        m.level() <= ::log::max_level()
    }

    fn log(&self, r: &::log::Record<'_>) {
        if self.enabled(r.metadata()) {
            if let Some(st) = state().as_mut() {
                st.write(Level::of(r.level()), r.args());
            }
        }
    }

    fn flush(&self) {}
}

/// `target`: `auto` (syslog if the syslog socket exists), `syslog`, or
/// `stderr`. Sets the `log` facade's logger and its maximum level.
/// Returns the target actually used (`syslog` or `stderr`).
pub fn init(ident: &str, target: &str, level: Level) -> &'static str {
    let want_syslog = match target {
        "syslog" => true,
        "stderr" => false,
        _ => syslog_path().exists(),
    };
    let sink = match want_syslog.then(|| connect_syslog(ident)) {
        Some(Ok(s)) => Sink::Syslog(s),
        _ => Sink::Stderr,
    };
    let used = match sink {
        Sink::Syslog(_) => "syslog",
        Sink::Stderr => "stderr",
    };
    {
        let mut st = state();
        let context = st.as_mut().and_then(|old| old.context.take());
        *st = Some(State {
            ident: ident.to_string(),
            context,
            sink,
        });
    }
    // Only the first call installs the logger; later ones change the state.
    let _ = ::log::set_logger(&Facade);
    ::log::set_max_level(level.filter());
    used
}

/// Prefix every later line with `context: ` (a worker's endpoint).
pub fn set_context(context: Option<String>) {
    if let Some(st) = state().as_mut() {
        st.context = context;
    }
}

/// The syslog socket's fd, if logging goes to syslog: a worker that closes
/// stray fds must keep it.
pub fn raw_fd() -> Option<RawFd> {
    match state().as_ref()?.sink {
        Sink::Syslog(ref l) => match l.backend {
            LoggerBackend::Unix(ref s) => Some(s.as_raw_fd()),
            _ => None,
        },
        Sink::Stderr => None,
    }
}

/// Lines syslog did not take since the process started (its socket was
/// full, or gone): the ones a reader of the syslog misses.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// What follows the header of a line: `level: [context: ]message`, both
/// escaped and cut at [`MAX_MSG`] bytes.
pub fn body(level: Level, context: Option<&str>, msg: &str) -> String {
    let mut line = String::with_capacity(msg.len().min(MAX_MSG) + 48);
    line.push_str(level.as_str());
    line.push_str(": ");
    if let Some(c) = context {
        crate::text::push_escaped(&mut line, c, MAX_MSG);
        line.push_str(": ");
    }
    crate::text::push_escaped(&mut line, msg, MAX_MSG);
    line
}

/// How one line fared with syslog.
#[derive(Debug, PartialEq, Eq)]
enum Sent {
    Yes,
    /// Syslog is there but cannot take it now: dropped.
    Full,
    /// Syslog is not reachable, even after connecting again.
    Gone,
}

fn send_once(l: &mut Syslog, level: Level, body: &str) -> Result<(), std::io::Error> {
    let r = match level {
        Level::Error => l.err(body),
        Level::Warn => l.warning(body),
        Level::Info => l.info(body),
        Level::Debug => l.debug(body),
    };
    r.map_err(|e| match e {
        syslog::Error::Write(e) | syslog::Error::Io(e) => e,
        other => std::io::Error::other(other.to_string()),
    })
}

fn full(e: &std::io::Error) -> bool {
    e.kind() == ErrorKind::WouldBlock || e.raw_os_error() == Some(nix::libc::ENOBUFS)
}

/// Send `body` on `l`; if syslog went away (restarted, socket replaced),
/// connect again once and resend there.
fn send_syslog(l: &mut Syslog, ident: &str, level: Level, body: &str) -> Sent {
    match send_once(l, level, body) {
        Ok(()) => return Sent::Yes,
        Err(e) if full(&e) => return Sent::Full,
        Err(_) => {}
    }
    let Ok(mut fresh) = connect_syslog(ident) else {
        return Sent::Gone;
    };
    let sent = match send_once(&mut fresh, level, body) {
        Ok(()) => Sent::Yes,
        Err(e) if full(&e) => Sent::Full,
        Err(_) => Sent::Gone,
    };
    *l = fresh;
    sent
}

impl State {
    fn write(&mut self, level: Level, msg: &Arguments<'_>) {
        let msg = match msg.as_str() {
            Some(s) => std::borrow::Cow::Borrowed(s),
            None => std::borrow::Cow::Owned(msg.to_string()),
        };
        let body = body(level, self.context.as_deref(), &msg);
        if let Sink::Syslog(l) = &mut self.sink {
            match send_syslog(l, &self.ident, level, &body) {
                Sent::Yes => return,
                Sent::Full => {
                    DROPPED.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Sent::Gone => {
                    DROPPED.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        // One write per line: stderr is unbuffered, so `writeln!` with
        // arguments is a write per piece, and the supervisor and its
        // workers share one stderr: their pieces interleaved mid-line.
        let line = format!("{}[{}]: {body}\n", self.ident, std::process::id());
        let _ = std::io::stderr().write_all(line.as_bytes());
    }
}

/// The `log` crate's record building (`__private_api::log`, generic over
/// the logger) made once, here. Generic code is built in each crate that
/// uses it, unless a crate built for size ("s", as proto, runtime and the
/// supervisor are) finds a copy an upstream crate built. With no log call
/// left in proto once the runtime became its own crate, the supervisor and
/// the runtime each built their own, and the supervisor's was inlined into
/// each of its log calls: +4.8 KiB of the executable (issue 19). Never
/// called: being built here is its job; the final link drops it.
#[doc(hidden)]
pub fn shared_log_call(args: std::fmt::Arguments<'_>) {
    ::log::info!("{args}");
}

#[macro_export]
macro_rules! error { ($($a:tt)*) => { $crate::log::facade::error!($($a)*) } }
#[macro_export]
macro_rules! warn { ($($a:tt)*) => { $crate::log::facade::warn!($($a)*) } }
#[macro_export]
macro_rules! info { ($($a:tt)*) => { $crate::log::facade::info!($($a)*) } }
#[macro_export]
macro_rules! debug { ($($a:tt)*) => { $crate::log::facade::debug!($($a)*) } }

#[cfg(test)]
mod tests {
    use super::*;

    /// The header the crate writes, with its timestamp cut out:
    /// `<PRI>Mmm dd hh:mm:ss rest` -> `<PRI>rest`.
    fn untimed(line: &str) -> String {
        let (pri, rest) = line.split_at(line.find('>').unwrap() + 1);
        let b = rest.as_bytes();
        assert!(
            b.len() > 16 && b[3] == b' ' && b[6] == b' ' && b[9] == b':' && b[12] == b':',
            "no RFC 3164 timestamp: {line}"
        );
        assert_eq!(b[15], b' ', "{line}");
        format!("{pri}{}", &rest[16..])
    }

    fn pair(ident: &str) -> (Syslog, UnixDatagram) {
        let (a, b) = UnixDatagram::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        (syslog_logger(a, ident), b)
    }

    fn recv(b: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = b.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn syslog_line_is_rfc3164_with_daemon_priority_ident_and_pid() {
        let (mut l, rx) = pair("pvx-worker-tcp");
        let pid = std::process::id();
        let b = body(
            Level::Warn,
            Some("endpoint 0.0.0.0:80 (host)"),
            "backend 10.0.0.2:80 unreachable",
        );
        assert_eq!(send_syslog(&mut l, "x", Level::Warn, &b), Sent::Yes);
        // daemon (3) * 8 + warning (4) = 28
        assert_eq!(
            untimed(&recv(&rx)),
            format!("<28>pvx-worker-tcp[{pid}]: warn: endpoint 0.0.0.0:80 (host): backend 10.0.0.2:80 unreachable")
        );
        for (level, pri) in [(Level::Info, 30), (Level::Error, 27), (Level::Debug, 31)] {
            send_syslog(&mut l, "x", level, &body(level, None, "x"));
            let line = untimed(&recv(&rx));
            assert!(
                line.starts_with(&format!("<{pri}>pvx-worker-tcp[")),
                "{line}"
            );
        }
    }

    /// A syslog that stops reading: sending never blocks, lines are
    /// reported full (to be dropped and counted).
    #[test]
    fn full_syslog_socket_drops_without_blocking() {
        let (mut l, _rx) = pair("x");
        let b = body(Level::Info, None, &"y".repeat(900));
        let mut full = 0;
        for _ in 0..2000 {
            match send_syslog(&mut l, "x", Level::Info, &b) {
                Sent::Full => full += 1,
                Sent::Yes => {}
                Sent::Gone => panic!("a full socket is not a gone one"),
            }
        }
        assert!(full > 0);
    }

    #[test]
    fn one_event_is_one_line_and_bounded() {
        let l = body(Level::Info, Some("e\u{1b}[2J"), "a\nb\r\nc\td\u{7f}");
        assert_eq!(l, r"info: e\x1b[2J: a\nb\r\nc\td\x7f");
        let long = "é".repeat(MAX_MSG);
        let l = body(Level::Info, None, &long);
        assert!(l.ends_with("..."));
        assert!(l.len() <= MAX_MSG + 16, "{}", l.len());
    }

    #[test]
    fn levels_parse() {
        assert_eq!(Level::parse("WARNING"), Some(Level::Warn));
        assert_eq!(Level::parse("err"), Some(Level::Error));
        assert_eq!(Level::parse("trace"), None);
        assert!(Level::Error < Level::Debug);
        assert!(Level::Error.filter() < Level::Debug.filter());
    }
}

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
//! Access lines (`--access-log`, one per request or connection, built by
//! the worker runtime) take their own way out, [`access`]: a sink of
//! their own (syslog through a socket of its own, or stderr), whatever
//! `--log-level` says, written as they come (already escaped, each value
//! one word), with the same non-blocking send and the same count of
//! dropped lines. Off, nothing is opened and nothing is written.
//!
//! `PVX_SYSLOG_PATH` (environment, for tests and unusual systems) replaces
//! `/dev/log` as the syslog socket; workers inherit it from the supervisor.

use serde::{Deserialize, Serialize};
use std::fmt::{Arguments, Write as _};
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
    /// This process's, taken at `init`: an access line to stderr names
    /// it without a `getpid` per line.
    pid: u32,
    context: Option<String>,
    sink: Sink,
    /// Where access lines go; None: `--access-log off`.
    access: Option<Sink>,
}

/// Where access lines go (`--access-log`): off by default, a device's
/// flash and syslog are precious.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLog {
    #[default]
    Off,
    Syslog,
    Stderr,
}

impl AccessLog {
    pub fn parse(s: &str) -> Option<AccessLog> {
        match s {
            "off" => Some(AccessLog::Off),
            "syslog" => Some(AccessLog::Syslog),
            "stderr" => Some(AccessLog::Stderr),
            _ => None,
        }
    }
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
        let (context, access) = match st.as_mut() {
            Some(old) => (old.context.take(), old.access.take()),
            None => (None, None),
        };
        *st = Some(State {
            ident: ident.to_string(),
            pid: std::process::id(),
            context,
            sink,
            access,
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

/// Send access lines to `to` from now on (after [`init`]). A syslog that
/// cannot be reached now sends them to stderr, as the other lines.
/// Returns what is used (`off`, `syslog` or `stderr`).
pub fn init_access(to: AccessLog) -> &'static str {
    let mut st = state();
    let Some(st) = st.as_mut() else {
        return "off";
    };
    st.access = match to {
        AccessLog::Off => None,
        AccessLog::Stderr => Some(Sink::Stderr),
        AccessLog::Syslog => Some(match connect_syslog(&st.ident) {
            Ok(s) => Sink::Syslog(s),
            Err(_) => Sink::Stderr,
        }),
    };
    match st.access {
        None => "off",
        Some(Sink::Stderr) => "stderr",
        Some(Sink::Syslog(_)) => "syslog",
    }
}

/// One access line: `line` is written as it is, after `access: `
/// (severity info on syslog). Never blocks; a line syslog cannot take now
/// is dropped and counted ([`dropped`]). Nothing when access lines are off.
pub fn access(line: &str) {
    let mut st = state();
    let Some(State {
        ident,
        pid,
        access: Some(sink),
        ..
    }) = st.as_mut()
    else {
        return;
    };
    if let Sink::Syslog(l) = sink {
        let body = format!("access: {line}");
        match send_syslog(l, ident, Level::Info, &body) {
            Sent::Yes => return,
            Sent::Full | Sent::Gone => {
                DROPPED.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
    // As `to_stderr` writes a line, built in one buffer of the right size
    // (one allocation, not two `format!`s growing theirs: a line per
    // request or connection).
    let mut out = String::with_capacity(ident.len() + line.len() + 24);
    let _ = write!(out, "{ident}[{pid}]: access: ");
    out.push_str(line);
    out.push('\n');
    let _ = std::io::stderr().write_all(out.as_bytes());
}

/// The syslog sockets' fds (log lines, access lines), where they go to
/// syslog: a worker that closes stray fds must keep them.
pub fn raw_fds() -> Vec<RawFd> {
    let st = state();
    let Some(st) = st.as_ref() else {
        return Vec::new();
    };
    [Some(&st.sink), st.access.as_ref()]
        .into_iter()
        .flatten()
        .filter_map(|s| match s {
            Sink::Syslog(l) => match l.backend {
                LoggerBackend::Unix(ref s) => Some(s.as_raw_fd()),
                _ => None,
            },
            Sink::Stderr => None,
        })
        .collect()
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
        to_stderr(&self.ident, &body);
    }
}

/// One write per line: stderr is unbuffered, so `writeln!` with
/// arguments is a write per piece, and the supervisor and its workers
/// share one stderr: their pieces interleaved mid-line.
fn to_stderr(ident: &str, body: &str) {
    let line = format!("{ident}[{}]: {body}\n", std::process::id());
    let _ = std::io::stderr().write_all(line.as_bytes());
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
mod tests;

//! One line per event, to syslog (facility daemon) when `/dev/log` exists,
//! else to stderr.
//!
//! Written here rather than with the `syslog` crate: an RFC 3164 datagram
//! without timestamp and hostname (syslogd stamps it) is a few lines, and
//! keeps `time`, `hostname` and `log` out of four small binaries.
//!
//! Line format (see [`format_line`]):
//! - syslog: `<PRI>ident[pid]: level: [context: ]message`, PRI = 3*8 + severity
//! - stderr: `ident[pid]: level: [context: ]message`
//!
//! A worker sets its endpoint as the context, so every line it writes
//! names the endpoint; the pid is in every line's header.
//!
//! `PVX_SYSLOG_PATH` (environment, for tests and unusual systems) replaces
//! `/dev/log` as the syslog socket; workers inherit it from the supervisor.

use std::cell::RefCell;
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};

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
}

/// syslog facility "daemon" (RFC 3164 code 3).
pub const FACILITY_DAEMON: u8 = 3;
/// Longest message part of a line; longer ones are cut (small syslogds
/// such as busybox's read short datagrams, and a runaway message must not
/// flood the log).
pub const MAX_MSG: usize = 1024;

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

/// Where lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Stderr,
    Syslog,
}

enum Sink {
    Stderr,
    Syslog(UnixDatagram),
}

struct Logger {
    ident: String,
    context: Option<String>,
    sink: Sink,
}

thread_local! {
    // Processes here are single-threaded; thread-local avoids a lock.
    static LOGGER: RefCell<Option<Logger>> = const { RefCell::new(None) };
}

/// The syslog socket: `$PVX_SYSLOG_PATH`, else `/dev/log`.
pub fn syslog_path() -> PathBuf {
    std::env::var_os("PVX_SYSLOG_PATH")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/dev/log"))
}

fn connect_syslog() -> std::io::Result<UnixDatagram> {
    // std sockets are opened close-on-exec: workers never inherit it.
    let s = UnixDatagram::unbound()?;
    s.connect(syslog_path())?;
    // A stalled syslogd must never block the event loop: a line that does
    // not fit goes to stderr instead.
    s.set_nonblocking(true)?;
    Ok(s)
}

/// `target`: `auto` (syslog if the syslog socket exists), `syslog`, or
/// `stderr`. Returns the target actually used (`syslog` or `stderr`).
pub fn init(ident: &str, target: &str, level: Level) -> &'static str {
    LEVEL.store(level as u8, Ordering::Relaxed);
    let want_syslog = match target {
        "syslog" => true,
        "stderr" => false,
        _ => syslog_path().exists(),
    };
    let sink = match want_syslog.then(connect_syslog) {
        Some(Ok(s)) => Sink::Syslog(s),
        _ => Sink::Stderr,
    };
    let used = match sink {
        Sink::Syslog(_) => "syslog",
        Sink::Stderr => "stderr",
    };
    LOGGER.with(|l| {
        let mut l = l.borrow_mut();
        let context = l.as_mut().and_then(|old| old.context.take());
        *l = Some(Logger {
            ident: ident.to_string(),
            context,
            sink,
        })
    });
    used
}

/// Prefix every later line with `context: ` (a worker's endpoint).
pub fn set_context(context: Option<String>) {
    LOGGER.with(|l| {
        if let Some(l) = l.borrow_mut().as_mut() {
            l.context = context;
        }
    });
}

/// The syslog socket's fd, if logging goes to syslog: a worker that closes
/// stray fds must keep it.
pub fn raw_fd() -> Option<RawFd> {
    LOGGER.with(|l| match l.borrow().as_ref() {
        Some(Logger {
            sink: Sink::Syslog(s),
            ..
        }) => Some(s.as_raw_fd()),
        _ => None,
    })
}

pub fn enabled(level: Level) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

/// One log line, without a trailing newline. Context and message are
/// escaped with [`crate::text`] (a newline shows as `\n`, ESC as `\x1b`),
/// so one event is one line whatever it quotes and a quoted text cannot
/// forge a line; each is cut at [`MAX_MSG`] bytes.
pub fn format_line(
    target: Target,
    ident: &str,
    pid: u32,
    level: Level,
    context: Option<&str>,
    msg: &str,
) -> String {
    let mut line = String::with_capacity(ident.len() + msg.len() + 48);
    if target == Target::Syslog {
        line.push_str(&format!("<{}>", FACILITY_DAEMON * 8 + level as u8));
    }
    line.push_str(&format!("{ident}[{pid}]: {}: ", level.as_str()));
    if let Some(c) = context {
        crate::text::push_escaped(&mut line, c, MAX_MSG);
        line.push_str(": ");
    }
    crate::text::push_escaped(&mut line, msg, MAX_MSG);
    line
}

pub fn write(level: Level, msg: std::fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    let pid = std::process::id();
    let msg = msg.to_string();
    LOGGER.with(|l| {
        let mut l = l.borrow_mut();
        let Some(lg) = l.as_mut() else {
            let line = format_line(Target::Stderr, "pv-xconnect", pid, level, None, &msg);
            let _ = writeln!(std::io::stderr(), "{line}");
            return;
        };
        let ctx = lg.context.as_deref();
        if let Sink::Syslog(s) = &lg.sink {
            let line = format_line(Target::Syslog, &lg.ident, pid, level, ctx, &msg);
            match s.send(line.as_bytes()) {
                Ok(_) => return,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    // syslogd restarted (ECONNREFUSED) or its socket was
                    // replaced: connect again once, then give up on this line.
                    if let Ok(s) = connect_syslog() {
                        let sent = s.send(line.as_bytes()).is_ok();
                        lg.sink = Sink::Syslog(s);
                        if sent {
                            return;
                        }
                    }
                }
            }
        }
        let line = format_line(Target::Stderr, &lg.ident, pid, level, ctx, &msg);
        let _ = writeln!(std::io::stderr(), "{line}");
    });
}

#[macro_export]
macro_rules! error { ($($a:tt)*) => { $crate::log::write($crate::log::Level::Error, format_args!($($a)*)) } }
#[macro_export]
macro_rules! warn { ($($a:tt)*) => { $crate::log::write($crate::log::Level::Warn, format_args!($($a)*)) } }
#[macro_export]
macro_rules! info { ($($a:tt)*) => { $crate::log::write($crate::log::Level::Info, format_args!($($a)*)) } }
#[macro_export]
macro_rules! debug { ($($a:tt)*) => { $crate::log::write($crate::log::Level::Debug, format_args!($($a)*)) } }

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syslog_line_has_daemon_priority_ident_and_pid() {
        let l = format_line(
            Target::Syslog,
            "pvx-worker-tcp",
            42,
            Level::Warn,
            Some("endpoint 0.0.0.0:80 (host)"),
            "backend 10.0.0.2:80 unreachable",
        );
        // daemon (3) * 8 + warning (4) = 28
        assert_eq!(
            l,
            "<28>pvx-worker-tcp[42]: warn: endpoint 0.0.0.0:80 (host): backend 10.0.0.2:80 unreachable"
        );
        let l = format_line(Target::Syslog, "pv-xconnect", 1, Level::Info, None, "x");
        assert_eq!(l, "<30>pv-xconnect[1]: info: x");
        let l = format_line(Target::Syslog, "pv-xconnect", 1, Level::Error, None, "x");
        assert!(l.starts_with("<27>"));
        let l = format_line(Target::Syslog, "pv-xconnect", 1, Level::Debug, None, "x");
        assert!(l.starts_with("<31>"));
    }

    #[test]
    fn stderr_line_has_no_priority() {
        let l = format_line(Target::Stderr, "pv-xconnect", 7, Level::Info, None, "hi");
        assert_eq!(l, "pv-xconnect[7]: info: hi");
    }

    #[test]
    fn one_event_is_one_line_and_bounded() {
        let l = format_line(
            Target::Stderr,
            "x",
            1,
            Level::Info,
            None,
            "a\nb\r\nc\td\u{7f}",
        );
        assert_eq!(l, r"x[1]: info: a\nb\r\nc\td\x7f");
        let long = "é".repeat(MAX_MSG);
        let l = format_line(Target::Stderr, "x", 1, Level::Info, None, &long);
        assert!(l.ends_with("..."));
        assert!(l.len() <= MAX_MSG + 32, "{}", l.len());
    }

    #[test]
    fn levels_parse() {
        assert_eq!(Level::parse("WARNING"), Some(Level::Warn));
        assert_eq!(Level::parse("err"), Some(Level::Error));
        assert_eq!(Level::parse("trace"), None);
        assert!(Level::Error < Level::Debug);
    }
}

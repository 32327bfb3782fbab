//! One line per event, to syslog (facility daemon) when `/dev/log` exists,
//! else to stderr.
//!
//! Written here rather than with the `syslog` crate: an RFC 3164 datagram
//! without timestamp (syslogd stamps it) is a few lines, and keeps `time`,
//! `hostname` and `log` out of four small binaries.

use std::cell::RefCell;
use std::io::Write;
use std::os::unix::net::UnixDatagram;
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
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

enum Sink {
    Stderr,
    Syslog(UnixDatagram),
}

struct Logger {
    ident: String,
    sink: Sink,
}

thread_local! {
    // Processes here are single-threaded; thread-local avoids a lock.
    static LOGGER: RefCell<Option<Logger>> = const { RefCell::new(None) };
}

/// `target`: `auto` (syslog if /dev/log exists), `syslog`, or `stderr`.
/// Returns the target actually used (`syslog` or `stderr`).
pub fn init(ident: &str, target: &str, level: Level) -> &'static str {
    LEVEL.store(level as u8, Ordering::Relaxed);
    let want_syslog = match target {
        "syslog" => true,
        "stderr" => false,
        _ => std::path::Path::new("/dev/log").exists(),
    };
    let sink = if want_syslog {
        // std sockets are opened close-on-exec.
        match UnixDatagram::unbound().and_then(|s| s.connect("/dev/log").map(|_| s)) {
            Ok(s) => Sink::Syslog(s),
            Err(_) => Sink::Stderr,
        }
    } else {
        Sink::Stderr
    };
    let used = match sink {
        Sink::Syslog(_) => "syslog",
        Sink::Stderr => "stderr",
    };
    LOGGER.with(|l| {
        *l.borrow_mut() = Some(Logger {
            ident: ident.to_string(),
            sink,
        })
    });
    used
}

pub fn enabled(level: Level) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

pub fn write(level: Level, msg: std::fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    let pid = std::process::id();
    LOGGER.with(|l| {
        let l = l.borrow();
        let tag = match level {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        };
        match l.as_ref() {
            Some(Logger {
                ident,
                sink: Sink::Syslog(s),
            }) => {
                const DAEMON: u8 = 3;
                let line = format!("<{}>{ident}[{pid}]: {tag}: {msg}", DAEMON * 8 + level as u8);
                if s.send(line.as_bytes()).is_err() {
                    let _ = writeln!(std::io::stderr(), "{ident}[{pid}]: {tag}: {msg}");
                }
            }
            Some(Logger {
                ident,
                sink: Sink::Stderr,
            }) => {
                let _ = writeln!(std::io::stderr(), "{ident}[{pid}]: {tag}: {msg}");
            }
            None => {
                let _ = writeln!(std::io::stderr(), "pv-xconnect[{pid}]: {tag}: {msg}");
            }
        }
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

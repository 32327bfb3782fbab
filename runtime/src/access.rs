//! The access log's lines (`--access-log`, README "Access log"): one per
//! http request, one per tcp or unix connection, written when it ends.
//!
//! One format for every kind: `key=value` pairs separated by one space,
//! in a fixed order per kind, each value one word escaped by
//! [`proto::text::push_word`] (control bytes, backslash and space shown
//! as escapes; an empty value as `-`) and cut at its bound, so a line
//! splits on spaces whatever a client sent, and no client can forge a
//! line or a field. Nothing is written, and nothing is built, while the
//! log is off: the caller asks [`AccessLine::on`] first.
//!
//! The line is built in one buffer the worker keeps (lent through the
//! loop's context), so a line costs no allocation once the buffer has
//! grown to a line's size.

use proto::log::AccessLog;
use std::fmt::Write;
use std::net::SocketAddr;
use std::time::Duration;

/// Longest request path (query included) written; longer ones are cut
/// and end in `...`.
pub const MAX_PATH: usize = 256;
/// Longest value of any other field (link names, backends, methods).
pub const MAX_VALUE: usize = 128;

/// The buffer access lines are built in, and whether they are written.
#[derive(Debug, Default)]
pub struct AccessLine {
    on: bool,
    buf: String,
}

impl AccessLine {
    pub fn new(to: AccessLog) -> AccessLine {
        AccessLine {
            on: to != AccessLog::Off,
            buf: String::new(),
        }
    }

    /// Whether lines are written: build one only then.
    pub fn on(&self) -> bool {
        self.on
    }

    /// Start a line of `kind` (`http`, `tcp`, `unix`).
    pub fn start(&mut self, kind: &str) -> &mut AccessLine {
        self.buf.clear();
        self.buf.push_str("kind=");
        self.buf.push_str(kind);
        self
    }

    fn key(&mut self, key: &str) {
        self.buf.push(' ');
        self.buf.push_str(key);
        self.buf.push('=');
    }

    /// `key=value`, value escaped and cut at `max` bytes.
    pub fn text(&mut self, key: &str, value: &str, max: usize) -> &mut AccessLine {
        self.key(key);
        proto::text::push_word(&mut self.buf, value, max);
        self
    }

    /// `key=value` for a value we print ourselves (an address, a backend):
    /// escaped and bounded all the same, as a unix path may hold anything.
    /// Not inlined: called from several places of a line, each would
    /// carry its copy of the formatting.
    #[inline(never)]
    pub fn shown(&mut self, key: &str, value: impl std::fmt::Display) -> &mut AccessLine {
        self.key(key);
        let at = self.buf.len();
        let _ = write!(self.buf, "{value}");
        // Bounded as any value: a unix path of the graph may be longer.
        if self.buf.len() - at > MAX_VALUE
            || self.buf[at..]
                .bytes()
                .any(|b| b <= b' ' || b == b'\\' || b >= 0x7f)
        {
            let raw = self.buf.split_off(at);
            proto::text::push_word(&mut self.buf, &raw, MAX_VALUE);
        }
        self
    }

    /// `key=n` in decimal, without the formatting machinery (a line has
    /// several numbers, and this is its cost per request or connection).
    pub fn num(&mut self, key: &str, n: u64) -> &mut AccessLine {
        self.key(key);
        proto::text::push_num(&mut self.buf, n);
        self
    }

    /// `key=ip:port`: an IPv4 address written digit by digit (through
    /// `Display` it cost some 1,500 instructions a line, callgrind), an
    /// IPv6 one as `[v6]:port` through it.
    pub fn addr(&mut self, key: &str, a: &SocketAddr) -> &mut AccessLine {
        let SocketAddr::V4(v4) = a else {
            // `shown` as every caller has it (one copy of the generic).
            return self.shown(key, a as &dyn std::fmt::Display);
        };
        self.key(key);
        for (i, o) in v4.ip().octets().into_iter().enumerate() {
            if i > 0 {
                self.buf.push('.');
            }
            proto::text::push_num(&mut self.buf, u64::from(o));
        }
        self.buf.push(':');
        proto::text::push_num(&mut self.buf, u64::from(v4.port()));
        self
    }

    /// A duration in whole milliseconds.
    pub fn ms(&mut self, key: &str, d: Duration) -> &mut AccessLine {
        self.num(key, u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// Write the line ([`proto::log::access`]).
    pub fn write(&mut self) {
        proto::log::access(&self.buf);
    }

    /// The line as built so far (tests).
    pub fn as_str(&self) -> &str {
        &self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_words_whatever_the_values_hold() {
        let mut l = AccessLine::new(AccessLog::Stderr);
        assert!(l.on());
        l.start("http")
            .text("link", "my api", MAX_VALUE)
            .shown("client", "10.0.0.1:5000")
            .text("method", "GET", MAX_VALUE)
            .text("path", "/a?b=c d\n\x1b", MAX_PATH)
            .num("status", 201)
            .ms("ms", Duration::from_micros(2500))
            .num("in", 0)
            .num("out", u64::MAX)
            .shown("backend", "/run/x y.sock")
            .text("reason", "", MAX_VALUE);
        assert_eq!(
            l.as_str(),
            r"kind=http link=my\x20api client=10.0.0.1:5000 method=GET path=/a?b=c\x20d\n\x1b status=201 ms=2 in=0 out=18446744073709551615 backend=/run/x\x20y.sock reason=-"
        );
        l.start("tcp")
            .num("zero", 0)
            .num("max", u64::MAX)
            .addr("v4", &"10.20.30.4:65535".parse().unwrap())
            .addr("v6", &"[::1]:80".parse().unwrap());
        assert_eq!(
            l.as_str(),
            "kind=tcp zero=0 max=18446744073709551615 v4=10.20.30.4:65535 v6=[::1]:80"
        );
        let long = "/".repeat(1000);
        l.start("http").text("path", &long, MAX_PATH);
        assert_eq!(l.as_str().len(), "kind=http path=".len() + MAX_PATH + 3);
        // A long path we print ourselves is bounded as well (found by the
        // access_line fuzz target).
        l.start("unix")
            .shown("backend", format_args!("unix:{long}"));
        assert_eq!(l.as_str().len(), "kind=unix backend=".len() + MAX_VALUE + 3);
        assert!(!AccessLine::new(AccessLog::Off).on());
    }
}

//! Access lines (runtime `access.rs`, `proto::text::push_word`): values a
//! client chose (a method, a path, a host, a unix path we print) written
//! into one `key=value` line. Input: the values, separated by 0xff bytes
//! (invalid UTF-8 as the worker would never see it is replaced first).
//!
//! Invariants: no panic; the line holds no control character and no
//! character that breaks or reorders a line, so no client forges a line;
//! it splits on spaces into exactly the fields written, keys in order;
//! each value is at most its bound plus `...`, and reads back (escapes
//! undone) as the value given, or as its start when it was cut.

#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::log::AccessLog;
use runtime::access::{AccessLine, MAX_PATH, MAX_VALUE};
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};

/// The characters `proto::text` escapes besides controls.
fn breaks_lines(c: char) -> bool {
    matches!(
        c,
        '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
    )
}

/// A value with its escapes undone; None if an escape is malformed.
fn unescape(v: &str) -> Option<String> {
    let mut out = String::new();
    let mut it = v.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next()? {
            '\\' => out.push('\\'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            '0' => out.push('\0'),
            'x' => {
                let hex: String = it.by_ref().take(2).collect();
                out.push(char::from(u8::from_str_radix(&hex, 16).ok()?));
            }
            'u' => {
                if it.next()? != '{' {
                    return None;
                }
                let hex: String = it.by_ref().take_while(|&c| c != '}').collect();
                out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
            }
            _ => return None,
        }
    }
    Some(out)
}

/// `written` is `given` as a line shows it: whole, or cut at a character
/// and ended by `...`, within `max` bytes before the `...`. (A value that
/// ends in `...` and is cut right before them reads back whole: the
/// marker stands for what it replaced.)
fn reads_back(key: &str, written: &str, given: &str, max: usize) {
    if given.is_empty() {
        assert_eq!(written, "-", "{key}");
        return;
    }
    assert!(written.len() <= max + 3, "{key}: {} bytes", written.len());
    let back = unescape(written).unwrap_or_else(|| panic!("{key}: bad escape in {written:?}"));
    if back == given {
        return;
    }
    let body = written
        .strip_suffix("...")
        .unwrap_or_else(|| panic!("{key}: {written:?} is neither {given:?} nor cut"));
    assert!(body.len() <= max, "{key}: {} bytes past {max}", body.len());
    let back = unescape(body).unwrap_or_else(|| panic!("{key}: bad escape in {body:?}"));
    assert!(
        given.starts_with(&back),
        "{key}: {back:?} not the start of {given:?}"
    );
    assert!(back.len() < given.len(), "{key}: cut but whole");
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|&b| b == 0xff);
    let mut next = || String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let (link, method, path, unix) = (next(), next(), next(), next());
    let ip = Ipv6Addr::from(u128::from(data.len() as u32) << 64 | 1);
    let client = SocketAddr::V6(SocketAddrV6::new(ip, 51_844, 0, 0));
    let mut l = AccessLine::new(AccessLog::Stderr);
    l.start("http")
        .text("link", &link, MAX_VALUE)
        .addr("client", &client)
        .text("method", &method, MAX_VALUE)
        .text("path", &path, MAX_PATH)
        .shown("backend", format_args!("unix:{unix}"))
        .num("in", data.len() as u64)
        .ms("ms", std::time::Duration::from_millis(u64::MAX));
    let line = l.as_str();
    assert!(
        !line.chars().any(|c| c.is_control() || breaks_lines(c)),
        "a raw control or line-breaking character: {line:?}"
    );
    let fields: Vec<(&str, &str)> = line
        .split(' ')
        .map(|kv| {
            kv.split_once('=')
                .unwrap_or_else(|| panic!("no = in {kv:?}"))
        })
        .collect();
    let keys: Vec<&str> = fields.iter().map(|f| f.0).collect();
    assert_eq!(
        keys,
        ["kind", "link", "client", "method", "path", "backend", "in", "ms"],
        "{line:?}"
    );
    reads_back("link", fields[1].1, &link, MAX_VALUE);
    assert_eq!(fields[2].1, client.to_string());
    reads_back("method", fields[3].1, &method, MAX_VALUE);
    reads_back("path", fields[4].1, &path, MAX_PATH);
    reads_back("backend", fields[5].1, &format!("unix:{unix}"), MAX_VALUE);
    assert_eq!(fields[6].1, data.len().to_string());
    assert_eq!(fields[7].1, u64::MAX.to_string());
});

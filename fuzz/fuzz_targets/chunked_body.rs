//! Chunked bodies with trailers (worker-http `framing.rs`, `Chunked`).
//!
//! The input is fed three ways: at once, cut at pseudo-random points
//! derived from the input, and one byte at a time. Invariants: no panic;
//! `feed` never claims more bytes than it was given and stops short only
//! once the body is done; every way of cutting the input gives the same
//! end (or the same error); and where the scanner accepts, a plain
//! reference reader of RFC 9112 §7.1 finds the body's end at the very same
//! byte (a backend and we must agree where the next message starts).

#![no_main]

use libfuzzer_sys::fuzz_target;
use worker_http::framing::{ChunkError, Chunked};

type Outcome = Result<(usize, bool), ChunkError>;

/// Feed `input` in the pieces `cuts` delimits, as the worker does: the
/// chunks through `feed`; once they are through, the trailer section is
/// gathered and parsed again on every new piece (`trailers`), until
/// complete. Returns (bytes of the body, done) and checks that no field we
/// own or frame by reaches the forwarded trailers.
fn feed_pieces(input: &[u8], cuts: &[usize]) -> Outcome {
    let mut c = Chunked::new();
    let mut total = 0;
    let mut start = 0;
    let mut trailers_at = None;
    for &end in cuts.iter().chain(std::iter::once(&input.len())) {
        if let Some(at) = trailers_at {
            let mut out = Vec::new();
            match c.trailers(&input[at..end], &mut out)? {
                None => {
                    start = end;
                    continue;
                }
                Some(k) => {
                    assert!(at + k <= end, "trailers claimed bytes not given");
                    check_forwarded(&out);
                    total = at + k;
                    break;
                }
            }
        }
        let piece = &input[start..end];
        let n = c.feed(piece)?;
        assert!(n <= piece.len(), "claimed {n} of {} bytes", piece.len());
        total += n;
        if c.in_trailers() {
            trailers_at = Some(total);
            // The rest of this piece starts the trailer section.
            let mut out = Vec::new();
            if let Some(k) = c.trailers(&input[total..end], &mut out)? {
                check_forwarded(&out);
                total += k;
                break;
            }
        } else if n < piece.len() {
            assert!(c.is_done(), "stopped short of its input before the end");
            break;
        }
        start = end;
    }
    if trailers_at.is_some() && !c.is_done() {
        // An incomplete trailer section is held whole, waiting for more.
        total = input.len();
    }
    if c.is_done() {
        // Whatever follows the body belongs to the next message.
        assert_eq!(c.feed(b"GET / HTTP/1.1\r\n"), Ok(0));
    }
    Ok((total, c.is_done()))
}

/// Forwarded trailers: well-formed field lines and the empty line, none of
/// them a field a provider trusts us for or that frames the message.
fn check_forwarded(out: &[u8]) {
    assert!(out.ends_with(b"\r\n"), "forwarded trailers end with the empty line");
    for line in out.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name: String = line[..colon]
            .iter()
            .map(|&b| if b == b'_' { '-' } else { (b as char).to_ascii_lowercase() })
            .collect();
        assert!(
            !name.starts_with("x-pv-")
                && !name.starts_with("x-forwarded-")
                && !matches!(name.as_str(), "content-length" | "transfer-encoding" | "host"),
            "forwarded trailer {name:?}"
        );
    }
}

/// Cut points from a xorshift seeded by the input, so a crash replays.
fn cuts(input: &[u8]) -> Vec<usize> {
    let mut x = input.iter().fold(0x9e37_79b9_7f4a_7c15u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100_0000_01b3)
    }) | 1;
    let mut out = Vec::new();
    let mut at = 0;
    while at < input.len() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        at += 1 + (x % 17) as usize;
        if at < input.len() {
            out.push(at);
        }
    }
    out
}

fn find_crlf(b: &[u8], from: usize) -> Option<usize> {
    b.get(from..)?
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|i| from + i)
}

/// Where a plain reader finds the end of the body: Some(end) when it is
/// complete, None when incomplete or malformed. Deliberately lenient about
/// what sits on a line (extensions, trailer fields): only the framing
/// counts here.
fn reference(b: &[u8]) -> Option<usize> {
    let mut pos = 0;
    loop {
        let e = find_crlf(b, pos)?;
        let line = &b[pos..e];
        let digits = line.iter().take_while(|c| c.is_ascii_hexdigit()).count();
        if digits == 0 {
            return None;
        }
        let hex = std::str::from_utf8(&line[..digits])
            .ok()?
            .trim_start_matches('0');
        let size = if hex.is_empty() {
            0
        } else {
            u64::from_str_radix(hex, 16).ok()?
        };
        pos = e + 2;
        if size == 0 {
            break;
        }
        let end = pos.checked_add(usize::try_from(size).ok()?)?;
        if b.get(end..end + 2)? != b"\r\n" {
            return None;
        }
        pos = end + 2;
    }
    loop {
        let e = find_crlf(b, pos)?;
        let empty = e == pos;
        pos = e + 2;
        if empty {
            return Some(pos);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let whole = feed_pieces(data, &[]);
    let split = feed_pieces(data, &cuts(data));
    let bytewise: Vec<usize> = (1..data.len()).collect();
    let bytewise = feed_pieces(data, &bytewise);
    assert_eq!(whole, split, "cutting the input changed the outcome");
    assert_eq!(whole, bytewise, "feeding byte by byte changed the outcome");
    if let Ok((n, done)) = whole {
        if done {
            assert_eq!(
                reference(data),
                Some(n),
                "a plain reader ends the body elsewhere"
            );
        } else {
            assert_eq!(n, data.len());
            assert_eq!(
                reference(data),
                None,
                "a plain reader found an end the scanner did not"
            );
        }
    }
});

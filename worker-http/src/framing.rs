//! Message framing (RFC 9112 §6): how long a body is, and a passthrough
//! parser for chunked bodies that only finds where the body ends. Chunk
//! bytes are forwarded unchanged; the parser never copies or buffers them.
//! The trailer section is the exception: it is parsed like a head's field
//! lines ([`parse_trailers`]) and forwarded without the fields a client may
//! not send through us (identity, framing, hop-by-hop: `fields.rs`).
//!
//! Strict on purpose: a proxy that reads framing more leniently than its
//! backend lets a client smuggle a second request past it. So sizes are
//! hex digits only (no sign, no `0x`, no overflow), every line ends in CRLF
//! (no bare LF), and data is followed by exactly CRLF.

use crate::fields::forbidden_in_trailers;
use crate::head::MAX_HEADERS;
use std::fmt;

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (e.g. GET without length, HEAD/204/304 responses, 1xx).
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding, parsed by [`Chunked`].
    Chunked,
    /// Until the sender closes (responses only).
    Close,
}

/// Why a chunked body could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkError {
    BadSize,
    SizeOverflow,
    BadLineEnd,
    BadExtension,
    LineTooLong,
    TrailersTooLarge,
    /// A trailer line that is not a field line (no colon, bad name, folded).
    BadTrailer,
}

impl fmt::Display for ChunkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            ChunkError::BadSize => "chunk size is not hexadecimal",
            ChunkError::SizeOverflow => "chunk size too large",
            ChunkError::BadLineEnd => "chunk line not terminated by CRLF",
            ChunkError::BadExtension => "invalid byte in chunk extension",
            ChunkError::LineTooLong => "chunk size line too long",
            ChunkError::TrailersTooLarge => "chunked trailers too large",
            ChunkError::BadTrailer => "malformed trailer field",
        };
        f.write_str(s)
    }
}

/// Longest chunk-size line (size and extensions) accepted.
const MAX_SIZE_LINE: usize = 4096;
/// Most trailer bytes accepted after the last chunk: as for a head (and
/// never more than the buffer they must fit in).
pub const MAX_TRAILERS: usize = 16 * 1024;
/// A chunk larger than this is refused (no real sender needs 2^60).
const MAX_CHUNK: u64 = 1 << 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading hex digits of the size (`digits` read so far).
    Size {
        size: u64,
        digits: u32,
    },
    /// After the size: optional whitespace and `;ext`, up to CR.
    Ext {
        size: u64,
    },
    /// Saw CR after the size line, want LF.
    SizeLf {
        size: u64,
    },
    /// Inside chunk data, this many bytes left.
    Data(u64),
    /// After data, want CR.
    DataCr,
    /// After data CR, want LF.
    DataLf,
    /// After the last chunk: the trailer section, which `feed` does not
    /// pass; [`Chunked::trailers`] parses it whole.
    Trailers,
    Done,
}

/// A passthrough chunked-body scanner.
#[derive(Debug, Clone)]
pub struct Chunked {
    state: State,
    /// Bytes in the current size line.
    line: usize,
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked::new()
    }
}

fn hex(b: u8) -> Option<u64> {
    match b {
        b'0'..=b'9' => Some((b - b'0') as u64),
        b'a'..=b'f' => Some((b - b'a' + 10) as u64),
        b'A'..=b'F' => Some((b - b'A' + 10) as u64),
        _ => None,
    }
}

impl Chunked {
    pub fn new() -> Chunked {
        Chunked {
            state: State::Size { size: 0, digits: 0 },
            line: 0,
        }
    }

    /// The whole body, through the final CRLF, has been seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The chunks are through: the trailer section is next, to be given
    /// to [`Chunked::trailers`] (`feed` consumes none of it).
    pub fn in_trailers(&self) -> bool {
        self.state == State::Trailers
    }

    /// Bytes of chunk data still to come in the current chunk (0 outside
    /// chunk data).
    pub fn data_left(&self) -> u64 {
        match self.state {
            State::Data(n) => n,
            _ => 0,
        }
    }

    /// `n` bytes of chunk data went past without being fed (spliced with
    /// `n` as the exact limit); at most [`Chunked::data_left`]. The CRLF
    /// after the data is fed as usual.
    pub fn skip_data(&mut self, n: u64) {
        if let State::Data(left) = self.state {
            let n = n.min(left);
            self.state = if n == left {
                State::DataCr
            } else {
                State::Data(left - n)
            };
        }
    }

    /// Parse the trailer section at the start of `input` (see
    /// [`parse_trailers`]); once it is complete the body is done. Outside
    /// the trailer section there is nothing to parse: `Ok(Some(0))`.
    pub fn trailers(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Option<usize>, ChunkError> {
        if self.state != State::Trailers {
            return Ok(Some(0));
        }
        let n = parse_trailers(input, out)?;
        if n.is_some() {
            self.state = State::Done;
        }
        Ok(n)
    }

    /// Scan `input`; return how many of its bytes belong to the chunks.
    /// Less than `input.len()` once the chunks are through: then the
    /// trailer section follows ([`Chunked::in_trailers`]), or, after it,
    /// the next message.
    pub fn feed(&mut self, input: &[u8]) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            self.state = match self.state {
                State::Done | State::Trailers => return Ok(i),
                State::Data(n) => {
                    // Skip the data in one step; it is never inspected.
                    let take = n.min((input.len() - i) as u64);
                    i += take as usize;
                    let left = n - take;
                    self.state = if left == 0 {
                        State::DataCr
                    } else {
                        State::Data(left)
                    };
                    continue;
                }
                State::Size { size, digits } => {
                    self.count_line()?;
                    match hex(b) {
                        Some(d) => {
                            if size > MAX_CHUNK >> 4 {
                                return Err(ChunkError::SizeOverflow);
                            }
                            State::Size {
                                size: size * 16 + d,
                                digits: digits + 1,
                            }
                        }
                        None if digits == 0 => return Err(ChunkError::BadSize),
                        None => self.after_size(size, b)?,
                    }
                }
                State::Ext { size } => {
                    self.count_line()?;
                    self.after_size(size, b)?
                }
                State::SizeLf { size } => {
                    if b != b'\n' {
                        return Err(ChunkError::BadLineEnd);
                    }
                    self.line = 0;
                    if size == 0 {
                        self.state = State::Trailers;
                        return Ok(i + 1);
                    } else {
                        State::Data(size)
                    }
                }
                State::DataCr => match b {
                    b'\r' => State::DataLf,
                    _ => return Err(ChunkError::BadLineEnd),
                },
                State::DataLf => match b {
                    b'\n' => State::Size { size: 0, digits: 0 },
                    _ => return Err(ChunkError::BadLineEnd),
                },
            };
            i += 1;
        }
        Ok(i)
    }

    /// A byte after the size digits: whitespace or extension bytes stay on
    /// the size line; CR ends it.
    fn after_size(&self, size: u64, b: u8) -> Result<State, ChunkError> {
        match b {
            b'\r' => Ok(State::SizeLf { size }),
            b'\n' => Err(ChunkError::BadLineEnd),
            // chunk-ext: BWS ";" name [ "=" value ], printable or tab.
            b'\t' | b' '..=b'~' | 0x80..=0xff => {
                if matches!(self.state, State::Size { .. }) && !matches!(b, b';' | b' ' | b'\t') {
                    // Right after the digits only BWS or ';' may follow.
                    return Err(ChunkError::BadSize);
                }
                Ok(State::Ext { size })
            }
            _ => Err(ChunkError::BadExtension),
        }
    }

    fn count_line(&mut self) -> Result<(), ChunkError> {
        self.line += 1;
        if self.line > MAX_SIZE_LINE {
            return Err(ChunkError::LineTooLong);
        }
        Ok(())
    }
}

/// Every LF follows a CR and every CR is followed by an LF (a CR at the
/// very end may still get its LF).
fn crlf_only(b: &[u8]) -> bool {
    b.iter().enumerate().all(|(i, c)| match c {
        b'\n' => i > 0 && b[i - 1] == b'\r',
        b'\r' => b.get(i + 1).is_none_or(|n| *n == b'\n'),
        _ => true,
    })
}

/// The trailer section of a chunked body (RFC 9112 §7.1.2) at the start
/// of `input`: field lines after the last chunk, through the empty line.
/// Parsed like a head's field lines (httparse's field syntax, at most
/// [`MAX_HEADERS`] lines and [`MAX_TRAILERS`] bytes, CRLF only).
///
/// `Ok(None)`: not complete yet. `Ok(Some(n))`: the section is the first
/// `n` bytes, and `out` got what to forward in its place: the fields a
/// client may send (identity, framing, `Host` and hop-by-hop fields are
/// left out, see `fields.rs`), then the empty line.
pub fn parse_trailers(input: &[u8], out: &mut Vec<u8>) -> Result<Option<usize>, ChunkError> {
    let end = if input.starts_with(b"\r\n") {
        Some(2)
    } else {
        input
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|i| i + 4)
    };
    let Some(end) = end else {
        if !crlf_only(input) {
            return Err(ChunkError::BadLineEnd);
        }
        if input.len() >= MAX_TRAILERS {
            return Err(ChunkError::TrailersTooLarge);
        }
        return Ok(None);
    };
    if end > MAX_TRAILERS {
        return Err(ChunkError::TrailersTooLarge);
    }
    let section = &input[..end];
    if !crlf_only(section) {
        return Err(ChunkError::BadLineEnd);
    }
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let fields = match httparse::parse_headers(section, &mut slots) {
        Ok(httparse::Status::Complete((n, fields))) if n == end => fields,
        Err(httparse::Error::TooManyHeaders) => return Err(ChunkError::TrailersTooLarge),
        _ => return Err(ChunkError::BadTrailer),
    };
    for f in fields.iter().filter(|f| !forbidden_in_trailers(f.name)) {
        out.extend_from_slice(f.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(f.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(end))
}

/// Parse one `Content-Length` value: decimal digits only.
pub fn parse_content_length(v: &[u8]) -> Option<u64> {
    // 19 digits cannot overflow a u64.
    if v.is_empty() || v.len() > 19 {
        return None;
    }
    v.iter().try_fold(0u64, |n, b| {
        b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
    })
}

/// Whether the last coding of the `Transfer-Encoding` values (all header
/// lines, in order) is `chunked`, and no earlier coding is.
pub fn te_is_chunked<'a>(values: impl Iterator<Item = &'a [u8]>) -> bool {
    let mut codings = Vec::new();
    for v in values {
        for c in v.split(|b| *b == b',') {
            let c = c.trim_ascii();
            if !c.is_empty() {
                codings.push(c.eq_ignore_ascii_case(b"chunked"));
            }
        }
    }
    match codings.split_last() {
        Some((last, earlier)) => *last && !earlier.iter().any(|c| *c),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chunks, then the trailer section as the pump does it: returns
    /// (bytes of the body, done); the forwarded trailers are dropped.
    fn scan(input: &[u8]) -> Result<(usize, bool), ChunkError> {
        let mut c = Chunked::new();
        let mut n = c.feed(input)?;
        if c.in_trailers() {
            n += c.trailers(&input[n..], &mut Vec::new())?.unwrap_or(0);
        }
        Ok((n, c.is_done()))
    }

    /// Feed one byte at a time: every state must survive a split anywhere
    /// (the trailer section is given whole bytes-so-far, as the pump does).
    fn scan_bytewise(input: &[u8]) -> Result<(usize, bool), ChunkError> {
        let mut c = Chunked::new();
        let mut total = 0;
        for (i, b) in input.iter().enumerate() {
            if c.in_trailers() {
                if let Some(n) = c.trailers(&input[total..=i], &mut Vec::new())? {
                    total += n;
                }
                continue;
            }
            let n = c.feed(std::slice::from_ref(b))?;
            total += n;
            if n == 0 {
                break;
            }
        }
        Ok((total, c.is_done()))
    }

    fn forwarded_trailers(section: &[u8]) -> Result<Option<(usize, String)>, ChunkError> {
        let mut out = Vec::new();
        Ok(parse_trailers(section, &mut out)?.map(|n| (n, String::from_utf8(out).unwrap())))
    }

    #[test]
    fn simple_body_and_next_message() {
        let body = b"5\r\nhello\r\n0\r\n\r\n";
        let mut input = body.to_vec();
        input.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(scan(&input), Ok((body.len(), true)));
        assert_eq!(scan_bytewise(&input), Ok((body.len(), true)));
    }

    #[test]
    fn skipped_data_still_needs_its_crlf() {
        let mut c = Chunked::new();
        assert_eq!(c.feed(b"10\r\nabcd"), Ok(8));
        assert_eq!(c.data_left(), 12);
        c.skip_data(5);
        assert_eq!(c.data_left(), 7);
        c.skip_data(100);
        assert_eq!(c.data_left(), 0, "never past the chunk's data");
        assert_eq!(c.feed(b"XY"), Err(ChunkError::BadLineEnd));
        let mut c = Chunked::new();
        c.feed(b"3\r\n").unwrap();
        c.skip_data(3);
        assert_eq!(c.feed(b"\r\n0\r\n"), Ok(5));
        assert!(c.in_trailers());
        c.skip_data(1);
        assert!(c.in_trailers(), "outside data: nothing to skip");
    }

    #[test]
    fn hex_sizes_extensions_and_trailers() {
        let body = b"A;name=val;x\r\n0123456789\r\n1f \t;e\r\n0123456789012345678901234567890\r\n0\r\nX-T: 1\r\nY: 2\r\n\r\n";
        assert_eq!(scan(body), Ok((body.len(), true)));
        assert_eq!(scan_bytewise(body), Ok((body.len(), true)));
        let upper = b"aB\r\n";
        let mut c = Chunked::new();
        assert_eq!(c.feed(upper), Ok(4));
        assert_eq!(c.state, State::Data(0xab));
    }

    #[test]
    fn partial_input_is_all_body() {
        assert_eq!(scan(b"5\r\nhel"), Ok((6, false)));
        assert_eq!(scan(b"0\r\n"), Ok((3, false)));
        assert_eq!(scan(b"0\r\n\r"), Ok((3, false)));
        assert_eq!(scan(b"0\r\nX: y\r\n"), Ok((3, false)));
    }

    #[test]
    fn rejects_bad_sizes() {
        assert_eq!(scan(b"\r\n"), Err(ChunkError::BadSize));
        assert_eq!(scan(b"-5\r\n"), Err(ChunkError::BadSize));
        assert_eq!(scan(b"0x5\r\n"), Err(ChunkError::BadSize));
        assert_eq!(scan(b"5g\r\n"), Err(ChunkError::BadSize));
        assert_eq!(scan(b"+5\r\n"), Err(ChunkError::BadSize));
        assert_eq!(
            scan(b"fffffffffffffffffff\r\n"),
            Err(ChunkError::SizeOverflow)
        );
    }

    #[test]
    fn rejects_bare_lf_everywhere() {
        assert_eq!(scan(b"5\nhello\r\n"), Err(ChunkError::BadLineEnd));
        assert_eq!(scan(b"5;a\nhello\r\n"), Err(ChunkError::BadLineEnd));
        assert_eq!(scan(b"5\r\r"), Err(ChunkError::BadLineEnd));
        assert_eq!(scan(b"5\r\nhelloX"), Err(ChunkError::BadLineEnd));
        assert_eq!(scan(b"5\r\nhello\rX"), Err(ChunkError::BadLineEnd));
        assert_eq!(scan(b"5\r\nhello\n"), Err(ChunkError::BadLineEnd));
        assert_eq!(scan(b"0\r\n\n"), Err(ChunkError::BadLineEnd));
        assert_eq!(scan(b"0\r\nX: y\n"), Err(ChunkError::BadLineEnd));
        assert_eq!(scan(b"0\r\nX: y\rZ"), Err(ChunkError::BadLineEnd));
        assert_eq!(scan(b"0\r\n\rX"), Err(ChunkError::BadLineEnd));
    }

    #[test]
    fn rejects_control_bytes_and_long_lines() {
        assert_eq!(scan(b"5;a\x00\r\n"), Err(ChunkError::BadExtension));
        let mut long = b"5;".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_SIZE_LINE));
        assert_eq!(scan(&long), Err(ChunkError::LineTooLong));
        let mut zeros = vec![b'0'; MAX_SIZE_LINE + 1];
        zeros.extend_from_slice(b"\r\n");
        assert_eq!(scan(&zeros), Err(ChunkError::LineTooLong));
        let mut trailers = b"0\r\n".to_vec();
        for _ in 0..2000 {
            trailers.extend_from_slice(b"X-Trailer: 123\r\n");
        }
        assert_eq!(scan(&trailers), Err(ChunkError::TrailersTooLarge));
        let mut many = b"0\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: 1\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(scan(&many), Err(ChunkError::TrailersTooLarge));
    }

    #[test]
    fn trailers_are_fields_and_ours_are_left_out() {
        assert_eq!(
            forwarded_trailers(b"\r\nNEXT"),
            Ok(Some((2, "\r\n".into())))
        );
        assert_eq!(forwarded_trailers(b""), Ok(None));
        assert_eq!(forwarded_trailers(b"X-Ok: 1\r\n\r"), Ok(None));
        let section = b"X-Ok: 1\r\nX-PV-Role: admin\r\nx_pv_client: me\r\nContent-Length: 5\r\n\
            Transfer_Encoding: chunked\r\nHost: evil\r\nConnection: close\r\nTE: trailers\r\n\
            Keep-Alive: 1\r\nUpgrade: h2c\r\nX-Forwarded-For: 6.6.6.6\r\nForwarded: for=x\r\n\
            X-Real-IP: 6.6.6.6\r\nServer-Timing: db;dur=5\r\n\r\nGET / HTTP/1.1\r\n";
        let end = section.len() - b"GET / HTTP/1.1\r\n".len();
        assert_eq!(
            forwarded_trailers(section),
            Ok(Some((
                end,
                "X-Ok: 1\r\nServer-Timing: db;dur=5\r\n\r\n".into()
            )))
        );
    }

    #[test]
    fn malformed_trailers_are_refused() {
        for bad in [
            &b"no colon\r\n\r\n"[..],
            b"Bad Name: x\r\n\r\n",
            b"X-A: 1\r\n folded\r\n\r\n",
            b": empty\r\n\r\n",
            b"X-A: a\x00b\r\n\r\n",
            b"X-A:\x7fb\r\n\r\n",
        ] {
            assert_eq!(
                forwarded_trailers(bad),
                Err(ChunkError::BadTrailer),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        for bad in [&b"X: 1\nY: 2\r\n\r\n"[..], b"X: 1\rY", b"\n", b"X: 1\r\n\n"] {
            assert_eq!(
                forwarded_trailers(bad),
                Err(ChunkError::BadLineEnd),
                "{bad:?}"
            );
        }
        let big = vec![b'a'; MAX_TRAILERS];
        assert_eq!(forwarded_trailers(&big), Err(ChunkError::TrailersTooLarge));
    }

    #[test]
    fn many_leading_zeros_are_fine() {
        assert_eq!(
            scan(b"0000000000000000000005\r\nhello\r\n0\r\n\r\n"),
            Ok((36, true))
        );
    }

    #[test]
    fn feeding_trailers_or_after_done_consumes_nothing() {
        let mut c = Chunked::new();
        assert_eq!(c.feed(b"0\r\n\r\n"), Ok(3));
        assert!(c.in_trailers());
        assert_eq!(c.feed(b"\r\n"), Ok(0));
        assert_eq!(c.trailers(b"\r\nmore", &mut Vec::new()), Ok(Some(2)));
        assert_eq!(c.feed(b"more"), Ok(0));
        assert!(c.is_done() && !c.in_trailers());
    }

    /// Sizes past 4 GiB are parsed and counted down in u64 on every
    /// target, never through a 32-bit usize: 0x12A05F200 (5,000,000,000)
    /// would keep only 705,032,704.
    #[test]
    fn sizes_past_4_gib_count_down_in_u64() {
        assert_eq!(parse_content_length(b"5000000000"), Some(5_000_000_000));
        let mut c = Chunked::new();
        assert_eq!(c.feed(b"12A05F200\r\n0123456789"), Ok(21));
        assert_eq!(c.data_left(), 4_999_999_990);
        // Exactly a u32's worth, then the rest a truncation would lose.
        c.skip_data(1 << 32);
        assert_eq!(c.data_left(), 705_032_694);
        c.skip_data(705_032_694);
        assert_eq!(c.data_left(), 0);
        assert_eq!(c.feed(b"\r\n0\r\n"), Ok(5));
        assert!(c.in_trailers());
    }

    #[test]
    fn content_length_values() {
        assert_eq!(parse_content_length(b"0"), Some(0));
        assert_eq!(parse_content_length(b"5242880"), Some(5_242_880));
        assert_eq!(parse_content_length(b""), None);
        assert_eq!(parse_content_length(b"+5"), None);
        assert_eq!(parse_content_length(b"-1"), None);
        assert_eq!(parse_content_length(b"5,5"), None);
        assert_eq!(parse_content_length(b" 5"), None);
        assert_eq!(parse_content_length(b"0x10"), None);
        assert_eq!(parse_content_length(b"99999999999999999999"), None);
    }

    #[test]
    fn transfer_encoding_last_coding() {
        let v = |s: &[&'static str]| te_is_chunked(s.iter().map(|x| x.as_bytes()));
        assert!(v(&["chunked"]));
        assert!(v(&["Chunked"]));
        assert!(v(&["gzip, chunked"]));
        assert!(v(&["gzip", "chunked"]));
        assert!(!v(&["chunked, gzip"]));
        assert!(!v(&["chunked", "chunked"]));
        assert!(!v(&["gzip"]));
        assert!(!v(&[""]));
        assert!(!v(&[]));
        assert!(!v(&["chunkedx"]));
    }
}

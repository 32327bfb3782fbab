//! Message framing (RFC 9112 §6): how long a body is, and a passthrough
//! parser for chunked bodies that only finds where the body ends. Bytes are
//! forwarded unchanged; the parser never copies or buffers them.
//!
//! Strict on purpose: a proxy that reads framing more leniently than its
//! backend lets a client smuggle a second request past it. So sizes are
//! hex digits only (no sign, no `0x`, no overflow), every line ends in CRLF
//! (no bare LF), and data is followed by exactly CRLF.

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
        };
        f.write_str(s)
    }
}

/// Longest chunk-size line (size and extensions) accepted.
const MAX_SIZE_LINE: usize = 4096;
/// Most trailer bytes accepted after the last chunk.
const MAX_TRAILERS: usize = 16 * 1024;
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
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Inside a trailer field line.
    Trailer,
    /// Saw CR inside/after a trailer line, want LF.
    TrailerLf,
    /// Saw CR on an empty line: the final CRLF, want LF.
    EndLf,
    Done,
}

/// A passthrough chunked-body scanner.
#[derive(Debug, Clone)]
pub struct Chunked {
    state: State,
    /// Bytes in the current size line, or all trailer bytes so far.
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

    /// Scan `input`; return how many of its bytes belong to the body. Less
    /// than `input.len()` only once the body ended: the rest is the next
    /// message.
    pub fn feed(&mut self, input: &[u8]) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            self.state = match self.state {
                State::Done => return Ok(i),
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
                        State::TrailerStart
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
                State::TrailerStart => {
                    self.count_trailer()?;
                    match b {
                        b'\r' => State::EndLf,
                        b'\n' => return Err(ChunkError::BadLineEnd),
                        _ => State::Trailer,
                    }
                }
                State::Trailer => {
                    self.count_trailer()?;
                    match b {
                        b'\r' => State::TrailerLf,
                        b'\n' => return Err(ChunkError::BadLineEnd),
                        _ => State::Trailer,
                    }
                }
                State::TrailerLf => match b {
                    b'\n' => State::TrailerStart,
                    _ => return Err(ChunkError::BadLineEnd),
                },
                State::EndLf => match b {
                    b'\n' => State::Done,
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

    fn count_trailer(&mut self) -> Result<(), ChunkError> {
        self.line += 1;
        if self.line > MAX_TRAILERS {
            return Err(ChunkError::TrailersTooLarge);
        }
        Ok(())
    }
}

/// Parse one `Content-Length` value: decimal digits only.
pub fn parse_content_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
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

    fn scan(input: &[u8]) -> Result<(usize, bool), ChunkError> {
        let mut c = Chunked::new();
        let n = c.feed(input)?;
        Ok((n, c.is_done()))
    }

    /// Feed one byte at a time: every state must survive a split anywhere.
    fn scan_bytewise(input: &[u8]) -> Result<(usize, bool), ChunkError> {
        let mut c = Chunked::new();
        let mut total = 0;
        for b in input {
            let n = c.feed(std::slice::from_ref(b))?;
            total += n;
            if n == 0 {
                break;
            }
        }
        Ok((total, c.is_done()))
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
        assert_eq!(scan(b"0\r\n\r"), Ok((4, false)));
        assert_eq!(scan(b"0\r\nX: y\r\n"), Ok((9, false)));
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
    }

    #[test]
    fn many_leading_zeros_are_fine() {
        assert_eq!(
            scan(b"0000000000000000000005\r\nhello\r\n0\r\n\r\n"),
            Ok((36, true))
        );
    }

    #[test]
    fn feeding_after_done_consumes_nothing() {
        let mut c = Chunked::new();
        assert_eq!(c.feed(b"0\r\n\r\n"), Ok(5));
        assert_eq!(c.feed(b"more"), Ok(0));
        assert!(c.is_done());
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

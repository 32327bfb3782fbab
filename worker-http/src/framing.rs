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

use crate::fields::{forbidden_in_trailers, MAX_HEADERS};
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
mod tests;
